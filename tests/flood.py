#!/usr/bin/python3
"""Send a flood of new UDP flows (one datagram from each of many source ports) to ADDR:PORT.

Runs inside the client namespace of the test topology. A raw IPv4 socket writes the headers
itself, so every datagram can carry another source port without a socket per port. Bounded by
--count and --duration, whichever ends first. Prints the number sent.
"""
import argparse
import socket
import struct
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    src, dst = socket.inet_aton(a.src), socket.inet_aton(a.dst)
    payload = b"flood"
    end = time.monotonic() + a.duration
    sent = 0
    for i in range(a.count):
        if time.monotonic() > end:
            break
        sport = 1024 + (i % 60000)
        sip = struct.unpack("!I", src)[0] + (i // 60000)  # more flows than ports: next address
        udp = struct.pack("!HHHH", sport, a.port, 8 + len(payload), 0) + payload
        # The kernel fills in the IPv4 checksum (and the ID when it is 0) for IPPROTO_RAW.
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                         0, struct.pack("!I", sip), dst)
        s.sendto(ip + udp, (a.dst, 0))
        sent += 1
    print(sent)


if __name__ == "__main__":
    main()
