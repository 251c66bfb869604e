"""Differential test of the data plane against the reference model (tests/lib/refmodel.py).

Tens of thousands of generated and mutated frames (scapy), IPv4 and IPv6, valid and broken,
for VIP and non-VIP traffic, ingress and egress, go through the real programs with
BPF_PROG_TEST_RUN (tests/lib/bpfsys.py) and through the model, which was written from the data
plane's specification and keeps its own mirror of the flow and fragment tables. Every verdict
and output frame must be equal. Every EPOCH packets, and at the end, the counters (bgs_stats,
bgs_drops, per service, per backend) and the tables (bgs_flows, bgs_frags) are compared with
the model's too. Egress packets come in by the interface flows expect (0, where the tests run:
no FIB lookup succeeds) or, some of them, by another one; control events between packets give
some flows that other interface.

Deterministic: the packets depend only on the seed (and on the model's state, itself a function
of the packets). ``make test`` runs DEFAULT_COUNT packets with DEFAULT_SEED; ``make fuzz``
sets FUZZ_SEED (a number, or "random") and FUZZ_COUNT:

    make fuzz FUZZ_SEED=7 FUZZ_COUNT=1000000

A difference fails the test with, for each of the first ones: the packet (scapy summary and
hexdump), the model's verdict, output and reason, the program's verdict and output, and the
fields that differ. After a difference the model takes the real tables back, so that one bug
is not reported a thousand times. Per-class counts are printed and written to
.output/differential.json.
"""

import json
import os
import random
import struct
import time
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (PadN, ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                                ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import checksum, hexdump

from lib import model
from lib import refmodel
from lib.refmodel import FRAG_LATER, RefModel
from lib.dataplane import frame_diff
from lib.unit_fixtures import TOP, bgs_state, monotonic_coarse_ns

DEFAULT_SEED = 0xB65D1F
DEFAULT_COUNT = 24000
EPOCH = 3000  # packets between two comparisons of counters and tables
MAX_REPORTED = 8  # differences shown in full
MAX_DIFFS = 300  # stop the run after this many differences
PREFIX = "bgsd"  # namespaces, interfaces, pin roots of this test
REPORT = os.path.join(TOP, ".output", "differential.json")

# Data-plane bugs found by this test and reported to the owner of bpf/: a difference that one
# of them explains exactly (the model, told to reproduce that bug, predicts the program's
# output and counters) is counted and shown but does not fail this test;
# tests/test_dataplane_*.py pin each one on fixed packets as a strict xfail,
# so that the fix is noticed. Remove an entry (and its quirk) when its bug is fixed.
KNOWN_BUGS = {}

AGED_NS = 2 * 3600 * 10**9  # how far back "aged" flows are set (timeouts are 1 h)
REROUTED = 7  # the reply interface the "reroute" event gives some flows
OTHER_IFINDEX = 9  # an interface no flow expects

MAC_A = "02:00:00:00:00:01"
MAC_B = "02:00:00:00:00:02"

# name, VIP, port, protocol, blue backends, green backends
SERVICES = [
    ("web", "10.0.0.100", 80, "tcp",
     [("10.0.1.1", 8080), ("10.0.1.2", 8081), ("10.0.1.3", 80)],
     [("10.0.2.1", 9090), ("10.0.2.2", 80)]),
    ("tls", "10.0.0.100", 443, "tcp", [("10.0.1.5", 8443)], [("10.0.2.5", 8443)]),
    ("dns", "10.0.0.101", 53, "udp", [("10.0.1.1", 5353), ("10.0.1.4", 53)],
     [("10.0.2.1", 5353)]),
    ("empty", "10.0.0.102", 80, "tcp", [], [("10.0.2.9", 80)]),
    ("web6", "fd00::100", 80, "tcp", [("fd00:1::1", 8080), ("fd00:1::2", 80)],
     [("fd00:2::1", 9090)]),
    ("dns6", "fd00::101", 53, "udp", [("fd00:1::1", 5353)],
     [("fd00:2::1", 53), ("fd00:2::2", 53)]),
    ("quic6", "fd00::100", 443, "udp", [("fd00:1::3", 443)], [("fd00:2::3", 4433)]),
    # web's first blue backend again: an address of two services, whose replies each find
    # their own service's flow.
    ("alt", "10.0.0.103", 8080, "tcp", [("10.0.1.1", 8080)], [("10.0.2.7", 8080)]),
    # blue's only backend has weight 0: a table of size 0 (no_backend) while blue has a
    # backend; its green takes every flow once flipped.
    ("zero", "10.0.0.104", 80, "tcp", [("10.0.1.6", 80)], [("10.0.2.6", 80)]),
]
# `service add` options beyond the protocol: lookup tables of other sizes (a small one, whose
# entries the "poke" event can rewrite one by one), and services without tables (set[h % n]).
SERVICE_OPTIONS = {
    "tls": ["--table-size", "251"],
    "dns": ["--lb", "modulo"],
    "web6": ["--table-size", "257", "--split-by", "client"],
    "quic6": ["--lb", "modulo"],
}
# Backend weights other than the default 1: (service, color, address, port) -> weight.
WEIGHTS = {
    ("web", "blue", "10.0.1.1", 8080): 3,
    ("web", "blue", "10.0.1.3", 80): 2,
    ("web6", "blue", "fd00:1::2", 80): 4,
    ("dns6", "green", "fd00:2::1", 53): 2,
    ("zero", "blue", "10.0.1.6", 80): 0,
}
SHARES = ["0.01%", "2.5%", "10%", "25%", "50%", "75%", "99.99%", "0%", "100%"]
CLIENTS4 = [f"192.168.{a}.{b}" for a in range(3) for b in range(1, 21)]
CLIENTS6 = [f"fd10::{a:x}" for a in range(1, 41)]
OTHER4 = ["10.0.0.200", "10.0.0.99", "192.168.0.1"]
OTHER6 = ["fd00::200", "fd00::99", "fd10::1"]
ROUTER4 = "172.16.0.1"
ROUTER6 = "fd99::1"
PROTO = {"tcp": model.IPPROTO_TCP, "udp": model.IPPROTO_UDP}
TCP_FLAGS = ["S", "S", "S", "A", "PA", "PA", "FA", "R", "RA", "SA", "SEC", "F", ""]
REPLY_FLAGS = ["SA", "A", "PA", "PA", "FA", "R", "RA", "A"]
ICMP4_ERR = [(3, 4), (3, 3), (3, 1), (11, 0), (12, 0)]
ICMP4_OTHER = [(8, 0), (0, 0), (5, 1), (4, 0)]


def fam(addr: str) -> int:
    return model.family_of(addr)


class Svc:
    """One configured service, as the generator knows it."""

    def __init__(self, idx, name, vip, port, proto, blue, green):
        self.idx, self.name, self.vip, self.port = idx, name, vip, port
        self.proto = PROTO[proto]
        self.blue, self.green = blue, green
        self.family = fam(vip)


# --- frame building ------------------------------------------------------------------------------

class Gen:
    """The packet generator: valid frames of many classes, then mutations of some of them."""

    def __init__(self, rng: random.Random, mdl: RefModel, svcs: List[Svc]):
        self.rng = rng
        self.mdl = mdl
        self.svcs = svcs
        self.tuples: List[Tuple[Svc, str, int]] = []  # (service, client, client port) used
        self.in_frags: List[tuple] = []  # (VIP, client, id, proto) of sent first fragments
        self.out_frags: List[tuple] = []  # (backend, client, id, proto) of reply first frags
        self.kinds = [
            (self.in_flow, 30), (self.in_nonvip, 6), (self.eg_reply, 16),
            (self.eg_other, 3), (self.in_frag, 9), (self.eg_frag, 5), (self.in_icmp, 8),
            (self.eg_icmp, 7), (self.in_exthdr, 5), (self.l2_stack, 3),
        ]
        self.kind_fns = [k for k, _ in self.kinds]
        self.kind_w = [w for _, w in self.kinds]
        self.mutations = [
            (self.m_trunc, 5), (self.m_flip, 5), (self.m_flip_hdr, 6), (self.m_iplen, 5),
            (self.m_ihl, 2), (self.m_doff, 2), (self.m_udplen, 2), (self.m_zeroport, 2),
            (self.m_version, 1), (self.m_pad, 3), (self.m_ethertype, 1), (self.m_cut_l2, 1),
        ]
        self.mut_fns = [m for m, _ in self.mutations]
        self.mut_w = [w for _, w in self.mutations]

    # --- helpers ---------------------------------------------------------------------------

    def l2(self, tags: Optional[int] = None):
        r = self.rng
        if tags is None:
            tags = r.choices([0, 1, 2], [70, 20, 10])[0]
        e = Ether(src=MAC_A, dst=MAC_B)
        for i in range(tags):
            e = e / (Dot1AD if (i == 0 and tags > 1 and r.random() < 0.7) or r.random() < 0.2
                     else Dot1Q)(vlan=r.randrange(4096))
        return e

    def ip(self, src: str, dst: str, **kw):
        r = self.rng
        if fam(src) == model.BGS_AF_INET:
            kw.setdefault("id", r.randrange(65536))
            if r.random() < 0.1:
                kw["options"] = r.choice([[IPOption_Router_Alert()],
                                          [IPOption_NOP()] * r.randrange(1, 40)])
            return IP(src=src, dst=dst, ttl=64, **kw)
        ip6 = IPv6(src=src, dst=dst, hlim=64)
        chain = self.exthdrs(r.choices([0, 1, 2, 3], [75, 15, 7, 3])[0])
        return ip6 if chain is None else ip6 / chain

    def exthdrs(self, n: int, frag_ok: bool = False):
        """A chain of ``n`` IPv6 extension headers (hop-by-hop first, when present)."""
        r = self.rng
        chain = None
        for i in range(n):
            kinds = ["dst", "rt"] + (["hbh"] if i == 0 else []) + (["frag"] if frag_ok else [])
            k = r.choice(kinds)
            if k == "hbh":
                h = IPv6ExtHdrHopByHop() if r.random() < 0.7 else IPv6ExtHdrHopByHop(
                    options=[PadN(optdata=b"\0" * r.randrange(0, 20))])
            elif k == "dst":
                h = IPv6ExtHdrDestOpt() if r.random() < 0.7 else IPv6ExtHdrDestOpt(
                    options=[PadN(optdata=b"\0" * r.randrange(0, 30))])
            elif k == "rt":
                h = IPv6ExtHdrRouting(segleft=0)
            else:
                h = IPv6ExtHdrFragment(offset=0, m=0, id=r.randrange(1 << 32))
            chain = h if chain is None else chain / h
        return chain

    def payload(self, maxlen: int = 120) -> bytes:
        r = self.rng
        n = r.choice([0, 0, 1, 2, 7, r.randrange(maxlen + 1)])
        return bytes(r.getrandbits(8) for _ in range(n))

    def l4(self, proto: int, sport: int, dport: int, flags: str = "S", **kw):
        r = self.rng
        if proto == model.IPPROTO_TCP:
            opts = {}
            if r.random() < 0.15:
                opts["options"] = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]
            return TCP(sport=sport, dport=dport, flags=flags, seq=r.getrandbits(32),
                       ack=r.getrandbits(32) if "A" in flags else 0, window=64240, **opts)
        if r.random() < 0.08:
            return UDP(sport=sport, dport=dport, chksum=0)
        return UDP(sport=sport, dport=dport)

    def pick_tuple(self, existing: float = 0.6, svc: Optional[Svc] = None):
        r = self.rng
        if self.tuples and r.random() < existing:
            t = r.choice(self.tuples)
            if svc is None or t[0] is svc:
                return t
        svc = svc or r.choice(self.svcs)
        client = r.choice(CLIENTS6 if svc.family == model.BGS_AF_INET6 else CLIENTS4)
        cport = r.randrange(1024, 1224) if r.random() < 0.9 else r.randrange(1, 65536)
        t = (svc, client, cport)
        if len(self.tuples) < 4000:
            self.tuples.append(t)
        return t

    def flow_of(self, t) -> Optional[refmodel.FlowVal]:
        svc, client, cport = t
        return self.mdl.flows.get((model.addr16(client), cport, svc.idx, svc.proto,
                                   svc.family))

    def backend_of(self, t) -> Optional[Tuple[str, int]]:
        """(address, port) of the backend of a tuple's flow entry, or None."""
        f = self.flow_of(t)
        be = None if f is None else self.mdl.backends.get(f.slot)
        return None if be is None else (self.astr(be.addr, t[0].family), be.port)

    @staticmethod
    def astr(raw16: bytes, family: int) -> str:
        return model.addr_str(raw16, family)

    # --- valid frames ----------------------------------------------------------------------

    def in_flow(self):
        """TCP/UDP from a client to a VIP: new tuples and existing flows, any flags."""
        svc, client, cport = self.pick_tuple()
        flags = self.rng.choice(TCP_FLAGS)
        pkt = (self.l2() / self.ip(client, svc.vip) / self.l4(svc.proto, cport, svc.port, flags)
               / Raw(self.payload()))
        return "in-flow", "in", pkt

    def in_nonvip(self):
        """Not for a service: other addresses, ports, protocols; ARP; ICMP echo."""
        r = self.rng
        v6 = r.random() < 0.4
        client = r.choice(CLIENTS6 if v6 else CLIENTS4)
        k = r.randrange(6)
        if k == 0:
            dst = r.choice(OTHER6 if v6 else OTHER4)
            pkt = self.ip(client, dst) / self.l4(r.choice([6, 17]), r.randrange(1, 65536),
                                                 r.choice([80, 53, 443, 22]))
        elif k == 1:  # a VIP address, a port or protocol that is not a service
            svc = r.choice([s for s in self.svcs if (s.family == 6) == v6])
            proto = r.choice([6, 17])
            port = r.choice([svc.port, 22, 8080, 53, 80])
            pkt = self.ip(client, svc.vip) / self.l4(proto, r.randrange(1024, 65536), port)
        elif k == 2:  # ICMP echo to a VIP
            svc = r.choice([s for s in self.svcs if (s.family == 6) == v6])
            pkt = self.ip(client, svc.vip) / (ICMPv6EchoRequest() if v6 else ICMP())
        elif k == 3:  # other protocols (GRE, SCTP, ESP) to a VIP
            svc = r.choice([s for s in self.svcs if (s.family == 6) == v6])
            proto = r.choice([47, 132, 50])
            ip = self.ip(client, svc.vip, proto=proto) if not v6 else IPv6(
                src=client, dst=svc.vip, nh=proto)
            pkt = ip / Raw(self.payload() + b"\0" * 8)
        elif k == 4:  # from a VIP (source, not destination)
            svc = r.choice(self.svcs)
            c = r.choice(CLIENTS6 if svc.family == 6 else CLIENTS4)
            pkt = self.ip(svc.vip, c) / self.l4(svc.proto, svc.port, r.randrange(1024, 65536),
                                                "SA")
        else:
            return "in-nonvip", "in", Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(
                psrc=r.choice(CLIENTS4), pdst=r.choice(OTHER4))
        return "in-nonvip", "in", self.l2() / pkt / Raw(self.payload(40))

    def eg_reply(self):
        """A backend's reply to a client of one of its flows (or of none)."""
        r = self.rng
        t = self.pick_tuple(0.9)
        svc, client, cport = t
        b = self.backend_of(t)
        if b is not None and r.random() < 0.9:
            baddr, bport = b
        else:
            baddr, bport = r.choice(svc.blue + svc.green)
        pkt = (self.l2() / self.ip(baddr, client)
               / self.l4(svc.proto, bport, cport, r.choice(REPLY_FLAGS)) / Raw(self.payload()))
        return "eg-reply", "out", pkt

    def eg_other(self):
        """Egress traffic that is not a reply: other hosts, other ports, client packets."""
        r = self.rng
        svc, client, cport = self.pick_tuple(0.5)
        k = r.randrange(3)
        if k == 0:
            src = r.choice(OTHER6 if svc.family == 6 else OTHER4)
            pkt = self.ip(src, client) / self.l4(svc.proto, r.randrange(1, 65536), cport)
        elif k == 1:
            baddr, _ = r.choice(svc.blue + svc.green)
            pkt = self.ip(baddr, client) / self.l4(svc.proto, 22, cport, "A")
        else:
            pkt = self.ip(client, svc.vip) / self.l4(svc.proto, cport, svc.port)
        return "eg-other", "out", self.l2() / pkt / Raw(self.payload(40))

    def frag_hdr(self, ident: int, first: bool, nh: int):
        r = self.rng
        if first:
            return IPv6ExtHdrFragment(offset=0, m=1, id=ident, nh=nh)
        return IPv6ExtHdrFragment(offset=r.randrange(1, 8192), m=r.randrange(2), id=ident, nh=nh)

    def ip_frag(self, src: str, dst: str, ident: int, first: bool, proto: int):
        """An IP header (IPv4, or IPv6 with a fragment header) of a fragment."""
        r = self.rng
        if fam(src) == model.BGS_AF_INET:
            if first:
                return IP(src=src, dst=dst, id=ident & 0xFFFF, flags="MF", frag=0, proto=proto)
            return IP(src=src, dst=dst, id=ident & 0xFFFF, proto=proto,
                      flags=r.choice(["MF", 0, "DF+MF"]), frag=r.randrange(1, 8192))
        pre = self.exthdrs(r.choices([0, 1, 2], [80, 15, 5])[0])
        ip6 = IPv6(src=src, dst=dst)
        if pre is not None:
            ip6 = ip6 / pre
        return ip6 / self.frag_hdr(ident, first, proto)

    def in_frag(self):
        """Client fragments: first (steered, tracked), first to a VIP address but to no service
        (another port, or an echo request: a pass marker), later following a first, later
        without one (to a VIP address: dropped; elsewhere: passed), IPv6 atomic fragments."""
        r = self.rng
        k = r.randrange(12)
        if k < 4:
            svc, client, cport = self.pick_tuple()
            ident = r.getrandbits(32) if svc.family == 6 else r.getrandbits(16)
            flags = r.choice(["S", "S", "A", "PA"])
            pkt = (self.ip_frag(client, svc.vip, ident, True, svc.proto)
                   / self.l4(svc.proto, cport, svc.port, flags) / Raw(self.payload(200)))
            self.note_frag(svc.vip, client, ident, svc.proto)
            return "in-frag-first", "in", self.l2() / pkt
        if k < 6:
            return self.in_frag_nonsvc()
        if k < 9 and self.in_frags:
            vip, client, ident, proto = r.choice(self.in_frags)
            pkt = self.ip_frag(client, vip, ident, False, proto) / Raw(
                self.payload(200) + b"L" * 8)
            return "in-frag-later", "in", self.l2() / pkt
        if k < 11:
            v6 = r.random() < 0.5
            client = r.choice(CLIENTS6 if v6 else CLIENTS4)
            if r.random() < 0.6:
                dst = r.choice([s.vip for s in self.svcs if (s.family == 6) == v6])
                cls = "in-frag-later-vip-miss"
            else:
                dst = r.choice(OTHER6 if v6 else OTHER4)
                cls = "in-frag-later-nonvip"
            pkt = self.ip_frag(client, dst, r.getrandbits(32), False,
                               r.choice([6, 17, 1 if not v6 else 58])) / Raw(b"M" * 16)
            return cls, "in", self.l2() / pkt
        svc, client, cport = self.pick_tuple(svc=r.choice([s for s in self.svcs
                                                           if s.family == 6]))
        pkt = (IPv6(src=client, dst=svc.vip)
               / IPv6ExtHdrFragment(offset=0, m=0, id=r.getrandbits(32), nh=svc.proto)
               / self.l4(svc.proto, cport, svc.port, "S") / Raw(self.payload()))
        return "in-frag-atomic6", "in", self.l2() / pkt

    def note_frag(self, vip: str, client: str, ident: int, proto: int) -> None:
        if len(self.in_frags) < 2000:
            self.in_frags.append((vip, client, ident, proto))

    def in_frag_nonsvc(self):
        """A first fragment to a VIP address that no service steers: TCP/UDP to a port without
        a service, or an ICMP/ICMPv6 echo request (a large ping to the VIP)."""
        r = self.rng
        svc = r.choice(self.svcs)
        client = r.choice(CLIENTS6 if svc.family == model.BGS_AF_INET6 else CLIENTS4)
        ident = r.getrandbits(32) if svc.family == 6 else r.getrandbits(16)
        if r.random() < 0.5:
            proto = model.IPPROTO_ICMPV6 if svc.family == 6 else model.IPPROTO_ICMP
            l4 = (ICMPv6EchoRequest(id=r.getrandbits(16)) if svc.family == 6
                  else ICMP(type=8, id=r.getrandbits(16)))
            cls = "in-frag-first-echo"
        else:
            proto = r.choice([model.IPPROTO_TCP, model.IPPROTO_UDP])
            port = r.randrange(1024, 65536)
            if (model.addr16(svc.vip), port, proto, svc.family) in self.mdl.vips:
                port = 9  # discard: no service of the tables above listens there
            l4 = self.l4(proto, r.randrange(1024, 65536), port)
            cls = "in-frag-first-other-port"
        pkt = self.ip_frag(client, svc.vip, ident, True, proto) / l4 / Raw(self.payload(200))
        self.note_frag(svc.vip, client, ident, proto)
        return cls, "in", self.l2() / pkt

    def eg_frag(self):
        """Reply fragments: first (reverse NAT, tracked), later following it, later without."""
        r = self.rng
        if r.random() < 0.45 or not self.out_frags:
            t = self.pick_tuple(0.95)
            svc, client, cport = t
            baddr, bport = self.backend_of(t) or r.choice(svc.blue + svc.green)
            ident = r.getrandbits(32) if svc.family == 6 else r.getrandbits(16)
            pkt = (self.ip_frag(baddr, client, ident, True, svc.proto)
                   / self.l4(svc.proto, bport, cport, r.choice(REPLY_FLAGS))
                   / Raw(self.payload(200)))
            if len(self.out_frags) < 2000:
                self.out_frags.append((baddr, client, ident, svc.proto))
            return "eg-frag-first", "out", self.l2() / pkt
        baddr, client, ident, proto = r.choice(self.out_frags)
        cls = "eg-frag-later"
        if r.random() < 0.2:
            ident ^= 0x5A5A
            cls = "eg-frag-later-miss"
        pkt = self.ip_frag(baddr, client, ident, False, proto) / Raw(self.payload(100) + b"x")
        return cls, "out", self.l2() / pkt

    def quote(self, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
        """The packet an ICMP error quotes, cut as routers and hosts cut it."""
        r = self.rng
        if fam(src) == model.BGS_AF_INET:
            ipq = IP(src=src, dst=dst, id=r.randrange(65536), ttl=r.randrange(1, 64))
            if r.random() < 0.1:
                ipq.options = [IPOption_Router_Alert()]
            if r.random() < 0.05:
                ipq.frag = r.randrange(1, 100)
            if r.random() < 0.1:
                ipq.flags = "MF"
        else:
            ipq = IPv6(src=src, dst=dst, hlim=r.randrange(1, 64))
        q = bytes(ipq / self.l4(proto, sport, dport, r.choice(REPLY_FLAGS))
                  / Raw(self.payload(300)))
        hl = (q[0] & 15) * 4 if q[0] >> 4 == 4 else 40
        cut = r.choice([hl + 8, hl + 8, hl + 20, len(q), len(q), hl + r.randrange(0, 30),
                        r.randrange(1, len(q) + 1)])
        return q[:cut]

    def icmp_outer(self, src: str, dst: str, error: bool, body: bytes):
        r = self.rng
        if fam(src) == model.BGS_AF_INET:
            t, c = r.choice(ICMP4_ERR if error else ICMP4_OTHER)
            icmp = ICMP(type=t, code=c)
            if (t, c) == (3, 4):
                icmp.nexthopmtu = r.choice([1400, 1280, 576])
            return self.ip(src, dst) / icmp / Raw(body)
        if error:
            icmp = r.choice([ICMPv6PacketTooBig(mtu=1280), ICMPv6DestUnreach(code=4),
                             ICMPv6TimeExceeded(), ICMPv6ParamProblem(ptr=6)])
        else:
            icmp = ICMPv6EchoRequest(id=r.randrange(65536))
        return self.ip(src, dst) / icmp / Raw(body)

    def in_icmp(self):
        """ICMP errors sent to a VIP about our replies (VIP:port -> client)."""
        r = self.rng
        t = self.pick_tuple(0.85)
        svc, client, cport = t
        v4 = svc.family == model.BGS_AF_INET
        src = r.choice([ROUTER4 if v4 else ROUTER6, client])
        dst = svc.vip if r.random() < 0.9 else r.choice(
            [s.vip for s in self.svcs if s.family == svc.family] + (OTHER4 if v4 else OTHER6))
        qs, qsport = (svc.vip, svc.port) if r.random() < 0.9 else (dst, r.randrange(1, 65536))
        body = self.quote(qs, client, svc.proto, qsport, cport)
        pkt = self.icmp_outer(src, dst, r.random() < 0.9, body)
        return "in-icmp", "in", self.l2() / pkt

    def eg_icmp(self):
        """ICMP errors leaving about a client's packet (client -> backend:port), from the
        backend itself or from a router on its side."""
        r = self.rng
        t = self.pick_tuple(0.85)
        svc, client, cport = t
        b = self.backend_of(t)
        if b is not None and r.random() < 0.9:
            baddr, bport = b
        else:
            baddr, bport = r.choice(svc.blue + svc.green + [(svc.vip, svc.port)])
        v4 = svc.family == model.BGS_AF_INET
        src = baddr if r.random() < 0.6 else (ROUTER4 if v4 else ROUTER6)
        body = self.quote(client, baddr, svc.proto, cport, bport)
        pkt = self.icmp_outer(src, client, r.random() < 0.92, body)
        return "eg-icmp", "out", self.l2() / pkt

    def in_exthdr(self):
        """IPv6 to a VIP behind 0 to 9 extension headers (the bound is 6)."""
        r = self.rng
        svc, client, cport = self.pick_tuple(0.5, svc=r.choice([s for s in self.svcs
                                                                 if s.family == 6]))
        n = r.choice([0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9])
        chain = self.exthdrs(n, frag_ok=True)
        ip6 = IPv6(src=client, dst=svc.vip)
        if chain is not None:
            ip6 = ip6 / chain
        pkt = ip6 / self.l4(svc.proto, cport, svc.port, r.choice(["S", "A", "PA"])) / Raw(
            self.payload(60))
        return f"in-exthdr{min(n, 7)}", "in", self.l2() / pkt

    def l2_stack(self):
        """0 to 3 VLAN tags of either type in front of VIP traffic, both directions."""
        r = self.rng
        tags = r.choice([0, 1, 2, 2, 3])
        svc, client, cport = self.pick_tuple()
        if r.random() < 0.7:
            pkt = self.ip(client, svc.vip) / self.l4(svc.proto, cport, svc.port, "S")
            hook = "in"
        else:
            b = self.backend_of((svc, client, cport)) or r.choice(svc.blue + svc.green)
            pkt = self.ip(b[0], client) / self.l4(svc.proto, b[1], cport, "A")
            hook = "out"
        return f"l2-tags{tags}", hook, self.l2(tags) / pkt / Raw(self.payload(30))

    # --- mutations -------------------------------------------------------------------------

    def _locate(self, b: bytes):
        """(l3 offset, family, l4 offset, proto) of a frame, as far as it parses."""
        reason, p = refmodel.parse(b)
        if p.family == 0:
            return None
        return p

    def m_trunc(self, b: bytearray):
        del b[self.rng.randrange(14, max(15, len(b))):]

    def m_flip(self, b: bytearray):
        for _ in range(self.rng.randrange(1, 5)):
            b[self.rng.randrange(len(b))] = self.rng.getrandbits(8)

    def m_flip_hdr(self, b: bytearray):
        for _ in range(self.rng.randrange(1, 3)):
            b[self.rng.randrange(12, min(len(b), 100))] = self.rng.getrandbits(8)

    def m_iplen(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None:
            return self.m_flip(b)
        off = p.l3 + (2 if p.family == 4 else 4)
        cur = refmodel._u16(b, off)
        v = self.rng.choice([0, cur + 1, cur - 1, cur + self.rng.randrange(2, 100),
                             cur - self.rng.randrange(2, 60), self.rng.randrange(65536),
                             cur + 4, cur - 8])
        struct.pack_into("!H", b, off, v % 65536)

    def m_ihl(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None or p.family != 4:
            return self.m_flip_hdr(b)
        b[p.l3] = 0x40 | self.rng.randrange(16)

    def m_doff(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None or p.proto != 6 or p.l4 + 13 > len(b):
            return self.m_flip_hdr(b)
        b[p.l4 + 12] = (self.rng.randrange(16) << 4) | (b[p.l4 + 12] & 15)

    def m_udplen(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None or p.proto != 17 or p.l4 + 6 > len(b):
            return self.m_flip_hdr(b)
        struct.pack_into("!H", b, p.l4 + 4, self.rng.randrange(0, 24))

    def m_zeroport(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None or p.proto not in (6, 17) or p.frag == FRAG_LATER or p.l4 + 4 > len(b):
            return self.m_flip_hdr(b)
        struct.pack_into("!H", b, p.l4 + self.rng.choice([0, 2]), 0)

    def m_version(self, b: bytearray):
        p = self._locate(bytes(b))
        if p is None:
            return self.m_flip_hdr(b)
        b[p.l3] = (self.rng.choice([4, 6, 0, 15]) << 4) | (b[p.l3] & 15)

    def m_cut_l2(self, b: bytearray):
        """Cut inside the Ethernet header's tags (or just after it)."""
        del b[self.rng.randrange(14, 23):]

    def m_pad(self, b: bytearray):
        b.extend(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 40)))

    def m_ethertype(self, b: bytearray):
        off = self.rng.choice([12, 16, 20])
        if off + 2 <= len(b):
            struct.pack_into("!H", b, off, self.rng.choice([0x0800, 0x86DD, 0x8100, 0x88A8,
                                                            0x0806, 0x9100]))

    # --- the stream ------------------------------------------------------------------------

    def next(self) -> Tuple[str, str, bytes]:
        r = self.rng
        fn = r.choices(self.kind_fns, self.kind_w)[0]
        cls, hook, pkt = fn()
        frame = bytes(pkt)
        if r.random() < 0.3:
            b = bytearray(frame)
            m = r.choices(self.mut_fns, self.mut_w)[0]
            m(b)
            if len(b) < 14:
                b.extend(bytes(14 - len(b)))
            frame = bytes(b)
            cls += "~" + m.__name__[2:]
        # BPF_PROG_TEST_RUN of a TC program wants the whole network header of an untagged
        # IPv4/IPv6 frame (EINVAL otherwise): such short egress frames are padded to it.
        short = {b"\x08\x00": 34, b"\x86\xdd": 54}.get(frame[12:14], 0)
        if hook == "out" and len(frame) < short:
            frame += bytes(short - len(frame))
            cls += "+padmin"
        fam_tag = "v6" if b"\x86\xdd" in frame[12:24] else "v4"
        return f"{cls}/{fam_tag}", hook, frame


# --- the run -------------------------------------------------------------------------------------

def _summary(frame: bytes) -> str:
    try:
        return Ether(frame).summary()
    except Exception as e:  # noqa: BLE001 -- a broken frame may break scapy too
        return f"(scapy cannot decode: {e})"


def describe(i: int, cls: str, hook: str, frame: bytes, exp: refmodel.Outcome,
             got_verdict: int, got: bytes, counted: Optional[tuple] = None) -> str:
    name = {("in", 1): "XDP_DROP", ("in", 2): "XDP_PASS", ("out", 0): "TC_ACT_OK",
            ("out", 2): "TC_ACT_SHOT"}
    lines = [
        f"packet #{i} [{cls}] {'ingress (XDP)' if hook == 'in' else 'egress (TC)'}, "
        f"{len(frame)} bytes: {_summary(frame)}",
        hexdump(frame, dump=True),
        f"model:   {name.get((hook, exp.verdict), exp.verdict)}, reason {exp.reason}, "
        f"stats {list(exp.stats)}, drops {list(exp.drops)}, output "
        + ("unchanged" if exp.data == frame else _summary(exp.data)),
        f"program: {name.get((hook, got_verdict), got_verdict)}, "
        + (f"stats {sorted(counted[0].elements())}, drops {sorted(counted[1].elements())}, "
           if counted else "")
        + "output " + ("unchanged" if got == frame else _summary(got)),
    ]
    if got != exp.data:
        lines.append("output difference (got = program, want = model):\n"
                     + frame_diff(got, exp.data))
    return "\n".join(lines)


def _cmp_tables(name: str, want: Dict, got: Dict, limit: int = 6) -> List[str]:
    out = []
    for k in sorted(set(want) | set(got), key=repr):
        if want.get(k) != got.get(k):
            out.append(f"{name} {k!r}: model {want.get(k)!r}, map {got.get(k)!r}")
    if len(out) > limit:
        out = out[:limit] + [f"... {len(out) - limit} more"]
    return out


def _setup_services(bgs) -> List[Svc]:
    svcs = []
    for idx, (name, vip, port, proto, blue, green) in enumerate(SERVICES):
        bgs.add_service(name, vip, port, proto, *SERVICE_OPTIONS.get(name, []))
        for color, bes in (("blue", blue), ("green", green)):
            for a, p in bes:
                bgs.add_backend(name, color, a, p, WEIGHTS.get((name, color, a, p)))
        svcs.append(Svc(idx, name, vip, port, proto, blue, green))
    bgs.cli("timeouts", "--tcp-idle", "1h", "--udp-idle", "1h", "--closing", "1h")
    return svcs


class Run:
    """One differential run on one state."""

    def __init__(self, bgs, seed: int, count: int):
        self.bgs = bgs
        self.seed = seed
        self.count = count
        self.rng = random.Random(seed)
        self.svcs = _setup_services(bgs)
        self.mdl = RefModel()
        self.mdl.load_config(bgs)
        # The programs run on one CPU (unit_fixtures), whose insert budget the model keeps.
        self.mdl.load_bucket(bgs, bgs.cpu)
        self.gen = Gen(self.rng, self.mdl, self.svcs)
        self.classes: Counter = Counter()
        self.outcomes: Counter = Counter()
        self.diffs: List[str] = []
        self.diff_sigs: Counter = Counter()
        self.state_diffs: List[str] = []
        self.t0 = monotonic_coarse_ns()
        self.control_log: List[str] = []
        self.poked = None
        self.n_control = self.n_poke = self.n_switch = self.n_budget = 0
        self.known: Counter = Counter()
        self.known_examples: Dict[str, str] = {}
        self.known_bytes: set = set()

    # Control-plane events between packets, so that flows see flips, shifts to split shares,
    # rollbacks, drains, backends added, removed and reweighted (tables rebuilt), bad sets
    # and tables, age, evictions, collection, the switch word poked (drain flag, HAS_PREV,
    # split shares), flows given another reply interface, and the insert budget emptied and
    # refilled; every kind in turn. A bad set or table is restored by the next event, before
    # any command: every command first repairs the state and would take the slots of a set
    # that names none of them for orphans.
    CONTROLS = ["flip", "shift", "poke", "restore", "backend", "switch", "age", "budget",
                "poke", "restore", "budget", "evict", "reroute", "shift", "gc", "switch",
                "poke", "restore", "rollback", "backend"]
    # The kinds of "poke" and "switch" events, in turn.
    POKES = ["table-long", "set-over", "table-free", "set-free", "table-zero"]
    SWITCHES = ["split-prev", "drain", "split", "prev"]
    COMMANDS = ("flip", "shift", "rollback", "backend", "gc")

    def control(self, i: int) -> None:
        r = self.rng
        bgs = self.bgs
        kind = self.CONTROLS[self.n_control % len(self.CONTROLS)]
        self.n_control += 1
        if kind in self.COMMANDS:
            # A command may release slots no set and no live flow needs any more, and zero
            # their counters: the counters are compared before, and taken after.
            self.check_state(f"before the {kind} at packet {i}")
        if kind == "flip":
            svc = r.choice(self.svcs)
            # Refused toward an empty color. No probe: the backends exist in the maps only.
            res = bgs.cli("flip", svc.name, "--no-check", check=False)
            self.control_log.append(f"#{i} flip {svc.name}"
                                    + ("" if res.returncode == 0 else " (refused)"))
        elif kind == "shift":  # a split share (or a whole color) by the command
            svc = r.choice(self.svcs)
            color, share = r.choice(["blue", "green"]), r.choice(SHARES)
            res = bgs.cli("shift", svc.name, color, share, "--no-check", check=False)
            self.control_log.append(f"#{i} shift {svc.name} {color} {share}"
                                    + ("" if res.returncode == 0 else " (refused)"))
        elif kind == "rollback":  # share <- prev_share, refused without HAS_PREV
            svc = r.choice(self.svcs)
            res = bgs.cli("rollback", svc.name, "--no-check", check=False)
            self.control_log.append(f"#{i} rollback {svc.name}"
                                    + ("" if res.returncode == 0 else " (refused)"))
        elif kind == "backend":  # web's second blue backend removed, added, or reweighted
            svc = self.svcs[0]
            a, p = svc.blue[1]
            slot = bgs.find_slot(svc.name, "blue", a, p)
            ep = model.endpoint(a, p)
            if slot is not None and r.random() < 0.5:
                w = r.choice([x for x in (0, 1, 2, 5) if x != bgs.backend(slot).weight])
                bgs.cli("backend", "add", svc.name, "blue", ep, "--weight", str(w))
                self.control_log.append(f"#{i} backend {svc.name} blue {a}:{p} weight {w}")
            elif slot is not None:
                bgs.cli("backend", "del", svc.name, "blue", ep, "--drain")
                self.control_log.append(f"#{i} backend del {svc.name} blue {a}:{p}")
            else:
                bgs.cli("backend", "add", svc.name, "blue", ep)
                self.control_log.append(f"#{i} backend add {svc.name} blue {a}:{p}")
        elif kind == "poke":
            self.poke(i)
        elif kind == "budget":
            self.budget(i)
        elif kind == "reroute":  # some flows' backends now answer by another interface
            keys = sorted(self.mdl.flows, key=repr)
            fmap = bgs.map("bgs_flows")
            for key in r.sample(keys, min(len(keys), 60)):
                kraw = model.pack_conn_key_raw(*key)
                raw = fmap.lookup(kraw)
                if raw is None:
                    continue
                f = model.unpack_flow(raw)._replace(ifindex=REROUTED)
                fmap.update(kraw, model.pack_flow(f))
                self.mdl.flows[key].ifindex = REROUTED
            self.control_log.append(f"#{i} reroute {min(len(keys), 60)} flows")
        elif kind == "restore":
            what, where, saved = self.poked
            if what == "set":
                bgs.map("bgs_sets").update(where, saved)
            else:
                with bgs.table_map(where) as inner:
                    for k, v in saved:
                        inner.update(k, v)
            self.poked = None
            self.control_log.append(f"#{i} restore {what}")
        elif kind == "evict":  # flow entries lost as the LRU loses them
            self.evict(i)
        elif kind == "gc":  # expired entries deleted, the drain flag settled
            res = bgs.cli("gc")
            self.mdl.load_dynamic(bgs)
            self.control_log.append(f"#{i} gc: {res.stdout.strip()}")
        elif kind == "switch":  # the switch word poked: flags, a split share, prev_share
            svc = r.choice(self.svcs)
            sw = bgs.switch(svc.idx)
            how = self.SWITCHES[self.n_switch % len(self.SWITCHES)]
            self.n_switch += 1
            if how == "drain":
                new = sw._replace(flags=sw.flags ^ model.BGS_SW_DRAINING)
            elif how == "prev":
                new = sw._replace(flags=sw.flags ^ model.BGS_SW_HAS_PREV)
            elif how == "split-prev":  # a split draining back to another split
                new = sw._replace(share=r.randrange(1, model.BGS_SHARE_ALL),
                                  prev_share=r.randrange(1, model.BGS_SHARE_ALL),
                                  flags=model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV)
            else:  # a split share, the previous one anywhere, any flags
                new = sw._replace(
                    share=r.randrange(1, model.BGS_SHARE_ALL),
                    prev_share=r.choice([0, model.BGS_SHARE_ALL,
                                         r.randrange(1, model.BGS_SHARE_ALL)]),
                    flags=r.randrange(4))
            bgs.put_switch(svc.idx, new)
            self.control_log.append(f"#{i} switch of {svc.name}: share {new.share}, "
                                    f"prev_share {new.prev_share}, flags {new.flags}")
        else:  # age some flows past their idle timeout
            keys = list(self.mdl.flows)
            fmap = bgs.map("bgs_flows")
            old = model.seen_of(monotonic_coarse_ns() - AGED_NS)
            for key in r.sample(keys, min(len(keys), 40)):
                kraw = model.pack_conn_key_raw(*key)
                raw = fmap.lookup(kraw)
                if raw is None:
                    continue
                fmap.update(kraw, model.pack_flow(model.unpack_flow(raw)._replace(seen=old)))
                self.mdl.flows[key].seen = old
            self.control_log.append(f"#{i} age {min(len(keys), 40)} flows")
        self.mdl.load_config(bgs)
        if kind in self.COMMANDS:
            self.mdl.load_counters(bgs)

    def poke(self, i: int) -> None:
        """Bad data where the data plane picks a backend, saved for the next event
        ("restore"): a modulo service's set naming a free slot or with a count past the
        bound; or, in place, a Maglev table's entries all naming a free slot, its size
        entry 0 (no_backend), or its size entry larger than the table (the positions past
        the end: bad_backend)."""
        r, bgs = self.rng, self.bgs
        how = self.POKES[self.n_poke % len(self.POKES)]
        self.n_poke += 1
        svc = next(s for s in self.svcs if s.name == ("dns" if how.startswith("set") else "tls"))
        # The color new flows go to (either, when split), most of the time.
        color = bgs.switch(svc.idx).active
        if color == model.BGS_COLOR_NONE or r.random() < 0.2:
            color = r.choice([model.BGS_BLUE, model.BGS_GREEN])
        if how.startswith("set"):
            sets = bgs.map("bgs_sets")
            idx = model.u32(bgs.switch(svc.idx).set_index(svc.idx, color))
            self.poked = ("set", idx, sets.lookup(idx))
            bad = (model.pack_set([777]) if how == "set-free"
                   else model.pack_set([0], count=model.BGS_MAX_BACKENDS + 1))
            sets.update(idx, bad)
            self.control_log.append(f"#{i} poke set of {svc.name} color {color}: {how}")
            return
        idx = bgs.switch(svc.idx).set_index(svc.idx, color)
        with bgs.table_map(idx) as inner:
            vals = inner.array_values()
            m = model.table_words(vals[0])[0]
            if how == "table-free":
                keys = range(model.BGS_TABLE_HDR, len(vals))
                new = model.u32(777)
            else:
                keys = [0]
                new = model.u32(0 if how == "table-zero" else m + 1000)
            self.poked = ("table", idx, [(model.u32(k), vals[k]) for k in keys])
            for k in keys:
                inner.update(model.u32(k), new)
        self.control_log.append(f"#{i} poke table of {svc.name} color {color}: {how}")

    def evict(self, i: int) -> None:
        """Delete up to 40 flow entries on both sides, as the LRU evicts them: the next
        client segment without SYN is re-pinned, the next reply is untouched."""
        r, mdl = self.rng, self.mdl
        fmap = self.bgs.map("bgs_flows")
        keys = r.sample(sorted(mdl.flows, key=repr), min(len(mdl.flows), 40))
        for key in keys:
            fmap.delete(model.pack_conn_key_raw(*key))
            del mdl.flows[key]
        self.control_log.append(f"#{i} evict {len(keys)} flows")

    def budget(self, i: int) -> None:
        """The insert budget of every CPU, both sides: emptied until the next such event (its
        last refill in the future, so that it does not refill: every new flow is then
        forwarded untracked), or refilled (last refill at time 0: full at the next insert)."""
        self.n_budget += 1
        if self.n_budget % 2:
            b = model.Bucket(monotonic_coarse_ns() + 3600 * 10**9, 0)
        else:
            b = model.Bucket(0, 0)
        self.bgs.put_bucket(b)
        self.mdl.bucket = refmodel.Bucket(*b)
        self.control_log.append(f"#{i} budget {'empty' if self.n_budget % 2 else 'refilled'}")

    def alternatives(self, hook: str, frame: bytes, now: int, exp: refmodel.Outcome,
                     ifx: int = 0):
        """[(quirk, outcome)] for each known data-plane bug (refmodel.QUIRKS) under which the
        model would answer this packet differently. The model's state is left as ``exp``
        left it."""
        if exp.tables_changed:
            return []
        mdl, out = self.mdl, []
        for quirk in KNOWN_BUGS:
            mdl.undo(exp)
            mdl.quirks = frozenset([quirk])
            try:
                alt = mdl.run(hook, frame, now, ifx)
            finally:
                mdl.quirks = frozenset()
            if alt.tables_changed:
                raise AssertionError(f"quirk {quirk} wrote tables: cannot take it back")
            mdl.undo(alt)
            mdl.redo(exp)
            if (alt.verdict, alt.data, alt.stats, alt.drops) != (exp.verdict, exp.data,
                                                                 exp.stats, exp.drops):
                out.append((quirk, alt))
        return out

    def check_state(self, where: str) -> None:
        """Counters and tables, model against maps."""
        bgs, mdl = self.bgs, self.mdl
        now = monotonic_coarse_ns()
        out = []
        real = bgs.stats()
        out += [f"bgs_stats {k}: model {mdl.stats.get(k, 0)}, map {real[k]}"
                for k in model.STATS if mdl.stats.get(k, 0) != real[k]]
        real = bgs.drops()
        out += [f"bgs_drops {k}: model {mdl.drops.get(k, 0)}, map {real[k]}"
                for k in model.DROPS if mdl.drops.get(k, 0) != real[k]]
        for s in sorted(mdl.svc_stats):
            real = bgs.service_stats(s)
            out += [f"service {s} {k}: model {mdl.svc_stats[s].get(k, 0)}, map {real[k]}"
                    for k in model.SERVICE_STATS if mdl.svc_stats[s].get(k, 0) != real[k]]
        for slot in sorted(mdl.be_stats):
            real = bgs.backend_stats(slot)
            out += [f"backend slot {slot} {k}: model {mdl.be_stats[slot].get(k, 0)}, map "
                    f"{real[k]}" for k in model.BACKEND_STATS
                    if mdl.be_stats[slot].get(k, 0) != real[k]]
        out += _cmp_tables("bgs_flows", mdl.dump_flows(now), refmodel.dump_real_flows(bgs, now))
        out += _cmp_tables("bgs_frags", mdl.dump_frags(), refmodel.dump_real_frags(bgs))
        if out:
            self.state_diffs.append(f"{where}:\n  " + "\n  ".join(out))
            mdl.load_dynamic(bgs)
            mdl.load_counters(bgs)

    def clear_dynamic(self) -> None:
        """Empty the flow and fragment tables (both sides), far from LRU eviction."""
        for name in ("bgs_flows", "bgs_frags"):
            m = self.bgs.map(name)
            for k in list(m.keys()):
                m.delete(k)
        self.mdl.flows.clear()
        self.mdl.frags.clear()

    def go(self) -> float:
        bgs, mdl, gen = self.bgs, self.mdl, self.gen
        t = time.monotonic()
        next_control = self.rng.randrange(150, 900)
        for i in range(self.count):
            if i == next_control:
                self.control(i)
                next_control = i + self.rng.randrange(150, 900)
            if i and i % EPOCH == 0:
                self.check_state(f"after packet {i}")
                if len(mdl.flows) > 12000 or len(mdl.frags) > 3000:
                    self.clear_dynamic()
            cls, hook, frame = gen.next()
            # Egress packets mostly come in by the interface of the flows (0: local), some by
            # the one REROUTED flows expect, some by another.
            ifx = (self.rng.choices([0, REROUTED, OTHER_IFINDEX], [80, 12, 8])[0]
                   if hook == "out" else 0)
            now = monotonic_coarse_ns()
            exp = mdl.run(hook, frame, now, ifx)
            # A packet that a known bug would treat differently is also judged by its counters
            # (the bug may change nothing else), read around the run.
            alts = self.alternatives(hook, frame, now, exp, ifx)
            if alts:
                before = Counter(bgs.stats()), Counter(bgs.drops())
            res = bgs.ingress(frame) if hook == "in" else bgs.egress(frame, ifx)
            self.classes[cls] += 1
            ok = res.retval == exp.verdict and res.data == exp.data
            if alts:
                st, dr = Counter(bgs.stats()), Counter(bgs.drops())
                st.subtract(before[0])
                dr.subtract(before[1])
                counted = (+st, +dr)
                ok = ok and counted == (Counter(exp.stats), Counter(exp.drops))
                quirk = next((q for q, alt in alts
                              if (res.retval, res.data) == (alt.verdict, alt.data)
                              and counted == (Counter(alt.stats), Counter(alt.drops))), None)
                if not ok and quirk:
                    mdl.undo(exp)
                    mdl.redo(dict(alts)[quirk])
                    self.known[quirk] += 1
                    self.outcomes[f"{hook}:known-bug:{quirk}"] += 1
                    # Show one whose output differs, when there is one.
                    if quirk not in self.known_examples or (
                            res.data != exp.data and quirk not in self.known_bytes):
                        self.known_examples[quirk] = describe(i, cls, hook, frame, exp,
                                                              res.retval, res.data, counted)
                        if res.data != exp.data:
                            self.known_bytes.add(quirk)
                    continue
            self.outcomes[f"{hook}:{exp.reason}"] += 1
            if ifx:
                self.outcomes[f"{hook}:ifindex-{'flows' if ifx == REROUTED else 'other'}"] += 1
            if not ok:
                self.diff_sigs[f"{cls} model={exp.reason}/{exp.verdict} "
                               f"program={res.retval}"] += 1
                if len(self.diffs) < MAX_REPORTED:
                    self.diffs.append(describe(i, cls, hook, frame, exp, res.retval, res.data))
                mdl.load_dynamic(bgs)
                mdl.load_counters(bgs)
                if sum(self.diff_sigs.values()) >= MAX_DIFFS:
                    break
        self.check_state("at the end")
        return time.monotonic() - t

    def report(self, elapsed: float) -> str:
        n = sum(self.classes.values())
        fam_counts = Counter(c.rsplit("/", 1)[1] for c in self.classes.elements())
        hooks = Counter(o.split(":", 1)[0] for o in self.outcomes.elements())
        mutated = sum(v for c, v in self.classes.items() if "~" in c)
        data = {
            "seed": self.seed, "packets": n, "seconds": round(elapsed, 2),
            "ingress": hooks["in"], "egress": hooks["out"], "mutated": mutated,
            "families": dict(fam_counts), "classes": dict(sorted(self.classes.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "differences": sum(self.diff_sigs.values()),
            "difference_signatures": dict(self.diff_sigs.most_common()),
            "state_differences": len(self.state_diffs), "control": self.control_log,
            "known_bugs": dict(self.known),
            "final_flows": len(self.mdl.flows), "final_frags": len(self.mdl.frags),
            "placement": dict(self.mdl.paths),
        }
        os.makedirs(os.path.dirname(REPORT), exist_ok=True)
        with open(REPORT, "w") as fh:
            json.dump(data, fh, indent=1)
        base = defaultdict(int)
        for c, v in self.classes.items():
            base[c.split("~")[0].rsplit("/", 1)[0]] += v
        lines = [f"differential: seed {self.seed}, {n} packets ({hooks['in']} ingress, "
                 f"{hooks['out']} egress; {fam_counts['v4']} IPv4-ish, {fam_counts['v6']} "
                 f"IPv6; {mutated} mutated) in {elapsed:.1f}s, "
                 f"{data['differences']} packet differences, {len(self.state_diffs)} state "
                 f"differences; tables compared every {EPOCH} packets and at the end "
                 f"({len(self.mdl.flows)} flows, {len(self.mdl.frags)} fragment records "
                 f"left)"]
        for quirk, v in self.known.items():
            lines.append(f"  KNOWN DATA-PLANE BUG {quirk}: {v} packets ({KNOWN_BUGS[quirk]});"
                         f" first one:\n" + self.known_examples[quirk])
        lines.append("  new-flow placement: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.mdl.paths.items())))
        lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in sorted(base.items())))
        lines.append("  outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                                  sorted(self.outcomes.items())))
        return "\n".join(lines)


def _seed_count() -> Tuple[int, int]:
    s = os.environ.get("FUZZ_SEED", "")
    if s.lower() == "random":
        seed = random.SystemRandom().randrange(1 << 32)
    elif s:
        seed = int(s, 0)
    else:
        seed = DEFAULT_SEED
    count = int(os.environ.get("FUZZ_COUNT", "") or DEFAULT_COUNT)
    return seed, count


@pytest.fixture
def bgs_diff():
    """A private attached state (prefix bgsd) with room for the run's flows."""
    with bgs_state(prefix=PREFIX, flows=65536) as st:
        yield st


def test_differential_model_vs_dataplane(bgs_diff):
    """Every generated packet: the program's verdict and output equal the model's; counters
    and tables equal the model's at every epoch and at the end."""
    seed, count = _seed_count()
    print(f"\ndifferential: FUZZ_SEED={seed} FUZZ_COUNT={count}", flush=True)
    run = Run(bgs_diff, seed, count)
    elapsed = run.go()
    summary = run.report(elapsed)
    print(summary, flush=True)
    problems = []
    if run.diff_sigs:
        problems.append(f"{sum(run.diff_sigs.values())} packet(s) differ; by signature:\n  "
                        + "\n  ".join(f"{v} x {k}" for k, v in run.diff_sigs.most_common()))
        problems.append("first differences:\n\n" + "\n\n".join(run.diffs))
    if run.state_diffs:
        problems.append("state differences:\n" + "\n".join(run.state_diffs[:10]))
    assert not problems, (f"reproduce with: make fuzz FUZZ_SEED={seed} FUZZ_COUNT={count}\n"
                          + summary + "\n\n" + "\n\n".join(problems))
    assert sum(run.classes.values()) == count
    # What the run must have gone through to say anything about backend selection: new flows
    # placed by a split share and by a split previous share (second chance), split by the
    # client's address (a `--split-by client` service) or by the flow's hash, through lookup
    # tables, sets (modulo services), an empty table, a table whose size entry runs past its
    # end, an empty set and a set count past the bound. Required of the default run (`make
    # test`); another seed may by chance miss a rare one, and is only told.
    missing = {"share-split", "prev-split", "split-client", "table", "table-empty",
               "table-short", "set", "set-empty", "set-over"} - set(run.mdl.paths)
    # And the rules of one entry per connection: replies superseded by a backend's SYN, or in
    # by another interface; RST misses, inserts over budget, reopens. (A UDP entry re-pinned
    # while draining, REOPEN_PREVIOUS, is too rare here to require: test_dataplane_lifecycle
    # has it.)
    seen = {t for o in run.outcomes for t in o.split(":", 1)[1].split("+")}
    unseen = {"REPLY_SUPERSEDED", "REPLY_WRONG_DEV", "RST_MISS", "UNTRACKED",
              "FLOW_REOPEN"} - seen
    if seed == DEFAULT_SEED and count >= DEFAULT_COUNT:
        assert not missing, f"the run never placed a new flow by: {sorted(missing)}"
        assert not unseen, f"the run never had an outcome: {sorted(unseen)}"
    elif missing or unseen:
        print(f"note: this run never placed a new flow by: {sorted(missing)}, never had an "
              f"outcome: {sorted(unseen)}")


# --- the model checked on its own ----------------------------------------------------------------

def _csum_ok(data: bytes) -> bool:
    return checksum(data) == 0  # scapy's Internet checksum, over data that holds its checksum


def _pseudo(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == model.BGS_AF_INET:
        return src[:4] + dst[:4] + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def bad_checksums(frame: bytes) -> List[str]:
    """The checksums of a frame that do not verify, computed from scratch (scapy's checksum):
    IPv4 header; TCP/UDP (not of a later fragment, UDP 0 skipped) and ICMP/ICMPv6 with their
    pseudo-headers; in an ICMP error's quote the IPv4 header, and the transport checksum when
    the quoted packet is whole."""
    reason, p = refmodel.parse(frame)
    if reason:
        return []
    bad = []
    f = frame
    if p.family == model.BGS_AF_INET and not _csum_ok(f[p.l3:p.l3 + (f[p.l3] & 15) * 4]):
        bad.append("IPv4 header")
    if p.frag == FRAG_LATER:
        return bad
    body = f[p.l4:p.ip_end]
    if p.proto in (model.IPPROTO_TCP, model.IPPROTO_UDP):
        if not (p.proto == model.IPPROTO_UDP and body[6:8] == b"\0\0") and not _csum_ok(
                _pseudo(p.family, p.saddr, p.daddr, p.proto, len(body)) + body):
            bad.append("TCP/UDP")
        return bad
    if p.family == model.BGS_AF_INET6:
        ok = _csum_ok(_pseudo(p.family, p.saddr, p.daddr, p.proto, len(body)) + body)
    else:
        ok = _csum_ok(body)
    if not ok:
        bad.append("ICMP")
    q = refmodel.parse_quote(f, p) if p.icmp_type in refmodel.ICMP_ERRORS[p.family] else None
    if q is None:
        return bad
    if q.family == model.BGS_AF_INET:
        if not _csum_ok(f[q.l3:q.l4]):
            bad.append("quoted IPv4 header")
        whole = struct.unpack_from("!H", f, q.l3 + 2)[0] == p.ip_end - q.l3
    else:
        whole = struct.unpack_from("!H", f, q.l3 + 4)[0] + 40 == p.ip_end - q.l3
    qbody = f[q.l4:p.ip_end]
    if whole and not (q.proto == model.IPPROTO_UDP and qbody[6:8] == b"\0\0") and not _csum_ok(
            _pseudo(q.family, q.saddr, q.daddr, q.proto, len(qbody)) + qbody):
        bad.append("quoted TCP/UDP")
    return bad


def _configure_offline(mdl: RefModel) -> List[Svc]:
    """The model's configuration tables written by hand from SERVICES (no maps, no program):
    slots in the order backends are listed, blue active, both set buffers 0, no lookup
    tables (new flows take set[h % count])."""
    svcs, slot = [], 0
    for idx, (name, vip, port, proto, blue, green) in enumerate(SERVICES):
        svc = Svc(idx, name, vip, port, proto, blue, green)
        svcs.append(svc)
        mdl.vips[(model.addr16(vip), port, svc.proto, svc.family)] = idx
        mdl.vip_addrs.add((model.addr16(vip), svc.family))
        mdl.services[idx] = (model.addr16(vip), port, svc.proto, svc.family)
        mdl.switch[idx] = model.Switch(1, share=0)  # blue, nothing to roll back to
        for color, bes in ((model.BGS_BLUE, blue), (model.BGS_GREEN, green)):
            slots = []
            for a, p in bes:
                mdl.backends[slot] = refmodel.BackendVal(
                    model.addr16(a), p, svc.family, model.BGS_BACKEND_ACTIVE, idx, color,
                    svc.proto)
                key = (model.addr16(a), p, svc.proto, svc.family)
                ref = mdl.backend_addrs.get(key, model.BackendRef(0, ()))
                mdl.backend_addrs[key] = model.BackendRef(
                    ref.refs + 1, ref.svcs + (() if idx in ref.svcs else (idx,)))
                slots.append(slot)
                slot += 1
            words = slots + [0] * (model.BGS_MAX_BACKENDS - len(slots))
            mdl.sets[(idx << 2) | (color << 1)] = (len(slots), words)
            mdl.sets[(idx << 2) | (color << 1) | 1] = (0, [0] * model.BGS_MAX_BACKENDS)
    mdl.tcp_idle_ns = mdl.udp_idle_ns = mdl.closing_ns = 3600 * 10**9
    return svcs


def test_differential_model_keeps_checksums_right():
    """The model on its own (no program): for valid scapy-built packets, every checksum of
    every frame it rewrites still verifies when computed from scratch. This guards the
    differential test against a mistake the model and the data plane would share."""
    rng = random.Random(DEFAULT_SEED ^ 0x5EED)
    mdl = RefModel()
    gen = Gen(rng, mdl, _configure_offline(mdl))
    rewritten, by_reason, fails = 0, Counter(), []
    for i in range(4000):
        cls, hook, pkt = rng.choices(gen.kind_fns, gen.kind_w)[0]()
        frame = bytes(pkt)
        if bad_checksums(frame):
            continue  # e.g. a quote cut inside its transport header: nothing to hold
        exp = mdl.run(hook, frame, monotonic_coarse_ns())
        if exp.data == frame:
            continue
        rewritten += 1
        by_reason[exp.reason] += 1
        bad = bad_checksums(exp.data)
        if bad and len(fails) < 5:
            fails.append(f"{cls}: {', '.join(bad)} wrong after {exp.reason}\n"
                         + hexdump(frame, dump=True) + "\n->\n" + hexdump(exp.data, dump=True))
    print(f"\nmodel checksum self-check: {rewritten} rewritten frames verified: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())))
    assert not fails, "\n\n".join(fails)
    assert rewritten > 1000 and {"ICMP_IN", "ICMP_OUT", "FRAG_LATER", "REPLY_NAT"} <= {
        r.split("+")[0].replace("eg:", "") for r in by_reason}
