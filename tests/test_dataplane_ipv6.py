"""Data-plane unit tests: IPv6 services (rewrite, flip and backend choice, replies, double
VLAN tags).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from lib import model
from lib.bpfsys import TC_ACT_OK, XDP_PASS
from lib.dataplane import (ACK, BLUE, BLUE6, CLIENT, CLIENT6, CLIENT6_2, CPORT, Case, Chooser,
                           GREEN6, HIT, NAT, NEW_SYN, NEW_UDP, REPIN, SEQ, UDP_PORT, UDP_VIP6, VIP,
                           VIP6, VIP_PORT, dns6, l2_head, run_table, tcp, udp, web, web6)
from lib.model import IPPROTO_TCP, IPPROTO_UDP


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
        return bytes(l2_head() / outer_type(vlan=outer_vlan) / Dot1Q(vlan=inner_vlan) / inner)

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
