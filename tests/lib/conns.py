#!/usr/bin/python3
"""Client-side scenarios for the flow-state end-to-end tests (tests/test_e2e_flows.py). Run it
in the client namespace of the test topology (tests/lib/netns.py); every subcommand prints JSON.

    conns.py stale --vip 10.77.100.1 --port 80 --count 10 --close rst --sport-base 41000
        Each round: a connection to the VIP from source port p, one request (the reply names
        backend B), closed by an RST (SO_LINGER 0) or by FIN both ways; then a connection from
        the same port p straight to B, one request. {"results": [{"sport", "vip", "direct",
        "ok", "error"}]}.
    conns.py udp --addr 10.77.100.1 --port 53 --sport 40001 [--count 1]
        Datagrams from one fixed source port (the same UDP flow across runs), one reply each:
        {"results": [{"ok", "color", "backend", "from", "error"}]}.
    conns.py hold --addr 10.77.100.1 --port 80 --iface c-node [--sport P]
        One connection held open (from source port P, or any); every line "req" on stdin sends one request and prints
        {"ok", "sport", "color", "backend", "snd_nxt", "error"} (snd_nxt: the sequence number
        after the request, read from the client's own segment captured on --iface); "quit"
        (or end of input) closes it (FIN).
    conns.py spoof --src A --sport P --dst B --dport Q --proto tcp --flags R --seq N
                   [--payload TEXT] [--l2 IFACE --dmac MAC] [--count 1]
        Packets (IPv4 or IPv6) with the given addresses, ports and TCP flags, built with
        scapy: routed by the client's stack, or with --l2 sent as frames to MAC on IFACE (for
        a destination the client's routes would keep local). {"sent": n}.

Every loop is bounded in count and every socket operation in time (--timeout).
"""

import argparse
import json
import select
import socket
import struct
import sys
import time

REQUEST_TIMEOUT = 2.0


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def parse_reply(line, token):
    """(color, backend) of servers.py's reply line to token, or ValueError."""
    words = line.decode("ascii", "replace").split()
    if len(words) != 3 or words[2] != token or words[0] not in ("blue", "green"):
        raise ValueError(f"bad reply {line[:100]!r}")
    return words[0], words[1]


def request(s, token, timeout):
    """One request line on a connected TCP socket, one reply line: (color, backend)."""
    s.settimeout(timeout)
    s.sendall(f"{token}\n".encode())
    line = b""
    for _ in range(64):  # one short line; bounded
        if line.endswith(b"\n"):
            break
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("end of stream")
        line += chunk
    return parse_reply(line, token)


def tcp_socket(addr, sport):
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if ":" in addr else "0.0.0.0", sport))
    return s


def close_rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def close_fin(s, timeout):
    """FIN both ways: ours, then the server's (it closes when it reads end of stream)."""
    s.shutdown(socket.SHUT_WR)
    s.settimeout(timeout)
    for _ in range(64):
        if not s.recv(4096):
            break
    s.close()


def split_backend(ident):
    """(address, port) of a servers.py identity, "a:p" or "[a]:p"."""
    host, port = ident.rsplit(":", 1)
    return host.strip("[]"), int(port)


def stale_round(a, sport, seq):
    r = {"sport": sport, "vip": None, "direct": None, "ok": False, "error": None}
    try:
        s = tcp_socket(a.vip, sport)
        s.settimeout(a.timeout)
        s.connect((a.vip, a.port))
        r["vip"] = request(s, f"vip{seq}", a.timeout)
        if a.close == "rst":
            close_rst(s)
        else:
            close_fin(s, a.timeout)
        backend = split_backend(r["vip"][1])
        d = tcp_socket(backend[0], sport)
        try:
            d.settimeout(a.timeout)
            d.connect(backend)
            r["direct"] = request(d, f"direct{seq}", a.timeout)
            r["ok"] = r["direct"][1] == r["vip"][1]
        finally:
            close_rst(d)  # no TIME_WAIT left on the port for the next test
    except (OSError, ValueError) as e:
        r["error"] = f"{type(e).__name__}: {e}"
    return r


def cmd_stale(a):
    results = []
    for i in range(min(a.count, 100)):
        results.append(stale_round(a, a.sport_base + i, i))
    return {"results": results}


def cmd_udp(a):
    results = []
    with socket.socket(family_of(a.addr), socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if ":" in a.addr else "0.0.0.0", a.sport))
        s.connect((a.addr, a.port))  # a reply from any other source is not ours
        for i in range(min(a.count, 100)):
            token = f"udp{a.sport}-{i}-{time.monotonic_ns() % 100000}"
            r = {"ok": False, "color": None, "backend": None, "error": None}
            try:
                s.settimeout(a.timeout)
                s.send(f"{token}\n".encode())
                for _ in range(16):  # skip a late reply to an earlier datagram; bounded
                    data = s.recv(4096)
                    try:
                        r["color"], r["backend"] = parse_reply(data, token)
                        r["ok"] = True
                        break
                    except ValueError:
                        continue
            except OSError as e:
                r["error"] = f"{type(e).__name__}: {e}"
            results.append(r)
    return {"results": results}


ETH_P_ALL = 0x0003


def own_seq(cap, sport, deadline):
    """snd_nxt after the client's next data segment from sport, read from an AF_PACKET
    capture (IPv4 over Ethernet), or None."""
    for _ in range(10000):  # bounded: other traffic may cross the link
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([cap], [], [], left)[0]:
            return None
        frame = cap.recv(65535)
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
            continue
        ihl = (frame[14] & 0x0F) * 4
        tot = struct.unpack("!H", frame[16:18])[0]
        tcp = frame[14 + ihl:]
        if len(tcp) < 20 or struct.unpack("!H", tcp[0:2])[0] != sport:
            continue
        doff = (tcp[12] >> 4) * 4
        paylen = tot - ihl - doff
        if paylen > 0:
            return (struct.unpack("!I", tcp[4:8])[0] + paylen) & 0xFFFFFFFF
    return None


def cmd_hold(a):
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind((a.iface, 0))
    s = tcp_socket(a.addr, a.sport)
    s.settimeout(a.timeout)
    s.connect((a.addr, a.port))
    sport = s.getsockname()[1]
    try:
        for n in range(10000):
            line = sys.stdin.readline()
            if line.strip() != "req":
                break
            r = {"ok": False, "sport": sport, "color": None, "backend": None,
                 "snd_nxt": None, "error": None}
            try:
                r["color"], r["backend"] = request(s, f"hold{n}", a.timeout)
                r["snd_nxt"] = own_seq(cap, sport, time.monotonic() + a.timeout)
                r["ok"] = True
            except (OSError, ValueError) as e:
                r["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(r), flush=True)
    finally:
        s.close()
        cap.close()
    return None


def cmd_spoof(a):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import send, sendp

    l4 = (TCP(sport=a.sport, dport=a.dport, flags=a.flags, seq=a.seq, ack=a.ack,
              window=a.window) if a.proto == "tcp" else UDP(sport=a.sport, dport=a.dport))
    l3 = IPv6(src=a.src, dst=a.dst) if ":" in a.src else IP(src=a.src, dst=a.dst)
    pkt = l3 / l4 / a.payload.encode()
    count = max(1, min(a.count, 1000))
    if a.l2:
        sendp(Ether(dst=a.dmac) / pkt, iface=a.l2, count=count, verbose=False)
    else:
        send(pkt, count=count, verbose=False)
    return {"sent": count}


def main():
    ap = argparse.ArgumentParser(description="bgswitch flow-state test client")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stale")
    st.add_argument("--vip", required=True)
    st.add_argument("--port", type=int, required=True)
    st.add_argument("--count", type=int, default=10)
    st.add_argument("--close", choices=("rst", "fin"), default="rst")
    st.add_argument("--sport-base", type=int, required=True)
    st.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    ud = sub.add_parser("udp")
    ud.add_argument("--addr", required=True)
    ud.add_argument("--port", type=int, required=True)
    ud.add_argument("--sport", type=int, required=True)
    ud.add_argument("--count", type=int, default=1)
    ud.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    ho = sub.add_parser("hold")
    ho.add_argument("--addr", required=True)
    ho.add_argument("--port", type=int, required=True)
    ho.add_argument("--iface", required=True)
    ho.add_argument("--sport", type=int, default=0)
    ho.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    sp = sub.add_parser("spoof")
    sp.add_argument("--src", required=True)
    sp.add_argument("--dst", required=True)
    sp.add_argument("--sport", type=int, required=True)
    sp.add_argument("--dport", type=int, required=True)
    sp.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    sp.add_argument("--flags", default="A")
    sp.add_argument("--seq", type=int, default=0)
    sp.add_argument("--ack", type=int, default=0)
    sp.add_argument("--window", type=int, default=512)
    sp.add_argument("--payload", default="")
    sp.add_argument("--l2")
    sp.add_argument("--dmac")
    sp.add_argument("--count", type=int, default=1)
    a = ap.parse_args()
    out = {"stale": cmd_stale, "udp": cmd_udp, "hold": cmd_hold, "spoof": cmd_spoof}[a.cmd](a)
    if out is not None:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
