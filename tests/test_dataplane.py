"""Data-plane unit tests: bgs_ingress (XDP) and bgs_egress (TC) run on crafted packets with
BPF_PROG_TEST_RUN, on a private state attached and configured by the real bgswitch command.

Table-driven, in the style of Katran's test fixtures: a Case is a description, an input frame,
the expected verdict, the expected output frame, and the counters it must move. Input and
expected frames are both built with scapy from the same field values, so every checksum of an
expected frame is computed by scapy from scratch and the program's incremental updates are
checked byte for byte. The cases of one table run in order, on one state, so a table can also
be a sequence (SYN, then ACK, then FIN ...). Counter deltas are exact: a counter a case does not
name must not move (RX, resp. TX, is implied for every ingress, resp. egress, case).

Map entries (bgs_flows, bgs_frags) are checked directly where a case is about
them, and tests/model.py, a Python mirror of flow_hash() and of the share split, predicts which
backend a new flow gets from the tables the command built: the color from the switch's green
share (model.share_color), then position hash % M of that color's Maglev table read from
bgs_tables (or set[hash % count] for a service without tables). IPv4 and IPv6 (services,
fragments, extension headers, ICMP errors both ways) alike.
"""

import os
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                                ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import NoPayload, Raw
from scapy.utils import hexdump

import bpfsys
import model
from bpfsys import (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_PERCPU_ARRAY,
                    TC_ACT_OK, XDP_DROP, XDP_PASS)
from model import IPPROTO_TCP, IPPROTO_UDP
from unit_fixtures import MAP_NAMES, BgsState, monotonic_coarse_ns

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

def _l2(vlan: Optional[int] = None, outer=Dot1Q):
    eth = Ether(src=MAC_CLIENT, dst=MAC_NODE)
    return eth / outer(vlan=vlan) if vlan is not None else eth


def ip_frame(src: str, dst: str, l4, payload: bytes = b"", vlan: Optional[int] = None,
             outer=Dot1Q, **ip_fields) -> bytes:
    """Ethernet (+ one tag) / IPv4 / l4 / payload, every length and checksum by scapy."""
    ip_fields.setdefault("id", 0x1234)
    ip_fields.setdefault("ttl", 64)
    pkt = _l2(vlan, outer) / IP(src=src, dst=dst, **ip_fields) / l4
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def ip6_frame(src: str, dst: str, l4, payload: bytes = b"", vlan: Optional[int] = None,
              outer=Dot1Q, ext=None, **ip6_fields) -> bytes:
    """Ethernet (+ one tag) / IPv6 (+ extension headers ``ext``) / l4 / payload, every length
    and checksum by scapy."""
    ip6_fields.setdefault("hlim", 64)
    pkt = _l2(vlan, outer) / IPv6(src=src, dst=dst, **ip6_fields)
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


# === state as the command leaves it ===============================================================

def test_state_maps_match_model(bgs):
    """Every pinned map has the key and value sizes of include/bgswitch.h (layout 4) as
    model.py reads them, the pin root holds exactly unit_fixtures.MAP_NAMES, attach --flows
    sized the flow table, bgs_nexthops holds a next hop per slot and CPU, bgs_tables is a map
    of maps with a key per service, color and buffer, and bgs_config holds the defaults: the
    insert limit the flow table's size every BGS_NEW_FLOW_TURNOVER seconds with a burst of an
    eighth of it, for the node, and each CPU's part of both, rounded up."""
    want = {
        "bgs_vips": ("bgs_vip_key", "bgs_vip"), "bgs_switch": (4, "bgs_switch"),
        "bgs_services": (4, "bgs_service"),
        "bgs_sets": (4, "bgs_set"), "bgs_backends": (4, "bgs_backend"),
        "bgs_backend_addrs": ("bgs_backend_addr", "bgs_backend_ref"),
        "bgs_flows": ("bgs_conn_key", "bgs_flow"), "bgs_nexthops": (4, "bgs_nexthop"),
        "bgs_config": (4, "bgs_config"),
        "bgs_stats": (4, 8), "bgs_drops": (4, 8), "bgs_backend_stats": (4, "bgs_backend_stats"),
        "bgs_vip_addrs": ("bgs_vip_addr", 4), "bgs_frags": ("bgs_frag_key", "bgs_frag"),
        "bgs_service_stats": (4, "bgs_service_stats"),
        "bgs_insert_budget": (4, "bgs_bucket"), "bgs_tx_ports": (4, 4),
        "bgs_tables": (4, 4),  # a map of maps: user space reads the inner map's id
        "bgs_vip_filter": (4, 8),
        # local clients (bpf/sock.bpf.h): netns cookies, per-slot counts, socket storage
        "bgs_local_netns": (8, 4), "bgs_local_counts": (4, 16), "bgs_socks": (4, 48),
    }
    for name, (k, v) in want.items():
        info = bgs.map(name).info
        ks = model.SIZES[k] if isinstance(k, str) else k
        vs = model.SIZES[v] if isinstance(v, str) else v
        assert (info.key_size, info.value_size) == (ks, vs), name
    pinned = {n for n in os.listdir(bgs.pin_root) if n != "progs"}
    assert pinned == set(MAP_NAMES)
    assert bgs.map("bgs_stats").info.max_entries == len(model.STATS)
    assert bgs.map("bgs_drops").info.max_entries == len(model.DROPS)
    assert bgs.map("bgs_flows").info.max_entries == 4096
    nexthops = bgs.map("bgs_nexthops").info
    assert (nexthops.type, nexthops.max_entries) == (BPF_MAP_TYPE_PERCPU_ARRAY,
                                                     model.BGS_MAX_SLOTS)
    assert bgs.map("bgs_frags").info.max_entries == model.BGS_FRAG_ENTRIES
    budget = bgs.map("bgs_insert_budget")
    assert (budget.info.type, budget.info.max_entries) == (BPF_MAP_TYPE_PERCPU_ARRAY, 1)
    rate, burst = 4096 // model.BGS_NEW_FLOW_TURNOVER, 4096 // model.BGS_NEW_FLOW_BURST_DIV
    ncpus = bpfsys.possible_cpus()
    assert bgs.config() == model.Config(
        layout_version=model.BGS_LAYOUT_VERSION, flow_entries=4096, tcp_idle_ns=900 * 10**9,
        udp_idle_ns=30 * 10**9, closing_ns=10 * 10**9,
        new_flow_rate=model.cpu_part(rate, ncpus), new_flow_burst=model.cpu_part(burst, ncpus),
        collected=0, node_flow_rate=rate, node_flow_burst=burst)
    tables = bgs.map("bgs_tables").info
    assert (tables.type, tables.max_entries) == (BPF_MAP_TYPE_ARRAY_OF_MAPS,
                                                  4 * bgs.map("bgs_switch").info.max_entries)
    assert model.BGS_LAYOUT_VERSION == 4


def test_state_backend_slots_follow_add_order(bgs):
    """Slots are handed out from 0 in the order backends are added, the service id from 0,
    and the active set lists the color's slots in that order; the switch sends every new
    flow to blue (share 0) with nothing to roll back to, and each color's current buffer has
    a lookup table of the default size (BGS_TABLE_SIZE, in entry 0) naming only that color's
    slots, every one of them (weight 1 each)."""
    slots = web(bgs, blue=3, green=2)
    assert bgs.services["web"] == 0
    assert slots == {"blue": [0, 1, 2], "green": [3, 4]}
    assert bgs.active_set(0, model.BGS_BLUE) == [0, 1, 2]
    assert bgs.active_set(0, model.BGS_GREEN) == [3, 4]
    sw = bgs.switch(0)
    assert (sw.share, sw.flags) == (0, 0)
    assert (sw.active, sw.previous) == (model.BGS_BLUE, model.BGS_COLOR_NONE)
    assert bgs.service(0).table_size == model.BGS_TABLE_SIZE
    assert bgs.service(0).lb == model.BGS_LB_MAGLEV
    for color, want in ((model.BGS_BLUE, slots["blue"]), (model.BGS_GREEN, slots["green"])):
        with bgs.table_map(sw.set_index(0, color)) as inner:
            assert (inner.info.type, inner.info.max_entries) == (
                BPF_MAP_TYPE_ARRAY, model.BGS_TABLE_HDR + model.BGS_TABLE_SIZE)
            table = model.unpack_table(inner.array_raw())
        assert len(table) == model.BGS_TABLE_SIZE and set(table) == set(want), color


# === ingress: packets that are not ours ===========================================================

def test_ingress_non_vip_untouched(bgs):
    """IPv4 TCP/UDP/ICMP that misses bgs_vips passes untouched, counted NOT_VIP."""
    web(bgs)
    dns(bgs)
    pass_ = {"NOT_VIP": 1}
    run_table(bgs, "ingress", [
        Case("TCP SYN to a non-VIP address", tcp(CLIENT, OTHER_IP, CPORT, VIP_PORT), XDP_PASS,
             stats=pass_),
        Case("TCP SYN to the VIP, other port", tcp(CLIENT, VIP, CPORT, 81), XDP_PASS,
             stats=pass_),
        Case("UDP to the TCP VIP's port", udp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             stats=pass_),
        Case("TCP to the UDP VIP's port", tcp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             stats=pass_),
        Case("TCP from the VIP (source, not destination)", tcp(VIP, CLIENT, VIP_PORT, CPORT,
                                                                "SA"), XDP_PASS, stats=pass_),
        Case("ICMP echo to the VIP", bytes(_l2() / IP(src=CLIENT, dst=VIP) / ICMP()),
             XDP_PASS, stats=pass_),
        Case("GRE (proto 47) to the VIP", ip_frame(CLIENT, VIP, Raw(b"\x00" * 8), proto=47),
             XDP_PASS, stats=pass_),
        Case("TCP ACK to a non-VIP address", tcp(CLIENT, OTHER_IP, CPORT, 22, "A"), XDP_PASS,
             stats=pass_),
    ])
    assert bgs.count("bgs_flows") == 0


def test_ingress_not_ip_untouched(bgs):
    """Frames that carry neither IPv4 nor IPv6 behind at most two VLAN tags (ARP, other
    EtherTypes, a third tag) pass untouched, counted NOT_IP."""
    web(bgs)
    not_ip = {"NOT_IP": 1}
    syn = IP(src=CLIENT, dst=VIP) / TCP(sport=CPORT, dport=VIP_PORT, flags="S")
    run_table(bgs, "ingress", [
        Case("ARP who-has the VIP", bytes(Ether(src=MAC_CLIENT, dst="ff:ff:ff:ff:ff:ff")
                                          / ARP(psrc=CLIENT, pdst=VIP)), XDP_PASS,
             stats=not_ip),
        Case("IPX EtherType", bytes(_l2())[:12] + b"\x81\x37" + bytes(46), XDP_PASS,
             stats=not_ip),
        Case("tagged ARP", bytes(_l2(vlan=3) / ARP(psrc=CLIENT, pdst=VIP)), XDP_PASS,
             stats=not_ip),
        Case("three tags, then IPv4 to the VIP",
             bytes(_l2() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / Dot1Q(vlan=11) / syn),
             XDP_PASS, stats=not_ip),
        Case("0x9100 (pre-standard QinQ) tag: not a tag we parse",
             bytes(_l2())[:12] + b"\x91\x00\x00\x05\x08\x00" + bytes(syn), XDP_PASS,
             stats=not_ip),
    ])


def _cut(frame: bytes, n: int) -> bytes:
    return frame[:n]


def test_ingress_parse_reasons_named(bgs):
    """Every parse failure passes untouched and is counted under its own reason: PARSE_L2
    (truncated tag), PARSE_IP_HDR (truncated IPv4/IPv6 header, bad version, IHL < 5, IHL past
    the frame, truncated extension header), PARSE_IP_LEN (length past the frame, below the
    header, IPv6 payload length 0, not covering the transport header), PARSE_L4 (truncated
    TCP/UDP/ICMP header, doff < 5 or past the frame, UDP length < 8), EXTHDR_LIMIT. No flow is
    created."""
    web(bgs)
    dns(bgs)
    web6(bgs)
    dns6(bgs)
    syn = tcp(CLIENT, VIP, CPORT, VIP_PORT)
    syn6 = tcp(CLIENT6, VIP6, CPORT, VIP_PORT)

    def r(name):
        return {name: 1}

    def v6raw(plen: int, nh: int, body: bytes) -> bytes:
        return bytes(_l2() / IPv6(src=CLIENT6, dst=VIP6, plen=plen, nh=nh) / Raw(body))

    run_table(bgs, "ingress", [
        # Ethernet and VLAN
        Case("802.1Q type, tag cut at 2 bytes", bytes(_l2(vlan=7))[:16], XDP_PASS,
             stats=r("PARSE_L2")),
        Case("802.1ad then 802.1Q, inner tag cut", bytes(_l2() / Dot1AD(vlan=1)
                                                          / Dot1Q(vlan=2))[:20], XDP_PASS,
             stats=r("PARSE_L2")),
        # IP headers
        Case("Ethernet header only, type IPv4", _cut(syn, 14), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("IPv4 header cut at 19 bytes", _cut(syn, 14 + 19), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("IPv4 ihl=4", tcp(CLIENT, VIP, CPORT, VIP_PORT, ihl=4), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("IPv4 ihl=0", tcp(CLIENT, VIP, CPORT, VIP_PORT, ihl=0), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("IPv4 ihl=15 beyond the frame", tcp(CLIENT, VIP, CPORT, VIP_PORT, ihl=15),
             XDP_PASS, stats=r("PARSE_IP_HDR")),
        Case("version 6 in an IPv4 frame", tcp(CLIENT, VIP, CPORT, VIP_PORT, version=6),
             XDP_PASS, stats=r("PARSE_IP_HDR")),
        Case("IPv6 header cut at 39 bytes", _cut(syn6, 14 + 39), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("version 4 in an IPv6 frame", syn6[:14] + bytes([0x40]) + syn6[15:], XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        Case("hop-by-hop header saying 48 bytes in a frame of 8",
             v6raw(8, 0, bytes([6, 5]) + bytes(6)), XDP_PASS, stats=r("PARSE_IP_HDR")),
        Case("fragment header cut at 4 bytes", v6raw(4, 44, bytes([6, 0, 0, 1])), XDP_PASS,
             stats=r("PARSE_IP_HDR")),
        # IP lengths
        Case("IPv4 total length 19 < header", tcp(CLIENT, VIP, CPORT, VIP_PORT, len=19),
             XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv4 total length past the frame", tcp(CLIENT, VIP, CPORT, VIP_PORT, len=41),
             XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv4 total length 20: the TCP header is padding",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, len=20), XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv4 total length 30: half the TCP header is padding",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, len=30), XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv4 total length 24: UDP header cut by the length",
             udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, len=24), XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv6 payload length 0", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, plen=0), XDP_PASS,
             stats=r("PARSE_IP_LEN")),
        Case("IPv6 payload length past the frame", tcp(CLIENT6, VIP6, CPORT, VIP_PORT,
                                                       plen=21), XDP_PASS,
             stats=r("PARSE_IP_LEN")),
        Case("IPv6 payload length 10: TCP header is padding",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, plen=10), XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("IPv6 payload length 8 covers only the hop-by-hop header",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, plen=8, ext=IPv6ExtHdrHopByHop()), XDP_PASS,
             stats=r("PARSE_IP_LEN")),
        # transport headers
        Case("TCP header cut at 19 bytes (IP length 39)",
             _cut(tcp(CLIENT, VIP, CPORT, VIP_PORT, len=39), 14 + 39), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("TCP header absent", ip_frame(CLIENT, VIP, Raw(b""), proto=6), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("TCP doff=4", tcp(CLIENT, VIP, CPORT, VIP_PORT, tcp_fields={"dataofs": 4}),
             XDP_PASS, stats=r("PARSE_L4")),
        Case("TCP doff=15, no options present",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, tcp_fields={"dataofs": 15}), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("tagged, TCP cut at 10 bytes", _cut(tcp(CLIENT, VIP, CPORT, VIP_PORT, vlan=3,
                                                     len=30), 18 + 20 + 10), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("UDP header cut at 7 bytes (IP length 27)",
             _cut(udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, len=27), 14 + 27), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("TCP header cut by the frame, IP length still 40", _cut(syn, 14 + 20 + 19),
             XDP_PASS, stats=r("PARSE_IP_LEN")),
        Case("UDP length 7", bytes(_l2() / IP(src=CLIENT, dst=UDP_VIP)
                                   / UDP(sport=CPORT, dport=UDP_PORT, len=7) / Raw(b"xx")),
             XDP_PASS, stats=r("PARSE_L4")),
        Case("IPv6 TCP doff=4", tcp(CLIENT6, VIP6, CPORT, VIP_PORT,
                                    tcp_fields={"dataofs": 4}), XDP_PASS, stats=r("PARSE_L4")),
        Case("IPv6 UDP length 0", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT)[:14 + 40 + 4]
             + b"\0\0" + udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT)[14 + 40 + 6:], XDP_PASS,
             stats=r("PARSE_L4")),
        Case("ICMP header cut at 4 bytes", bytes(_l2() / IP(src=CLIENT, dst=VIP, proto=1)
                                                 / Raw(b"\x08\0\0\0")), XDP_PASS,
             stats=r("PARSE_L4")),
        Case("ICMPv6 header cut at 4 bytes", v6raw(4, 58, b"\x80\0\0\0"), XDP_PASS,
             stats=r("PARSE_L4")),
    ])
    assert bgs.count("bgs_flows") == 0


def test_ingress_zero_port_untouched(bgs):
    """A TCP or UDP packet to a VIP with source or destination port 0 passes untouched,
    counted ZERO_PORT, IPv4 and IPv6; nothing is created."""
    web(bgs)
    dns(bgs)
    web6(bgs)
    zp = {"ZERO_PORT": 1}
    run_table(bgs, "ingress", [
        Case("TCP SYN from port 0", tcp(CLIENT, VIP, 0, VIP_PORT), XDP_PASS, stats=zp),
        Case("TCP SYN to port 0 of the VIP", tcp(CLIENT, VIP, CPORT, 0), XDP_PASS, stats=zp),
        Case("UDP from port 0", udp(CLIENT, UDP_VIP, 0, UDP_PORT), XDP_PASS, stats=zp),
        Case("IPv6 TCP SYN from port 0", tcp(CLIENT6, VIP6, 0, VIP_PORT), XDP_PASS, stats=zp),
        Case("first fragment from port 0", ip_frame(CLIENT, VIP, TCP(sport=0, dport=VIP_PORT),
                                                    flags="MF"), XDP_PASS, stats=zp),
    ])
    assert bgs.count("bgs_flows") == 0 and bgs.count("bgs_frags") == 0


def _v6_chain(n: int):
    """n IPv6 extension headers: hop-by-hop first, then destination options and routing
    (segments left 0) in turn, one of them longer than 8 bytes."""
    chain = IPv6ExtHdrHopByHop()
    for i in range(1, n):
        h = IPv6ExtHdrRouting(segleft=0) if i % 2 else IPv6ExtHdrDestOpt(
            options=[PadN(optdata=b"\0" * 10)])
        chain = chain / h
    return chain


def test_ingress_ipv6_extension_headers(bgs):
    """IPv6 extension headers are walked up to BGS_MAX_EXTHDRS (6): behind 1 to 6 of them a
    VIP packet is rewritten (the headers kept as they are), behind 7 it passes untouched,
    counted EXTHDR_LIMIT."""
    web6(bgs)
    b, bp = BLUE6[0]
    cases = []
    for n in range(1, model.BGS_MAX_EXTHDRS + 1):
        sport = CPORT + n
        cases.append(Case(f"{n} extension header(s)",
                          tcp(CLIENT6, VIP6, sport, VIP_PORT, payload=b"x" * n, ext=_v6_chain(n)),
                          XDP_PASS, out=tcp(CLIENT6, b, sport, bp, payload=b"x" * n,
                                            ext=_v6_chain(n)), stats=NEW_SYN))
    cases += [
        Case("7 extension headers", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, ext=_v6_chain(7)),
             XDP_PASS, stats={"EXTHDR_LIMIT": 1}),
        Case("8 headers, the last a fragment header",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, ext=_v6_chain(7) / IPv6ExtHdrFragment()),
             XDP_PASS, stats={"EXTHDR_LIMIT": 1}),
        Case("6 headers, a fragment header among them (atomic): rewritten",
             tcp(CLIENT6, VIP6, CPORT + 50, VIP_PORT,
                 ext=_v6_chain(5) / IPv6ExtHdrFragment(m=0, offset=0, id=9)), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT + 50, bp,
                     ext=_v6_chain(5) / IPv6ExtHdrFragment(m=0, offset=0, id=9)),
             stats=NEW_SYN),
    ]
    run_table(bgs, "ingress", cases)
    assert bgs.count("bgs_flows") == model.BGS_MAX_EXTHDRS + 1


# === fragments ===================================================================================

FRAG_ID = 0x4242
FRAG_ID6 = 0x1234ABCD


def frag_id4(ident: int) -> bytes:
    """An IPv4 identification as bgs_frag_key.id holds it (see model.pack_frag_key_raw)."""
    return struct.pack("!H", ident)


def frag_id6(ident: int) -> bytes:
    return struct.pack("!I", ident)


def test_ingress_fragments_v4(bgs):
    """IPv4 fragments to a VIP: the first (MF, offset 0) is steered by its ports like any
    packet and recorded (FRAG_FIRST), a re-pinned non-SYN one too; later ones follow the
    record, destination address and header checksum only (FRAG_LATER); a later fragment to a
    VIP address with no record (its first one dropped, or never seen) is dropped (FRAG_MISS),
    one to another address passes (NOT_VIP). A first fragment to a VIP address that no service
    steers (another port or protocol, an echo request) passes and leaves a pass marker, so its
    later fragments pass untouched (FRAG_PASS); an ICMP error leaves none. DF alone is no
    fragment."""
    slots = web(bgs)
    dns(bgs)
    bgs.add_service("empty", EMPTY_VIP, VIP_PORT, "tcp")  # no backend: new flows dropped
    be, bport = BLUE[0]
    ube = BLUE[0][0]
    first = {"FRAG_FIRST": 1}
    run_table(bgs, "ingress", [
        Case("first fragment with a TCP SYN",
             ip_frame(CLIENT, VIP, TCP(sport=CPORT, dport=VIP_PORT, flags="S", seq=SEQ),
                      b"x" * 16, flags="MF", id=FRAG_ID), XDP_PASS,
             out=ip_frame(CLIENT, be, TCP(sport=CPORT, dport=bport, flags="S", seq=SEQ),
                          b"x" * 16, flags="MF", id=FRAG_ID), stats={**NEW_SYN, **first}),
        Case("middle fragment (MF, offset 8*3)",
             ip_frame(CLIENT, VIP, Raw(b"y" * 24), proto=6, flags="MF", frag=3, id=FRAG_ID),
             XDP_PASS, out=ip_frame(CLIENT, be, Raw(b"y" * 24), proto=6, flags="MF", frag=3,
                                    id=FRAG_ID), stats=LATER),
        Case("last fragment (offset 8*6), tagged",
             ip_frame(CLIENT, VIP, Raw(b"z" * 5), proto=6, frag=6, id=FRAG_ID, vlan=12),
             XDP_PASS, out=ip_frame(CLIENT, be, Raw(b"z" * 5), proto=6, frag=6, id=FRAG_ID,
                                    vlan=12), stats=LATER),
        Case("later fragment, other id, to the VIP address: dropped",
             ip_frame(CLIENT, VIP, Raw(b"w" * 8), proto=6, frag=3, id=FRAG_ID + 1), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("later fragment, same id, other protocol (UDP): no record, dropped",
             ip_frame(CLIENT, VIP, Raw(b"w" * 8), proto=17, frag=3, id=FRAG_ID), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("later fragment, same id, other client: dropped",
             ip_frame(CLIENT2, VIP, Raw(b"w" * 8), proto=6, frag=3, id=FRAG_ID), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("later fragment to a VIP address, first fragment never seen (no ports in it)",
             ip_frame(CLIENT, UDP_VIP, Raw(b"v" * 8), proto=6, frag=1, id=77), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("first fragment of UDP to the VIP address, a port of no service: pass marker",
             ip_frame(CLIENT, VIP, UDP(sport=CPORT, dport=9999), b"u" * 16, flags="MF",
                      id=FRAG_ID + 20), XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... its middle fragment passes untouched",
             ip_frame(CLIENT, VIP, Raw(b"u" * 16), proto=17, flags="MF", frag=3,
                      id=FRAG_ID + 20), XDP_PASS, stats=PASSED),
        Case("... and its last one, tagged",
             ip_frame(CLIENT, VIP, Raw(b"u" * 5), proto=17, frag=5, id=FRAG_ID + 20, vlan=7),
             XDP_PASS, stats=PASSED),
        Case("first fragment of TCP to the UDP service's address: pass marker",
             ip_frame(CLIENT, UDP_VIP, TCP(sport=CPORT, dport=UDP_PORT, flags="S"), b"t" * 8,
                      flags="MF", id=FRAG_ID + 21), XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... its later fragment passes untouched",
             ip_frame(CLIENT, UDP_VIP, Raw(b"t" * 8), proto=6, frag=4, id=FRAG_ID + 21),
             XDP_PASS, stats=PASSED),
        Case("first fragment of an echo request to the VIP address (a large ping): pass marker",
             ip_frame(CLIENT, VIP, ICMP(type=8, id=3, seq=1), b"p" * 40, flags="MF",
                      id=FRAG_ID + 22), XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... its later fragment passes untouched",
             ip_frame(CLIENT, VIP, Raw(b"p" * 40), proto=1, frag=6, id=FRAG_ID + 22), XDP_PASS,
             stats=PASSED),
        Case("first fragment of an ICMP error to the VIP address, about no flow: no marker",
             ip_frame(CLIENT, VIP, ICMP(type=3, code=1) / IP(src=VIP, dst=OTHER_IP)
                      / UDP(sport=7, dport=7), b"e" * 16, flags="MF", id=FRAG_ID + 23),
             XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... so its later fragment is dropped",
             ip_frame(CLIENT, VIP, Raw(b"e" * 8), proto=1, frag=6, id=FRAG_ID + 23), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("later fragment to a non-VIP address", ip_frame(CLIENT, OTHER_IP, Raw(b"o" * 8),
                                                             proto=6, frag=3, id=FRAG_ID),
             XDP_PASS, stats={"NOT_VIP": 1}),
        Case("first fragment to a non-VIP address",
             ip_frame(CLIENT, OTHER_IP, TCP(sport=CPORT, dport=VIP_PORT), flags="MF", id=5),
             XDP_PASS, stats={"NOT_VIP": 1}),
        Case("first fragment of a UDP datagram",
             ip_frame(CLIENT, UDP_VIP, UDP(sport=CPORT, dport=UDP_PORT), b"q" * 30,
                      flags="MF", id=FRAG_ID), XDP_PASS,
             out=ip_frame(CLIENT, ube, UDP(sport=CPORT, dport=5353), b"q" * 30, flags="MF",
                          id=FRAG_ID), stats={**NEW_UDP, **first}),
        Case("its last fragment", ip_frame(CLIENT, UDP_VIP, Raw(b"r" * 3), proto=17, frag=5,
                                           id=FRAG_ID), XDP_PASS,
             out=ip_frame(CLIENT, ube, Raw(b"r" * 3), proto=17, frag=5, id=FRAG_ID),
             stats=LATER),
        Case("first fragment, TCP ACK on the flow",
             ip_frame(CLIENT, VIP, TCP(sport=CPORT, dport=VIP_PORT, flags="A", ack=ACK),
                      b"a" * 8, flags="MF", id=FRAG_ID + 9), XDP_PASS,
             out=ip_frame(CLIENT, be, TCP(sport=CPORT, dport=bport, flags="A", ack=ACK),
                          b"a" * 8, flags="MF", id=FRAG_ID + 9), stats={**HIT, **first}),
        Case("first fragment, TCP ACK without flow: re-pinned to blue, recorded",
             ip_frame(CLIENT, VIP, TCP(sport=CPORT + 1, dport=VIP_PORT, flags="A"),
                      flags="MF", id=FRAG_ID + 10), XDP_PASS,
             out=ip_frame(CLIENT, be, TCP(sport=CPORT + 1, dport=bport, flags="A"),
                          flags="MF", id=FRAG_ID + 10), stats={**REPIN, **first}),
        Case("... so its later fragment follows it",
             ip_frame(CLIENT, VIP, Raw(b"b" * 8), proto=6, frag=2, id=FRAG_ID + 10), XDP_PASS,
             out=ip_frame(CLIENT, be, Raw(b"b" * 8), proto=6, frag=2, id=FRAG_ID + 10),
             stats=LATER),
        Case("first fragment of a SYN to a service without backend: dropped, not recorded",
             ip_frame(CLIENT, EMPTY_VIP, TCP(sport=CPORT, dport=VIP_PORT, flags="S"),
                      flags="MF", id=FRAG_ID + 11), XDP_DROP, stats={"VIP": 1, "SYN_MISS": 1},
             drops={"NO_BACKEND": 1}),
        Case("... so its later fragment is dropped",
             ip_frame(CLIENT, EMPTY_VIP, Raw(b"b" * 8), proto=6, frag=2, id=FRAG_ID + 11),
             XDP_DROP, drops={"FRAG_MISS": 1}),
        Case("DF set: not a fragment, rewritten",
             ip_frame(CLIENT, VIP, TCP(sport=CPORT + 2, dport=VIP_PORT, flags="S", seq=SEQ),
                      flags="DF"), XDP_PASS,
             out=ip_frame(CLIENT, be, TCP(sport=CPORT + 2, dport=bport, flags="S", seq=SEQ),
                          flags="DF"), stats=NEW_SYN),
    ])
    assert bgs.frag(CLIENT, VIP, frag_id4(FRAG_ID), IPPROTO_TCP) == model.Frag(
        be, slots["blue"][0])
    assert bgs.frag(CLIENT, VIP, frag_id4(FRAG_ID + 10), IPPROTO_TCP) == model.Frag(
        be, slots["blue"][0])
    assert bgs.frag(CLIENT, EMPTY_VIP, frag_id4(FRAG_ID + 11), IPPROTO_TCP) is None
    markers = [(VIP, FRAG_ID + 20, IPPROTO_UDP), (UDP_VIP, FRAG_ID + 21, IPPROTO_TCP),
               (VIP, FRAG_ID + 22, model.IPPROTO_ICMP)]
    for dst, ident, proto in markers:
        assert bgs.frag(CLIENT, dst, frag_id4(ident), proto) == model.Frag(
            "0.0.0.0", model.BGS_FRAG_PASS), (dst, ident, proto)
    assert bgs.frag(CLIENT, VIP, frag_id4(FRAG_ID + 23), model.IPPROTO_ICMP) is None
    assert bgs.count("bgs_frags") == 7
    run_table(bgs, "egress", [
        Case("a later fragment with a pass marker's key, on egress: untouched",
             ip_frame(CLIENT, VIP, Raw(b"u" * 8), proto=17, frag=4, id=FRAG_ID + 20),
             TC_ACT_OK),
    ])
    assert bgs.backend_stats(slots["blue"][0])["rx_packets"] == 7
    f = bgs.flow(CLIENT, VIP, CPORT + 1, VIP_PORT)
    assert (f.daddr, f.color, f.slot, f.state) == (be, model.BGS_BLUE, slots["blue"][0], 0)


def _f6(src: str, dst: str, ident: int, offset: int, m: int, nh: int, body, **kw) -> bytes:
    """An IPv6 fragment: IPv6 / fragment header / body (a transport header or raw bytes)."""
    return ip6_frame(src, dst, body, ext=IPv6ExtHdrFragment(offset=offset, m=m, id=ident, nh=nh),
                     **kw)


def test_ingress_fragments_v6(bgs):
    """IPv6 fragments (fragment header): first (offset 0, M) steered and recorded, later ones
    follow (destination address only), later without record to a VIP address dropped, to
    another address passed; a first fragment to the VIP address that no service steers (an
    echo request, UDP) leaves a pass marker and its later fragments pass (FRAG_PASS); an atomic
    fragment (offset 0, no M) is an ordinary packet."""
    slots = web6(bgs)
    b, bp = BLUE6[0]
    run_table(bgs, "ingress", [
        Case("first fragment, TCP SYN",
             _f6(CLIENT6, VIP6, FRAG_ID6, 0, 1, 6, TCP(sport=CPORT, dport=VIP_PORT, flags="S")
                 / Raw(b"f" * 24)), XDP_PASS,
             out=_f6(CLIENT6, b, FRAG_ID6, 0, 1, 6, TCP(sport=CPORT, dport=bp, flags="S")
                     / Raw(b"f" * 24)), stats={**NEW_SYN, "FRAG_FIRST": 1}),
        Case("later fragment", _f6(CLIENT6, VIP6, FRAG_ID6, 5, 1, 6, Raw(b"g" * 16)), XDP_PASS,
             out=_f6(CLIENT6, b, FRAG_ID6, 5, 1, 6, Raw(b"g" * 16)), stats=LATER),
        Case("last fragment behind a destination options header",
             ip6_frame(CLIENT6, VIP6, Raw(b"h" * 3), ext=IPv6ExtHdrDestOpt()
                       / IPv6ExtHdrFragment(offset=7, m=0, id=FRAG_ID6, nh=6)), XDP_PASS,
             out=ip6_frame(CLIENT6, b, Raw(b"h" * 3), ext=IPv6ExtHdrDestOpt()
                           / IPv6ExtHdrFragment(offset=7, m=0, id=FRAG_ID6, nh=6)),
             stats=LATER),
        Case("later fragment, other id, to the VIP: dropped",
             _f6(CLIENT6, VIP6, FRAG_ID6 + 1, 5, 0, 6, Raw(b"i" * 8)), XDP_DROP,
             drops={"FRAG_MISS": 1}),
        Case("later fragment to a non-VIP address",
             _f6(CLIENT6, OTHER6, FRAG_ID6, 5, 0, 6, Raw(b"j" * 8)), XDP_PASS,
             stats={"NOT_VIP": 1}),
        Case("first fragment of an echo request to the VIP address: pass marker",
             _f6(CLIENT6, VIP6, FRAG_ID6 + 2, 0, 1, 58, ICMPv6EchoRequest(id=4) / Raw(b"p" * 32)),
             XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... its last fragment passes untouched",
             _f6(CLIENT6, VIP6, FRAG_ID6 + 2, 5, 0, 58, Raw(b"p" * 8)), XDP_PASS, stats=PASSED),
        Case("first fragment of UDP to a port of no service, behind a hop-by-hop header",
             ip6_frame(CLIENT6, VIP6, UDP(sport=CPORT, dport=4789) / Raw(b"v" * 24),
                       ext=IPv6ExtHdrHopByHop()
                       / IPv6ExtHdrFragment(offset=0, m=1, id=FRAG_ID6 + 3, nh=17)),
             XDP_PASS, stats={"NOT_VIP": 1}),
        Case("... its later fragment passes untouched",
             _f6(CLIENT6, VIP6, FRAG_ID6 + 3, 4, 1, 17, Raw(b"v" * 16)), XDP_PASS,
             stats=PASSED),
        Case("atomic fragment (offset 0, no M): an ordinary SYN",
             _f6(CLIENT6, VIP6, 99, 0, 0, 6, TCP(sport=CPORT + 1, dport=VIP_PORT, flags="S")),
             XDP_PASS, out=_f6(CLIENT6, b, 99, 0, 0, 6, TCP(sport=CPORT + 1, dport=bp,
                                                            flags="S")), stats=NEW_SYN),
    ])
    assert bgs.frag(CLIENT6, VIP6, frag_id6(FRAG_ID6), IPPROTO_TCP) == model.Frag(
        b, slots["blue"][0])
    assert bgs.frag(CLIENT6, VIP6, frag_id6(FRAG_ID6 + 2), model.IPPROTO_ICMPV6) == model.Frag(
        "::", model.BGS_FRAG_PASS)
    assert bgs.frag(CLIENT6, VIP6, frag_id6(FRAG_ID6 + 3), IPPROTO_UDP) == model.Frag(
        "::", model.BGS_FRAG_PASS)
    assert bgs.count("bgs_frags") == 3


def test_egress_reply_fragments(bgs):
    """A reply's first fragment is reverse-NATed like any reply and recorded; its later
    fragments leave with the VIP as source (IPv4 header checksum updated, nothing else);
    later fragments without record leave untouched. IPv4 and IPv6."""
    slots = web(bgs)
    slots6 = web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN)])
    first = {"REPLY_NAT": 1, "FRAG_FIRST": 1}
    run_table(bgs, "egress", [
        Case("first fragment of a reply",
             ip_frame(be, CLIENT, TCP(sport=bport, dport=CPORT, flags="PA", seq=ACK),
                      b"R" * 40, flags="MF", id=0x777), TC_ACT_OK,
             out=ip_frame(VIP, CLIENT, TCP(sport=VIP_PORT, dport=CPORT, flags="PA", seq=ACK),
                          b"R" * 40, flags="MF", id=0x777), stats=first),
        Case("its later fragment", ip_frame(be, CLIENT, Raw(b"S" * 21), proto=6, frag=6,
                                            id=0x777), TC_ACT_OK,
             out=ip_frame(VIP, CLIENT, Raw(b"S" * 21), proto=6, frag=6, id=0x777),
             stats={"REPLY_NAT": 1}),
        Case("later fragment, unknown id: untouched",
             ip_frame(be, CLIENT, Raw(b"T" * 8), proto=6, frag=6, id=0x778), TC_ACT_OK),
        Case("IPv6 first fragment of a reply",
             _f6(b6, CLIENT6, 0xABC, 0, 1, 6, TCP(sport=bp6, dport=CPORT, flags="A")
                 / Raw(b"U" * 16)), TC_ACT_OK,
             out=_f6(VIP6, CLIENT6, 0xABC, 0, 1, 6, TCP(sport=VIP_PORT, dport=CPORT, flags="A")
                     / Raw(b"U" * 16)), stats=first),
        Case("its later fragment", _f6(b6, CLIENT6, 0xABC, 3, 0, 6, Raw(b"V" * 7)), TC_ACT_OK,
             out=_f6(VIP6, CLIENT6, 0xABC, 3, 0, 6, Raw(b"V" * 7)), stats={"REPLY_NAT": 1}),
    ])
    assert bgs.frag(be, CLIENT, frag_id4(0x777), IPPROTO_TCP) == model.Frag(
        VIP, slots["blue"][0])
    assert bgs.frag(b6, CLIENT6, frag_id6(0xABC), IPPROTO_TCP) == model.Frag(
        VIP6, slots6["blue"][0])
    st = bgs.backend_stats(slots["blue"][0])
    assert st["tx_packets"] == 2


# === ingress: new flows ===========================================================================

def test_ingress_vip_syn_creates_flow(bgs):
    """A SYN to the VIP is rewritten to the blue backend, and leaves one flow entry, keyed by
    the client's address and port and the service, and the backend's counters behind. The
    entry's reply interface is its next hop's: 0 here, where the FIB lookup finds no route
    (the slot's cached next hop says so)."""
    slots = web(bgs)
    be, bport = BLUE[0]
    syn = tcp(CLIENT, VIP, CPORT, VIP_PORT, "S", payload=b"hello")
    run_table(bgs, "ingress", [
        Case("SYN to the VIP", syn, XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "S", payload=b"hello"), stats=NEW_SYN),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f is not None, "no bgs_flows entry after the SYN"
    assert (f.daddr, f.dport, f.color, f.slot, f.state, f.ifindex) == (
        be, bport, model.BGS_BLUE, slots["blue"][0], model.BGS_FLOW_SYN, 0)
    assert model.flow_age_ns(f.seen, monotonic_coarse_ns()) < 2 * 10**9
    assert list(bgs.map("bgs_flows").keys()) == [
        model.pack_conn_key(CLIENT, CPORT, bgs.services["web"], IPPROTO_TCP)]
    nh = bgs.nexthop(slots["blue"][0])
    assert nh.ifindex == 0 and nh.rc != 0 and nh.expires > 0, nh
    iplen = len(syn) - 14
    assert bgs.backend_stats(slots["blue"][0]) == {
        "rx_packets": 1, "rx_bytes": iplen, "tx_packets": 0, "tx_bytes": 0, "new_flows": 1,
        "resets": 0}


def test_ingress_syn_variants_create_flows(bgs):
    """Any segment with SYN and without ACK starts a flow (ECE/CWR/PSH/URG too); checksums of
    TCP options and payload are kept right."""
    web(bgs)
    be, bport = BLUE[0]
    opts = {"options": [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                        ("WScale", 7)]}
    cases = []
    for i, (desc, flags, kw) in enumerate([
        ("SYN", "S", {}),
        ("SYN with ECE|CWR", "SEC", {}),
        ("SYN with PSH and payload", "SP", {"payload": b"GET / HTTP/1.0\r\n\r\n"}),
        ("SYN with options (doff 10)", "S", {"tcp_fields": opts}),
        ("SYN with options and odd-length payload", "S", {"tcp_fields": opts,
                                                          "payload": b"abc"}),
        ("SYN|FIN (no ACK)", "SF", {}),
    ]):
        sport = CPORT + i
        cases.append(Case(desc, tcp(CLIENT, VIP, sport, VIP_PORT, flags, **kw), XDP_PASS,
                          out=tcp(CLIENT, be, sport, bport, flags, **kw), stats=NEW_SYN))
    pad = b"\0" * 6  # a 54-byte SYN padded to the 60-byte Ethernet minimum
    sport = CPORT + 100
    cases.append(Case("SYN with Ethernet padding", tcp(CLIENT, VIP, sport, VIP_PORT) + pad,
                      XDP_PASS, out=tcp(CLIENT, be, sport, bport) + pad, stats=NEW_SYN))
    run_table(bgs, "ingress", cases)
    assert bgs.count("bgs_flows") == len(cases)
    # rx_bytes counts IP total lengths, not frame lengths (padding excluded)
    assert bgs.backend_stats(0)["rx_bytes"] == sum(Ether(c.pkt)[IP].len for c in cases)


def test_ingress_ip_options_rewritten(bgs):
    """With IPv4 options (ihl 6 and 15) a VIP packet is still found and rewritten right."""
    web(bgs)
    be, bport = BLUE[0]
    ra = [IPOption_Router_Alert()]
    rr = [IPOption_RR(routers=["0.0.0.0"] * 9)]  # 39 bytes + 1 pad: ihl 15
    run_table(bgs, "ingress", [
        Case("router alert (ihl 6)", tcp(CLIENT, VIP, CPORT, VIP_PORT, options=ra), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, options=ra), stats=NEW_SYN),
        Case("record route (ihl 15) + payload",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, payload=b"data", options=rr), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, payload=b"data", options=rr),
             stats=NEW_SYN),
        Case("record route, tagged, ACK on the flow",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "A", ack=ACK, options=rr, vlan=9),
             XDP_PASS, out=tcp(CLIENT, be, CPORT + 1, bport, "A", ack=ACK, options=rr, vlan=9),
             stats=HIT),
    ])


def test_ingress_vlan_tagged_rewrite(bgs):
    """One 802.1Q or 802.1ad tag: the packet is rewritten behind it, the tag kept."""
    web(bgs)
    dns(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("802.1Q SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT, vlan=100), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, vlan=100), stats=NEW_SYN),
        Case("802.1Q ACK on that flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK,
                                            payload=b"x", vlan=100), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK, payload=b"x", vlan=100),
             stats=HIT),
        Case("802.1ad SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, vlan=200, outer=Dot1AD),
             XDP_PASS, out=tcp(CLIENT, be, CPORT + 1, bport, vlan=200, outer=Dot1AD),
             stats=NEW_SYN),
        Case("802.1Q UDP", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, vlan=4094), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353, vlan=4094), stats=NEW_UDP),
        Case("802.1Q non-VIP", tcp(CLIENT, OTHER_IP, CPORT, VIP_PORT, vlan=100), XDP_PASS,
             stats={"NOT_VIP": 1}),
    ])


def test_ingress_udp_new_flow(bgs):
    """A UDP datagram to a UDP VIP starts a flow (state 0) and later ones follow it."""
    slots = dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("first datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"query1"), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b"query1"), stats=NEW_UDP),
        Case("second datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"query2!"), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b"query2!"), stats=HIT),
        Case("empty datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b""), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b""), stats=HIT),
    ])
    f = bgs.flow(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP)
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (be, 5353, model.BGS_BLUE,
                                                            slots["blue"][0], 0)
    assert bgs.count("bgs_flows") == 1
    assert bgs.backend_stats(slots["blue"][0])["rx_packets"] == 3


def test_ingress_udp_zero_checksum_stays_zero(bgs):
    """A UDP datagram without checksum (0) keeps 0: it is not "updated" into a wrong one."""
    dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("zero checksum, new flow", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"q", chksum=0),
             XDP_PASS, out=udp(CLIENT, be, CPORT, 5353, b"q", chksum=0), stats=NEW_UDP),
        Case("zero checksum, flow hit", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"q2", chksum=0),
             XDP_PASS, out=udp(CLIENT, be, CPORT, 5353, b"q2", chksum=0), stats=HIT),
    ])


def _udp_payload_for_ffff(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 2-byte payload that makes the UDP checksum of (src, dst, sport, dport) compute to 0,
    i.e. be sent as 0xffff."""
    c0 = UDP(bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"\0\0"))[20:])
    word = c0.chksum  # the payload word that brings the one's complement sum to 0xffff
    payload = struct.pack("!H", word)
    check = IP(bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)))
    assert check[UDP].chksum == 0xFFFF, "test set-up: payload search failed"
    return payload


def test_ingress_udp_checksum_never_becomes_zero(bgs):
    """When the rewritten datagram's checksum computes to 0 it must be sent as 0xffff (0 would
    mean "no checksum")."""
    dns(bgs)
    be = BLUE[0][0]
    payload = _udp_payload_for_ffff(CLIENT, be, CPORT, 5353)
    want = udp(CLIENT, be, CPORT, 5353, payload)
    assert UDP(want[34:]).chksum == 0xFFFF
    run_table(bgs, "ingress", [
        Case("rewrite makes the sum 0xffff", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, payload),
             XDP_PASS, out=want, stats=NEW_UDP),
    ])


def test_ingress_bad_checksum_not_repaired(bgs):
    """The rewrite updates checksums by difference: a wrong TCP checksum stays wrong by the
    same amount (the program never recomputes, so it cannot launder corruption)."""
    web(bgs)
    be, bport = BLUE[0]
    good_in = TCP(tcp(CLIENT, VIP, CPORT, VIP_PORT)[34:]).chksum
    good_out = TCP(tcp(CLIENT, be, CPORT, bport)[34:]).chksum
    run_table(bgs, "ingress", [
        Case("TCP checksum off by one", tcp(CLIENT, VIP, CPORT, VIP_PORT,
                                            tcp_fields={"chksum": ones_add(good_in, 1)}),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport,
                               tcp_fields={"chksum": ones_add(good_out, 1)}),
             stats=NEW_SYN),
    ])


# === ingress: existing flows ======================================================================

def test_ingress_flow_hit_follows_entry(bgs):
    """A whole connection from the client: SYN creates, every later segment hits and follows
    the entry; a SYN retransmit hits the same entry."""
    web(bgs, blue=2)
    _, slot = new_flow_slot(bgs, 0, CLIENT, VIP, CPORT, VIP_PORT)
    be, bport = BLUE[slot]

    def pair(desc, flags, stats, **kw):
        return Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT, flags, **kw), XDP_PASS,
                    out=tcp(CLIENT, be, CPORT, bport, flags, **kw), stats=stats)

    run_table(bgs, "ingress", [
        pair("SYN", "S", NEW_SYN),
        pair("SYN retransmit", "S", HIT),
        pair("ACK", "A", HIT, seq=SEQ + 1, ack=ACK),
        pair("PSH|ACK with data", "PA", HIT, seq=SEQ + 1, ack=ACK, payload=b"GET / HTTP/1.1"),
        pair("URG|ACK", "UA", HIT, seq=SEQ + 15, ack=ACK, tcp_fields={"urgptr": 1}),
        pair("FIN|ACK", "FA", HIT, seq=SEQ + 16, ack=ACK + 1),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.state == model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT
    assert bgs.backend_stats(slot)["rx_packets"] == 6
    assert bgs.backend_stats(slot)["new_flows"] == 1


def test_ingress_flow_hit_follows_entry_after_flip(bgs):
    """After a flip, established flows stay on the color they began on; new flows go to the
    new active color; after a rollback new flows go back."""
    web(bgs)
    b, g = BLUE[0], GREEN[0]
    c2 = CPORT + 1
    c3 = CPORT + 2
    run_table(bgs, "ingress", [
        Case("SYN before the flip", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1]), stats=NEW_SYN),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    assert bgs.switch(0).active == model.BGS_GREEN
    run_table(bgs, "ingress", [
        Case("ACK of the old flow after the flip", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                       ack=ACK), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=HIT),
        Case("SYN retransmit of the old flow", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1]), stats=HIT),
        Case("new SYN after the flip", tcp(CLIENT, VIP, c2, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], c2, g[1]), stats=NEW_SYN),
    ])
    assert bgs.flow(CLIENT, VIP, c2, VIP_PORT).color == model.BGS_GREEN
    bgs.cli("rollback", "web", "--no-check")
    assert bgs.switch(0).active == model.BGS_BLUE
    run_table(bgs, "ingress", [
        Case("green flow after the rollback", tcp(CLIENT, VIP, c2, VIP_PORT, "PA", ack=ACK,
                                                  payload=b"x"), XDP_PASS,
             out=tcp(CLIENT, g[0], c2, g[1], "PA", ack=ACK, payload=b"x"), stats=HIT),
        Case("new SYN after the rollback", tcp(CLIENT, VIP, c3, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], c3, b[1]), stats=NEW_SYN),
    ])


def test_ingress_udp_live_flow_survives_flip(bgs):
    """A live UDP flow stays on its color across a flip; a new one takes the new color."""
    dns(bgs)
    run_table(bgs, "ingress", [
        Case("datagram before the flip", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=NEW_UDP),
    ])
    bgs.cli("flip", "dns", "--no-check")
    run_table(bgs, "ingress", [
        Case("same flow after the flip", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=HIT),
        Case("new flow after the flip", udp(CLIENT2, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT2, GREEN[0][0], CPORT, 5353), stats=NEW_UDP),
    ])


NOSYN_FLAGS = [("ACK", "A"), ("PSH|ACK", "PA"), ("SYN|ACK", "SA"), ("FIN|ACK", "FA"),
               ("RST", "R"), ("RST|ACK", "RA"), ("FIN", "F"), ("no flags", "")]


def _repin(bgs: BgsState, desc: str, cport: int, color: int, flags: str = "A",
           client: str = CLIENT) -> Case:
    """A non-SYN segment of a tuple without entry, and where it must be re-pinned: to the
    backend of ``color``'s current table (or set) that a new flow of that color would get.
    A segment with RST goes there too, but opens no entry (RST_MISS)."""
    svc = bgs.services["web"]
    _, slot = new_flow_slot(bgs, svc, client, VIP, cport, VIP_PORT, color=color)
    b = bgs.backend(slot)
    assert b.color == color
    return Case(f"{desc}: re-pinned to {'blue' if color == model.BGS_BLUE else 'green'} slot "
                f"{slot} ({b.addr}:{b.port})",
                tcp(client, VIP, cport, VIP_PORT, flags, ack=ACK, payload=b"p"), XDP_PASS,
                out=tcp(client, b.addr, cport, b.port, flags, ack=ACK, payload=b"p"),
                stats=REPIN_RST if "R" in flags else REPIN)


def _pinned(bgs: BgsState, cport: int, color: int, client: str = CLIENT,
            flags: str = "A") -> None:
    """The entry a re-pin of a segment with ``flags`` left: a flow of ``color`` to the chosen
    backend, in state 0 (not opened by a SYN), FIN_CLIENT for a FIN; none for an RST."""
    svc = bgs.services["web"]
    _, slot = new_flow_slot(bgs, svc, client, VIP, cport, VIP_PORT, color=color)
    b = bgs.backend(slot)
    f = bgs.flow(client, VIP, cport, VIP_PORT)
    if "R" in flags:
        assert f is None, f"{client}:{cport}: an RST opened {f}"
        return
    assert f is not None, f"no flow entry for {client}:{cport}"
    state = model.BGS_FLOW_FIN_CLIENT if "F" in flags else 0
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (b.addr, b.port, color, slot,
                                                            state), f"{client}:{cport}: {f}"


def test_ingress_nosyn_miss_repinned_to_active(bgs):
    """Nothing draining (no flip yet): a TCP segment without SYN (or with SYN|ACK) that misses
    the table is counted NOSYN_MISS and SECOND_CHANCE (node and service) and re-pinned to the
    active color by the hash choice of a new flow: flow entry of state 0 (FIN_CLIENT for a
    FIN) written, FLOW_NEW, backend new_flows; later segments follow it. With RST it goes to
    the same backend but writes no entry (RST_MISS)."""
    slots = web(bgs, blue=3, green=2)
    sw = bgs.switch(0)
    assert (sw.active, sw.previous, sw.flags) == (model.BGS_BLUE, model.BGS_COLOR_NONE, 0)
    cases = [_repin(bgs, f"{desc} without a flow", CPORT + i, model.BGS_BLUE, flags)
             for i, (desc, flags) in enumerate(NOSYN_FLAGS)]
    follow = cases[0]
    cases.append(Case("ACK again: follows the re-pinned entry", follow.pkt, XDP_PASS,
                      out=follow.out, stats=HIT))
    cases.append(Case("SYN on the re-pinned (live) entry: follows it",
                      tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
                      out=tcp(CLIENT, Ether(follow.out)[IP].dst, CPORT,
                              Ether(follow.out)[TCP].dport), stats=HIT))
    run_table(bgs, "ingress", cases)
    for i, (_, flags) in enumerate(NOSYN_FLAGS):
        _pinned(bgs, CPORT + i, model.BGS_BLUE, flags=flags)
    assert bgs.count("bgs_flows") == sum("R" not in f for _, f in NOSYN_FLAGS)
    ss = bgs.service_stats(0)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "nosyn_miss": len(NOSYN_FLAGS),
                  "second_chance": len(NOSYN_FLAGS)}
    # An entry written is a new flow; an RST that writes none is not.
    assert sum(bgs.backend_stats(s)["new_flows"] for s in slots["blue"]) == \
        sum("R" not in f for _, f in NOSYN_FLAGS)
    assert sum(bgs.backend_stats(s)["new_flows"] for s in slots["green"]) == 0


def test_ingress_nosyn_miss_second_chance_follows_drain(bgs):
    """Where a non-SYN miss is re-pinned follows the switch word: the active color before any
    flip; after `flip` (share 0 -> 100 %, prev_share 0, flags DRAINING | HAS_PREV) the color
    of the previous share, while new SYNs go to the active one; `gc` clears DRAINING only
    once the previous color has no live flow (HAS_PREV stays: a rollback is still possible),
    and from then on the active color again. A rollback drains the other way; the switch
    word poked: DRAINING without HAS_PREV, HAS_PREV without DRAINING, or neither, all mean
    the color of the current share."""
    web(bgs, blue=2, green=2)
    B, G = model.BGS_BLUE, model.BGS_GREEN
    both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    p = iter(range(CPORT, CPORT + 100))
    before = next(p)
    repins = [_repin(bgs, "ACK before any flip", before, B)]
    run_table(bgs, "ingress", repins)

    bgs.cli("flip", "web", "green", "--no-check")
    sw = bgs.switch(0)
    assert (sw.share, sw.prev_share, sw.flags) == (model.BGS_SHARE_ALL, 0, both)
    assert (sw.active, sw.previous) == (G, B)
    syn = next(p)
    _, gslot = new_flow_slot(bgs, 0, CLIENT, VIP, syn, VIP_PORT)
    ga = bgs.backend(gslot)
    assert ga.color == G
    draining = [next(p) for _ in range(3)]
    cases = [
        _repin(bgs, "ACK while blue drains", draining[0], B),
        _repin(bgs, "FIN|ACK while blue drains", draining[1], B, "FA"),
        Case("new SYN while blue drains: green", tcp(CLIENT, VIP, syn, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, ga.addr, syn, ga.port), stats=NEW_SYN),
        _repin(bgs, "IPv4 ACK from another client while blue drains", draining[2], B,
               client=CLIENT2),
    ]
    repins += [c for c in cases if c.stats is REPIN]
    run_table(bgs, "ingress", cases)
    _pinned(bgs, draining[0], B)
    _pinned(bgs, draining[1], B, flags="FA")
    _pinned(bgs, draining[2], B, client=CLIENT2)

    # Live blue flows left: gc keeps the flag (and the generation: not a change).
    gen = bgs.switch(0).generation
    bgs.cli("gc")
    assert bgs.switch(0) == sw._replace(generation=gen)
    still = next(p)
    repins.append(_repin(bgs, "ACK after a gc with live blue flows", still, B))
    run_table(bgs, "ingress", repins[-1:])

    # Close every blue flow (client RST), then gc: the flag goes, nothing else changes.
    blue = [(CLIENT, c) for c in [before] + draining[:2] + [still]] + [(CLIENT2, draining[2])]
    for client, c in blue:
        f = bgs.flow(client, VIP, c, VIP_PORT)
        assert f.color == B
        run_table(bgs, "ingress", [Case(f"client RST closes blue flow {client}:{c}",
                                        tcp(client, VIP, c, VIP_PORT, "R", seq=SEQ),
                                        XDP_PASS, out=tcp(client, f.daddr, c, f.dport, "R",
                                                          seq=SEQ), stats=HIT)])
    bgs.cli("gc")
    assert bgs.switch(0) == sw._replace(generation=gen, flags=model.BGS_SW_HAS_PREV)
    cases = [
        _repin(bgs, "ACK once blue has drained", next(p), G),
        _repin(bgs, "PSH|ACK once blue has drained", next(p), G, "PA"),
    ]
    repins += cases
    run_table(bgs, "ingress", cases)

    # rollback: back to blue, green drains.
    bgs.cli("rollback", "web", "--no-check")
    sw = bgs.switch(0)
    assert (sw.share, sw.prev_share, sw.flags) == (0, model.BGS_SHARE_ALL, both)
    assert (sw.active, sw.previous) == (B, G)
    repins.append(_repin(bgs, "ACK while green drains (rollback)", next(p), G))
    run_table(bgs, "ingress", repins[-1:])

    # The switch word poked: the second chance needs both flags.
    for desc, flags, color in [
            ("ACK, DRAINING without HAS_PREV", model.BGS_SW_DRAINING, B),
            ("ACK, HAS_PREV without DRAINING", model.BGS_SW_HAS_PREV, B),
            ("ACK, both flags cleared by hand", 0, B),
            ("ACK, both flags set again", both, G)]:
        bgs.put_switch(0, sw._replace(flags=flags))
        repins.append(_repin(bgs, desc, next(p), color))
        run_table(bgs, "ingress", repins[-1:])
    ss = bgs.service_stats(0)
    assert ss["nosyn_miss"] == ss["second_chance"] == len(repins) and ss["syn_miss"] == 1


def test_ingress_nosyn_miss_repin_drops(bgs):
    """A re-pin is a flow creation: toward an empty color it is dropped NO_BACKEND (node and
    service), toward a table position naming a free slot BAD_BACKEND, after NOSYN_MISS and
    SECOND_CHANCE are counted; nothing is recorded."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    bgs.add_backend("web", "green", *GREEN[0])  # blue (active) is empty
    run_table(bgs, "ingress", [
        Case("ACK, active color empty", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    bgs.add_backend("web", "blue", *BLUE[0])
    bgs.cli("flip", "web", "green", "--no-check")
    bgs.cli("backend", "del", "web", "blue", "%s:%d" % BLUE[0])
    sw = bgs.switch(0)
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV and sw.prev_share == 0
    assert bgs.active_set(0, model.BGS_BLUE) == []
    run_table(bgs, "ingress", [
        Case("ACK while blue drains, blue set empty", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                          ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    bgs.put_switch(0, sw._replace(flags=0))
    pos = model.BGS_TABLE_HDR + flow_h(CLIENT, VIP, CPORT, VIP_PORT) % model.BGS_TABLE_SIZE
    with bgs.table_map(sw.set_index(0, model.BGS_GREEN)) as inner:
        inner.update(model.u32(pos), model.u32(77))  # a free slot, where this flow lands
    run_table(bgs, "ingress", [
        Case("ACK, active table names a free slot", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                        ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"BAD_BACKEND": 1}),
    ])
    assert bgs.count("bgs_flows") == 0
    ss = bgs.service_stats(0)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "nosyn_miss": 3,
                  "second_chance": 3, "drop_NO_BACKEND": 2, "drop_BAD_BACKEND": 1}


def test_ingress_no_backend_dropped(bgs):
    """A new flow of a service whose active color has no backend is dropped, counted
    NO_BACKEND, for TCP and UDP; nothing is created."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    bgs.add_service("dns", UDP_VIP, UDP_PORT, "udp")
    bgs.add_backend("web", "green", *GREEN[0])  # green only: blue (active) is empty
    run_table(bgs, "ingress", [
        Case("SYN, active color empty", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
        Case("UDP, no backend at all", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_DROP,
             stats={"VIP": 1}, drops={"NO_BACKEND": 1}),
    ])
    assert bgs.count("bgs_flows") == 0


def test_ingress_last_backend_removed_drops_new_flows(bgs):
    """After `backend del` of the only active backend, new flows are dropped (NO_BACKEND)
    while the existing flow keeps going to the draining backend."""
    slots = web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
    ])
    bgs.cli("backend", "del", "web", "blue", f"{be}:{bport}", "--drain")
    assert bgs.active_set(0) == []
    run_table(bgs, "ingress", [
        Case("ACK of the existing flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT),
        Case("new SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
    ])
    b = model.unpack_backend(bgs.map("bgs_backends").lookup(model.u32(slots["blue"][0])))
    assert b.state == model.BGS_BACKEND_DRAINING


def test_ingress_draining_backend_keeps_flows(bgs):
    """A removed (draining) backend keeps its flows; new flows only go to the rest."""
    web(bgs, blue=2, green=0)
    # Find a client port whose flow lands on slot 0, then remove slot 0's backend.
    now = Chooser(bgs, 0)
    port0 = next(p for p in range(CPORT, CPORT + 1000)
                 if now.slot(CLIENT, VIP, p, VIP_PORT)[1] == 0)
    run_table(bgs, "ingress", [
        Case("SYN to slot 0", tcp(CLIENT, VIP, port0, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[0][0], port0, BLUE[0][1]), stats=NEW_SYN),
    ])
    bgs.cli("backend", "del", "web", "blue", "%s:%d" % BLUE[0], "--drain")
    assert bgs.active_set(0) == [1]
    cases = [Case("data to the draining backend", tcp(CLIENT, VIP, port0, VIP_PORT, "PA",
                                                      ack=ACK, payload=b"d"), XDP_PASS,
                  out=tcp(CLIENT, BLUE[0][0], port0, BLUE[0][1], "PA", ack=ACK,
                          payload=b"d"), stats=HIT)]
    for p in range(port0 + 1, port0 + 21):
        cases.append(Case(f"new SYN from port {p}", tcp(CLIENT, VIP, p, VIP_PORT), XDP_PASS,
                          out=tcp(CLIENT, BLUE[1][0], p, BLUE[1][1]), stats=NEW_SYN))
    run_table(bgs, "ingress", cases)


def test_ingress_bad_backend_dropped(bgs):
    """Where a new flow's backend comes from a lookup table (Maglev), the entry at position
    1 + hash % M decides: naming a free slot, or a slot beyond bgs_backends, drops it as
    BAD_BACKEND; a size entry M of 0 as NO_BACKEND; a size entry larger than the table, so
    that the position lies past its end, as BAD_BACKEND. Where it comes from a set (a
    service with --lb modulo), a set naming a free slot or with a count beyond
    BGS_MAX_BACKENDS drops it as BAD_BACKEND. The tables and sets are poked directly, then
    restored."""
    web(bgs, blue=1, green=0)
    bgs.add_service("mod", EMPTY_VIP, VIP_PORT, "tcp", "--lb", "modulo")
    bgs.add_backend("mod", "blue", *BLUE[1])
    new = {"VIP": 1, "SYN_MISS": 1}
    h = flow_h(CLIENT, VIP, CPORT, VIP_PORT)
    m = model.BGS_TABLE_SIZE
    pos = model.BGS_TABLE_HDR + h % m
    assert m <= h < (1 << 32) - m - 1, "test set-up: a hash to put past the table's end"
    inner = bgs.table_map(bgs.switch(0).set_index(0, model.BGS_BLUE))
    with inner:
        good = {k: inner.lookup(model.u32(k)) for k in (0, pos)}
        for desc, key, value, drop in [
                ("table position names a free slot", pos, 77, "BAD_BACKEND"),
                ("table position beyond bgs_backends", pos, model.BGS_MAX_SLOTS * 1000,
                 "BAD_BACKEND"),
                ("table size entry 0", 0, 0, "NO_BACKEND"),
                # h % (M + h + 1) is h itself: past the M + 1 entries the map holds
                ("table size entry past the table's end", 0, m + h + 1, "BAD_BACKEND")]:
            inner.update(model.u32(key), model.u32(value))
            run_table(bgs, "ingress", [
                Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_DROP, stats=new,
                     drops={drop: 1})])
            inner.update(model.u32(key), good[key])
    run_table(bgs, "ingress", [
        Case("table restored", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[0][0], CPORT, BLUE[0][1]), stats=NEW_SYN),
    ])

    svc = bgs.services["mod"]
    assert bgs.table(svc, model.BGS_BLUE) is None, "a modulo service has no table"
    idx = model.u32(bgs.switch(svc).set_index(svc, model.BGS_BLUE))
    sets = bgs.map("bgs_sets")
    good = sets.lookup(idx)
    for desc, bad in [
            ("set names a free slot", model.pack_set([77])),
            ("set count beyond the maximum", model.pack_set([0],
                                                            count=model.BGS_MAX_BACKENDS + 1)),
            ("set slot beyond bgs_backends", model.pack_set([model.BGS_MAX_SLOTS * 1000]))]:
        sets.update(idx, bad)
        run_table(bgs, "ingress", [
            Case(desc, tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_DROP, stats=new,
                 drops={"BAD_BACKEND": 1})])
    sets.update(idx, good)
    run_table(bgs, "ingress", [
        Case("set restored", tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[1][0], CPORT, BLUE[1][1]), stats=NEW_SYN),
    ])


# === egress: replies ==============================================================================

def test_egress_reply_reverse_nat(bgs):
    """A backend's replies leave with the VIP:port as their source, checksums right; TC_ACT_OK;
    counted REPLY_NAT and in the backend's tx counters."""
    slots = web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN)])
    body = b"HTTP/1.1 200 OK\r\n" * 20
    cases = [
        Case("SYN|ACK", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK, ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT),
        Case("data", tcp(be, CLIENT, bport, CPORT, "PA", seq=ACK + 1, ack=SEQ + 1,
                         payload=body), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", seq=ACK + 1, ack=SEQ + 1,
                     payload=body), stats=NAT),
        Case("tagged ACK", tcp(be, CLIENT, bport, CPORT, "A", seq=ACK, ack=SEQ + 1, vlan=42),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK, ack=SEQ + 1,
                                vlan=42), stats=NAT),
        Case("with IP options", tcp(be, CLIENT, bport, CPORT, "A", seq=ACK,
                                    options=[IPOption_Router_Alert()]), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK,
                     options=[IPOption_Router_Alert()]), stats=NAT),
    ]
    run_table(bgs, "egress", cases)
    st = bgs.backend_stats(slots["blue"][0])
    assert st["tx_packets"] == len(cases)
    assert st["tx_bytes"] == sum(Ether(c.pkt)[IP].len for c in cases)
    assert st["resets"] == 0


def test_egress_udp_reply_reverse_nat(bgs):
    """UDP replies are rewritten; a zero checksum stays zero, a sum of 0 is sent as 0xffff."""
    dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("query", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353), stats=NEW_UDP)])
    ffff = _udp_payload_for_ffff(UDP_VIP, CLIENT, UDP_PORT, CPORT)
    run_table(bgs, "egress", [
        Case("answer", udp(be, CLIENT, 5353, CPORT, b"answer"), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"answer"), stats=NAT),
        Case("answer without checksum", udp(be, CLIENT, 5353, CPORT, b"a", chksum=0),
             TC_ACT_OK, out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"a", chksum=0), stats=NAT),
        Case("answer whose sum becomes 0", udp(be, CLIENT, 5353, CPORT, ffff), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, ffff), stats=NAT),
    ])


def test_egress_non_backend_untouched(bgs):
    """Packets that do not come from a backend address:port/proto leave untouched and are
    counted TX only."""
    web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN)])
    run_table(bgs, "egress", [
        Case("from another host", tcp(OTHER_IP, CLIENT, bport, CPORT, "SA"), TC_ACT_OK),
        Case("from the backend address, other port", tcp(be, CLIENT, 22, CPORT, "SA"),
             TC_ACT_OK),
        Case("UDP from the backend's TCP address:port", udp(be, CLIENT, bport, CPORT),
             TC_ACT_OK),
        Case("from the VIP itself", tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), TC_ACT_OK),
        Case("ICMP from the backend", bytes(_l2() / IP(src=be, dst=CLIENT) / ICMP()),
             TC_ACT_OK),
        Case("IPv6", bytes(_l2() / IPv6(src="fd00::1", dst="fd00::2")
                           / TCP(sport=bport, dport=CPORT)), TC_ACT_OK),
        Case("truncated TCP from the backend", tcp(be, CLIENT, bport, CPORT, "SA")[:14 + 30],
             TC_ACT_OK),
        Case("later fragment from the backend, no record",
             ip_frame(be, CLIENT, Raw(b"x" * 8), proto=6, frag=4), TC_ACT_OK),
        Case("first fragment from another host", ip_frame(OTHER_IP, CLIENT, TCP(
            sport=bport, dport=CPORT), flags="MF"), TC_ACT_OK),
    ])


def test_egress_backend_without_flow_untouched_and_counted(bgs):
    """From a backend address:port but to a client with no flow: untouched, counted
    REPLY_NO_FLOW."""
    web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "egress", [
        Case("SYN|ACK to an unknown client", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("RST to an unknown client", tcp(be, CLIENT2, bport, CPORT, "R"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
    ])


def test_egress_reply_finds_its_flow_by_backend(bgs):
    """A reply finds the connection's one entry from its destination (client address and
    port) under each service its source (backend address:port/proto, bgs_backend_addrs)
    serves, and only an entry whose slot's backend is that very address and port: then it
    leaves as the VIP (a FIN marks the flow). TCP, UDP and IPv6. From another backend of the
    service, the same address on another port, to a client port without flow or to another
    client: REPLY_NO_FLOW, untouched, nothing written."""
    slots = web(bgs, blue=1, green=1)
    uslots = dns(bgs, blue=1, green=0)
    slots6 = web6(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    g, gport = GREEN[0]
    ub = BLUE[0][0]
    b6, bp6 = BLUE6[0]
    # The blue backend's address again on another port, for the same service.
    other = bgs.add_backend("web", "green", be, 7070)
    web_id = bgs.services["web"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(1, (web_id,))
    assert bgs.backend_ref(be, 7070) == model.BackendRef(1, (web_id,))
    assert bgs.backend_ref(ub, 5353, IPPROTO_UDP) == model.BackendRef(1, (bgs.services["dns"],))
    assert bgs.backend_ref(b6, bp6) == model.BackendRef(1, (bgs.services["web6"],))
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
        Case("query", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=NEW_UDP),
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN),
    ])
    flows = {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()}
    run_table(bgs, "egress", [
        Case("from another backend of the service (the flow is not its)",
             tcp(g, CLIENT, gport, CPORT, "SA"), TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("from the flow's backend address, another port",
             tcp(be, CLIENT, 7070, CPORT, "SA"), TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("to a client port without flow", tcp(be, CLIENT, bport, CPORT + 1, "SA"),
             TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("to another client", tcp(be, CLIENT2, bport, CPORT, "SA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("UDP from the TCP flow's backend address:port", udp(be, CLIENT, bport, CPORT),
             TC_ACT_OK),
    ])
    assert {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()} == flows
    run_table(bgs, "egress", [
        Case("SYN|ACK of the flow", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK, ack=SEQ + 1),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1),
             stats=NAT),
        Case("next reply", tcp(be, CLIENT, bport, CPORT, "PA", payload=b"ok"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", payload=b"ok"), stats=NAT),
        Case("UDP answer", udp(ub, CLIENT, 5353, CPORT, b"answer"), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"answer"), stats=NAT),
        Case("IPv6 SYN|ACK", tcp(b6, CLIENT6, bp6, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT, "SA"), stats=NAT),
        Case("backend FIN", tcp(be, CLIENT, bport, CPORT, "FA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "FA", seq=ACK), stats=NAT),
    ])
    assert bgs.count("bgs_flows") == 3
    assert bgs.backend_stats(slots["blue"][0])["tx_packets"] == 3
    assert bgs.backend_stats(uslots["blue"][0])["tx_packets"] == 1
    assert bgs.backend_stats(slots6["blue"][0])["tx_packets"] == 1
    assert bgs.backend_stats(other)["tx_packets"] == 0
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER)


def test_egress_evicted_flow_repinned_then_replies(bgs):
    """The connection's entry evicted (deleted here): the backend's reply leaves untouched
    (REPLY_NO_FLOW); the client's next segment is re-pinned (second chance) to the same
    backend by the same hash, writing the entry again, so the backend's replies leave from
    the VIP again."""
    web(bgs, blue=3, green=0)
    _, slot = new_flow_slot(bgs, 0, CLIENT, VIP, CPORT, VIP_PORT)
    a, p = BLUE[slot]
    _open(bgs, be=(a, p))
    assert bgs.delete_flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("backend reply, no entry", tcp(a, CLIENT, p, CPORT, "A", seq=ACK), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    run_table(bgs, "ingress", [
        Case("client ACK after the eviction", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, a, CPORT, p, "A", ack=ACK), stats=REPIN)])
    run_table(bgs, "egress", [
        Case("backend reply", tcp(a, CLIENT, p, CPORT, "A", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == 0


def test_egress_backend_of_two_services_replies_as_each_vip(bgs):
    """One backend address:port serving two services (bgs_backend_addrs lists both): each
    reply finds its own connection's entry, under its own service, and leaves as that
    service's VIP and port, TCP and IPv6 alike; a reply to a client port with neither
    service's flow is untouched. Deleting one flow's entry leaves the other's replies
    translated."""
    web(bgs, blue=1, green=0)
    web6(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    web_id, web6_id = bgs.services["web"], bgs.services["web6"]
    bgs.add_service("web2", EMPTY_VIP, 8080, "tcp")
    slot2 = bgs.add_backend("web2", "blue", be, bport)
    bgs.add_service("web62", VIP6, 8443, "tcp")
    bgs.add_backend("web62", "blue", b6, bp6)
    web2_id, web62_id = bgs.services["web2"], bgs.services["web62"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(2, (web_id, web2_id))
    assert bgs.backend_ref(b6, bp6) == model.BackendRef(2, (web6_id, web62_id))
    run_table(bgs, "ingress", [
        Case("SYN to web", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
        Case("SYN to web2", tcp(CLIENT, EMPTY_VIP, CPORT + 1, 8080), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport), stats=NEW_SYN),
        Case("IPv6 SYN to web62", tcp(CLIENT6, VIP6, CPORT, 8443), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN),
        Case("IPv6 SYN to web6", tcp(CLIENT6, VIP6, CPORT + 1, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT + 1, bp6), stats=NEW_SYN),
    ])
    assert bgs.flow(CLIENT, EMPTY_VIP, CPORT + 1, 8080).slot == slot2
    replies = [
        Case("reply of the web flow: web's VIP", tcp(be, CLIENT, bport, CPORT, "SA"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT),
        Case("reply of the web2 flow: web2's VIP", tcp(be, CLIENT, bport, CPORT + 1, "SA"),
             TC_ACT_OK, out=tcp(EMPTY_VIP, CLIENT, 8080, CPORT + 1, "SA"), stats=NAT),
        Case("IPv6 reply of the web62 flow", tcp(b6, CLIENT6, bp6, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, 8443, CPORT, "SA"), stats=NAT),
        Case("IPv6 reply of the web6 flow", tcp(b6, CLIENT6, bp6, CPORT + 1, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT + 1, "SA"), stats=NAT),
        Case("to a client port of neither", tcp(be, CLIENT, bport, CPORT + 2, "SA"),
             TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
    ]
    run_table(bgs, "egress", replies)
    assert bgs.delete_flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("web's flow gone: its reply untouched", replies[0].pkt, TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("web2's reply still web2's", replies[1].pkt, TC_ACT_OK, out=replies[1].out,
             stats=NAT),
    ])


# === flow life cycle ==============================================================================

def _open(bgs: BgsState, sport: int = CPORT, be=BLUE[0]) -> None:
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, sport, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be[0], sport, be[1]), stats=NEW_SYN)])


def test_flow_fin_both_sides_closes(bgs):
    """Client FIN (ingress) and backend FIN (egress) set FIN_CLIENT and FIN_SERVER; the last
    ACK still follows the entry."""
    web(bgs)
    be, bport = BLUE[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("client FIN", tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "FA", ack=ACK), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT)
    run_table(bgs, "egress", [
        Case("backend FIN", tcp(be, CLIENT, bport, CPORT, "FA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "FA", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT | model.BGS_FLOW_FIN_SERVER)
    run_table(bgs, "ingress", [
        Case("last ACK after both FINs", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK + 1),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK + 1), stats=HIT)])


def test_flow_backend_fin_first(bgs):
    """The backend may close first: FIN_SERVER, then FIN_CLIENT."""
    web(bgs)
    be, bport = BLUE[0]
    _open(bgs)
    bgs.egress(tcp(be, CLIENT, bport, CPORT, "FA"))
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER)
    bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA"))
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER | model.BGS_FLOW_FIN_CLIENT)


def test_flow_rst_from_backend_closes_and_counts_reset(bgs):
    """A backend RST sets the RST bit, is rewritten, and counts in the backend's resets."""
    slots = web(bgs)
    be, bport = BLUE[0]
    _open(bgs)
    run_table(bgs, "egress", [
        Case("backend RST", tcp(be, CLIENT, bport, CPORT, "RA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "RA", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_RST | model.BGS_FLOW_RST_SERVER)
    assert bgs.backend_stats(slots["blue"][0])["resets"] == 1


def test_flow_rst_from_client_closes(bgs):
    """A client RST is forwarded on the flow and sets the RST bit."""
    web(bgs)
    be, bport = BLUE[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("client RST", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R", seq=SEQ + 1), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "R", seq=SEQ + 1), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_RST)


@pytest.mark.parametrize("close", ["fin_both", "rst_client", "rst_backend"])
def test_ingress_syn_on_closed_flow_reopens_on_active_color(bgs, close):
    """A SYN on a closed flow (both FINs, or RST from either side) starts a new flow on the
    active color, counted FLOW_REOPEN, in the same entry; a non-SYN segment still follows the
    old entry."""
    slots = web(bgs)
    be, g = BLUE[0], GREEN[0]
    _open(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    if close == "fin_both":
        bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA"))
        bgs.egress(tcp(be[0], CLIENT, be[1], CPORT, "FA"))
    elif close == "rst_client":
        bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"))
    else:
        bgs.egress(tcp(be[0], CLIENT, be[1], CPORT, "R"))
    run_table(bgs, "ingress", [
        Case("ACK on the closed flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be[0], CPORT, be[1], "A", ack=ACK), stats=HIT),
        Case("SYN on the closed flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, seq=SEQ + 99),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], seq=SEQ + 99), stats=REOPEN),
        Case("ACK on the reopened flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], "A", ack=ACK), stats=HIT),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert (f.daddr, f.color, f.slot, f.state) == (g[0], model.BGS_GREEN, slots["green"][0],
                                                   model.BGS_FLOW_SYN)
    assert bgs.count("bgs_flows") == 1


def _age(bgs: BgsState, key: tuple, proto: int, idle_ns: int) -> None:
    """Make a flow look idle for longer than ``idle_ns``: its client last seen idle_ns + 1 s
    ago (bgs_flow.seen, in 2^BGS_SEEN_SHIFT ns units)."""
    f = bgs.flow(*key, proto)
    bgs.put_flow(*key, proto, f._replace(
        seen=model.seen_of(monotonic_coarse_ns() - idle_ns - 10**9)))


def test_ingress_syn_on_idle_flow_reopens(bgs):
    """A SYN on a TCP flow idle past tcp_idle reopens it on the active color; a non-SYN
    segment on it still follows it (it may be a long-quiet connection)."""
    web(bgs)
    _open(bgs)
    bgs.cli("flip", "web", "--no-check")
    _age(bgs, (CLIENT, VIP, CPORT, VIP_PORT), IPPROTO_TCP, bgs.config().tcp_idle_ns)
    b, g = BLUE[0], GREEN[0]
    run_table(bgs, "ingress", [
        Case("ACK on the idle flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=HIT),
    ])
    _age(bgs, (CLIENT, VIP, CPORT, VIP_PORT), IPPROTO_TCP, bgs.config().tcp_idle_ns)
    run_table(bgs, "ingress", [
        Case("SYN on the idle flow", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT, g[1]), stats=REOPEN),
    ])


def test_ingress_udp_idle_flow_reopens_by_drain(bgs):
    """A UDP entry idle past udp_idle is replaced by the next datagram (FLOW_REOPEN). While
    the last change drains (a flip: DRAINING | HAS_PREV) it is re-pinned where it was, by the
    previous share (second chance, counted SECOND_CHANCE too): a QUIC connection silent for
    longer than the timeout does not move. A new client without entry goes by the current
    share; once nothing drains, an idle entry is placed by the current share too."""
    dns(bgs)
    svc = bgs.services["dns"]
    b, g = BLUE[0][0], GREEN[0][0]
    key = (CLIENT, UDP_VIP, CPORT, UDP_PORT)
    reopen_prev = {**REOPEN, "SECOND_CHANCE": 1}
    run_table(bgs, "ingress", [
        Case("first datagram", udp(*key), XDP_PASS, out=udp(CLIENT, b, CPORT, 5353),
             stats=NEW_UDP)])
    bgs.cli("flip", "dns", "--no-check")
    sw = bgs.switch(svc)
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV and sw.prev_share == 0
    # (switch flags, where the idle entry's next datagram goes and what it counts, cases after)
    phases = [
        (sw.flags, "blue draining: blue again", b, reopen_prev, model.BGS_BLUE, [
            Case("another client, no entry: green", udp(CLIENT2, UDP_VIP, CPORT, UDP_PORT),
                 XDP_PASS, out=udp(CLIENT2, g, CPORT, 5353), stats=NEW_UDP)]),
        (model.BGS_SW_HAS_PREV, "blue drained: green", g, REOPEN, model.BGS_GREEN, []),
    ]
    for flags, desc, to, stats, color, more in phases:
        bgs.put_switch(svc, sw._replace(flags=flags))
        _age(bgs, key, IPPROTO_UDP, bgs.config().udp_idle_ns)
        run_table(bgs, "ingress", [
            Case(f"datagram after the idle time, {desc}", udp(*key), XDP_PASS,
                 out=udp(CLIENT, to, CPORT, 5353), stats=stats),
            Case("next datagram follows it", udp(*key), XDP_PASS,
                 out=udp(CLIENT, to, CPORT, 5353), stats=HIT), *more])
        f = bgs.flow(*key, IPPROTO_UDP)
        assert (f.color, f.state) == (color, 0), desc
        assert model.flow_age_ns(f.seen, monotonic_coarse_ns()) < 2 * 10**9, desc
    ss = bgs.service_stats(svc)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "reopen": 2, "second_chance": 1}


def test_ingress_service_deleted_untouched(bgs):
    """After `service del --force` the VIP is no longer ours: SYNs and segments of its old
    flows pass untouched, counted NOT_VIP."""
    web(bgs)
    _open(bgs)
    bgs.cli("service", "del", "web", "--force")
    run_table(bgs, "ingress", [
        Case("ACK of a flow of the deleted service",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS, stats={"NOT_VIP": 1}),
        Case("SYN to the deleted VIP", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_PASS,
             stats={"NOT_VIP": 1}),
    ])


def test_flow_stale_reply_from_previous_backend_keeps_reopened_flow(bgs):
    """After a client reuses a 5-tuple (RST, then SYN reopening it on green), a late FIN or RST
    from the old blue backend is not the flow's (its slot's backend is green's): untouched,
    REPLY_NO_FLOW, and the new green flow is not marked closed."""
    web(bgs)
    b, g = BLUE[0], GREEN[0]
    _open(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"))
    run_table(bgs, "ingress", [
        Case("SYN reopening the 5-tuple on green", tcp(CLIENT, VIP, CPORT, VIP_PORT),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1]), stats=REOPEN)])
    run_table(bgs, "egress", [
        Case("late FIN from blue", tcp(b[0], CLIENT, b[1], CPORT, "FA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("late RST from blue", tcp(b[0], CLIENT, b[1], CPORT, "R"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert (f.daddr, f.state) == (g[0], model.BGS_FLOW_SYN), (
        f"green flow state {f.state:#x} after stale FIN+RST from blue {b[0]}:{b[1]}")


@pytest.mark.parametrize("close", ["rst_client", "rst_backend", "fin_both"])
def test_egress_stale_reply_superseded(bgs, close):
    """The stale-reply case of issue 13: a client connects to the VIP from port p (blue
    backend B), the connection is closed (RST from either side, or both FINs), then the
    client connects from the same port p directly to B. B's SYN-ACK is not the flow's: a SYN
    from the backend on a closed flow is a new connection on the same addresses and ports, so
    it leaves untouched (counted REPLY_SUPERSEDED) and the entry is deleted; B's later packets
    find no flow and leave untouched too (REPLY_NO_FLOW). Before that, the closed flow's own
    late replies are still translated, and a retransmitted SYN-ACK on a live flow is the
    flow's; a SYN-ACK that does not come in by B's interface ends nothing (REPLY_WRONG_DEV).
    A new SYN to the VIP from p then opens a fresh flow."""
    slots = web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    _open(bgs)
    close_in, close_out = {
        "rst_client": ([("client RST", "R")], []),
        "rst_backend": ([], [("backend RST", "RA")]),
        "fin_both": ([("client FIN", "FA")], [("backend FIN", "FA")]),
    }[close]
    run_table(bgs, "egress", [
        Case("SYN-ACK of the live flow", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK,
                                             ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT),
        Case("SYN-ACK retransmitted: still the flow's", tcp(be, CLIENT, bport, CPORT, "SA",
                                                            seq=ACK, ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT)])
    run_table(bgs, "ingress", [
        Case(d, tcp(CLIENT, VIP, CPORT, VIP_PORT, f, ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, f, ack=ACK), stats=HIT) for d, f in close_in])
    run_table(bgs, "egress", [
        Case(d, tcp(be, CLIENT, bport, CPORT, f, seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, f, seq=ACK), stats=NAT)
        for d, f in close_out])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.state & model.BGS_FLOW_RST or (
        f.state & model.BGS_FLOW_BOTH_FIN == model.BGS_FLOW_BOTH_FIN), f
    run_table(bgs, "egress", [
        Case("late ACK of the closed flow: still the flow's", tcp(be, CLIENT, bport, CPORT,
                                                                 "A", seq=ACK + 1),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK + 1), stats=NAT)])
    run_table(bgs, "ingress", [
        Case("client SYN straight to B from the same port: not ours",
             tcp(CLIENT, be, CPORT, bport, seq=7000), XDP_PASS, stats={"NOT_VIP": 1})])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("a SYN-ACK as B's, in by another interface than B's: not B's, entry kept",
             tcp(be, CLIENT, bport, CPORT, "SA", seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_WRONG_DEV": 1}, ifindex=5)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) == f
    run_table(bgs, "egress", [
        Case("B's SYN-ACK to it: untouched, the closed flow's entry deleted",
             tcp(be, CLIENT, bport, CPORT, "SA", seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_SUPERSEDED": 1}),
        Case("B's SYN-ACK retransmitted: no flow", tcp(be, CLIENT, bport, CPORT, "SA",
                                                       seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("B's data: no flow", tcp(be, CLIENT, bport, CPORT, "PA", seq=9001, ack=7001,
                                      payload=b"direct"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) is None
    assert bgs.count("bgs_flows") == 0
    run_table(bgs, "ingress", [
        Case("client ACK straight to B: not ours", tcp(CLIENT, be, CPORT, bport, "A",
                                                       seq=7001, ack=9001), XDP_PASS,
             stats={"NOT_VIP": 1}),
        Case("a new SYN to the VIP from p: a fresh flow", tcp(CLIENT, VIP, CPORT, VIP_PORT,
                                                              seq=SEQ + 500), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, seq=SEQ + 500), stats=NEW_SYN)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == model.BGS_FLOW_SYN
    assert bgs.backend_stats(slots["blue"][0])["tx_packets"] == 3 + len(close_out)


def test_egress_expired_flow_reply_untouched(bgs):
    """Replies are translated only while their flow is not expired: a TCP flow idle past
    tcp_idle, a closed one idle past the closing timeout, a UDP flow idle past udp_idle:
    their replies leave untouched, counted REPLY_NO_FLOW, and the entry is left for gc (a
    SYN-ACK on the expired closed flow deletes nothing). A closed flow within the closing
    timeout still has its replies translated; a client segment on the idle TCP flow follows
    it and makes it live again."""
    web(bgs)
    dns(bgs)
    be, bport = BLUE[0]
    ub = BLUE[0][0]
    cfg = bgs.config()
    idle, closed, uidle = ((CLIENT, VIP, CPORT, VIP_PORT), (CLIENT, VIP, CPORT + 1, VIP_PORT),
                           (CLIENT, UDP_VIP, CPORT, UDP_PORT))
    _open(bgs)
    _open(bgs, sport=CPORT + 1)
    run_table(bgs, "ingress", [
        Case("client RST closes the second flow", tcp(*closed, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, "R"), stats=HIT),
        Case("UDP query", udp(*uidle), XDP_PASS, out=udp(CLIENT, ub, CPORT, 5353),
             stats=NEW_UDP)])
    run_table(bgs, "egress", [
        Case("reply of the closed flow, within the closing timeout",
             tcp(be, CLIENT, bport, CPORT + 1, "RA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT + 1, "RA"), stats=NAT)])
    _age(bgs, idle, IPPROTO_TCP, cfg.tcp_idle_ns)
    _age(bgs, closed, IPPROTO_TCP, cfg.closing_ns)
    _age(bgs, uidle, IPPROTO_UDP, cfg.udp_idle_ns)
    assert cfg.closing_ns < cfg.tcp_idle_ns
    entries = {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()}
    no_flow = {"REPLY_NO_FLOW": 1}
    run_table(bgs, "egress", [
        Case("reply of the TCP flow idle past tcp_idle", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, stats=no_flow),
        Case("reply of the closed flow past the closing timeout",
             tcp(be, CLIENT, bport, CPORT + 1, "A"), TC_ACT_OK, stats=no_flow),
        Case("SYN-ACK on the expired closed flow: not superseded, expired",
             tcp(be, CLIENT, bport, CPORT + 1, "SA"), TC_ACT_OK, stats=no_flow),
        Case("answer of the UDP flow idle past udp_idle", udp(ub, CLIENT, 5353, CPORT),
             TC_ACT_OK, stats=no_flow),
    ])
    assert {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()} == entries
    run_table(bgs, "ingress", [
        Case("client ACK on the idle TCP flow: follows it", tcp(*idle, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT)])
    run_table(bgs, "egress", [
        Case("reply of the TCP flow, live again", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A"), stats=NAT)])


def test_egress_reply_wrong_device_untouched(bgs):
    """A reply is the flow's only if it came in by the interface the flow's backend is
    reached by (bgs_flow.ifindex; 0 here, where no FIB lookup succeeds, as for a backend on
    the node itself): from anywhere else (skb->ingress_ifindex) it leaves untouched, counted
    REPLY_WRONG_DEV, and marks nothing on the flow; so do ICMP errors (ICMP_NO_FLOW). A flow
    whose backend is reached through interface 7 (the entry written so) takes replies from
    7 only. A client packet does not change the entry's interface while its next hop has
    none."""
    web(bgs)
    be, bport = BLUE[0]
    _open(bgs)
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.ifindex == 0
    wrong = {"REPLY_WRONG_DEV": 1}
    run_table(bgs, "egress", [
        Case("SYN-ACK, in by the flow's interface (0)", tcp(be, CLIENT, bport, CPORT, "SA"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT, ifindex=0),
        Case("SYN-ACK, in by interface 5", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             stats=wrong, ifindex=5),
        Case("FIN, in by interface 5: not marked", tcp(be, CLIENT, bport, CPORT, "FA"),
             TC_ACT_OK, stats=wrong, ifindex=5),
        Case("RST, in by interface 1", tcp(be, CLIENT, bport, CPORT, "R"), TC_ACT_OK,
             stats=wrong, ifindex=1),
        Case("ICMP error quoting the client's packet, in by interface 5",
             _icmp_error(be, CLIENT, _reply(CLIENT, be, CPORT, bport)), TC_ACT_OK,
             stats={"ICMP_NO_FLOW": 1}, ifindex=5),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == model.BGS_FLOW_SYN
    bgs.put_flow(CLIENT, VIP, CPORT, VIP_PORT, IPPROTO_TCP, f._replace(ifindex=7))
    run_table(bgs, "egress", [
        Case("data, in by interface 7", tcp(be, CLIENT, bport, CPORT, "PA", payload=b"d"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", payload=b"d"), stats=NAT,
             ifindex=7),
        Case("data sent by the node itself (0)", tcp(be, CLIENT, bport, CPORT, "PA",
                                                     payload=b"d"), TC_ACT_OK, stats=wrong),
        Case("ICMP error, in by interface 7",
             _icmp_error(be, CLIENT, _reply(CLIENT, be, CPORT, bport)), TC_ACT_OK,
             out=_icmp_error(VIP, CLIENT, _reply(CLIENT, VIP, CPORT, VIP_PORT)),
             stats={"ICMP_OUT": 1}, ifindex=7),
    ])
    run_table(bgs, "ingress", [
        Case("client ACK", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).ifindex == 7


def test_flow_reply_interface_from_next_hop(bgs):
    """A flow's reply interface (bgs_flow.ifindex) is its next hop's: 0 while the FIB lookup
    toward the backend fails (no route), the route's interface once there is one, even
    before its neighbour is resolved (the packet then goes to the stack: FWD_NO_NEIGH). A
    flow created before the route takes the interface from the next hop looked up again
    (after BGS_NEXTHOP_NS) by its client's next packet. Replies come in by that interface
    only."""
    web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    slot = bgs.find_slot("web", "blue", be, bport)
    _open(bgs, sport=CPORT)
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).ifindex == 0
    ifx = bgs.route("10.0.1.254/24")  # the blue backends' subnet
    time.sleep(model.BGS_NEXTHOP_NS / 1e9 + 0.2)  # the cached failed lookup expires
    no_neigh = {"FWD_NO_NEIGH": 1}
    run_table(bgs, "ingress", [
        Case("client ACK of the flow opened before the route",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK),
             stats={"VIP": 1, "FLOW_HIT": 1, **no_neigh}),
        Case("new SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport),
             stats={"VIP": 1, "SYN_MISS": 1, "FLOW_NEW": 1, **no_neigh}),
    ])
    nh = bgs.nexthop(slot)
    assert (nh.ifindex, nh.rc, nh.expires) == (ifx, model.BPF_FIB_LKUP_RET_NO_NEIGH, 0), nh
    for port in (CPORT, CPORT + 1):
        assert bgs.flow(CLIENT, VIP, port, VIP_PORT).ifindex == ifx, port
    run_table(bgs, "egress", [
        *[Case(f"reply to port {p}, in by the route's interface",
               tcp(be, CLIENT, bport, p, "A"), TC_ACT_OK,
               out=tcp(VIP, CLIENT, VIP_PORT, p, "A"), stats=NAT, ifindex=ifx)
          for p in (CPORT, CPORT + 1)],
        Case("reply sent by the node itself (0)", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, stats={"REPLY_WRONG_DEV": 1}),
    ])


def test_ingress_rst_miss_forwarded_without_entry(bgs):
    """An RST that misses the table opens nothing: it goes where its flow would be (the
    active color, or while a change drains the previous share's for a segment without SYN)
    and is counted RST_MISS, but no entry is written; the next segment of that tuple is a
    miss again. A SYN|RST counts as a first packet (SYN_MISS) and also writes nothing."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    rst = {"RST_MISS": 1, **FWD}
    run_table(bgs, "ingress", [
        Case("RST, no entry: to blue", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats={**NOSYN, **rst}),
        Case("RST again: a miss again", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats={**NOSYN, **rst}),
        Case("RST|ACK, no entry", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "RA", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT + 1, b[1], "RA", ack=ACK),
             stats={**NOSYN, **rst}),
        Case("SYN|RST, no entry", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "SR"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1], "SR"),
             stats={"VIP": 1, "SYN_MISS": 1, **rst}),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    run_table(bgs, "ingress", [
        Case("RST while blue drains: blue (second chance)",
             tcp(CLIENT, VIP, CPORT + 3, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 3, b[1], "R"), stats={**NOSYN, **rst}),
        Case("SYN|RST while blue drains: green", tcp(CLIENT, VIP, CPORT + 4, VIP_PORT, "SR"),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT + 4, g[1], "SR"),
             stats={"VIP": 1, "SYN_MISS": 1, **rst}),
        Case("ACK of the first tuple: re-pinned and recorded now", tcp(
            CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=REPIN),
    ])
    assert bgs.count("bgs_flows") == 1
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == 0


def test_ingress_creating_fin_recorded(bgs):
    """The packet that creates an entry records its own FIN: a SYN|FIN opens it with SYN and
    FIN_CLIENT, a FIN that misses is re-pinned with FIN_CLIENT; the backend's FIN then makes
    the flow closed, and the next SYN reopens it on the active color."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    run_table(bgs, "ingress", [
        Case("SYN|FIN, no entry", tcp(CLIENT, VIP, CPORT, VIP_PORT, "SF"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "SF"), stats=NEW_SYN),
        Case("FIN|ACK, no entry", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "FA", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT + 1, b[1], "FA", ack=ACK), stats=REPIN),
        Case("bare FIN, no entry", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "F"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1], "F"), stats=REPIN),
    ])
    fin = model.BGS_FLOW_FIN_CLIENT
    assert [bgs.flow(CLIENT, VIP, CPORT + i, VIP_PORT).state for i in range(3)] == [
        model.BGS_FLOW_SYN | fin, fin, fin]
    bgs.cli("flip", "web", "green", "--no-check")
    run_table(bgs, "egress", [
        Case("backend FIN", tcp(b[0], CLIENT, b[1], CPORT + 1, "FA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT + 1, "FA"), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT + 1, VIP_PORT).state == model.BGS_FLOW_BOTH_FIN
    run_table(bgs, "ingress", [
        Case("SYN on the closed flow: reopened on green", tcp(CLIENT, VIP, CPORT + 1,
                                                              VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT + 1, g[1]), stats=REOPEN),
        Case("SYN on the half-closed flow: follows it (still live)",
             tcp(CLIENT, VIP, CPORT + 2, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1]), stats=HIT),
    ])


def test_flow_rst_then_both_sides_live_again(bgs):
    """An RST stops a flow being live, but only until both sides send a segment without RST
    after it (an RST the other end ignored: spoofed, or out of window, RFC 5961): each side's
    segment sets its ON bit, and with both the RST and ON bits are cleared. A closed flow is
    reopened on the active color by the next SYN; a live one is followed by it and its
    backend's SYN-ACK is the flow's. An RST while an ON bit is set clears the ON bits."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    _open(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    SYN, RST = model.BGS_FLOW_SYN, model.BGS_FLOW_RST
    CON, SON = model.BGS_FLOW_CLIENT_ON, model.BGS_FLOW_SERVER_ON
    RSV = model.BGS_FLOW_RST_SERVER  # the backend's RST: the entry keeps the closing timeout

    def cin(desc, flags, stats=HIT, to=b):
        return ("ingress", Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT, flags, ack=ACK),
                                XDP_PASS, out=tcp(CLIENT, to[0], CPORT, to[1], flags, ack=ACK),
                                stats=stats))

    def bout(desc, flags):
        return ("egress", Case(desc, tcp(b[0], CLIENT, b[1], CPORT, flags, seq=ACK),
                               TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, flags, seq=ACK),
                               stats=NAT))

    steps = [
        (cin("client RST", "RA"), SYN | RST),
        (cin("client RST again: nothing changes", "R"), SYN | RST),
        (cin("client ACK after it", "A"), SYN | RST | CON),
        (cin("client data", "PA"), SYN | RST | CON),
        (bout("backend ACK: both sides went on", "A"), SYN),
        (cin("SYN on the live flow: follows it, blue", "S"), SYN),
        (bout("backend SYN-ACK on the live flow: the flow's", "SA"), SYN),
        (bout("backend RST", "RA"), SYN | RST | RSV),
        (bout("backend ACK after it", "A"), SYN | RST | RSV | SON),
        (cin("client RST: the ON bits go", "R"), SYN | RST | RSV),
        (bout("backend ACK", "A"), SYN | RST | RSV | SON),
        (cin("SYN on the closed flow: reopened on green", "S", stats=REOPEN, to=g), SYN),
    ]
    fails = []
    for (hook, case), state in steps:
        fails += run_case(bgs, hook, case)
        got = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state
        if got != state:
            fails.append(f"[{hook}] {case.desc}: state {got:#x}, want {state:#x}")
    assert not fails, "\n\n".join(fails)
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).color == model.BGS_GREEN


def test_ingress_l4_header_beyond_packet_untouched(bgs):
    """A TCP header whose options run past the frame is truncated (PARSE_L4); one that lies,
    whole or in part, beyond the IP length (in Ethernet padding) is not covered by it
    (PARSE_IP_LEN): nothing is read from padding. Both pass untouched."""
    web(bgs)
    web6(bgs)
    opts = {"options": [("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("NOP", None)]}
    run_table(bgs, "ingress", [
        Case("TCP doff=15, no options present",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, tcp_fields={"dataofs": 15}), XDP_PASS,
             stats={"PARSE_L4": 1}),
        Case("IP total length 20: the TCP header is padding",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, len=20), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
        Case("IP length 40 covers the TCP header but not its options (doff 8)",
             tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, tcp_fields=opts, len=40), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
        Case("IPv6 payload length 20 covers the TCP header but not its options",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, tcp_fields=opts, plen=20), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
    ])
    assert bgs.count("bgs_flows") == 0


def test_egress_parse_failures_untouched_uncounted(bgs):
    """Egress passes what it cannot parse untouched; the parse reasons are ingress counters,
    so only TX moves, even for replies of a live flow."""
    web(bgs)
    web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN)])
    reply = tcp(be, CLIENT, bport, CPORT, "A", vlan=5)
    run_table(bgs, "egress", [
        Case("tag cut", reply[:16], TC_ACT_OK),
        Case("tagged, IPv4 header cut", reply[:18 + 12], TC_ACT_OK),
        Case("IP length past the frame", tcp(be, CLIENT, bport, CPORT, "A", len=200),
             TC_ACT_OK),
        Case("TCP header in padding", tcp(be, CLIENT, bport, CPORT, "A", len=20), TC_ACT_OK),
        Case("TCP doff 4", tcp(be, CLIENT, bport, CPORT, "A", tcp_fields={"dataofs": 4}),
             TC_ACT_OK),
        Case("reply to port 0", tcp(be, CLIENT, bport, 0, "A"), TC_ACT_OK),
        Case("IPv6 payload length 0", tcp(b6, CLIENT6, bp6, CPORT, "A", plen=0), TC_ACT_OK),
        Case("IPv6 behind 7 extension headers", tcp(b6, CLIENT6, bp6, CPORT, "A",
                                                    ext=_v6_chain(7)), TC_ACT_OK),
    ])


# === flow-table insert limit ======================================================================

def _limits(bgs: BgsState, rate: int, burst: int) -> model.Config:
    """`bgswitch limits --new-flows RATE --burst BURST` (the node's), checked in bgs_config:
    the node's values, and each CPU's part of them, rounded up."""
    bgs.cli("limits", "--new-flows", str(rate), "--burst", str(burst))
    cfg = bgs.config()
    n = bpfsys.possible_cpus()
    assert (cfg.node_flow_rate, cfg.node_flow_burst) == (rate, burst)
    assert (cfg.new_flow_rate, cfg.new_flow_burst) == (model.cpu_part(rate, n),
                                                       model.cpu_part(burst, n))
    return cfg


INSERT = 1000000  # one insert in bgs_insert_budget's tokens (millionths)
# A new flow over the insert budget: forwarded where it belongs, counted, no entry written.
UNTRACKED = {"UNTRACKED": 1, **FWD}


def test_ingress_insert_limit_forwards_untracked(bgs):
    """Each miss that would write an entry first takes one insert from the CPU's budget (here 5
    inserts, its last refill set in the future so that it cannot refill during the test),
    before its backend is chosen: a creation that then fails (NO_BACKEND) has taken one. With
    none left the packet is still forwarded, placed by the current share or, for a non-SYN
    miss while the last change drains, by the previous one (second chance), counted
    UNTRACKED, and no entry is written; a TCP reopen's dead entry is deleted
    (test_ingress_untracked_reopen_keeps_connection_together). An RST that misses (RST_MISS)
    takes no insert;
    packets of existing flows need none. `--new-flows 0` lifts the limit. (The programs run
    on one CPU: unit_fixtures.)"""
    slots = web(bgs, blue=1, green=1)
    dns(bgs, blue=1, green=0)
    bgs.add_service("empty", EMPTY_VIP, VIP_PORT, "tcp")
    _limits(bgs, 1, 3)
    bgs.put_bucket(model.Bucket(monotonic_coarse_ns() + 3600 * 10**9, 5 * INSERT))
    be, bport = BLUE[0]
    g, gport = GREEN[0]
    svc = bgs.services

    def syn(i, over=False, client=CLIENT, to=BLUE[0], reopen=False):
        stats = {"VIP": 1, **({"FLOW_REOPEN": 1} if reopen else {"SYN_MISS": 1}),
                 **(UNTRACKED if over else {"FLOW_NEW": 1, **FWD})}
        return Case(f"SYN {i}" + (": over the limit" if over else ""),
                    tcp(client, VIP, CPORT + i, VIP_PORT), XDP_PASS,
                    out=tcp(client, to[0], CPORT + i, to[1]), stats=stats)

    run_table(bgs, "ingress", [
        Case("SYN to a service without backend: NO_BACKEND, an insert taken",
             tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
        syn(0), syn(1), syn(2),
        Case("RST that misses: forwarded, no entry, no insert taken",
             tcp(CLIENT, VIP, CPORT + 5, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 5, bport, "R"), stats={**NOSYN, "RST_MISS": 1,
                                                                  **FWD}),
        syn(3),
        syn(6, over=True),
        Case("UDP new flow over the limit", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats={"VIP": 1, **UNTRACKED}),
        Case("non-SYN miss over the limit: re-pinned to the active color, no entry",
             tcp(CLIENT, VIP, CPORT + 7, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 7, bport, "A", ack=ACK), stats={**NOSYN, **UNTRACKED}),
        Case("ACK of an existing flow: no insert needed",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT),
        Case("client RST closes flow 1", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, "R"), stats=HIT),
        syn(1, over=True, reopen=True),
        syn(6, over=True),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    sw = bgs.switch(svc["web"])
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    run_table(bgs, "ingress", [
        # Untracked while blue drains, its next segments will be re-pinned to blue: so is it.
        syn(8, over=True, to=BLUE[0]),
        Case("non-SYN miss over the limit while blue drains: second chance, blue",
             tcp(CLIENT, VIP, CPORT + 9, VIP_PORT, "PA", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 9, bport, "PA", ack=ACK),
             stats={**NOSYN, **UNTRACKED}),
    ])
    assert bgs.bucket().tokens == 0
    assert bgs.count("bgs_flows") == 3
    for c in (1, 5, 6, 7, 8, 9):
        assert bgs.flow(CLIENT, VIP, CPORT + c, VIP_PORT) is None, c
    assert bgs.flow(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP) is None
    zero = dict.fromkeys(model.SERVICE_STATS, 0)
    assert bgs.service_stats(svc["web"]) == {**zero, "syn_miss": 7, "nosyn_miss": 3,
                                             "second_chance": 3, "reopen": 1}
    assert bgs.service_stats(svc["dns"]) == zero
    assert bgs.service_stats(svc["empty"]) == {**zero, "syn_miss": 1, "drop_NO_BACKEND": 1}
    # new_flows counts the entries written, and the first packets (SYN) placed without one.
    assert bgs.backend_stats(slots["blue"][0])["new_flows"] == 8
    assert bgs.backend_stats(slots["green"][0])["new_flows"] == 0

    _limits(bgs, 0, 3)
    run_table(bgs, "ingress", [
        *[syn(20 + i, client=CLIENT2, to=GREEN[0]) for i in range(8)],
        Case("no limit: UDP", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=NEW_UDP),
        syn(1, to=GREEN[0]),
    ])
    assert bgs.count("bgs_flows") == 3 + 8 + 2
    assert bgs.flow(CLIENT, VIP, CPORT + 1, VIP_PORT).color == model.BGS_GREEN


# === IPv6 services ================================================================================

def test_ingress_ipv6_vip_rewrite(bgs):
    """IPv6 VIPs: TCP and UDP to the VIP go to an IPv6 backend exactly as IPv4 does (SYN
    creates, later segments follow, a non-SYN miss is re-pinned), the TCP/UDP checksum
    updated by difference (no IP header checksum in IPv6), a UDP checksum of 0 left 0, a
    result of 0 sent as 0xffff; flow entries are keyed by the IPv6 client address."""
    slots = web6(bgs)
    uslots = dns6(bgs)
    b, bp = BLUE6[0]
    ub = BLUE6[0][0]
    ffff = _udp6_payload_for_ffff(CLIENT6, ub, CPORT, 5353)
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, payload=b"hello"), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT, bp, payload=b"hello"), stats=NEW_SYN),
        Case("ACK with data, tagged", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, "PA", ack=ACK,
                                          payload=b"GET /", vlan=7), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT, bp, "PA", ack=ACK, payload=b"GET /", vlan=7),
             stats=HIT),
        Case("ACK behind a hop-by-hop header", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, "A",
                                                   ext=IPv6ExtHdrHopByHop()), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT, bp, "A", ext=IPv6ExtHdrHopByHop()), stats=HIT),
        Case("ACK without flow: re-pinned to blue", tcp(CLIENT6_2, VIP6, CPORT, VIP_PORT, "A"),
             XDP_PASS, out=tcp(CLIENT6_2, b, CPORT, bp, "A"), stats=REPIN),
        Case("UDP datagram", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT, b"query"), XDP_PASS,
             out=udp(CLIENT6, ub, CPORT, 5353, b"query"), stats=NEW_UDP),
        Case("UDP without checksum", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT, b"q0", chksum=0),
             XDP_PASS, out=udp(CLIENT6, ub, CPORT, 5353, b"q0", chksum=0), stats=HIT),
        Case("UDP whose sum becomes 0xffff", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT, ffff),
             XDP_PASS, out=udp(CLIENT6, ub, CPORT, 5353, ffff), stats=HIT),
        Case("IPv4-mapped look-alike to the VIP's v4 twin: not ours",
             tcp(CLIENT6, "::ffff:10.0.0.100", CPORT, VIP_PORT), XDP_PASS,
             stats={"NOT_VIP": 1}),
    ])
    f = bgs.flow(CLIENT6, VIP6, CPORT, VIP_PORT)
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (
        b, bp, model.BGS_BLUE, slots["blue"][0], model.BGS_FLOW_SYN)
    f = bgs.flow(CLIENT6_2, VIP6, CPORT, VIP_PORT)
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (
        b, bp, model.BGS_BLUE, slots["blue"][0], 0)
    f = bgs.flow(CLIENT6, UDP_VIP6, CPORT, UDP_PORT, IPPROTO_UDP)
    assert (f.daddr, f.dport, f.slot) == (ub, 5353, uslots["blue"][0])
    assert model.pack_conn_key(CLIENT6, CPORT, bgs.services["web6"], IPPROTO_TCP) in set(
        bgs.map("bgs_flows").keys())
    assert bgs.count("bgs_flows") == 3
    assert bgs.backend_stats(slots["blue"][0])["rx_bytes"] == sum(
        40 + Ether(c).getlayer(IPv6).plen for c in (
            tcp(CLIENT6, VIP6, CPORT, VIP_PORT, payload=b"hello"),
            tcp(CLIENT6, VIP6, CPORT, VIP_PORT, "PA", ack=ACK, payload=b"GET /"),
            tcp(CLIENT6, VIP6, CPORT, VIP_PORT, "A", ext=IPv6ExtHdrHopByHop()),
            tcp(CLIENT6_2, VIP6, CPORT, VIP_PORT, "A")))
    assert bgs.backend_stats(slots["blue"][0])["new_flows"] == 2


def _udp6_payload_for_ffff(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 2-byte payload that makes an IPv6 UDP checksum compute to 0 (sent as 0xffff)."""
    c0 = UDP(bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport)
                   / Raw(b"\0\0"))[40:])
    payload = struct.pack("!H", c0.chksum)
    check = IPv6(bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)))
    assert check[UDP].chksum == 0xFFFF, "test set-up: payload search failed"
    return payload


def test_ingress_ipv6_flip_and_choice(bgs):
    """IPv6 new flows take the active color and the backend its lookup table names at
    position hash % M (model.flow_hash of the IPv6 5-tuple); a flip moves new flows only."""
    slots = web6(bgs, blue=2, green=1)
    cases, now = [], Chooser(bgs, 0)
    for i in range(12):
        c = f"fd10::{i + 10:x}"
        color, slot = now.slot(c, VIP6, CPORT, VIP_PORT)
        assert color == model.BGS_BLUE
        a, p = BLUE6[slots["blue"].index(slot)]
        cases.append(Case(f"SYN from {c}: slot {slot}", tcp(c, VIP6, CPORT, VIP_PORT),
                          XDP_PASS, out=tcp(c, a, CPORT, p), stats=NEW_SYN))
    run_table(bgs, "ingress", cases)
    bgs.cli("flip", "web6", "--no-check")
    g, gp = GREEN6[0]
    old = Ether(cases[0].out)
    run_table(bgs, "ingress", [
        Case("old flow after the flip", tcp("fd10::a", VIP6, CPORT, VIP_PORT, "A"), XDP_PASS,
             out=tcp("fd10::a", old[IPv6].dst, CPORT, old[TCP].dport, "A"), stats=HIT),
        Case("new flow after the flip", tcp("fd10::99", VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp("fd10::99", g, CPORT, gp), stats=NEW_SYN),
    ])


def test_egress_ipv6_reply_reverse_nat(bgs):
    """IPv6 replies leave with the VIP as source address and port (TCP and UDP, checksum 0
    kept), FIN/RST marked on the flow; a backend address to a client without flow is counted
    REPLY_NO_FLOW."""
    slots = web6(bgs)
    dns6(bgs)
    b, bp = BLUE6[0]
    ub = BLUE6[0][0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT, bp), stats=NEW_SYN),
        Case("query", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT6, ub, CPORT, 5353), stats=NEW_UDP),
    ])
    run_table(bgs, "egress", [
        Case("SYN|ACK", tcp(b, CLIENT6, bp, CPORT, "SA", seq=ACK, ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT),
        Case("data behind a destination options header",
             tcp(b, CLIENT6, bp, CPORT, "PA", payload=b"x" * 99, ext=IPv6ExtHdrDestOpt()),
             TC_ACT_OK, out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT, "PA", payload=b"x" * 99,
                                ext=IPv6ExtHdrDestOpt()), stats=NAT),
        Case("answer", udp(ub, CLIENT6, 5353, CPORT, b"answer"), TC_ACT_OK,
             out=udp(UDP_VIP6, CLIENT6, UDP_PORT, CPORT, b"answer"), stats=NAT),
        Case("answer without checksum", udp(ub, CLIENT6, 5353, CPORT, b"a", chksum=0),
             TC_ACT_OK, out=udp(UDP_VIP6, CLIENT6, UDP_PORT, CPORT, b"a", chksum=0),
             stats=NAT),
        Case("FIN", tcp(b, CLIENT6, bp, CPORT, "FA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT, "FA"), stats=NAT),
        Case("to another client", tcp(b, CLIENT6_2, bp, CPORT, "A"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
    ])
    assert bgs.flow(CLIENT6, VIP6, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER)
    assert bgs.backend_stats(slots["blue"][0])["tx_packets"] == 3


def test_vlan_double_tag_both_directions(bgs):
    """Two tags (802.1ad + 802.1Q, or 802.1Q twice) in front of IPv4 and IPv6: the packet is
    rewritten behind them both ways, the tags kept."""
    web(bgs)
    web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]

    def qq(inner, outer_type=Dot1AD, outer_vlan=100, inner_vlan=10):
        return bytes(_l2() / outer_type(vlan=outer_vlan) / Dot1Q(vlan=inner_vlan) / inner)

    def v4(src, dst, sport, dport, flags):
        return IP(src=src, dst=dst, id=7) / TCP(sport=sport, dport=dport, flags=flags)

    def v6(src, dst, sport, dport, flags):
        return IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)

    run_table(bgs, "ingress", [
        Case("802.1ad + 802.1Q, IPv4 SYN", qq(v4(CLIENT, VIP, CPORT, VIP_PORT, "S")), XDP_PASS,
             out=qq(v4(CLIENT, be, CPORT, bport, "S")), stats=NEW_SYN),
        Case("802.1Q + 802.1Q, IPv4 ACK", qq(v4(CLIENT, VIP, CPORT, VIP_PORT, "A"), Dot1Q),
             XDP_PASS, out=qq(v4(CLIENT, be, CPORT, bport, "A"), Dot1Q), stats=HIT),
        Case("802.1ad + 802.1Q, IPv6 SYN", qq(v6(CLIENT6, VIP6, CPORT, VIP_PORT, "S"), Dot1AD,
                                              4094, 1), XDP_PASS,
             out=qq(v6(CLIENT6, b6, CPORT, bp6, "S"), Dot1AD, 4094, 1), stats=NEW_SYN),
    ])
    run_table(bgs, "egress", [
        Case("802.1ad + 802.1Q, IPv4 reply", qq(v4(be, CLIENT, bport, CPORT, "SA")), TC_ACT_OK,
             out=qq(v4(VIP, CLIENT, VIP_PORT, CPORT, "SA")), stats=NAT),
        Case("802.1Q + 802.1Q, IPv6 reply", qq(v6(b6, CLIENT6, bp6, CPORT, "SA"), Dot1Q),
             TC_ACT_OK, out=qq(v6(VIP6, CLIENT6, VIP_PORT, CPORT, "SA"), Dot1Q), stats=NAT),
    ])


# === ICMP errors ==================================================================================

def _reply(src, dst, sport, dport, proto=IPPROTO_TCP, payload=b"0123456789abcdef", **ipf):
    """The packet an ICMP error quotes, whole (scapy computes its checksums)."""
    ip = (IPv6(src=src, dst=dst, hlim=33, **ipf) if ":" in src
          else IP(src=src, dst=dst, id=0x5151, ttl=33, **ipf))
    l4 = (TCP(sport=sport, dport=dport, flags="PA", seq=ACK, ack=SEQ) if proto == IPPROTO_TCP
          else UDP(sport=sport, dport=dport))
    return bytes(ip / l4 / Raw(payload))


def _icmp_error(src, dst, quote: bytes, kind: str = "frag", vlan=None) -> bytes:
    """An ICMP error from ``src`` to ``dst`` quoting ``quote``: IPv4 destination unreachable,
    fragmentation needed (kind "frag"), port unreachable ("port"), time exceeded ("ttl");
    IPv6 packet too big ("frag"), destination unreachable ("port"), time exceeded ("ttl").
    Every checksum (outer IPv4, ICMP / ICMPv6 with its pseudo-header) by scapy."""
    if ":" in src:
        icmp = {"frag": ICMPv6PacketTooBig(mtu=1280), "port": ICMPv6DestUnreach(code=4),
                "ttl": ICMPv6TimeExceeded()}[kind]
        return bytes(_l2(vlan) / IPv6(src=src, dst=dst, hlim=60) / icmp / Raw(quote))
    icmp = {"frag": ICMP(type=3, code=4, nexthopmtu=1400), "port": ICMP(type=3, code=3),
            "ttl": ICMP(type=11, code=0)}[kind]
    return bytes(_l2(vlan) / IP(src=src, dst=dst, id=0x0EEE, ttl=60) / icmp / Raw(quote))


def _icmp_flows(bgs: BgsState) -> Dict[str, List[int]]:
    """The flows the ICMP tests quote: services web, dns and web6, the TCP flow of _open, a UDP
    query and an IPv6 SYN (each checked on its way in). Returns web's slots."""
    slots = web(bgs)
    dns(bgs)
    web6(bgs)
    b6, bp6 = BLUE6[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("UDP query", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=NEW_UDP),
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN),
    ])
    assert bgs.count("bgs_flows") == 3  # one entry per connection, both ways
    return slots


def test_icmp_errors_ingress_translated_to_backend(bgs):
    """An ICMP error sent to a VIP about one of our replies (it quotes VIP:port -> client)
    goes to the flow's backend: outer destination, quoted source address and port rewritten;
    the quoted transport checksum (when quoted), the quoted IPv4 header checksum, the outer
    IPv4 checksum and the ICMP/ICMPv6 checksum (v6: pseudo-header) all right, each expected
    frame built by scapy from scratch. Counted ICMP_IN and in the backend's rx."""
    slots = _icmp_flows(bgs)
    be, bport = BLUE[0]
    ube = BLUE[0][0]
    b6, bp6 = BLUE6[0]
    vip_reply = _reply(VIP, CLIENT, VIP_PORT, CPORT)
    be_reply = _reply(be, CLIENT, bport, CPORT)
    uvip = _reply(UDP_VIP, CLIENT, UDP_PORT, CPORT, IPPROTO_UDP)
    ube_r = _reply(ube, CLIENT, 5353, CPORT, IPPROTO_UDP)
    uvip0 = bytes(IP(src=UDP_VIP, dst=CLIENT, id=3) / UDP(sport=UDP_PORT, dport=CPORT,
                                                          chksum=0) / Raw(b"zz"))
    ube0 = bytes(IP(src=ube, dst=CLIENT, id=3) / UDP(sport=5353, dport=CPORT, chksum=0)
                 / Raw(b"zz"))
    opt_vip = _reply(VIP, CLIENT, VIP_PORT, CPORT, options=[IPOption_Router_Alert()])
    opt_be = _reply(be, CLIENT, bport, CPORT, options=[IPOption_Router_Alert()])
    v6_vip = _reply(VIP6, CLIENT6, VIP_PORT, CPORT)
    v6_be = _reply(b6, CLIENT6, bp6, CPORT)
    icmp_in = {"ICMP_IN": 1}
    cases = [
        Case("frag needed, 28-byte quote (8 bytes of TCP: no TCP checksum)",
             _icmp_error(ROUTER, VIP, vip_reply[:28]), XDP_PASS,
             out=_icmp_error(ROUTER, be, be_reply[:28]), stats=icmp_in),
        Case("frag needed, whole reply quoted (TCP checksum too)",
             _icmp_error(ROUTER, VIP, vip_reply), XDP_PASS,
             out=_icmp_error(ROUTER, be, be_reply), stats=icmp_in),
        Case("time exceeded, 40-byte quote, tagged", _icmp_error(ROUTER, VIP, vip_reply[:40],
                                                                 "ttl", vlan=5), XDP_PASS,
             out=_icmp_error(ROUTER, be, be_reply[:40], "ttl", vlan=5), stats=icmp_in),
        Case("port unreachable from the client itself",
             _icmp_error(CLIENT, VIP, vip_reply[:36], "port"), XDP_PASS,
             out=_icmp_error(CLIENT, be, be_reply[:36], "port"), stats=icmp_in),
        Case("quoted header with options", _icmp_error(ROUTER, VIP, opt_vip), XDP_PASS,
             out=_icmp_error(ROUTER, be, opt_be), stats=icmp_in),
        Case("about a UDP reply", _icmp_error(ROUTER, UDP_VIP, uvip), XDP_PASS,
             out=_icmp_error(ROUTER, ube, ube_r), stats=icmp_in),
        Case("about a UDP reply without checksum (stays 0)", _icmp_error(ROUTER, UDP_VIP, uvip0),
             XDP_PASS, out=_icmp_error(ROUTER, ube, ube0), stats=icmp_in),
        Case("IPv6 packet too big, whole reply quoted", _icmp_error(ROUTER6, VIP6, v6_vip),
             XDP_PASS, out=_icmp_error(ROUTER6, b6, v6_be), stats=icmp_in),
        Case("IPv6 packet too big, 48-byte quote", _icmp_error(ROUTER6, VIP6, v6_vip[:48]),
             XDP_PASS, out=_icmp_error(ROUTER6, b6, v6_be[:48]), stats=icmp_in),
        Case("IPv6 time exceeded, tagged", _icmp_error(ROUTER6, VIP6, v6_vip[:60], "ttl",
                                                       vlan=9), XDP_PASS,
             out=_icmp_error(ROUTER6, b6, v6_be[:60], "ttl", vlan=9), stats=icmp_in),
    ]
    run_table(bgs, "ingress", cases)
    st = bgs.backend_stats(slots["blue"][0])
    assert st["rx_packets"] == 1 + 5  # the SYN and the five errors about web's flow


def test_icmp_errors_ingress_not_translated(bgs):
    """ICMP that is not an error about one of our flows passes untouched: quoting a VIP:port
    with no flow to that client (ICMP_NO_FLOW), not sent to the quoted VIP (ICMP_NO_FLOW);
    echo, redirect, errors quoting a non-VIP, a later fragment, or ICMP inside the wrong
    family (NOT_VIP)."""
    web(bgs)
    web6(bgs)
    _open(bgs)
    vip_reply = _reply(VIP, CLIENT, VIP_PORT, CPORT)
    no_flow = {"ICMP_NO_FLOW": 1}
    nv = {"NOT_VIP": 1}
    run_table(bgs, "ingress", [
        Case("about a reply to another client", _icmp_error(
            ROUTER, VIP, _reply(VIP, CLIENT2, VIP_PORT, CPORT)), XDP_PASS, stats=no_flow),
        Case("about a reply from the VIP's other port (no flow)", _icmp_error(
            ROUTER, VIP, _reply(VIP, CLIENT, VIP_PORT, CPORT + 1)), XDP_PASS, stats=no_flow),
        Case("sent to another address than the quoted VIP", _icmp_error(ROUTER, OTHER_IP,
                                                                        vip_reply),
             XDP_PASS, stats=no_flow),
        Case("IPv6, no flow", _icmp_error(ROUTER6, VIP6, _reply(VIP6, CLIENT6, VIP_PORT,
                                                                CPORT)), XDP_PASS,
             stats=no_flow),
        Case("quoting a non-VIP source", _icmp_error(ROUTER, VIP, _reply(
            OTHER_IP, CLIENT, VIP_PORT, CPORT)), XDP_PASS, stats=nv),
        Case("quoting a later fragment", _icmp_error(ROUTER, VIP, bytes(
            IP(src=VIP, dst=CLIENT, frag=10, proto=6) / Raw(bytes(20)))), XDP_PASS, stats=nv),
        Case("quote cut inside the TCP ports", _icmp_error(ROUTER, VIP, vip_reply[:26]),
             XDP_PASS, stats=nv),
        Case("echo request", bytes(_l2() / IP(src=CLIENT, dst=VIP) / ICMP()), XDP_PASS,
             stats=nv),
        Case("redirect (type 5) quoting our reply", bytes(
            _l2() / IP(src=ROUTER, dst=VIP) / ICMP(type=5, code=1) / Raw(vip_reply)),
             XDP_PASS, stats=nv),
        Case("ICMPv6 echo", bytes(_l2() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest()),
             XDP_PASS, stats=nv),
        Case("ICMP (v4 protocol 1) in IPv6", bytes(_l2() / IPv6(src=ROUTER6, dst=VIP6, nh=1)
                                                   / Raw(bytes(ICMP(type=3, code=4))
                                                         + vip_reply)), XDP_PASS, stats=nv),
    ])


def test_icmp_errors_egress_translated_to_vip(bgs):
    """An ICMP error leaving about a client's packet (it quotes client -> backend:port) quotes
    the VIP:port instead, and the backend's own outer source address becomes the VIP; a
    router's stays. Every checksum checked against scapy. Counted ICMP_OUT and in the
    backend's tx; without a flow, or come in by another interface than the flow's
    (skb->ingress_ifindex), ICMP_NO_FLOW; others untouched and uncounted."""
    slots = _icmp_flows(bgs)
    be, bport = BLUE[0]
    ube = BLUE[0][0]
    b6, bp6 = BLUE6[0]
    to_be = _reply(CLIENT, be, CPORT, bport)
    to_vip = _reply(CLIENT, VIP, CPORT, VIP_PORT)
    uto_be = _reply(CLIENT, ube, CPORT, 5353, IPPROTO_UDP)
    uto_vip = _reply(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP)
    v6_be = _reply(CLIENT6, b6, CPORT, bp6)
    v6_vip = _reply(CLIENT6, VIP6, CPORT, VIP_PORT)
    out = {"ICMP_OUT": 1}
    run_table(bgs, "egress", [
        Case("frag needed from the backend, 28-byte quote", _icmp_error(be, CLIENT, to_be[:28]),
             TC_ACT_OK, out=_icmp_error(VIP, CLIENT, to_vip[:28]), stats=out),
        Case("frag needed from the backend, whole packet quoted",
             _icmp_error(be, CLIENT, to_be), TC_ACT_OK, out=_icmp_error(VIP, CLIENT, to_vip),
             stats=out),
        Case("time exceeded from a router behind the node (outer source kept)",
             _icmp_error(ROUTER, CLIENT, to_be[:48], "ttl"), TC_ACT_OK,
             out=_icmp_error(ROUTER, CLIENT, to_vip[:48], "ttl"), stats=out),
        Case("UDP port unreachable from the backend", _icmp_error(ube, CLIENT, uto_be, "port"),
             TC_ACT_OK, out=_icmp_error(UDP_VIP, CLIENT, uto_vip, "port"), stats=out),
        Case("IPv6 packet too big from the backend", _icmp_error(b6, CLIENT6, v6_be),
             TC_ACT_OK, out=_icmp_error(VIP6, CLIENT6, v6_vip), stats=out),
        Case("IPv6 packet too big from a router, 48-byte quote, tagged",
             _icmp_error(ROUTER6, CLIENT6, v6_be[:48], vlan=3), TC_ACT_OK,
             out=_icmp_error(ROUTER6, CLIENT6, v6_vip[:48], vlan=3), stats=out),
        Case("quoting a packet of a client with no flow",
             _icmp_error(be, CLIENT2, _reply(CLIENT2, be, CPORT, bport)), TC_ACT_OK,
             stats={"ICMP_NO_FLOW": 1}),
        Case("frag needed from the backend, in by another interface than the flow's",
             _icmp_error(be, CLIENT, to_be), TC_ACT_OK, stats={"ICMP_NO_FLOW": 1}, ifindex=5),
        Case("quoting a packet to a port that is no backend's",
             _icmp_error(be, CLIENT, _reply(CLIENT, be, CPORT, 22)), TC_ACT_OK),
        Case("echo reply from the backend", bytes(_l2() / IP(src=be, dst=CLIENT)
                                                  / ICMP(type=0)), TC_ACT_OK),
    ])
    st = bgs.backend_stats(slots["blue"][0])
    assert st["tx_packets"] == 3


# === regressions found by tests/test_differential.py ==============================================
#
# Each case states what the specification requires, on the fixed packets that once showed the
# data plane doing otherwise.

def _with_ip_len(frame: bytes, l3: int, length: int) -> bytes:
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



@pytest.mark.parametrize("which", ["in-v4-quote-in-padding", "in-v6-ports-in-padding",
                                   "in-v4-icmp-header-in-padding", "out-v6-quote-in-padding"])
def test_ingress_icmp_quote_beyond_ip_length_untouched(bgs, which):
    """An ICMP error whose IP length ends before the quote (or before the ICMP header) must
    be left alone: the quote lies in padding (NOT_VIP), the ICMP header too (PARSE_IP_LEN)."""
    web(bgs)
    web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    _open(bgs)
    run_table(bgs, "ingress", [
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN)])
    if which == "in-v4-quote-in-padding":  # IP length 28: ICMP header only
        pkt = _with_ip_len(_icmp_error(ROUTER, VIP, _reply(VIP, CLIENT, VIP_PORT, CPORT)), 14,
                           28)
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"NOT_VIP": 1})])
    elif which == "in-v6-ports-in-padding":
        # A well-formed ICMPv6 error (checksum right) quoting only an IPv6 header, followed by
        # padding that happens to continue the quote: translating it would also leave its
        # checksum wrong (the padding is not covered by it).
        quote = _reply(VIP6, CLIENT6, VIP_PORT, CPORT)
        pkt = _icmp_error(ROUTER6, VIP6, quote[:40]) + quote[40:]
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"NOT_VIP": 1})])
    elif which == "in-v4-icmp-header-in-padding":  # IP length 24: half an ICMP header
        pkt = _with_ip_len(_icmp_error(ROUTER, VIP, _reply(VIP, CLIENT, VIP_PORT, CPORT)), 14,
                           24)
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"PARSE_IP_LEN": 1})])
    else:  # egress: payload length 20, the quote outside
        pkt = _with_ip_len(_icmp_error(b6, CLIENT6, _reply(CLIENT6, b6, CPORT, bp6)), 14, 20)
        run_table(bgs, "egress", [Case(which, pkt, TC_ACT_OK)])



@pytest.mark.parametrize("which", ["no-record", "with-record"])
def test_ingress_v6_fragment_header_beyond_payload_length_untouched(bgs, which):
    """An IPv6 packet whose payload length (here 8) ends before its fragment header (behind
    a hop-by-hop header) must pass untouched as PARSE_IP_LEN, record or not."""
    web6(bgs)
    b, bp = BLUE6[0]
    if which == "with-record":
        run_table(bgs, "ingress", [
            Case("first fragment", _f6(CLIENT6, VIP6, FRAG_ID6, 0, 1, 6,
                                       TCP(sport=CPORT, dport=VIP_PORT, flags="S")), XDP_PASS,
                 out=_f6(CLIENT6, b, FRAG_ID6, 0, 1, 6, TCP(sport=CPORT, dport=bp, flags="S")),
                 stats={**NEW_SYN, "FRAG_FIRST": 1})])
    later = ip6_frame(CLIENT6, VIP6, Raw(b"p" * 16), ext=IPv6ExtHdrHopByHop()
                      / IPv6ExtHdrFragment(offset=5, m=0, id=FRAG_ID6, nh=6))
    run_table(bgs, "ingress", [Case(f"later fragment, header in padding ({which})",
                                    _with_ip_len(later, 14, 8), XDP_PASS,
                                    stats={"PARSE_IP_LEN": 1})])


# === insert budget and backend references (regressions found while testing them) ============

def test_ingress_untracked_reopen_keeps_connection_together(bgs):
    """Over the insert budget, a reopen is forwarded without an entry, and the connection's
    next packets go where its first one went: a TCP SYN on a closed blue flow goes to green
    (the share now, nothing draining) and the closed entry is deleted, so that the client's
    ACK is a miss placed by the same share, not sent after the old entry to blue. A UDP
    datagram on an idle entry keeps that entry: each next datagram is a reopen again, placed
    the same way (by the previous share while the change drains, else by the share now)."""
    web(bgs, blue=1, green=1)
    dns(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    ub, ug = BLUE[0][0], GREEN[0][0]
    _open(bgs)
    ukey = (CLIENT, UDP_VIP, CPORT, UDP_PORT)
    run_table(bgs, "ingress", [
        Case("client RST closes the blue flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats=HIT),
        Case("UDP query", udp(*ukey), XDP_PASS, out=udp(CLIENT, ub, CPORT, 5353),
             stats=NEW_UDP)])
    for name in ("web", "dns"):
        bgs.cli("flip", name, "green", "--no-check")
    web_sw = bgs.switch(bgs.services["web"])
    bgs.put_switch(bgs.services["web"], web_sw._replace(flags=model.BGS_SW_HAS_PREV))
    bgs.put_bucket(model.Bucket(monotonic_coarse_ns() + 3600 * 10**9, 0))
    _age(bgs, ukey, IPPROTO_UDP, bgs.config().udp_idle_ns)
    uprev = {"VIP": 1, "FLOW_REOPEN": 1, "SECOND_CHANCE": 1, **UNTRACKED}
    run_table(bgs, "ingress", [
        Case("SYN reopening the closed flow, over the budget: green",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, seq=SEQ + 9), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT, g[1], seq=SEQ + 9),
             stats={"VIP": 1, "FLOW_REOPEN": 1, **UNTRACKED}),
        Case("its ACK: a miss, green too", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], "A", ack=ACK),
             stats={**NOSYN, **UNTRACKED}),
        Case("UDP on the idle entry while blue drains: blue", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=uprev),
        Case("next datagram: blue again", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=uprev),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) is None
    assert bgs.flow(*ukey, IPPROTO_UDP).color == model.BGS_BLUE
    dns_sw = bgs.switch(bgs.services["dns"])
    bgs.put_switch(bgs.services["dns"], dns_sw._replace(flags=model.BGS_SW_HAS_PREV))
    run_table(bgs, "ingress", [
        Case(f"UDP on the idle entry, blue drained: green ({i})", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ug, CPORT, 5353), stats={"VIP": 1, "FLOW_REOPEN": 1, **UNTRACKED})
        for i in range(2)])


def test_flow_insert_budget_refill_rate(bgs):
    """Each CPU's budget refills at its part of the node's rate, up to its part of the burst
    + 1: with a node limit of 4 per second per CPU and a burst of 2 per CPU and an empty
    budget, a SYN at once goes untracked; 1 s later (4 inserts' worth) exactly 3 new flows
    get an entry, the fourth goes untracked."""
    web(bgs, blue=1, green=0)
    n = bpfsys.possible_cpus()
    cfg = _limits(bgs, 4 * n, 2 * n)
    assert (cfg.new_flow_rate, cfg.new_flow_burst) == (4, 2)
    be, bport = BLUE[0]

    def syn(i, ok):
        if ok:
            return Case(f"SYN {i}", tcp(CLIENT, VIP, CPORT + i, VIP_PORT), XDP_PASS,
                        out=tcp(CLIENT, be, CPORT + i, bport), stats=NEW_SYN)
        return Case(f"SYN {i}: over the limit", tcp(CLIENT, VIP, CPORT + i, VIP_PORT),
                    XDP_PASS, out=tcp(CLIENT, be, CPORT + i, bport),
                    stats={"VIP": 1, "SYN_MISS": 1, **UNTRACKED})

    bgs.put_bucket(model.Bucket(monotonic_coarse_ns(), 0))
    run_table(bgs, "ingress", [syn(0, False)])
    time.sleep(1.0)
    t0 = time.monotonic()
    run_table(bgs, "ingress", [syn(0, True), syn(1, True), syn(2, True), syn(3, False)])
    assert time.monotonic() - t0 < 0.2, "too slow to tell a refill from none"


def test_egress_backend_ref_single_service_again(bgs):
    """Once the second service's slot on a shared backend address is released (`backend
    del`, then `gc`), the address serves one service again: its bgs_backend_addrs entry names
    that one, and its replies still find their flows."""
    web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    bgs.add_service("web2", EMPTY_VIP, 8080, "tcp")
    bgs.add_backend("web2", "blue", be, bport)
    web_id, web2_id = bgs.services["web"], bgs.services["web2"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(2, (web_id, web2_id))
    bgs.cli("backend", "del", "web2", "blue", f"{be}:{bport}")
    bgs.cli("gc")
    assert bgs.find_slot("web2", "blue", be, bport, model.BGS_BACKEND_DRAINING) is None
    assert bgs.backend_ref(be, bport) == model.BackendRef(1, (web_id,))
    _open(bgs)
    run_table(bgs, "egress", [
        Case("reply of the web flow", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT)])


def test_egress_backend_ref_repair_keeps_service(bgs):
    """A stale bgs_backend_addrs entry (as a command killed half way leaves one: a wrong
    count, no service) makes the address's replies find no flow (REPLY_NO_FLOW, untouched);
    `gc` repairs it to the slots' count and their service, and the replies are translated
    again."""
    slots = web(bgs, blue=2, green=0)
    be, bport = BLUE[0]
    web_id = bgs.services["web"]
    now = Chooser(bgs, 0)
    port = next(c for c in range(CPORT, CPORT + 100)
                if now.slot(CLIENT, VIP, c, VIP_PORT)[1] == slots["blue"][0])
    _open(bgs, sport=port)
    bgs.map("bgs_backend_addrs").update(model.pack_backend_addr(be, bport, IPPROTO_TCP),
                                        model.pack_backend_ref(model.BackendRef(5, ())))
    reply = tcp(be, CLIENT, bport, port, "SA")
    run_table(bgs, "egress", [
        Case("reply, the address names no service", reply, TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    bgs.cli("gc")
    for a, p in BLUE[:2]:
        assert bgs.backend_ref(a, p) == model.BackendRef(1, (web_id,)), f"{a}:{p}"
    run_table(bgs, "egress", [
        Case("reply after the repair", reply, TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, port, "SA"), stats=NAT)])


# === backend choice ============================================================================

def _random_tuples(rng: random.Random, n: int) -> List[tuple]:
    seen, out = set(), []
    while len(out) < n:
        t = (f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
             f"{rng.randrange(1, 255)}", rng.randrange(1, 65536))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def test_ingress_backend_choice_matches_model(bgs):
    """For many client 5-tuples the backend chosen equals the model's choice (flow_hash mirror,
    then position hash % M of the color's table read from bgs_tables), on a 5-backend blue
    table, then on a 3-backend green table after a flip, and for UDP; every backend gets
    some flows."""
    web(bgs, blue=5, green=3)
    dns(bgs, blue=5, green=0)
    rng = random.Random(0xB65)
    by_slot = {}
    addr_of = {}
    for color, backends in (("blue", BLUE), ("green", GREEN)):
        for a, p in backends:
            addr_of[bgs.find_slot("web", color, a, p)] = (a, p)
    for a, _ in BLUE:
        addr_of[bgs.find_slot("dns", "blue", a, 5353)] = (a, 5353)

    cases = []

    def check(svc: int, vip: str, vport: int, proto: int, tuples: List[tuple]) -> None:
        color = bgs.switch(svc).active
        table = bgs.table(svc, color)
        assert len(table) == model.BGS_TABLE_SIZE
        for caddr, cport in tuples:
            slot = table[flow_h(caddr, vip, cport, vport, proto) % len(table)]
            by_slot[slot] = by_slot.get(slot, 0) + 1
            a, p = addr_of[slot]
            if proto == IPPROTO_TCP:
                inp, out = tcp(caddr, vip, cport, vport), tcp(caddr, a, cport, p)
                stats = NEW_SYN
            else:
                inp, out = udp(caddr, vip, cport, vport), udp(caddr, a, cport, p)
                stats = NEW_UDP
            cases.append(Case(f"{caddr}:{cport} -> {vip}:{vport}/{proto}: model says slot "
                              f"{slot} ({a}:{p})", inp, XDP_PASS, out=out, stats=stats))

    check(0, VIP, VIP_PORT, IPPROTO_TCP, _random_tuples(rng, 150))
    check(1, UDP_VIP, UDP_PORT, IPPROTO_UDP, _random_tuples(rng, 60))
    run_table(bgs, "ingress", cases)
    bgs.cli("flip", "web", "green", "--no-check")
    cases = []
    check(0, VIP, VIP_PORT, IPPROTO_TCP, _random_tuples(rng, 90))
    run_table(bgs, "ingress", cases)
    assert sorted(by_slot) == sorted(addr_of), f"some backend never chosen: {by_slot}"


def test_model_flow_hash_known_values():
    """model.flow_hash is deterministic and sensitive to every field (no state needed)."""
    base = ("192.168.7.1", "10.0.0.100", 40000, 80, IPPROTO_TCP)
    h = model.flow_hash(*base)
    assert h == model.flow_hash(*base)
    for i, alt in enumerate(["192.168.7.2", "10.0.0.101", 40001, 81, IPPROTO_UDP]):
        t = list(base)
        t[i] = alt
        assert model.flow_hash(*t) != h, f"field {i} does not change the hash"
    assert 0 <= h < 1 << 32


# === backend selection: Maglev tables, weights, the green share ===================================

def _table_words(bgs: BgsState, svc: int, color: int) -> List[int]:
    """Every word of the lookup table ``color`` of a service uses now (entry 0 is M), read
    from bgs_tables: the outer entry gives the inner map's id, opened by id."""
    with bgs.table_map(bgs.switch(svc).set_index(svc, color)) as inner:
        return model.table_words(inner.array_raw())


def _to_slot(bgs: BgsState, desc: str, client: str, cport: int, slot: int, flags: str = "S",
             stats: Optional[Dict[str, int]] = None, vip: str = VIP,
             vport: int = VIP_PORT) -> Case:
    """A TCP segment client:cport -> vip:vport that must leave toward the backend of ``slot``
    (counted as a new SYN unless ``stats`` says otherwise)."""
    b = bgs.backend(slot)
    kw = {} if flags == "S" else {"ack": ACK}
    return Case(f"{desc}: slot {slot} ({b.addr}:{b.port})",
                tcp(client, vip, cport, vport, flags, **kw), XDP_PASS,
                out=tcp(client, b.addr, cport, b.port, flags, **kw),
                stats=NEW_SYN if stats is None else stats)


def _color_of(out: bytes) -> int:
    """The color of the backend a rewritten frame goes to (by this file's address plan)."""
    dst = Ether(out)[IP].dst
    if dst in {a for a, _ in BLUE}:
        return model.BGS_BLUE
    assert dst in {a for a, _ in GREEN}, dst
    return model.BGS_GREEN


def _web_weighted(bgs: BgsState, blue_w: List[int], green_w: List[int]) -> Dict[str, List[int]]:
    """Service "web" with the first len(blue_w) / len(green_w) backends of each color, of
    those weights; their slots by color."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    return {"blue": [bgs.add_backend("web", "blue", a, p, w)
                     for (a, p), w in zip(BLUE, blue_w)],
            "green": [bgs.add_backend("web", "green", a, p, w)
                      for (a, p), w in zip(GREEN, green_w)]}


def test_ingress_choice_is_user_space_table_entry(bgs):
    """The data plane's choice is the table user space built: for a service with weighted
    backends (blue 1..5, green 3, 1, 2), SYNs from 300 source ports go, at share 0, to the
    slot at entry 1 + flow_hash % M of blue's current table (M read from entry 0 of that
    inner map); after `shift web green 40%`, 300 more go to the color
    model.share_color(hash, 4000) gives them and that color's table entry 1 + hash % M. The
    flow entries record that color and slot; every backend of weight above 0 gets flows."""
    slots = _web_weighted(bgs, [1, 2, 3, 4, 5], [3, 1, 2])
    svc = bgs.services["web"]
    chosen = {}

    def cases_for(ports) -> List[Case]:
        share = bgs.switch(svc).share
        words = {c: _table_words(bgs, svc, c) for c in (model.BGS_BLUE, model.BGS_GREEN)}
        out = []
        for port in ports:
            h = flow_h(CLIENT, VIP, port, VIP_PORT)
            color = model.share_color(h, share)
            t = words[color]
            assert t[0] == model.BGS_TABLE_SIZE and len(t) == t[0] + 1
            slot = t[1 + h % t[0]]
            chosen[port] = (color, slot)
            out.append(_to_slot(bgs, f"SYN from port {port}, share {share}, color {color}",
                                CLIENT, port, slot))
        return out

    run_table(bgs, "ingress", cases_for(range(CPORT, CPORT + 300)))
    bgs.cli("shift", "web", "green", "40%", "--no-check")
    assert bgs.switch(svc).share == model.parse_share("40%")
    run_table(bgs, "ingress", cases_for(range(CPORT + 300, CPORT + 600)))
    for port, (color, slot) in chosen.items():
        f = bgs.flow(CLIENT, VIP, port, VIP_PORT)
        assert (f.color, f.slot) == (color, slot), port
    used, every = {slot for _, slot in chosen.values()}, set(slots["blue"] + slots["green"])
    assert used == every, f"never chosen: {every - used}"
    greens = sum(1 for p in range(CPORT + 300, CPORT + 600) if chosen[p][0] == model.BGS_GREEN)
    print(f"\n40% split: {greens} of 300 new flows green")


def test_ingress_split_green_exactly_below_share_and_monotonic(bgs):
    """`shift web green 25%` (share 2500): a new flow goes green exactly when
    model.share_bucket(flow hash) < 2500, to its color's table entry. Raising the share to
    50% never turns a green flow blue: (1) on the bucket function, for 20000 hashes and the
    steps 0, 0.01%, 5%, 25%, 50%, 99.99%, 100% in turn, green stays green; (2) on verdicts:
    the 400 flows opened at 25% keep their entries at 50% (ACKs hit their backends), and
    once their entries are gone, SYNs of the same 400 tuples go green when their bucket is
    below 5000: every one green at 25% is green again, and some blue ones turn green.
    The green part of 400 flows at 25% is checked against the binomial spread (within 4
    standard deviations, sqrt(400 * .25 * .75) = 8.7 flows): a bucket that is not spread
    uniformly would show there."""
    web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    G = model.BGS_GREEN
    rng = random.Random(0x5A17E)
    steps = [0, 1, 500, 2500, 5000, 9999, model.BGS_SHARE_ALL]
    for _ in range(20000):
        h = rng.getrandbits(32)
        colors = [model.share_color(h, s) for s in steps]
        first = colors.index(G) if G in colors else len(colors)
        assert colors == [model.BGS_BLUE] * first + [G] * (len(colors) - first), (h, colors)
        assert (model.share_bucket(h) < 2500) == (colors[steps.index(2500)] == G)

    ports = range(CPORT, CPORT + 400)

    def syns(share: int) -> List[Case]:
        out, now = [], Chooser(bgs, svc)
        for port in ports:
            h = flow_h(CLIENT, VIP, port, VIP_PORT)
            color = G if model.share_bucket(h) < share else model.BGS_BLUE
            _, slot = now.slot(CLIENT, VIP, port, VIP_PORT, color=color)
            out.append(_to_slot(bgs, f"SYN from {port}, bucket {model.share_bucket(h)}",
                                CLIENT, port, slot))
        return out

    bgs.cli("shift", "web", "green", "25%", "--no-check")
    assert bgs.switch(svc).share == 2500
    at25 = syns(2500)
    run_table(bgs, "ingress", at25)
    green25 = {c.pkt for c in at25 if _color_of(c.out) == G}
    assert abs(len(green25) - 100) <= 4 * 8.7, f"{len(green25)} of 400 green at 25%"

    bgs.cli("shift", "web", "green", "50%", "--no-check")
    assert (bgs.switch(svc).share, bgs.switch(svc).prev_share) == (5000, 2500)
    run_table(bgs, "ingress", [
        Case(f"ACK of a flow opened at 25%: {c.desc}", tcp(CLIENT, VIP, Ether(c.pkt)[TCP].sport,
                                                           VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, Ether(c.out)[IP].dst, Ether(c.pkt)[TCP].sport,
                               Ether(c.out)[TCP].dport, "A", ack=ACK), stats=HIT)
        for c in at25])
    for port in ports:
        assert bgs.delete_flow(CLIENT, VIP, port, VIP_PORT)
    at50 = syns(5000)
    run_table(bgs, "ingress", at50)
    green50 = {c.pkt for c in at50 if _color_of(c.out) == G}
    assert green25 <= green50, f"{len(green25 - green50)} flows green at 25% went blue at 50%"
    assert len(green50) > len(green25)
    print(f"\nsplit: {len(green25)} of 400 new flows green at 25%, {len(green50)} at 50%, "
          f"none back to blue")


def test_ingress_split_by_client_one_color_per_client(bgs):
    """A service added with `--split-by client` at 30% green: every new flow of one client
    address goes to the same color, green exactly when model.share_bucket(client hash) < 3000,
    whatever its source port (checked for 60 clients x 5 ports against the verdicts). The
    flows' tables still spread one client's flows over the color's backends by the flow hash.
    `service set --split-by flow` puts the split back on the flow hash with one VIP write: a
    client's new flows then take both colors."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp", "--split-by", "client")
    for a, p in BLUE[:3]:
        bgs.add_backend("web", "blue", a, p)
    for a, p in GREEN[:2]:
        bgs.add_backend("web", "green", a, p)
    svc = bgs.services["web"]
    assert bgs.service(svc).vip_flags == model.BGS_VIP_SPLIT_CLIENT
    bgs.cli("shift", "web", "green", "30%", "--no-check")
    G = model.BGS_GREEN
    clients = [f"10.0.{60 + i // 200}.{1 + i % 200}" for i in range(60)]
    cases, want = [], {}
    now = Chooser(bgs, svc)
    for c in clients:
        want[c] = G if model.share_bucket(model.client_hash(c)) < 3000 else model.BGS_BLUE
        for port in range(CPORT, CPORT + 5):
            _, slot = now.slot(c, VIP, port, VIP_PORT, color=want[c])
            cases.append(_to_slot(bgs, f"SYN {c}:{port}", c, port, slot))
    run_table(bgs, "ingress", cases)
    seen = {}
    for case in cases:
        seen.setdefault(Ether(case.pkt)[IP].src, set()).add(_color_of(case.out))
    assert all(len(v) == 1 for v in seen.values()), "a client's flows took both colors"
    ngreen = sum(1 for c in clients if want[c] == G)
    assert 0 < ngreen < len(clients), ngreen
    print(f"\nsplit by client at 30%: {ngreen} of {len(clients)} clients green, one color each")

    bgs.cli("service", "set", "web", "--split-by", "flow")
    assert bgs.service(svc).vip_flags == 0
    mixed = 0
    now = Chooser(bgs, svc)
    for c in clients[:20]:
        colors = {model.share_color(flow_h(c, VIP, p, VIP_PORT), 3000)
                  for p in range(CPORT + 100, CPORT + 120)}
        mixed += len(colors) == 2
        for p in range(CPORT + 100, CPORT + 120):
            color, slot = now.slot(c, VIP, p, VIP_PORT)
            res = bgs.ingress(_to_slot(bgs, "", c, p, slot).pkt)
            assert _color_of(res.data) == color
    assert mixed > 0, "no client had flows of both colors under the flow split"


def test_ingress_second_chance_split_follows_prev_share(bgs):
    """Under a split while the last change drains, a non-SYN miss is re-pinned where the
    previous share put it: after `shift web green 25%` then `shift web green 50%` (prev_share
    2500, DRAINING | HAS_PREV) an ACK without entry goes green exactly when its bucket is
    below 2500, while a SYN of the same kind of tuple goes green below 5000 (tuples from all
    three bucket ranges: both, one, neither). `gc` keeps DRAINING while split. Without
    DRAINING (poked) the ACK follows the current share; after `rollback` (share 2500,
    prev_share 5000) it follows 5000 again, and new SYNs 2500."""
    web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    bgs.cli("shift", "web", "green", "25%", "--no-check")
    bgs.cli("shift", "web", "green", "50%", "--no-check")
    sw = bgs.switch(svc)
    assert (sw.share, sw.prev_share, sw.flags) == (5000, 2500, both)
    bgs.cli("gc")
    assert bgs.switch(svc) == sw, "gc must keep the second chance of a split service"

    # Client ports by bucket range: below 2500 (green either way), 2500-4999 (green now, blue
    # before), 5000 and up (blue either way); four of each, for ACKs and SYNs alike.
    ranges = {"<2500": [], "2500-4999": [], ">=5000": []}
    for port in range(CPORT, CPORT + 2000):
        b = model.share_bucket(flow_h(CLIENT, VIP, port, VIP_PORT))
        ranges["<2500" if b < 2500 else "2500-4999" if b < 5000 else ">=5000"].append(port)
    assert all(len(v) >= 12 for v in ranges.values()), {k: len(v) for k, v in ranges.items()}
    pick = {k: iter(v) for k, v in ranges.items()}
    now = Chooser(bgs, svc)  # the tables stay: only the switch word changes below

    def case(kind: str, flags: str, rng_name: str, by_share: int) -> Case:
        port = next(pick[rng_name])
        h = flow_h(CLIENT, VIP, port, VIP_PORT)
        color = model.BGS_GREEN if model.share_bucket(h) < by_share else model.BGS_BLUE
        _, slot = now.slot(CLIENT, VIP, port, VIP_PORT, color=color)
        return _to_slot(bgs, f"{kind} bucket {rng_name}, by share {by_share}", CLIENT, port,
                        slot, flags, REPIN if flags != "S" else NEW_SYN)

    cases = []
    for r in ranges:
        cases += [case("ACK, draining", "A", r, 2500), case("SYN, draining", "S", r, 5000)]
    run_table(bgs, "ingress", cases)
    assert sum(_color_of(c.out) == model.BGS_GREEN for c in cases if c.stats is REPIN) < sum(
        _color_of(c.out) == model.BGS_GREEN for c in cases if c.stats is NEW_SYN)

    bgs.put_switch(svc, sw._replace(flags=model.BGS_SW_HAS_PREV))
    run_table(bgs, "ingress", [case("ACK, not draining", "A", r, 5000) for r in ranges])

    bgs.put_switch(svc, sw)
    bgs.cli("rollback", "web", "--no-check")
    sw = bgs.switch(svc)
    assert (sw.share, sw.prev_share, sw.flags) == (2500, 5000, both)
    cases = []
    for r in ranges:
        cases += [case("ACK after rollback", "A", r, 5000),
                  case("SYN after rollback", "S", r, 2500)]
    run_table(bgs, "ingress", cases)


def test_ingress_color_of_weight_zero_backends_drops_no_backend(bgs):
    """A color whose backends all have weight 0 has a table of size 0 (entry 0 is 0) while
    its set still holds them: new flows toward it are dropped NO_BACKEND (node and
    service), SYNs and re-pins (once nothing drains) alike, while an existing flow keeps its
    backend; a split sends
    only the flows whose color has positions to a backend; a flip toward that color is
    refused and changes nothing."""
    slots = web(bgs, blue=2, green=1)
    svc = bgs.services["web"]
    g, gp = GREEN[0]
    bgs.cli("flip", "web", "green", "--no-check")
    _open(bgs, be=(g, gp))
    bgs.cli("backend", "add", "web", "green", model.endpoint(g, gp), "--weight", "0")
    assert bgs.backend(slots["green"][0]).weight == 0
    assert bgs.table(svc, model.BGS_GREEN) == [] and _table_words(bgs, svc, model.BGS_GREEN) == [0]
    assert bgs.current_set(svc, model.BGS_GREEN) == slots["green"]
    bgs.cli("gc")  # blue has no flow: the second chance (toward blue) ends
    assert bgs.switch(svc).flags == model.BGS_SW_HAS_PREV
    new = {"VIP": 1, "SYN_MISS": 1}
    run_table(bgs, "ingress", [
        Case("ACK of the green flow opened before", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                        ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g, CPORT, gp, "A", ack=ACK), stats=HIT),
        Case("new SYN toward green", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_DROP,
             stats=new, drops={"NO_BACKEND": 1}),
        Case("ACK without entry toward green", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "A",
                                                   ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    ss = bgs.service_stats(svc)
    assert (ss["drop_NO_BACKEND"], ss["syn_miss"], ss["nosyn_miss"]) == (2, 2, 1)

    bgs.cli("shift", "web", "blue", "50%", "--no-check")  # blue gains: allowed
    cases, now = [], Chooser(bgs, svc)
    for port in range(CPORT + 10, CPORT + 60):
        h = flow_h(CLIENT, VIP, port, VIP_PORT)
        if model.share_color(h, 5000) == model.BGS_GREEN:
            cases.append(Case(f"SYN from {port}, green under the split",
                              tcp(CLIENT, VIP, port, VIP_PORT), XDP_DROP, stats=new,
                              drops={"NO_BACKEND": 1}))
        else:
            _, slot = now.slot(CLIENT, VIP, port, VIP_PORT)
            cases.append(_to_slot(bgs, f"SYN from {port}, blue under the split", CLIENT, port,
                                  slot))
    assert {c.verdict for c in cases} == {XDP_DROP, XDP_PASS}
    run_table(bgs, "ingress", cases)

    bgs.cli("flip", "web", "blue", "--no-check")
    before = bgs.switch(svc)
    res = bgs.cli("flip", "web", "green", "--no-check", check=False)
    assert res.returncode != 0 and "weight" in res.stderr, res
    assert bgs.switch(svc) == before


def test_ingress_modulo_service_uses_set_modulo(bgs):
    """A service added with `--lb modulo` has no lookup table (no bgs_tables entry under any
    of its four keys, table_size 0 in its record): its new flows take set[hash % count]
    (model.choose_slot), for 200 tuples over 5 backends, every backend used; a --weight
    other than 1 is refused there."""
    svc = bgs.add_service("mod", VIP, VIP_PORT, "tcp", "--lb", "modulo")
    slots = [bgs.add_backend("mod", "blue", a, p) for a, p in BLUE]
    bgs.add_backend("mod", "green", *GREEN[0])
    rec = bgs.service(svc)
    assert (rec.lb, rec.table_size) == (model.BGS_LB_MODULO, 0)
    assert [bgs.table_id((svc << 2) | i) for i in range(4)] == [None] * 4
    current = bgs.current_set(svc, model.BGS_BLUE)
    assert current == slots
    rng = random.Random(0x30D)
    cases, used = [], set()
    for caddr, cport in _random_tuples(rng, 200):
        slot = model.choose_slot(current, caddr, VIP, cport, VIP_PORT, IPPROTO_TCP)
        used.add(slot)
        cases.append(_to_slot(bgs, f"SYN {caddr}:{cport}", caddr, cport, slot))
    run_table(bgs, "ingress", cases)
    assert used == set(slots)
    res = bgs.cli("backend", "add", "mod", "blue", model.endpoint(*BLUE[0]), "--weight", "2",
                  check=False)
    assert res.returncode != 0 and bgs.backend(slots[0]).weight == 1


def test_ingress_reweigh_rebuilds_table_old_flows_stay(bgs):
    """`backend add` of an existing backend with another --weight changes its weight and
    builds a new table for its color (a new inner map, the other buffer, one generation
    more): the backend's share of positions grows with its weight (1 -> 3 of 1 + 1 + 3), new
    flows follow the new table, and flows opened before keep their backend, also those whose
    position the new table gives to another backend. The same weight again is refused as
    "already" and changes nothing."""
    slots = web(bgs, blue=3, green=0)
    svc = bgs.services["web"]
    B = model.BGS_BLUE
    sw0, t0 = bgs.switch(svc), bgs.table(svc, B)
    id0 = bgs.table_id(sw0.set_index(svc, B))
    old_ports = range(CPORT, CPORT + 200)
    now = Chooser(bgs, svc)
    opened = [_to_slot(bgs, f"SYN {p}", CLIENT, p, now.slot(CLIENT, VIP, p, VIP_PORT)[1])
              for p in old_ports]
    run_table(bgs, "ingress", opened)

    bgs.cli("backend", "add", "web", "blue", model.endpoint(*BLUE[0]), "--weight", "3")
    sw1, t1 = bgs.switch(svc), bgs.table(svc, B)
    assert sw1.generation == sw0.generation + 1 and sw1.set_sel == sw0.set_sel ^ 1
    id1 = bgs.table_id(sw1.set_index(svc, B))
    assert id1 not in (None, id0)
    assert bgs.backend(slots["blue"][0]).weight == 3
    m = len(t1)
    share0, share1 = t0.count(slots["blue"][0]) / m, t1.count(slots["blue"][0]) / m
    assert abs(share1 - 3 / 5) < 0.01 and abs(share0 - 1 / 3) < 0.01, (share0, share1)
    moved = [p for p in old_ports
             if t1[flow_h(CLIENT, VIP, p, VIP_PORT) % m] != t0[flow_h(CLIENT, VIP, p,
                                                                     VIP_PORT) % m]]
    assert moved, "test set-up: no old flow whose position changed owner"
    run_table(bgs, "ingress", [
        Case(f"ACK of a flow opened before: {c.desc}",
             tcp(CLIENT, VIP, Ether(c.pkt)[TCP].sport, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, Ether(c.out)[IP].dst, Ether(c.pkt)[TCP].sport,
                     Ether(c.out)[TCP].dport, "A", ack=ACK), stats=HIT) for c in opened])
    new_ports = range(CPORT + 1000, CPORT + 1200)
    run_table(bgs, "ingress", [
        _to_slot(bgs, f"new SYN {p}", CLIENT, p, t1[flow_h(CLIENT, VIP, p, VIP_PORT) % m])
        for p in new_ports])
    print(f"\nreweigh 1 -> 3: share of positions {share0:.4f} -> {share1:.4f}; "
          f"{len(moved)} of {len(old_ports)} open flows' positions changed owner, "
          f"none of them moved")

    res = bgs.cli("backend", "add", "web", "blue", model.endpoint(*BLUE[0]), "--weight", "3",
                  check=False)
    assert res.returncode != 0 and "already" in res.stderr, res
    assert bgs.switch(svc) == sw1 and bgs.table_id(sw1.set_index(svc, B)) == id1


def test_service_set_table_size_rebuilds_both_colors_at_once(bgs):
    """`service set web --table-size 251` makes both colors' current tables 251 positions
    (entry 0 and the inner map's size) with one switch store: the generation goes up by
    exactly one and both set_sel bits flip; the buffers left behind still hold the old
    size. The record says 251. New flows of either color follow the 251-position table. A
    size that is not a prime is refused and changes nothing."""
    slots = web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    sw0 = bgs.switch(svc)
    res = bgs.cli("service", "set", "web", "--table-size", "250", check=False)
    assert res.returncode != 0 and bgs.switch(svc) == sw0
    bgs.cli("service", "set", "web", "--table-size", "251")
    sw1 = bgs.switch(svc)
    assert sw1.generation == sw0.generation + 1 and sw1.set_sel == sw0.set_sel ^ 3
    assert bgs.service(svc).table_size == 251
    for color, name in ((model.BGS_BLUE, "blue"), (model.BGS_GREEN, "green")):
        words = _table_words(bgs, svc, color)
        assert words[0] == 251 and len(words) == 252, name
        assert set(words[1:]) == set(slots[name]), name
        idle = bgs.table_at(sw1.set_index(svc, color) ^ 1)
        assert len(idle) == model.BGS_TABLE_SIZE, name
    for color in ("blue", "green"):
        if color == "green":
            bgs.cli("flip", "web", "green", "--no-check")
        c = model.COLORS[color]
        t = bgs.table(svc, c)
        run_table(bgs, "ingress", [
            _to_slot(bgs, f"SYN {p} ({color})", CLIENT, p,
                     t[flow_h(CLIENT, VIP, p, VIP_PORT) % 251])
            for p in range(CPORT + 100 * c, CPORT + 100 * c + 60)])
