"""Data-plane unit tests: packets that are not the switch's (non-VIP, non-IP, each named
parse failure, zero ports, IPv6 extension headers).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from lib import model
from lib.bpfsys import XDP_PASS
from lib.dataplane import (BLUE6, CLIENT, CLIENT6, CPORT, Case, MAC_CLIENT, NEW_SYN, OTHER_IP,
                           UDP_PORT, UDP_VIP, UDP_VIP6, VIP, VIP6, VIP_PORT, dns, dns6, ip_frame,
                           l2_head, run_table, tcp, udp, v6_chain, web, web6)


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
        Case("ICMP echo to the VIP", bytes(l2_head() / IP(src=CLIENT, dst=VIP) / ICMP()),
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
        Case("IPX EtherType", bytes(l2_head())[:12] + b"\x81\x37" + bytes(46), XDP_PASS,
             stats=not_ip),
        Case("tagged ARP", bytes(l2_head(vlan=3) / ARP(psrc=CLIENT, pdst=VIP)), XDP_PASS,
             stats=not_ip),
        Case("three tags, then IPv4 to the VIP",
             bytes(l2_head() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / Dot1Q(vlan=11) / syn),
             XDP_PASS, stats=not_ip),
        Case("0x9100 (pre-standard QinQ) tag: not a tag we parse",
             bytes(l2_head())[:12] + b"\x91\x00\x00\x05\x08\x00" + bytes(syn), XDP_PASS,
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
        return bytes(l2_head() / IPv6(src=CLIENT6, dst=VIP6, plen=plen, nh=nh) / Raw(body))

    run_table(bgs, "ingress", [
        # Ethernet and VLAN
        Case("802.1Q type, tag cut at 2 bytes", bytes(l2_head(vlan=7))[:16], XDP_PASS,
             stats=r("PARSE_L2")),
        Case("802.1ad then 802.1Q, inner tag cut", bytes(l2_head() / Dot1AD(vlan=1)
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
        Case("UDP length 7", bytes(l2_head() / IP(src=CLIENT, dst=UDP_VIP)
                                   / UDP(sport=CPORT, dport=UDP_PORT, len=7) / Raw(b"xx")),
             XDP_PASS, stats=r("PARSE_L4")),
        Case("IPv6 TCP doff=4", tcp(CLIENT6, VIP6, CPORT, VIP_PORT,
                                    tcp_fields={"dataofs": 4}), XDP_PASS, stats=r("PARSE_L4")),
        Case("IPv6 UDP length 0", udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT)[:14 + 40 + 4]
             + b"\0\0" + udp(CLIENT6, UDP_VIP6, CPORT, UDP_PORT)[14 + 40 + 6:], XDP_PASS,
             stats=r("PARSE_L4")),
        Case("ICMP header cut at 4 bytes", bytes(l2_head() / IP(src=CLIENT, dst=VIP, proto=1)
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
                          tcp(CLIENT6, VIP6, sport, VIP_PORT, payload=b"x" * n, ext=v6_chain(n)),
                          XDP_PASS, out=tcp(CLIENT6, b, sport, bp, payload=b"x" * n,
                                            ext=v6_chain(n)), stats=NEW_SYN))
    cases += [
        Case("7 extension headers", tcp(CLIENT6, VIP6, CPORT, VIP_PORT, ext=v6_chain(7)),
             XDP_PASS, stats={"EXTHDR_LIMIT": 1}),
        Case("8 headers, the last a fragment header",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, ext=v6_chain(7) / IPv6ExtHdrFragment()),
             XDP_PASS, stats={"EXTHDR_LIMIT": 1}),
        Case("6 headers, a fragment header among them (atomic): rewritten",
             tcp(CLIENT6, VIP6, CPORT + 50, VIP_PORT,
                 ext=v6_chain(5) / IPv6ExtHdrFragment(m=0, offset=0, id=9)), XDP_PASS,
             out=tcp(CLIENT6, b, CPORT + 50, bp,
                     ext=v6_chain(5) / IPv6ExtHdrFragment(m=0, offset=0, id=9)),
             stats=NEW_SYN),
    ]
    run_table(bgs, "ingress", cases)
    assert bgs.count("bgs_flows") == model.BGS_MAX_EXTHDRS + 1
