#!/usr/bin/python3
"""Load client for bgswitch's end-to-end tests and demo. Run it in the client namespace:

    traffic.py load --vip 10.77.100.1 --port 80 --duration 10 --new-rate 100 --long 8 \\
                    [--udp-port 80 --udp-new-rate 50 --udp-long 4] [--progress]
    traffic.py probe --addr 10.77.100.1 --port 80 [--udp] [--count 5]
    traffic.py upload --addr fd77:77:77:100::1 --port 80 --bytes 200000
    traffic.py bigudp --addr 10.77.100.1 --port 53 --size 4000 --reply-size 4000
    traffic.py ping --addr 10.77.100.1 --size 3000 --count 3

Every address may be IPv4 or IPv6 (a literal: the family follows from it).

load runs, for at most --duration seconds, any of:
  * TCP new connections at --new-rate per second: connect, one request, read the reply (which
    names the color and backend), close. Every failure is recorded: connect error, timeout,
    reset, end of stream, wrong reply.
  * --long TCP connections opened at the start, each sending a request every --long-interval
    seconds and recording which color and backend answered; a change is recorded as a failure.
  * --push-long TCP connections where the server speaks: each sends servers.py's "push"
    request once, then only reads, a line every --long-interval seconds, recording which color
    and backend wrote it (the client sends nothing but acknowledgements);
  * the UDP equivalents: --udp-new-rate new flows per second (a new socket, from a source port
    never used before in this run, taken in turn from --udp-sport-range), and --udp-long flows
    that each send a datagram every --long-interval seconds from one socket.
stdout gets "READY" once every long-lived connection has had its first reply, then the JSON
summary at the end. SIGUSR1 closes the long-lived connections (one every --long-close-spread
seconds) and lets the rest go on; SIGINT or SIGTERM ends the run early, with a summary.
--progress prints one line per second to stderr: new connections by color and the colors of
the open long-lived connections.

probe makes --count fresh connections (or UDP sockets) one after the other, one request each,
and prints {"results": [{"ok", "color", "backend", "error", "elapsed"}]}.

upload opens one TCP connection and sends servers.py's "upload <n> <token>" request with --bytes
of payload, then waits for the server's acknowledgement, which names the byte count and digest
the server received; it prints {"ok", "color", "backend", "sent", "acked", "digest_ok",
"error", "elapsed", "mss"} (mss: the connection's TCP_MAXSEG at the end, which falls when
path-MTU discovery lowered it).

bigudp sends --count datagrams of --size bytes (servers.py's "big" request) from one socket and
asks for replies of --reply-size bytes; a datagram larger than the path MTU leaves fragmented,
and so does a large reply. It prints {"results": [{"ok", "color", "backend", "from",
"reply_len", "server_len", "digest_ok", "error"}]}; "from" is the reply's source address and
port as the socket received it.

ping sends --count ICMP (ICMPv6) echo requests with --size bytes of payload from a raw socket,
one after the other, each waiting for its echo reply; a request larger than the path MTU leaves
fragmented, and so does its reply. It prints {"results": [{"ok", "from", "len", "error"}]}: ok
when the reply came from --addr with the payload whole.

Every loop is bounded in time (the run's deadline, each operation's --timeout) and in count.
"""

import argparse
import asyncio
import errno
import hashlib
import json
import os
import re
import signal
import socket
import struct
import sys
import time

MAX_DURATION = 600.0
MAX_RATE = 2000
MAX_LONG = 256
MAX_FAILURES_KEPT = 200
MAX_UPLOAD = 16 << 20
MAX_DATAGRAM = 65000
# "node": a server on the node itself, at a VIP address outside every service
REPLY_RE = re.compile(r"^(blue|green|node) (\S+) (\S+)\n$")


def family_of(addr):
    """AF_INET6 for an IPv6 literal, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def any_addr(addr):
    return "::" if family_of(addr) == socket.AF_INET6 else "0.0.0.0"


def digest(data):
    """As servers.py computes it."""
    return hashlib.sha256(data).hexdigest()[:16]


def classify(exc):
    """A short name for why an operation failed."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return type(exc).__name__


class BadReply(Exception):
    pass


def parse_reply(data, token):
    """(color, backend) of a reply line, or BadReply."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    m = REPLY_RE.match(text)
    if not m or m.group(3) != token:
        raise BadReply(repr(text[:100]))
    return m.group(1), m.group(2)


class NewStats:
    """Results of one-shot connections or flows: per second, per color, failures."""

    def __init__(self, t0):
        self.t0 = t0
        self.attempts = 0
        self.ok = 0
        self.by_color = {}
        self.by_backend = {}
        self.per_second = {}
        self.failures = []
        self.failed = 0
        self.times = {}  # color -> {first_start, last_start, first_end, last_end}
        self.max_latency = 0.0
        self.slow = 0  # successes that took longer than 0.5 s (a retransmitted SYN, say)

    def sec(self, ts):
        s = int(ts - self.t0)
        return self.per_second.setdefault(s, {"t": s, "blue": 0, "green": 0, "fail": 0})

    def success(self, start, end, color, backend):
        self.ok += 1
        self.by_color[color] = self.by_color.get(color, 0) + 1
        self.by_backend[backend] = self.by_backend.get(backend, 0) + 1
        self.sec(start)[color] += 1
        t = self.times.setdefault(color, {"first_start": start, "last_start": start,
                                          "first_end": end, "last_end": end})
        t["first_start"] = min(t["first_start"], start)
        t["last_start"] = max(t["last_start"], start)
        t["first_end"] = min(t["first_end"], end)
        t["last_end"] = max(t["last_end"], end)
        self.max_latency = max(self.max_latency, end - start)
        if end - start > 0.5:
            self.slow += 1

    def failure(self, start, kind, detail="", **extra):
        self.failed += 1
        self.sec(start)["fail"] += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            f = {"t": round(start - self.t0, 3), "ts": start, "kind": kind, "detail": detail}
            f.update(extra)
            self.failures.append(f)

    def summary(self):
        return {"attempts": self.attempts, "ok": self.ok, "failed": self.failed,
                "by_color": self.by_color, "by_backend": self.by_backend,
                "per_second": [self.per_second[k] for k in sorted(self.per_second)],
                "times": self.times, "max_latency": round(self.max_latency, 4),
                "slow": self.slow, "failures": self.failures}


class LongConn:
    """Record of one long-lived connection or UDP flow."""

    def __init__(self, ident):
        self.ident = ident
        self.sport = None
        self.color = None
        self.backend = None
        self.requests = 0
        self.ok = 0
        self.changes = []
        self.failures = []
        self.opened_at = None
        self.closed_at = None
        self.first_ok_at = None
        self.last_ok_at = None
        self.open = False

    def answer(self, color, backend):
        self.ok += 1
        self.last_ok_at = time.time()
        if self.first_ok_at is None:
            self.first_ok_at = self.last_ok_at
        if self.color is None:
            self.color, self.backend = color, backend
        elif (color, backend) != (self.color, self.backend):
            if len(self.changes) < MAX_FAILURES_KEPT:
                self.changes.append({"ts": time.time(), "color": color, "backend": backend})

    def fail(self, kind, detail=""):
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append({"ts": time.time(), "kind": kind, "detail": detail})

    def summary(self):
        return {"id": self.ident, "sport": self.sport, "color": self.color,
                "backend": self.backend, "requests": self.requests, "ok": self.ok,
                "changes": self.changes, "failures": self.failures,
                "opened_at": self.opened_at, "closed_at": self.closed_at,
                "first_ok_at": self.first_ok_at, "last_ok_at": self.last_ok_at}


class UdpClient(asyncio.DatagramProtocol):
    """A connected UDP socket whose replies are matched to requests by their token."""

    def __init__(self):
        self.transport = None
        self.waiting = {}  # token -> future
        self.error = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        text = data.decode("ascii", "replace")
        parts = text.split()
        token = parts[2] if len(parts) == 3 else None
        fut = self.waiting.get(token)
        if fut and not fut.done():
            fut.set_result(data)

    def error_received(self, exc):
        self.error = exc
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    async def request(self, token, timeout):
        fut = asyncio.get_running_loop().create_future()
        self.waiting[token] = fut
        try:
            self.transport.sendto(f"{token}\n".encode())
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiting.pop(token, None)


def abort(writer):
    """Close a connection that failed with a RST: a failed connection must not linger in the
    kernel retransmitting its FIN into whatever the next test sets up."""
    try:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


async def close(writer, failed):
    if failed:
        abort(writer)
        return
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


async def tcp_once(addr, port, token, timeout):
    """One connection, one request: (color, backend). Raises on any failure."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    failed = True
    try:
        writer.write(f"{token}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        reply = parse_reply(line, token)
        failed = False
        return reply
    finally:
        await close(writer, failed)


async def udp_once(addr, port, token, timeout, sport=0):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        UdpClient, local_addr=(any_addr(addr), sport), remote_addr=(addr, port),
        family=family_of(addr))
    try:
        data = await proto.request(token, timeout)
        return parse_reply(data, token)
    finally:
        transport.close()


class Load:
    def __init__(self, args):
        self.a = args
        self.t0 = time.time()
        self.deadline = time.monotonic() + min(args.duration, MAX_DURATION)
        self.stop = asyncio.Event()
        self.close_long = asyncio.Event()
        self.tcp_new = NewStats(self.t0)
        self.udp_new = NewStats(self.t0)
        self.tcp_long = [LongConn(f"tcp{i}") for i in range(min(args.long, MAX_LONG))]
        self.udp_long = [LongConn(f"udp{i}") for i in range(min(args.udp_long, MAX_LONG))]
        self.tcp_push = [LongConn(f"push{i}") for i in range(min(args.push_long, MAX_LONG))]
        lo, hi = (int(x) for x in args.udp_sport_range.split("-"))
        self.udp_sports = iter(range(lo, hi + 1))
        self.ready = asyncio.Event()
        self.n_ready = 0
        self.inflight = set()

    def left(self):
        return self.deadline - time.monotonic()

    def running(self):
        return not self.stop.is_set() and self.left() > 0

    async def sleep(self, seconds):
        """Sleep, but wake early when the run stops. Returns False if it stopped."""
        seconds = min(seconds, max(self.left(), 0))
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self.running()

    def long_opened(self):
        self.n_ready += 1
        if self.n_ready >= len(self.tcp_long) + len(self.udp_long) + len(self.tcp_push):
            self.ready.set()

    # -- new connections / flows -------------------------------------------------------------
    async def one_tcp(self, seq):
        start = time.time()
        try:
            color, backend = await tcp_once(self.a.vip, self.a.port, f"new{seq}", self.a.timeout)
            self.tcp_new.success(start, time.time(), color, backend)
        except BadReply as e:
            self.tcp_new.failure(start, "bad_reply", str(e), seq=seq)
        except Exception as e:
            self.tcp_new.failure(start, classify(e), str(e), seq=seq)

    async def one_udp(self, seq):
        start = time.time()
        sport = None
        for _ in range(64):  # skip a port something else holds; bounded
            sport = next(self.udp_sports, None)
            if sport is None:
                self.udp_new.failure(start, "no_port", "udp source port range used up")
                return
            try:
                color, backend = await udp_once(self.a.vip, self.a.udp_port, f"unew{seq}",
                                                self.a.timeout, sport)
                self.udp_new.success(start, time.time(), color, backend)
                return
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                self.udp_new.failure(start, classify(e), str(e), seq=seq, sport=sport)
                return
            except BadReply as e:
                self.udp_new.failure(start, "bad_reply", str(e), seq=seq, sport=sport)
                return
            except Exception as e:
                self.udp_new.failure(start, classify(e), str(e), seq=seq, sport=sport)
                return

    async def new_loop(self, rate, fn, stats):
        """Start fn(seq) rate times a second until the deadline (open loop, bounded)."""
        if rate <= 0:
            return
        rate = min(rate, MAX_RATE)
        interval = 1.0 / rate
        max_count = int(rate * min(self.a.duration, MAX_DURATION)) + 1
        next_t = time.monotonic()
        for seq in range(max_count):
            if not self.running():
                break
            if len(self.inflight) < self.a.max_inflight:
                stats.attempts += 1
                task = asyncio.ensure_future(fn(seq))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            else:
                stats.failure(time.time(), "overload", "too many connections in flight")
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                if not await self.sleep(delay):
                    break
            elif delay < -1.0:  # fell behind by more than a second: do not burst to catch up
                next_t = time.monotonic()

    # -- long-lived connections / flows ------------------------------------------------------
    async def close_turn(self, index):
        """Wait for SIGUSR1 (or the end), then for this connection's turn to close."""
        await self.close_long.wait()
        await asyncio.sleep(index * self.a.long_close_spread)

    async def open_long(self, index, rec):
        """Open a long-lived connection: (reader, writer, its close turn), or None (failed,
        recorded)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.a.vip, self.a.port), self.a.timeout)
        except Exception as e:
            rec.fail(classify(e), str(e))
            self.long_opened()
            return None
        rec.opened_at = time.time()
        rec.sport = writer.get_extra_info("sockname")[1]
        rec.open = True
        return reader, writer, asyncio.ensure_future(self.close_turn(index))

    async def long_tcp(self, index, rec):
        a = self.a
        opened = await self.open_long(index, rec)
        if not opened:
            return
        reader, writer, turn = opened
        max_requests = int(min(a.duration, MAX_DURATION) / a.long_interval) + 2
        try:
            for n in range(max_requests):
                if n and (turn.done() or not self.running()):
                    break
                token = f"{rec.ident}-{n}"
                rec.requests += 1
                try:
                    writer.write(f"{token}\n".encode())
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), a.timeout)
                    if not line:
                        rec.fail("eof")
                        break
                    rec.answer(*parse_reply(line, token))
                except BadReply as e:
                    rec.fail("bad_reply", str(e))
                except Exception as e:
                    rec.fail(classify(e), str(e))
                    break
                if n == 0:
                    self.long_opened()
                nap = asyncio.ensure_future(self.sleep(a.long_interval))
                await asyncio.wait([turn, nap], return_when=asyncio.FIRST_COMPLETED)
                nap.cancel()
            else:
                rec.fail("max_requests")
        finally:
            if rec.ok == 0:
                self.long_opened()
            turn.cancel()
            await close(writer, bool(rec.failures))
            rec.open = False
            rec.closed_at = time.time()

    async def long_push(self, index, rec):
        """A connection where the server speaks: one "push" request, then a line every
        --long-interval seconds from the server, each checked in order."""
        a = self.a
        opened = await self.open_long(index, rec)
        if not opened:
            return
        reader, writer, turn = opened
        max_lines = int(min(a.duration, MAX_DURATION) / a.long_interval) + 2
        try:
            writer.write(f"push {int(a.long_interval * 1000)} {max_lines} {rec.ident}\n"
                         .encode())
            for n in range(max_lines):
                if n and (turn.done() or not self.running()):
                    break
                rec.requests += 1
                try:
                    read = asyncio.ensure_future(reader.readline())
                    await asyncio.wait([read, turn], timeout=a.timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        if turn.done() or not self.running():
                            break
                        raise asyncio.TimeoutError()
                    line = read.result()
                    if not line:
                        rec.fail("eof")
                        break
                    rec.answer(*parse_reply(line, f"{rec.ident}-{n}"))
                except BadReply as e:
                    rec.fail("bad_reply", str(e))
                except Exception as e:
                    rec.fail(classify(e), str(e))
                    break
                if n == 0:
                    self.long_opened()
        finally:
            if rec.ok == 0:
                self.long_opened()
            turn.cancel()
            await close(writer, bool(rec.failures))
            rec.open = False
            rec.closed_at = time.time()

    async def long_udp(self, index, rec):
        a = self.a
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                UdpClient, remote_addr=(a.vip, a.udp_port), family=family_of(a.vip))
        except Exception as e:
            rec.fail(classify(e), str(e))
            self.long_opened()
            return
        rec.opened_at = time.time()
        rec.sport = transport.get_extra_info("sockname")[1]
        rec.open = True
        turn = asyncio.ensure_future(self.close_turn(index))
        max_requests = int(min(a.duration, MAX_DURATION) / a.long_interval) + 2
        try:
            for n in range(max_requests):
                if n and (turn.done() or not self.running()):
                    break
                token = f"{rec.ident}-{n}"
                rec.requests += 1
                try:
                    rec.answer(*parse_reply(await proto.request(token, a.timeout), token))
                except BadReply as e:
                    rec.fail("bad_reply", str(e))
                except Exception as e:
                    rec.fail(classify(e), str(e))
                if n == 0:
                    self.long_opened()
                nap = asyncio.ensure_future(self.sleep(a.long_interval))
                await asyncio.wait([turn, nap], return_when=asyncio.FIRST_COMPLETED)
                nap.cancel()
            else:
                rec.fail("max_requests")
        finally:
            if rec.ok == 0 and rec.requests <= 1:
                self.long_opened()
            turn.cancel()
            transport.close()
            rec.open = False
            rec.closed_at = time.time()

    # -- progress -----------------------------------------------------------------------------
    async def progress(self):
        """One line a second to stderr, for the second that ended a moment ago."""
        sec = 0
        for _ in range(int(MAX_DURATION) + 2):
            if not await self.sleep(self.t0 + sec + 1.3 - time.time()):
                break
            parts = []
            if self.a.new_rate:
                s = self.tcp_new.per_second.get(sec, {"blue": 0, "green": 0, "fail": 0})
                parts.append(f"new TCP conns: blue {s['blue']:4d}  green {s['green']:4d}"
                             f"  failed {s['fail']}")
            if self.a.udp_new_rate:
                s = self.udp_new.per_second.get(sec, {"blue": 0, "green": 0, "fail": 0})
                parts.append(f"new UDP flows: blue {s['blue']:3d}  green {s['green']:3d}"
                             f"  failed {s['fail']}")
            for name, recs in (("long-lived TCP", self.tcp_long),
                               ("long-lived UDP", self.udp_long)):
                if recs:
                    open_ = [r for r in recs if r.open]
                    b = sum(1 for r in open_ if r.color == "blue")
                    g = sum(1 for r in open_ if r.color == "green")
                    parts.append(f"{name} open: blue {b} green {g}")
            print(f"[{sec:3d}s] " + " | ".join(parts), file=sys.stderr, flush=True)
            sec += 1

    async def run(self):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.close_long.set)
        longs = [asyncio.ensure_future(self.long_tcp(i, r)) for i, r in enumerate(self.tcp_long)]
        longs += [asyncio.ensure_future(self.long_udp(i, r)) for i, r in enumerate(self.udp_long)]
        longs += [asyncio.ensure_future(self.long_push(i, r)) for i, r in enumerate(self.tcp_push)]
        if not longs:
            self.ready.set()
        try:
            await asyncio.wait_for(self.ready.wait(), self.a.timeout * 3 + 1)
        except asyncio.TimeoutError:
            pass
        print("READY", flush=True)
        tasks = [asyncio.ensure_future(self.new_loop(self.a.new_rate, self.one_tcp,
                                                     self.tcp_new)),
                 asyncio.ensure_future(self.new_loop(self.a.udp_new_rate, self.one_udp,
                                                     self.udp_new))]
        if self.a.progress:
            tasks.append(asyncio.ensure_future(self.progress()))
        await asyncio.gather(*tasks)
        # Long-lived connections close at the deadline, on SIGINT, or in turn after SIGUSR1.
        drain = self.a.timeout * 2 + len(longs) * self.a.long_close_spread + 5
        if longs:
            done, pending = await asyncio.wait(longs, timeout=max(self.left(), 0) + drain)
            for t in pending:
                t.cancel()
        if self.inflight:
            await asyncio.wait(list(self.inflight), timeout=self.a.timeout * 2 + 1)
        return {
            "start": self.t0, "end": time.time(),
            "tcp_new": self.tcp_new.summary(),
            "udp_new": self.udp_new.summary(),
            "tcp_long": [r.summary() for r in self.tcp_long],
            "udp_long": [r.summary() for r in self.udp_long],
            "tcp_push": [r.summary() for r in self.tcp_push],
        }


async def probe(args):
    results = []
    for i in range(min(args.count, 1000)):
        start = time.time()
        token = f"probe{i}"
        r = {"ok": False, "color": None, "backend": None, "error": None}
        try:
            if args.udp:
                color, backend = await udp_once(args.addr, args.port, token, args.timeout)
            else:
                color, backend = await tcp_once(args.addr, args.port, token, args.timeout)
            r.update(ok=True, color=color, backend=backend)
        except BadReply as e:
            r["error"] = "bad_reply"
            r["detail"] = str(e)
        except Exception as e:
            r["error"] = classify(e)
            r["detail"] = str(e)
        r["elapsed"] = round(time.time() - start, 4)
        results.append(r)
    return {"results": results}


def upload(args):
    """One TCP connection: the "upload" request and its payload, then the server's count."""
    n = max(0, min(args.bytes, MAX_UPLOAD))
    payload = os.urandom(n)
    token = f"up{os.getpid()}"
    r = {"ok": False, "color": None, "backend": None, "sent": 0, "acked": None,
         "digest_ok": False, "error": None, "detail": "", "elapsed": 0.0, "mss": None}
    start = time.monotonic()
    deadline = start + args.timeout
    try:
        with socket.socket(family_of(args.addr), socket.SOCK_STREAM) as s:
            s.settimeout(args.timeout)
            s.connect((args.addr, args.port))
            s.sendall(f"upload {n} {token}\n".encode())
            view = memoryview(payload)
            while r["sent"] < n:  # bounded: every send moves on or times out
                if time.monotonic() > deadline:
                    raise TimeoutError("upload deadline")
                s.settimeout(max(deadline - time.monotonic(), 0.01))
                r["sent"] += s.send(view[r["sent"]:r["sent"] + 65536])
            line = b""
            for _ in range(1024):  # the reply is one short line
                if line.endswith(b"\n"):
                    break
                s.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = s.recv(4096)
                if not chunk:
                    break
                line += chunk
            r["mss"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        text = line.decode("ascii", "replace")
        m = REPLY_RE.match(text)
        if not m or not m.group(3).startswith(token + ":"):
            raise BadReply(repr(text[:100]))
        _, acked, dig = m.group(3).split(":")
        r.update(color=m.group(1), backend=m.group(2), acked=int(acked),
                 digest_ok=dig == digest(payload))
        r["ok"] = r["acked"] == n and r["digest_ok"]
    except BadReply as e:
        r.update(error="bad_reply", detail=str(e))
    except Exception as e:
        r.update(error=classify(e), detail=str(e))
    r["elapsed"] = round(time.monotonic() - start, 4)
    return r


def each_result(count, blank, attempt):
    """{"results": [...]}: attempt(i, r) for each i below count, r a fresh copy of blank that it
    fills; an exception it raises becomes r's error."""
    results = []
    for i in range(min(count, 100)):
        r = dict(blank)
        try:
            attempt(i, r)
        except BadReply as e:
            r.update(error="bad_reply", detail=str(e))
        except Exception as e:
            r.update(error=classify(e), detail=str(e))
        results.append(r)
    return {"results": results}


def bigudp(args):
    """Large datagrams ("big" requests) from one socket; each reply checked and its source
    recorded."""
    size = max(64, min(args.size, MAX_DATAGRAM))
    reply_size = max(0, min(args.reply_size, MAX_DATAGRAM))
    blank = {"ok": False, "color": None, "backend": None, "from": None, "reply_len": None,
             "server_len": None, "digest_ok": False, "error": None, "detail": ""}

    def attempt(i, r):
        token = f"big{os.getpid()}-{i}"
        head = f"big {reply_size} {token}\n".encode()
        data = head + b"x" * (size - len(head))
        s.settimeout(args.timeout)
        s.sendto(data, (args.addr, args.port))
        deadline = time.monotonic() + args.timeout
        for _ in range(100):  # skip stray datagrams (an earlier reply); bounded
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            reply, src = s.recvfrom(MAX_DATAGRAM + 1000)
            line = reply.split(b"\n", 1)[0] + b"\n"
            m = REPLY_RE.match(line.decode("ascii", "replace"))
            if m and m.group(3).startswith(token + ":"):
                break
        else:
            raise BadReply("no reply with the token")
        _, slen, dig = m.group(3).split(":")
        r.update(color=m.group(1), backend=m.group(2), reply_len=len(reply),
                 server_len=int(slen), digest_ok=dig == digest(data))
        r["from"] = [src[0], src[1]]
        r["ok"] = (r["server_len"] == len(data) and r["digest_ok"] and
                   (reply_size == 0 or r["reply_len"] == reply_size))

    with socket.socket(family_of(args.addr), socket.SOCK_DGRAM) as s:
        s.bind((any_addr(args.addr), 0))
        return each_result(args.count, blank, attempt)


ICMP_ECHO = {socket.AF_INET: (8, 0), socket.AF_INET6: (128, 129)}  # (request, reply) types
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # <linux/in.h>: let the kernel fragment


def inet_checksum(data):
    """The Internet checksum (RFC 1071) of data."""
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def echo_request(fam, ident, seq, payload):
    """An ICMP echo request; ICMPv6's checksum is the kernel's (it covers a pseudo-header)."""
    hdr = struct.pack("!BBHHH", ICMP_ECHO[fam][0], 0, 0, ident, seq)
    if fam == socket.AF_INET:
        hdr = struct.pack("!BBHHH", ICMP_ECHO[fam][0], 0, inet_checksum(hdr + payload), ident,
                          seq)
    return hdr + payload


def ping(args):
    """Echo requests of --size bytes of payload, each waiting for its echo reply."""
    fam = family_of(args.addr)
    size = max(0, min(args.size, MAX_DATAGRAM))
    ident = os.getpid() & 0xFFFF
    proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
    blank = {"ok": False, "from": None, "len": None, "error": None, "detail": ""}

    def attempt(seq, r):
        payload = (digest(f"{ident}-{seq}".encode()).encode() * (size // 16 + 1))[:size]
        s.sendto(echo_request(fam, ident, seq, payload), (args.addr, 0))
        deadline = time.monotonic() + args.timeout
        for _ in range(1000):  # skip other ICMP messages (neighbour discovery); bounded
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            pkt, src = s.recvfrom(MAX_DATAGRAM + 1000)
            msg = pkt[(pkt[0] & 0xF) * 4:] if fam == socket.AF_INET else pkt
            if (len(msg) >= 8 and msg[0] == ICMP_ECHO[fam][1] and
                    struct.unpack_from("!HH", msg, 4) == (ident, seq)):
                break
        else:
            raise BadReply("no echo reply")
        r.update(ok=src[0] == args.addr and msg[8:] == payload, len=len(msg) - 8)
        r["from"] = src[0]

    with socket.socket(fam, socket.SOCK_RAW, proto) as s:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        return each_result(args.count, blank, attempt)


def main():
    ap = argparse.ArgumentParser(description="bgswitch end-to-end load client")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ld = sub.add_parser("load")
    ld.add_argument("--vip", required=True)
    ld.add_argument("--port", type=int, default=80)
    ld.add_argument("--udp-port", type=int)
    ld.add_argument("--duration", type=float, default=10.0)
    ld.add_argument("--new-rate", type=float, default=0.0)
    ld.add_argument("--long", type=int, default=0)
    ld.add_argument("--udp-new-rate", type=float, default=0.0)
    ld.add_argument("--udp-long", type=int, default=0)
    ld.add_argument("--push-long", type=int, default=0)
    ld.add_argument("--long-interval", type=float, default=0.1)
    ld.add_argument("--long-close-spread", type=float, default=0.0)
    ld.add_argument("--udp-sport-range", default="10000-31999")
    ld.add_argument("--timeout", type=float, default=2.0)
    ld.add_argument("--max-inflight", type=int, default=512)
    ld.add_argument("--progress", action="store_true")
    pr = sub.add_parser("probe")
    pr.add_argument("--addr", required=True)
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--udp", action="store_true")
    pr.add_argument("--count", type=int, default=1)
    pr.add_argument("--timeout", type=float, default=1.0)
    up = sub.add_parser("upload")
    up.add_argument("--addr", required=True)
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--bytes", type=int, default=200000)
    up.add_argument("--timeout", type=float, default=10.0)
    bu = sub.add_parser("bigudp")
    bu.add_argument("--addr", required=True)
    bu.add_argument("--port", type=int, required=True)
    bu.add_argument("--size", type=int, default=4000)
    bu.add_argument("--reply-size", type=int, default=4000)
    bu.add_argument("--count", type=int, default=1)
    bu.add_argument("--timeout", type=float, default=2.0)
    pg = sub.add_parser("ping")
    pg.add_argument("--addr", required=True)
    pg.add_argument("--size", type=int, default=3000)
    pg.add_argument("--count", type=int, default=1)
    pg.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    if args.cmd == "load":
        if args.udp_port is None:
            args.udp_port = args.port
        args.long_interval = max(args.long_interval, 0.01)
        out = asyncio.run(Load(args).run())
    elif args.cmd == "upload":
        out = upload(args)
    elif args.cmd == "bigudp":
        out = bigudp(args)
    elif args.cmd == "ping":
        out = ping(args)
    else:
        out = asyncio.run(probe(args))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
