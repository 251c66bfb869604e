#!/usr/bin/python3
"""Backend servers for the end-to-end tests and the demo.

One process serves one backend address: TCP and UDP on the same IP:port. Run it inside a
backend namespace (tests/netns.py does, with nsenter):

    servers.py --color blue --addr 10.77.2.11 --port 8081

TCP: every request line gets one reply line, "<color> <addr>:<port> <request>\\n", and the
connection stays open for further requests until the client closes it.
UDP: every datagram gets one datagram back, "<color> <addr>:<port> <request>\\n".

The request is echoed (stripped, at most 64 bytes) so that a client can tell which request a
reply answers. "ready" is printed on stdout once both sockets listen; nothing is printed to
stdout after that. SIGTERM or SIGINT ends the process.
"""

import argparse
import asyncio
import signal
import socket
import sys

MAX_LINE = 4096  # a longer request line ends the connection


def reply_for(color, ident, request):
    req = request.strip()[:64].decode("ascii", "replace")
    return f"{color} {ident} {req}\n".encode()


async def handle_tcp(reader, writer, color, ident):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if len(line) > MAX_LINE:
                break
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
        self.transport.sendto(reply_for(self.color, self.ident, data), addr)

    def error_received(self, exc):
        pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--color", required=True, choices=("blue", "green"))
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--no-udp", action="store_true")
    args = ap.parse_args()
    ident = f"{args.addr}:{args.port}"

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    server = await asyncio.start_server(
        lambda r, w: handle_tcp(r, w, args.color, ident),
        host=args.addr, port=args.port, family=socket.AF_INET,
        reuse_address=True, backlog=4096)
    udp = None
    if not args.no_udp:
        udp, _ = await loop.create_datagram_endpoint(
            lambda: UdpEcho(args.color, ident), local_addr=(args.addr, args.port),
            family=socket.AF_INET)

    sys.stdout.write("ready\n")
    sys.stdout.flush()

    await stop
    server.close()
    if udp:
        udp.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
