"""Frames for the benchmark, built with struct and checksummed from scratch.

Scapy is too slow to build the tens of thousands of frames a run uses (one per new flow), so
this module builds Ethernet / IPv4 or IPv6 / TCP frames itself. Every checksum is computed over
the whole header and payload, never updated incrementally, so that an expected output frame is
an independent statement of what bgswitch's incremental updates must produce.
"""

import ipaddress
import struct

ETH_LEN = 14
MAC_CLIENT = bytes.fromhex("020000000001")
MAC_NODE = bytes.fromhex("020000000002")
MAC_GATEWAY = bytes.fromhex("020000000003")  # the next hop toward the backends
TCP_SYN, TCP_ACK, TCP_PSH = 0x02, 0x10, 0x08
# TCP options as clients send them (12 bytes each, so that SYNs and ACKs are the same length):
# a SYN's MSS 1460, window scale 7 and SACK permitted, an ACK's timestamps.
SYN_OPTS = bytes.fromhex("020405b4" "01030307" "0402" "0101")
ACK_OPTS = bytes.fromhex("0101" "080a") + bytes.fromhex("0001e240" "00003039")


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def addr_bytes(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def family(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int = TCP_SYN,
              payload: bytes = b"", seq: int = 1000, ack: int = 0, ttl: int = 64,
              opts: bytes = b"", macs=(MAC_NODE, MAC_CLIENT)) -> bytes:
    """Ethernet (macs: destination, source) / IPv4 or IPv6 / TCP with opts (a multiple of 4
    bytes) / payload, every checksum from scratch."""
    s, d = addr_bytes(src), addr_bytes(dst)
    v6 = len(s) == 16
    tcp_len = 20 + len(opts) + len(payload)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags,
                      64240, 0, 0) + opts
    if v6:
        pseudo = s + d + struct.pack("!IxxxB", tcp_len, 6)
    else:
        pseudo = s + d + struct.pack("!xBH", 6, tcp_len)
    c = csum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, tcp_len, 6, ttl) + s + d
        eth = macs[0] + macs[1] + b"\x86\xdd"
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 0x1234, 0, ttl, 6, 0) + s + d
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        eth = macs[0] + macs[1] + b"\x08\x00"
    return eth + ip + tcp + payload


def client_syn(src: str, dst: str, sport: int, dport: int, **kw) -> bytes:
    """A client's first packet, with the options a client's SYN carries."""
    return tcp_frame(src, dst, sport, dport, TCP_SYN, opts=SYN_OPTS, **kw)


def client_ack(src: str, dst: str, sport: int, dport: int, **kw) -> bytes:
    """A client's packet of an established connection: an ACK with timestamps."""
    return tcp_frame(src, dst, sport, dport, TCP_ACK, seq=1001, ack=1, opts=ACK_OPTS, **kw)


def parse_tcp(frame: bytes):
    """(src, dst, sport, dport, flags) of a frame built by tcp_frame (for messages)."""
    v6 = frame[12:14] == b"\x86\xdd"
    if v6:
        src = str(ipaddress.ip_address(frame[22:38]))
        dst = str(ipaddress.ip_address(frame[38:54]))
        l4 = 54
    else:
        src = str(ipaddress.ip_address(frame[26:30]))
        dst = str(ipaddress.ip_address(frame[30:34]))
        l4 = ETH_LEN + (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, l4)
    return src, dst, sport, dport, frame[l4 + 13]


def flow_client(i: int):
    """(address, port) of synthetic flow i: mirrors bb_flow_client() of benchlib.c."""
    return (str(ipaddress.IPv4Address(0xC6120000 + (i >> 15))), 32768 + (i & 0x7FFF))
