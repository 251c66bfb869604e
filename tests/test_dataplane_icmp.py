"""Data-plane unit tests: ICMP errors both ways, translated or left untouched, and
quotes beyond the IP length.

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

from typing import Dict, List

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from lib.bpfsys import TC_ACT_OK, XDP_PASS
from lib.dataplane import (BLUE, BLUE6, CLIENT, CLIENT2, CLIENT6, CPORT, Case, NEW_SYN, NEW_UDP,
                           OTHER_IP, ROUTER, ROUTER6, UDP_PORT, UDP_VIP, VIP, VIP6, VIP_PORT, dns,
                           icmp_error, l2_head, open_flow, quoted_reply, run_table, tcp, udp, web,
                           web6, with_ip_len)
from lib.model import IPPROTO_UDP
from lib.unit_fixtures import BgsState


# === ICMP errors ==================================================================================

def _icmp_flows(bgs: BgsState) -> Dict[str, List[int]]:
    """The flows the ICMP tests quote: services web, dns and web6, the TCP flow of open_flow, a UDP
    query and an IPv6 SYN (each checked on its way in). Returns web's slots."""
    slots = web(bgs)
    dns(bgs)
    web6(bgs)
    b6, bp6 = BLUE6[0]
    open_flow(bgs)
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
    vip_reply = quoted_reply(VIP, CLIENT, VIP_PORT, CPORT)
    be_reply = quoted_reply(be, CLIENT, bport, CPORT)
    uvip = quoted_reply(UDP_VIP, CLIENT, UDP_PORT, CPORT, IPPROTO_UDP)
    ube_r = quoted_reply(ube, CLIENT, 5353, CPORT, IPPROTO_UDP)
    uvip0 = bytes(IP(src=UDP_VIP, dst=CLIENT, id=3) / UDP(sport=UDP_PORT, dport=CPORT,
                                                          chksum=0) / Raw(b"zz"))
    ube0 = bytes(IP(src=ube, dst=CLIENT, id=3) / UDP(sport=5353, dport=CPORT, chksum=0)
                 / Raw(b"zz"))
    opt_vip = quoted_reply(VIP, CLIENT, VIP_PORT, CPORT, options=[IPOption_Router_Alert()])
    opt_be = quoted_reply(be, CLIENT, bport, CPORT, options=[IPOption_Router_Alert()])
    v6_vip = quoted_reply(VIP6, CLIENT6, VIP_PORT, CPORT)
    v6_be = quoted_reply(b6, CLIENT6, bp6, CPORT)
    icmp_in = {"ICMP_IN": 1}
    cases = [
        Case("frag needed, 28-byte quote (8 bytes of TCP: no TCP checksum)",
             icmp_error(ROUTER, VIP, vip_reply[:28]), XDP_PASS,
             out=icmp_error(ROUTER, be, be_reply[:28]), stats=icmp_in),
        Case("frag needed, whole reply quoted (TCP checksum too)",
             icmp_error(ROUTER, VIP, vip_reply), XDP_PASS,
             out=icmp_error(ROUTER, be, be_reply), stats=icmp_in),
        Case("time exceeded, 40-byte quote, tagged", icmp_error(ROUTER, VIP, vip_reply[:40],
                                                                 "ttl", vlan=5), XDP_PASS,
             out=icmp_error(ROUTER, be, be_reply[:40], "ttl", vlan=5), stats=icmp_in),
        Case("port unreachable from the client itself",
             icmp_error(CLIENT, VIP, vip_reply[:36], "port"), XDP_PASS,
             out=icmp_error(CLIENT, be, be_reply[:36], "port"), stats=icmp_in),
        Case("quoted header with options", icmp_error(ROUTER, VIP, opt_vip), XDP_PASS,
             out=icmp_error(ROUTER, be, opt_be), stats=icmp_in),
        Case("about a UDP reply", icmp_error(ROUTER, UDP_VIP, uvip), XDP_PASS,
             out=icmp_error(ROUTER, ube, ube_r), stats=icmp_in),
        Case("about a UDP reply without checksum (stays 0)", icmp_error(ROUTER, UDP_VIP, uvip0),
             XDP_PASS, out=icmp_error(ROUTER, ube, ube0), stats=icmp_in),
        Case("IPv6 packet too big, whole reply quoted", icmp_error(ROUTER6, VIP6, v6_vip),
             XDP_PASS, out=icmp_error(ROUTER6, b6, v6_be), stats=icmp_in),
        Case("IPv6 packet too big, 48-byte quote", icmp_error(ROUTER6, VIP6, v6_vip[:48]),
             XDP_PASS, out=icmp_error(ROUTER6, b6, v6_be[:48]), stats=icmp_in),
        Case("IPv6 time exceeded, tagged", icmp_error(ROUTER6, VIP6, v6_vip[:60], "ttl",
                                                       vlan=9), XDP_PASS,
             out=icmp_error(ROUTER6, b6, v6_be[:60], "ttl", vlan=9), stats=icmp_in),
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
    open_flow(bgs)
    vip_reply = quoted_reply(VIP, CLIENT, VIP_PORT, CPORT)
    no_flow = {"ICMP_NO_FLOW": 1}
    nv = {"NOT_VIP": 1}
    run_table(bgs, "ingress", [
        Case("about a reply to another client", icmp_error(
            ROUTER, VIP, quoted_reply(VIP, CLIENT2, VIP_PORT, CPORT)), XDP_PASS, stats=no_flow),
        Case("about a reply from the VIP's other port (no flow)", icmp_error(
            ROUTER, VIP, quoted_reply(VIP, CLIENT, VIP_PORT, CPORT + 1)), XDP_PASS, stats=no_flow),
        Case("sent to another address than the quoted VIP", icmp_error(ROUTER, OTHER_IP,
                                                                        vip_reply),
             XDP_PASS, stats=no_flow),
        Case("IPv6, no flow", icmp_error(ROUTER6, VIP6, quoted_reply(VIP6, CLIENT6, VIP_PORT,
                                                                CPORT)), XDP_PASS,
             stats=no_flow),
        Case("quoting a non-VIP source", icmp_error(ROUTER, VIP, quoted_reply(
            OTHER_IP, CLIENT, VIP_PORT, CPORT)), XDP_PASS, stats=nv),
        Case("quoting a later fragment", icmp_error(ROUTER, VIP, bytes(
            IP(src=VIP, dst=CLIENT, frag=10, proto=6) / Raw(bytes(20)))), XDP_PASS, stats=nv),
        Case("quote cut inside the TCP ports", icmp_error(ROUTER, VIP, vip_reply[:26]),
             XDP_PASS, stats=nv),
        Case("echo request", bytes(l2_head() / IP(src=CLIENT, dst=VIP) / ICMP()), XDP_PASS,
             stats=nv),
        Case("redirect (type 5) quoting our reply", bytes(
            l2_head() / IP(src=ROUTER, dst=VIP) / ICMP(type=5, code=1) / Raw(vip_reply)),
             XDP_PASS, stats=nv),
        Case("ICMPv6 echo", bytes(l2_head() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest()),
             XDP_PASS, stats=nv),
        Case("ICMP (v4 protocol 1) in IPv6", bytes(l2_head() / IPv6(src=ROUTER6, dst=VIP6, nh=1)
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
    to_be = quoted_reply(CLIENT, be, CPORT, bport)
    to_vip = quoted_reply(CLIENT, VIP, CPORT, VIP_PORT)
    uto_be = quoted_reply(CLIENT, ube, CPORT, 5353, IPPROTO_UDP)
    uto_vip = quoted_reply(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP)
    v6_be = quoted_reply(CLIENT6, b6, CPORT, bp6)
    v6_vip = quoted_reply(CLIENT6, VIP6, CPORT, VIP_PORT)
    out = {"ICMP_OUT": 1}
    run_table(bgs, "egress", [
        Case("frag needed from the backend, 28-byte quote", icmp_error(be, CLIENT, to_be[:28]),
             TC_ACT_OK, out=icmp_error(VIP, CLIENT, to_vip[:28]), stats=out),
        Case("frag needed from the backend, whole packet quoted",
             icmp_error(be, CLIENT, to_be), TC_ACT_OK, out=icmp_error(VIP, CLIENT, to_vip),
             stats=out),
        Case("time exceeded from a router behind the node (outer source kept)",
             icmp_error(ROUTER, CLIENT, to_be[:48], "ttl"), TC_ACT_OK,
             out=icmp_error(ROUTER, CLIENT, to_vip[:48], "ttl"), stats=out),
        Case("UDP port unreachable from the backend", icmp_error(ube, CLIENT, uto_be, "port"),
             TC_ACT_OK, out=icmp_error(UDP_VIP, CLIENT, uto_vip, "port"), stats=out),
        Case("IPv6 packet too big from the backend", icmp_error(b6, CLIENT6, v6_be),
             TC_ACT_OK, out=icmp_error(VIP6, CLIENT6, v6_vip), stats=out),
        Case("IPv6 packet too big from a router, 48-byte quote, tagged",
             icmp_error(ROUTER6, CLIENT6, v6_be[:48], vlan=3), TC_ACT_OK,
             out=icmp_error(ROUTER6, CLIENT6, v6_vip[:48], vlan=3), stats=out),
        Case("quoting a packet of a client with no flow",
             icmp_error(be, CLIENT2, quoted_reply(CLIENT2, be, CPORT, bport)), TC_ACT_OK,
             stats={"ICMP_NO_FLOW": 1}),
        Case("frag needed from the backend, in by another interface than the flow's",
             icmp_error(be, CLIENT, to_be), TC_ACT_OK, stats={"ICMP_NO_FLOW": 1}, ifindex=5),
        Case("quoting a packet to a port that is no backend's",
             icmp_error(be, CLIENT, quoted_reply(CLIENT, be, CPORT, 22)), TC_ACT_OK),
        Case("echo reply from the backend", bytes(l2_head() / IP(src=be, dst=CLIENT)
                                                  / ICMP(type=0)), TC_ACT_OK),
    ])
    st = bgs.backend_stats(slots["blue"][0])
    assert st["tx_packets"] == 3


# === regressions found by tests/test_differential.py ==============================================
#
# Each case states what the specification requires, on the fixed packets that once showed the
# data plane doing otherwise.


@pytest.mark.parametrize("which", ["in-v4-quote-in-padding", "in-v6-ports-in-padding",
                                   "in-v4-icmp-header-in-padding", "out-v6-quote-in-padding"])
def test_ingress_icmp_quote_beyond_ip_length_untouched(bgs, which):
    """An ICMP error whose IP length ends before the quote (or before the ICMP header) must
    be left alone: the quote lies in padding (NOT_VIP), the ICMP header too (PARSE_IP_LEN)."""
    web(bgs)
    web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    open_flow(bgs)
    run_table(bgs, "ingress", [
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN)])
    if which == "in-v4-quote-in-padding":  # IP length 28: ICMP header only
        pkt = with_ip_len(icmp_error(ROUTER, VIP, quoted_reply(VIP, CLIENT, VIP_PORT, CPORT)), 14,
                           28)
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"NOT_VIP": 1})])
    elif which == "in-v6-ports-in-padding":
        # A well-formed ICMPv6 error (checksum right) quoting only an IPv6 header, followed by
        # padding that happens to continue the quote: translating it would also leave its
        # checksum wrong (the padding is not covered by it).
        quote = quoted_reply(VIP6, CLIENT6, VIP_PORT, CPORT)
        pkt = icmp_error(ROUTER6, VIP6, quote[:40]) + quote[40:]
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"NOT_VIP": 1})])
    elif which == "in-v4-icmp-header-in-padding":  # IP length 24: half an ICMP header
        pkt = with_ip_len(icmp_error(ROUTER, VIP, quoted_reply(VIP, CLIENT, VIP_PORT, CPORT)), 14,
                           24)
        run_table(bgs, "ingress", [Case(which, pkt, XDP_PASS, stats={"PARSE_IP_LEN": 1})])
    else:  # egress: payload length 20, the quote outside
        pkt = with_ip_len(icmp_error(b6, CLIENT6, quoted_reply(CLIENT6, b6, CPORT, bp6)), 14, 20)
        run_table(bgs, "egress", [Case(which, pkt, TC_ACT_OK)])
