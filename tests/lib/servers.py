#!/usr/bin/python3
"""Backend servers for the end-to-end tests and the demo.

One process serves one backend: TCP and UDP on each of its addresses (IPv4, IPv6 or both) and
one port. Run it inside a backend namespace (tests/lib/netns.py does, with nsenter):

    servers.py --color blue --addr 10.77.2.11 --addr fd77:77:77:2::11 --port 8081

Each address answers in its own name, IDENT: "<addr>:<port>" for IPv4, "[<addr>]:<port>" for
IPv6.
TCP: every request line gets one reply line, "<color> IDENT <request>\\n", and the connection
stays open for further requests until the client closes it.
UDP: every datagram gets one datagram back, "<color> IDENT <request>\\n".

The request is echoed (stripped, at most 64 bytes) so that a client can tell which request a
reply answers. Two requests carry a payload, to prove it arrived whole:
  * TCP "upload <n> <token>\\n" followed by n bytes (n <= 16 MiB): once all n bytes are read,
    the reply line is "<color> IDENT <token>:<n>:<sha256 of the bytes, 16 hex digits>\\n".
  * a UDP datagram "big <m> <token>\\n<payload>": the reply datagram is
    "<color> IDENT <token>:<len>:<sha256 of the whole datagram, 16 hex digits>\\n", padded
    with "." to m bytes (m <= 65000), so that a reply can be made larger than the MTU.
One request makes the server speak on its own:
  * TCP "push <ms> <n> <token>\\n": n lines "<color> IDENT <token>-<i>\\n" (i from 0), one every
    ms milliseconds (10 <= ms, n <= 100000), while the client only acknowledges them; it ends
    early when the client closes.
"ready" is printed on stdout once every socket listens; nothing is printed to stdout after
that. SIGTERM or SIGINT ends the process.
"""

import argparse
import asyncio
import hashlib
import signal
import socket
import sys

MAX_LINE = 4096  # a longer request line ends the connection
MAX_UPLOAD = 16 << 20
MAX_UDP_REPLY = 65000
MAX_PUSH = 100000


def reply_for(color, ident, request):
    req = request.strip()[:64].decode("ascii", "replace")
    return f"{color} {ident} {req}\n".encode()


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def ident_of(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def parse_upload(line):
    """(n, token) of an "upload <n> <token>" line, or None."""
    words = line.split()
    if len(words) != 3 or words[0] != b"upload" or not words[1].isdigit():
        return None
    n = int(words[1])
    return (n, words[2][:64].decode("ascii", "replace")) if n <= MAX_UPLOAD else None


def parse_push(line):
    """(seconds, n, token) of a "push <ms> <n> <token>" line, or None."""
    words = line.split()
    if len(words) != 4 or words[0] != b"push" or not (words[1].isdigit() and words[2].isdigit()):
        return None
    ms, n = int(words[1]), int(words[2])
    if ms < 10 or n > MAX_PUSH:
        return None
    return ms / 1000.0, n, words[3][:64].decode("ascii", "replace")


async def push(reader, writer, color, ident, interval, n, token):
    """Send n lines, one every interval seconds; stop at the client's end of stream."""
    for i in range(n):
        writer.write(f"{color} {ident} {token}-{i}\n".encode())
        await writer.drain()
        try:
            if not await asyncio.wait_for(reader.read(MAX_LINE), interval):
                return
        except asyncio.TimeoutError:
            pass


async def handle_tcp(reader, writer, color, ident):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if len(line) > MAX_LINE:
                break
            up = parse_upload(line)
            pu = parse_push(line)
            if pu:
                await push(reader, writer, color, ident, *pu)
                break
            if up:
                data = await reader.readexactly(up[0])
                writer.write(f"{color} {ident} {up[1]}:{len(data)}:{digest(data)}\n".encode())
            else:
                writer.write(reply_for(color, ident, line))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        try:
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, color, ident):
        self.color = color
        self.ident = ident
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if data.startswith(b"big "):
            words = data.split(b"\n", 1)[0].split()
            if len(words) == 3 and words[1].isdigit():
                token = words[2][:64].decode("ascii", "replace")
                out = f"{self.color} {self.ident} {token}:{len(data)}:{digest(data)}\n".encode()
                size = min(int(words[1]), MAX_UDP_REPLY)
                self.transport.sendto(out + b"." * max(size - len(out), 0), addr)
                return
        self.transport.sendto(reply_for(self.color, self.ident, data), addr)

    def error_received(self, exc):
        pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # "node": a server on the node itself, at a VIP address outside every service
    ap.add_argument("--color", required=True, choices=("blue", "green", "node"))
    ap.add_argument("--addr", required=True, action="append",
                    help="an IPv4 or IPv6 address to serve on; repeat for more")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--no-udp", action="store_true")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    servers, udps = [], []
    for addr in args.addr:
        ident = ident_of(addr, args.port)
        servers.append(await asyncio.start_server(
            lambda r, w, ident=ident: handle_tcp(r, w, args.color, ident),
            host=addr, port=args.port, family=family_of(addr),
            reuse_address=True, backlog=4096))
        if not args.no_udp:
            udp, _ = await loop.create_datagram_endpoint(
                lambda ident=ident: UdpEcho(args.color, ident), local_addr=(addr, args.port),
                family=family_of(addr))
            udps.append(udp)

    sys.stdout.write("ready\n")
    sys.stdout.flush()

    await stop
    for server in servers:
        server.close()
    for udp in udps:
        udp.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
