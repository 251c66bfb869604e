"""Support of the data-plane unit tests (tests/test_dataplane_*.py): bgs_ingress (XDP) and
bgs_egress (TC) run on crafted packets with BPF_PROG_TEST_RUN, on a private state attached and
configured by the real bgswitch command.

Table-driven, in the style of Katran's test fixtures: a Case is a description, an input frame,
the expected verdict, the expected output frame, and the counters it must move. Input and
expected frames are both built with scapy from the same field values, so every checksum of an
expected frame is computed by scapy from scratch and the program's incremental updates are
checked byte for byte. The cases of one table run in order, on one state, so a table can also
be a sequence (SYN, then ACK, then FIN ...). Counter deltas are exact: a counter a case does not
name must not move (RX, resp. TX, is implied for every ingress, resp. egress, case).

Map entries (bgs_flows, bgs_frags) are checked directly where a case is about them, and
tests/lib/model.py, a Python mirror of flow_hash() and of the share split, predicts which
backend a new flow gets from the tables the command built: the color from the switch's green
share (model.share_color), then position hash % M of that color's Maglev table read from
bgs_tables (or set[hash % count] for a service without tables). IPv4 and IPv6 (services,
fragments, extension headers, ICMP errors both ways) alike.
"""

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import NoPayload, Raw
from scapy.utils import hexdump

from . import model
from .bpfsys import XDP_PASS
from .model import IPPROTO_TCP
from .unit_fixtures import BgsState, monotonic_coarse_ns


# --- addresses ------------------------------------------------------------------------------------

VIP = "10.0.0.100"
VIP_PORT = 80
UDP_VIP = "10.0.0.101"
UDP_PORT = 53
OTHER_IP = "10.0.0.200"  # not a VIP
EMPTY_VIP = "10.0.0.102"  # a service without backends, where a test needs one
CLIENT = "192.168.7.1"
CLIENT2 = "192.168.7.2"
CPORT = 40000

BLUE = [("10.0.1.1", 8080), ("10.0.1.2", 8081), ("10.0.1.3", 8082), ("10.0.1.4", 8083),
        ("10.0.1.5", 8084)]
GREEN = [("10.0.2.1", 9090), ("10.0.2.2", 9091), ("10.0.2.3", 9092)]

MAC_CLIENT = "02:00:00:00:00:01"
MAC_NODE = "02:00:00:00:00:02"

SEQ = 1000
ACK = 5000

VIP6 = "fd00::100"
UDP_VIP6 = "fd00::101"
OTHER6 = "fd00::200"  # not a VIP
CLIENT6 = "fd10::1"
CLIENT6_2 = "fd10::2"
BLUE6 = [("fd00:1::1", 8080), ("fd00:1::2", 8081)]
GREEN6 = [("fd00:2::1", 9090)]
ROUTER = "172.16.0.1"  # sends ICMP errors
ROUTER6 = "fd99::1"


# --- frames ---------------------------------------------------------------------------------------

def l2_head(vlan: Optional[int] = None, outer=Dot1Q):
    eth = Ether(src=MAC_CLIENT, dst=MAC_NODE)
    return eth / outer(vlan=vlan) if vlan is not None else eth


def ip_frame(src: str, dst: str, l4, payload: bytes = b"", vlan: Optional[int] = None,
             outer=Dot1Q, **ip_fields) -> bytes:
    """Ethernet (+ one tag) / IPv4 / l4 / payload, every length and checksum by scapy."""
    ip_fields.setdefault("id", 0x1234)
    ip_fields.setdefault("ttl", 64)
    pkt = l2_head(vlan, outer) / IP(src=src, dst=dst, **ip_fields) / l4
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def ip6_frame(src: str, dst: str, l4, payload: bytes = b"", vlan: Optional[int] = None,
              outer=Dot1Q, ext=None, **ip6_fields) -> bytes:
    """Ethernet (+ one tag) / IPv6 (+ extension headers ``ext``) / l4 / payload, every length
    and checksum by scapy."""
    ip6_fields.setdefault("hlim", 64)
    pkt = l2_head(vlan, outer) / IPv6(src=src, dst=dst, **ip6_fields)
    if ext is not None:
        pkt = pkt / ext
    pkt = pkt / l4
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def tcp(src: str, dst: str, sport: int, dport: int, flags: str = "S", payload: bytes = b"",
        seq: int = SEQ, ack: int = 0, tcp_fields: Optional[dict] = None, **kw) -> bytes:
    """A TCP frame (see ip_frame for the keyword arguments)."""
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240,
             **(tcp_fields or {}))
    if ":" in src:
        return ip6_frame(src, dst, l4, payload, **kw)
    return ip_frame(src, dst, l4, payload, **kw)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"q",
        chksum: Optional[int] = None, **kw) -> bytes:
    """A UDP frame; ``chksum=0`` sends it without a checksum."""
    l4 = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport,
                                                                   chksum=chksum)
    if ":" in src:
        return ip6_frame(src, dst, l4, payload, **kw)
    return ip_frame(src, dst, l4, payload, **kw)


# --- table runner ---------------------------------------------------------------------------------

@dataclass
class Case:
    """One row of a table: a packet, what the program must answer, and what it must count.

    ``out`` is the expected frame, None for "the input, untouched". ``stats`` and ``drops``
    are the exact counter deltas (names of model.STATS / model.DROPS); RX (ingress) or TX
    (egress) is added implicitly. ``ifindex``: the interface an egress packet came in by
    (skb->ingress_ifindex), None for the test run's default, 0.
    """

    desc: str
    pkt: bytes
    verdict: int
    out: Optional[bytes] = None
    stats: Dict[str, int] = field(default_factory=dict)
    drops: Dict[str, int] = field(default_factory=dict)
    ifindex: Optional[int] = None


def _delta(after: Dict[str, int], before: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _fields(raw: bytes) -> Dict[str, str]:
    """Every field of a frame as scapy decodes it, keyed "<n>.<Layer>.<field>"."""
    out = {}
    layer, n = Ether(raw), 0
    while layer is not None and not isinstance(layer, NoPayload):
        for f in layer.fields_desc:
            out[f"{n}.{type(layer).__name__}.{f.name}"] = f.i2repr(layer,
                                                                   layer.getfieldval(f.name))
        layer, n = layer.payload, n + 1
    return out


def frame_diff(got: bytes, want: bytes) -> str:
    """Readable difference of two frames: the fields that differ (as scapy decodes them), then
    both hexdumps."""
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                 min(len(got), len(want)))
    g, w = _fields(got), _fields(want)
    lines = [f"  {k}: got {g.get(k, '-')}, want {w.get(k, '-')}"
             for k in list(w) + [k for k in g if k not in w] if g.get(k) != w.get(k)]
    return (f"first difference at byte {first} (got {len(got)} bytes, want {len(want)})\n"
            + "\n".join(lines)
            + f"\n  got:\n{hexdump(got, dump=True)}\n  want:\n{hexdump(want, dump=True)}")


def run_case(bgs: BgsState, hook: str, case: Case) -> List[str]:
    """Run one case; returns its failures (empty when it passed)."""
    implied = "RX" if hook == "ingress" else "TX"
    want_stats = dict(case.stats)
    want_stats[implied] = want_stats.get(implied, 0) + 1
    want_stats = {k: v for k, v in want_stats.items() if v}
    for name in list(want_stats) + list(case.drops):
        assert name in model.STAT or name in model.DROP, f"unknown counter {name}"

    stats0, drops0 = bgs.stats(), bgs.drops()
    assert case.ifindex is None or hook == "egress", f"{case.desc}: ifindex of an ingress case"
    res = bgs.ingress(case.pkt) if hook == "ingress" else bgs.egress(case.pkt, case.ifindex)
    got_stats = _delta(bgs.stats(), stats0)
    got_drops = _delta(bgs.drops(), drops0)

    fails = []
    if res.retval != case.verdict:
        fails.append(f"verdict {res.retval}, want {case.verdict}")
    want = case.pkt if case.out is None else case.out
    if res.data != want:
        what = "packet changed, want untouched" if case.out is None else "wrong output"
        fails.append(f"{what}: {frame_diff(res.data, want)}")
    if got_stats != want_stats:
        fails.append(f"stats moved by {got_stats}, want {want_stats}")
    if got_drops != case.drops:
        fails.append(f"drops moved by {got_drops}, want {case.drops}")
    return [f"[{hook}] {case.desc}: {f}" for f in fails]


def run_table(bgs: BgsState, hook: str, cases: List[Case]) -> None:
    """Run the cases in order; fail with every failing case listed."""
    fails = []
    for case in cases:
        fails += run_case(bgs, hook, case)
    if fails:
        raise AssertionError(f"{len(fails)} failure(s) in {len(cases)} case(s):\n"
                             + "\n\n".join(fails))


# --- common set-ups -------------------------------------------------------------------------------

def web(bgs: BgsState, blue: int = 1, green: int = 1) -> Dict[str, List[int]]:
    """Service "web" (TCP VIP:VIP_PORT) with the first ``blue`` and ``green`` backends;
    returns their slots by color, in the order added."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    return {"blue": [bgs.add_backend("web", "blue", a, p) for a, p in BLUE[:blue]],
            "green": [bgs.add_backend("web", "green", a, p) for a, p in GREEN[:green]]}


def dns(bgs: BgsState, blue: int = 1, green: int = 1) -> Dict[str, List[int]]:
    """Service "dns" (UDP UDP_VIP:UDP_PORT) with backends on port 5353."""
    bgs.add_service("dns", UDP_VIP, UDP_PORT, "udp")
    return {"blue": [bgs.add_backend("dns", "blue", a, 5353) for a, _ in BLUE[:blue]],
            "green": [bgs.add_backend("dns", "green", a, 5353) for a, _ in GREEN[:green]]}


def web6(bgs: BgsState, blue: int = 1, green: int = 1) -> Dict[str, List[int]]:
    """Service "web6" (TCP [VIP6]:VIP_PORT) with IPv6 backends."""
    bgs.add_service("web6", VIP6, VIP_PORT, "tcp")
    return {"blue": [bgs.add_backend("web6", "blue", a, p) for a, p in BLUE6[:blue]],
            "green": [bgs.add_backend("web6", "green", a, p) for a, p in GREEN6[:green]]}


def dns6(bgs: BgsState, blue: int = 1, green: int = 1) -> Dict[str, List[int]]:
    """Service "dns6" (UDP [UDP_VIP6]:UDP_PORT) with IPv6 backends on port 5353."""
    bgs.add_service("dns6", UDP_VIP6, UDP_PORT, "udp")
    return {"blue": [bgs.add_backend("dns6", "blue", a, 5353) for a, _ in BLUE6[:blue]],
            "green": [bgs.add_backend("dns6", "green", a, 5353) for a, _ in GREEN6[:green]]}


# Every rewritten client packet then tries the XDP fast path; the tests run the programs in a
# namespace with no route (unit_fixtures), where it always falls back to the stack: XDP_PASS,
# nothing more changed, FWD_STACK counted.
FWD = {"FWD_STACK": 1}
NEW_SYN = {"VIP": 1, "SYN_MISS": 1, "FLOW_NEW": 1, **FWD}
HIT = {"VIP": 1, "FLOW_HIT": 1, **FWD}
NEW_UDP = {"VIP": 1, "FLOW_NEW": 1, **FWD}
REOPEN = {"VIP": 1, "FLOW_REOPEN": 1, "FLOW_NEW": 1, **FWD}
LATER = {"FRAG_LATER": 1, **FWD}
PASSED = {"FRAG_PASS": 1}  # a later fragment of a datagram to no service: untouched
# A TCP segment without SYN that misses the table: counted, then re-pinned (a new entry toward
# the color the previous share gives it while the last change drains, else the one the share
# gives it), or dropped when that creation fails.
NOSYN = {"VIP": 1, "NOSYN_MISS": 1, "SECOND_CHANCE": 1}
REPIN = {**NOSYN, "FLOW_NEW": 1, **FWD}
REPIN_RST = {**NOSYN, "RST_MISS": 1, **FWD}  # forwarded where it belongs, no entry
NAT = {"REPLY_NAT": 1}


def flow_h(client: str, vip: str, cport: int, vport: int, proto: int = IPPROTO_TCP) -> int:
    """model.flow_hash of a client-to-VIP 5-tuple."""
    return model.flow_hash(client, vip, cport, vport, proto)


class Chooser:
    """Where new flows of a service go now, from its switch word, tables and sets read once
    (the model's choice: model.share_color, then model.pick_slot)."""

    def __init__(self, bgs: BgsState, svc: int):
        self.share = bgs.switch(svc).share
        self.tables = {c: bgs.table(svc, c) for c in (model.BGS_BLUE, model.BGS_GREEN)}
        self.sets = {c: bgs.current_set(svc, c) for c in (model.BGS_BLUE, model.BGS_GREEN)}

    def slot(self, client: str, vip: str, cport: int, vport: int, proto: int = IPPROTO_TCP,
             color: Optional[int] = None) -> tuple:
        """(color, slot) of a new flow of this 5-tuple: the color the share gives its hash
        (unless ``color`` is named), then the slot of that color's table (its set without
        one). Fails when the choice is a drop."""
        h = flow_h(client, vip, cport, vport, proto)
        if color is None:
            color = model.share_color(h, self.share)
        slot, why = model.pick_slot(self.tables[color], self.sets[color], h)
        assert slot is not None, f"{client}:{cport}: a new flow would be dropped ({why})"
        return color, slot


def new_flow_slot(bgs: BgsState, svc: int, client: str, vip: str, cport: int, vport: int,
                  proto: int = IPPROTO_TCP, color: Optional[int] = None) -> tuple:
    """Chooser(bgs, svc).slot(...) for one 5-tuple."""
    return Chooser(bgs, svc).slot(client, vip, cport, vport, proto, color)


def ones_add(a: int, b: int) -> int:
    """16-bit one's complement addition."""
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


# --- frames and set-ups that several test files use ------------------------------------------

def v6_chain(n: int):
    """n IPv6 extension headers: hop-by-hop first, then destination options and routing
    (segments left 0) in turn, one of them longer than 8 bytes."""
    chain = IPv6ExtHdrHopByHop()
    for i in range(1, n):
        h = IPv6ExtHdrRouting(segleft=0) if i % 2 else IPv6ExtHdrDestOpt(
            options=[PadN(optdata=b"\0" * 10)])
        chain = chain / h
    return chain


def udp_payload_for_ffff(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 2-byte payload that makes the UDP checksum of (src, dst, sport, dport) compute to 0,
    i.e. be sent as 0xffff."""
    c0 = UDP(bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"\0\0"))[20:])
    word = c0.chksum  # the payload word that brings the one's complement sum to 0xffff
    payload = struct.pack("!H", word)
    check = IP(bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)))
    assert check[UDP].chksum == 0xFFFF, "test set-up: payload search failed"
    return payload


def open_flow(bgs: BgsState, sport: int = CPORT, be=BLUE[0]) -> None:
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, sport, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be[0], sport, be[1]), stats=NEW_SYN)])


def age_flow(bgs: BgsState, key: tuple, proto: int, idle_ns: int) -> None:
    """Make a flow look idle for longer than ``idle_ns``: its client last seen idle_ns + 1 s
    ago (bgs_flow.seen, in 2^BGS_SEEN_SHIFT ns units)."""
    f = bgs.flow(*key, proto)
    bgs.put_flow(*key, proto, f._replace(
        seen=model.seen_of(monotonic_coarse_ns() - idle_ns - 10**9)))


def quoted_reply(src, dst, sport, dport, proto=IPPROTO_TCP, payload=b"0123456789abcdef", **ipf):
    """The packet an ICMP error quotes, whole (scapy computes its checksums)."""
    ip = (IPv6(src=src, dst=dst, hlim=33, **ipf) if ":" in src
          else IP(src=src, dst=dst, id=0x5151, ttl=33, **ipf))
    l4 = (TCP(sport=sport, dport=dport, flags="PA", seq=ACK, ack=SEQ) if proto == IPPROTO_TCP
          else UDP(sport=sport, dport=dport))
    return bytes(ip / l4 / Raw(payload))


def icmp_error(src, dst, quote: bytes, kind: str = "frag", vlan=None) -> bytes:
    """An ICMP error from ``src`` to ``dst`` quoting ``quote``: IPv4 destination unreachable,
    fragmentation needed (kind "frag"), port unreachable ("port"), time exceeded ("ttl");
    IPv6 packet too big ("frag"), destination unreachable ("port"), time exceeded ("ttl").
    Every checksum (outer IPv4, ICMP / ICMPv6 with its pseudo-header) by scapy."""
    if ":" in src:
        icmp = {"frag": ICMPv6PacketTooBig(mtu=1280), "port": ICMPv6DestUnreach(code=4),
                "ttl": ICMPv6TimeExceeded()}[kind]
        return bytes(l2_head(vlan) / IPv6(src=src, dst=dst, hlim=60) / icmp / Raw(quote))
    icmp = {"frag": ICMP(type=3, code=4, nexthopmtu=1400), "port": ICMP(type=3, code=3),
            "ttl": ICMP(type=11, code=0)}[kind]
    return bytes(l2_head(vlan) / IP(src=src, dst=dst, id=0x0EEE, ttl=60) / icmp / Raw(quote))


def with_ip_len(frame: bytes, l3: int, length: int) -> bytes:
    """The frame with its IPv4 total length (IPv6 payload length) set to ``length``, the IPv4
    header checksum recomputed: a well-formed header whose length leaves the rest of the
    frame as Ethernet padding."""
    b = bytearray(frame)
    if b[l3] >> 4 == 4:
        struct.pack_into("!H", b, l3 + 2, length)
        struct.pack_into("!H", b, l3 + 10, 0)
        hl = (b[l3] & 15) * 4
        s = sum(struct.unpack(f"!{hl // 2}H", bytes(b[l3:l3 + hl])))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into("!H", b, l3 + 10, ~s & 0xFFFF)
    else:
        struct.pack_into("!H", b, l3 + 4, length)
    return bytes(b)
