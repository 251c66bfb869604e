"""Data-plane unit tests: IPv4 and IPv6 fragments, both directions, and fragment
headers beyond the payload.

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop)
from scapy.packet import Raw

from lib import model
from lib.bpfsys import TC_ACT_OK, XDP_DROP, XDP_PASS
from lib.dataplane import (ACK, BLUE, BLUE6, CLIENT, CLIENT2, CLIENT6, CPORT, Case, EMPTY_VIP, HIT,
                           LATER, NEW_SYN, NEW_UDP, OTHER6, OTHER_IP, PASSED, REPIN, SEQ, UDP_PORT,
                           UDP_VIP, VIP, VIP6, VIP_PORT, dns, ip6_frame, ip_frame, open_flow,
                           run_table, tcp, web, web6, with_ip_len)
from lib.model import IPPROTO_TCP, IPPROTO_UDP


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
    open_flow(bgs)
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
                                    with_ip_len(later, 14, 8), XDP_PASS,
                                    stats={"PARSE_IP_LEN": 1})])
