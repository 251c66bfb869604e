#!/usr/bin/python3
"""Send a flood of new flows (one packet from each of many source ports) to ADDR:PORT.

Runs inside the client namespace of the test topology. A raw IPv4 socket writes the headers
itself, so every packet can carry another source port (and address) without a socket per port.
--kind picks what each packet is: a UDP datagram (the default), a TCP SYN, or a bare TCP ACK
(a segment of no known connection); several kinds (--kind syn,ack,udp) take turns, packet by
packet. The source is --src, or with --spoof-net A.B.0.0 an address of A.B.0.0/16 taken in turn
(spoofed: the caller routes that network nowhere, so answers die at the node). Bounded by
--count (at most 1,000,000) and --duration, whichever ends first; the packets are built
before the clock starts. Prints the number sent (and, on stderr, the rate).
"""
import argparse
import socket
import struct
import sys
import time

TCP_SYN, TCP_ACK = 0x02, 0x10


def csum(data):
    """The Internet checksum of data (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp_segment(src, dst, sport, dport, flags, seq):
    """A 20-byte TCP header (no payload) with its checksum."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, seq ^ 0x5A5A5A5A if flags & TCP_ACK else 0,
                      5 << 4, flags, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr))
    return hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]


def packet(kind, src, dst, sport, dport, i):
    if kind == "udp":
        payload = b"flood"
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        proto = socket.IPPROTO_UDP
    else:
        l4 = tcp_segment(src, dst, sport, dport, TCP_SYN if kind == "syn" else TCP_ACK,
                         (i * 2654435761) & 0xFFFFFFFF)
        proto = socket.IPPROTO_TCP
    # The kernel fills in the IPv4 checksum (and the ID when it is 0) for IPPROTO_RAW.
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
    return ip + l4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src")
    ap.add_argument("--spoof-net", help="A.B.0.0: sources taken in turn from A.B.0.0/16")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kind", default="udp", help="udp, syn, ack, or a comma-separated mix")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    kinds = a.kind.split(",")
    if not a.src and not a.spoof_net or set(kinds) - {"udp", "syn", "ack"}:
        ap.error("--src or --spoof-net, and --kind of udp, syn, ack")
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(a.dst)
    base = struct.unpack("!I", socket.inet_aton(a.spoof_net or a.src))[0]
    pkts = []  # built first, so that the sending loop goes as fast as the socket takes them
    for i in range(max(0, min(a.count, 1000000))):
        sport = 1024 + (i % 60000)
        if a.spoof_net:
            sip = (base & 0xFFFF0000) | (1 + (i * 7919) % 65534)
        else:
            sip = base + (i // 60000)  # more flows than ports: next address
        pkts.append(packet(kinds[i % len(kinds)], struct.pack("!I", sip), dst, sport, a.port, i))
    start = time.monotonic()
    end = start + a.duration
    sent = 0
    for pkt in pkts:
        if sent % 256 == 0 and time.monotonic() > end:
            break
        s.sendto(pkt, (a.dst, 0))
        sent += 1
    took = max(time.monotonic() - start, 1e-6)
    print(f"flood: {sent} packets in {took:.2f} s, {sent / took:.0f}/s", file=sys.stderr)
    print(sent)


if __name__ == "__main__":
    main()
