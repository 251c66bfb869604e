"""End-to-end tests of canary shifts, rollouts and weights (layout 3), with real TCP through the
namespaces of tests/lib/netns.py (client -> node with bgswitch -> blue and green backends, two
servers per color that answer in their own name).

  * at `shift web green 10%` the share of a few thousand new connections that land on green is
    within four binomial standard deviations of 10%, and each connection's color is the one
    the hash split predicts (tests/lib/model.py), its backend the one the color's real lookup
    table holds at position hash % M;
  * stepping the share up 10% -> 25% -> 50% -> 100% under long-lived connections moves none
    of them, and a client port that went to green at one step goes to green at every later
    step (the same ports are reused: connections are closed with a RST, so no TIME_WAIT);
  * `rollout --steps 20,60,100 --interval 2s` under load fails no request and ends on green;
  * `rollout --guard` with green backends that reset every connection rolls back to blue
    (exit status 4), and no connection that blue would take failed;
  * weights 1 and 3 split new connections about 25/75, a weight change moves only the
    connections it should, and the tables are the same whatever order the backends came in.

Every figure measured is printed (`pytest -s` shows them). The client is this file run as a
script in the client namespace (see conns()): short connections from chosen source ports,
one request each, closed with a RST, every result reported with its port.

Run as root: /usr/bin/pytest -q -s tests/test_canary.py   (about a minute)
"""

import argparse
import asyncio
import json
import math
import os
import re
import socket
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

REPLY_RE = re.compile(r"^(blue|green) (\S+) (\S+)\n$")


# -- the client: runs in the client namespace ---------------------------------------------------

async def _one(loop, addr, port, sport, timeout):
    """One connection from sport: one request, one reply line, then a RST (no TIME_WAIT, so
    the next run can use the same port at once). Returns a result dict."""
    r = {"sport": sport, "t": time.time(), "ok": False, "color": None, "backend": None,
         "error": None}
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if ":" in addr else "0.0.0.0", sport))
        await asyncio.wait_for(loop.sock_connect(s, (addr, port)), timeout)
        token = f"c{sport}"
        await asyncio.wait_for(loop.sock_sendall(s, f"{token}\n".encode()), timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 4096),
                                           max(deadline - time.monotonic(), 0.001))
            if not chunk:
                break
            data += chunk
        m = REPLY_RE.match(data.decode("ascii", "replace"))
        if not m or m.group(3) != token:
            r["error"] = "bad_reply" if data else "eof"
        else:
            r.update(ok=True, color=m.group(1), backend=m.group(2))
    except (asyncio.TimeoutError, TimeoutError):
        r["error"] = "timeout"
    except ConnectionRefusedError:
        r["error"] = "refused"
    except (ConnectionResetError, BrokenPipeError):
        r["error"] = "reset"
    except OSError as e:
        r["error"] = f"oserror:{e.errno}"
    finally:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()
    return r


async def _conns(args):
    loop = asyncio.get_running_loop()
    lo, hi = (int(x) for x in args.sports.split("-"))
    sports = list(range(lo, hi + 1))[:20000]
    sem = asyncio.Semaphore(max(1, min(args.concurrency, 512)))
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    t0 = time.monotonic()

    async def run(i, sport):
        if interval:  # paced: start i at t0 + i / rate
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        async with sem:
            return await _one(loop, args.addr, args.port, sport, args.timeout)

    results = await asyncio.gather(*(run(i, p) for i, p in enumerate(sports)))
    return {"elapsed": round(time.monotonic() - t0, 3), "results": results}


def _client_main():
    ap = argparse.ArgumentParser(description="short TCP connections from chosen ports")
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sports", required=True, help="LO-HI: one connection from each port")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0, help="starts per second (0: no pacing)")
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    json.dump(asyncio.run(_conns(args)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_client_main())


# -- the tests ----------------------------------------------------------------------------------

import pytest  # noqa: E402

from lib import bpfsys  # noqa: E402
from lib import model  # noqa: E402
from lib.netns import CLIENT_IP, NODE_IFACE, PY, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

EXIT_GUARD = 4
N = 3000  # new connections per measurement
SIGMAS = 4  # tolerance, in binomial standard deviations
TCP = socket.IPPROTO_TCP


@pytest.fixture
def sw(topo):
    """bgswitch attached to the node's client-facing veth, purged afterwards; no packet may be
    dropped for a bad checksum meanwhile."""
    csum_before = topo.csum_errors()
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:600]}{err}")
        assert s.purge() == []
    assert topo.csum_errors() == csum_before, "packets dropped for bad checksums"


def conns(topo, first, count, concurrency=64, rate=0.0, timeout=2.0):
    """One short connection to the VIP from each client port first .. first+count-1 (this file
    run as a script in the client namespace). Returns (results, elapsed seconds)."""
    argv = [PY, os.path.abspath(__file__), "--addr", VIP, "--port", str(VIP_PORT), "--sports",
            f"{first}-{first + count - 1}", "--concurrency", str(concurrency), "--rate",
            str(rate), "--timeout", str(timeout)]
    budget = 60 + (count / rate if rate else count / 50)
    out = json.loads(topo.ns_run("client", argv, timeout=budget).stdout)
    return out["results"], out["elapsed"]


def flow_hash(sport):
    return model.flow_hash(CLIENT_IP, VIP, sport, VIP_PORT, TCP)


def binomial(k, n, p):
    """(measured share, standard deviation, deviation in sigmas) of k successes in n."""
    sigma = math.sqrt(p * (1 - p) / n)
    return k / n, sigma, (k / n - p) / sigma


class Tables:
    """The lookup tables bgswitch built, read from the pinned maps: the backend ("addr:port")
    at each position of each color's current table."""

    def __init__(self, sw, name="web"):
        svc = sw.service(name)
        self.svc_id = svc["id"]
        self.by_slot = {b["slot"]: f"{b['address']}:{b['port']}"
                        for c in ("blue", "green") for b in svc["colors"][c]["backends"]}
        with bpfsys.Map.open(f"{sw.pin_root}/bgs_switch") as m:
            self.switch = model.unpack_switch(m.lookup(model.u32(self.svc_id)))
        self.table = {}
        with bpfsys.Map.open(f"{sw.pin_root}/bgs_tables") as outer:
            for color, c in model.COLORS.items():
                raw = outer.lookup(model.u32(self.switch.set_index(self.svc_id, c)))
                if raw is None:
                    self.table[color] = None
                    continue
                with bpfsys.Map.by_id(struct.unpack("<I", raw)[0]) as inner:
                    vals = [struct.unpack("<I", v)[0] for v in inner.array_values()]
                assert vals[0] == len(vals) - 1, (color, vals[0], len(vals))
                self.table[color] = [self.by_slot.get(s, f"slot{s}") for s in vals[1:]]

    def backend(self, color, sport):
        """The backend the table gives a new flow from sport."""
        t = self.table[color]
        return t[flow_hash(sport) % len(t)]

    def shares(self, color):
        t = self.table[color]
        return {b: t.count(b) / len(t) for b in sorted(set(t))}


def green_ports(results):
    return {r["sport"] for r in results if r["ok"] and r["color"] == "green"}


def check_all_ok(results, what):
    bad = [r for r in results if not r["ok"]]
    assert not bad, f"{what}: {len(bad)} failed, e.g. {bad[:5]}"


def check_predicted(results, share, tables, what):
    """Each connection went to the color bgs_share_color() gives its hash, and to the backend at
    position hash % M of that color's table."""
    wrong = [r for r in results
             if r["color"] != ("green" if model.share_color(flow_hash(r["sport"]), share)
                               else "blue")]
    assert not wrong, f"{what}: {len(wrong)} connections off the hash split, e.g. {wrong[:3]}"
    wrong = [r for r in results if r["backend"] != tables.backend(r["color"], r["sport"])]
    assert not wrong, f"{what}: {len(wrong)} connections off their table position: {wrong[:3]}"


# -- (a) the share of new connections at 10 % ---------------------------------------------------

def test_canary_ten_percent_of_new_connections_go_to_green(topo, sw):
    sw.setup_service("web")
    out = sw("shift", "web", "green", "10%")
    assert re.search(r"^web: blue -> green 10% \(generation \d+\)$", out, re.M), out
    svc = sw.service("web")
    assert (svc["active"], svc["green_share"], svc["previous"]) == ("split", 10.0, "blue"), svc
    assert svc["colors"]["green"]["share"] == 10.0 and svc["colors"]["blue"]["share"] == 90.0

    results, elapsed = conns(topo, 20000, N)
    check_all_ok(results, "10%")
    k = len(green_ports(results))
    p, sigma, z = binomial(k, N, 0.10)
    print(f"\n[canary 10%] {k} of {N} new connections on green: {100 * p:.2f}% "
          f"(sigma {100 * sigma:.2f} points, {z:+.2f} sigma; {N / elapsed:.0f} conn/s)")
    assert abs(z) < SIGMAS, (k, N, z)

    tables = Tables(sw)
    check_predicted(results, 1000, tables, "10%")
    # Within each color the two backends share it about evenly (weights 1 and 1).
    for color in ("blue", "green"):
        mine = [r for r in results if r["color"] == color]
        for backend, share in tables.shares(color).items():
            k = sum(1 for r in mine if r["backend"] == backend)
            p, sigma, z = binomial(k, len(mine), share)
            print(f"[canary 10%] {color} {backend}: {k} of {len(mine)} ({100 * p:.1f}%, table "
                  f"{100 * share:.2f}%, {z:+.2f} sigma)")
            assert abs(z) < SIGMAS
    # The views agree: what each color took, and the share they report.
    svc = sw.service("web")
    took = {c: sum(b["new_flows"] for b in svc["colors"][c]["backends"]) for c in
            ("blue", "green")}
    assert took == {"green": len(green_ports(results)),
                    "blue": N - len(green_ports(results))}, took


# -- (b) stepping up moves no connection --------------------------------------------------------

def test_canary_stepping_up_moves_no_connection(topo, sw):
    sw.setup_service("web")
    sw("shift", "web", "green", "10%")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 40, "--new-rate", 40,
                       "--long", 64, "--long-interval", 0.2)
    greens = {}
    try:
        run.wait_ready()
        steps = ["10%", "25%", "50%", "100%"]
        for i, step in enumerate(steps):
            if i:
                out = sw("shift", "web", "green", step)
                assert f"-> green{' ' + step if step != '100%' else ''} (generation" in out, out
            time.sleep(0.5)
            results, _ = conns(topo, 24000, 1500)
            check_all_ok(results, step)
            greens[step] = green_ports(results)
            share = int(step.rstrip("%")) * 100
            check_predicted(results, share, Tables(sw), step)
            print(f"\n[canary step] green {step}: {len(greens[step])} of 1500 client ports "
                  f"on green")
            time.sleep(0.5)
    finally:
        res = run.finish(early=True, timeout=60)
    # A port that went to green at a step goes to green at every later step.
    for a, b in zip(steps, steps[1:]):
        lost = greens[a] - greens[b]
        assert not lost, f"{len(lost)} ports green at {a} are blue at {b}: {sorted(lost)[:10]}"
    assert len(greens["100%"]) == 1500
    # No long-lived connection moved or failed, whatever the share did.
    longs = res["tcp_long"]
    assert len(longs) == 64
    for c in longs:
        assert c["failures"] == [] and c["changes"] == [], c
        assert c["ok"] >= 20, c
    on = {col: sum(1 for c in longs if c["color"] == col) for col in ("blue", "green")}
    print(f"[canary step] 64 long-lived connections opened at 10%: {on['green']} green, "
          f"{on['blue']} blue; none moved through 25%, 50% and 100%; new connections: "
          f"{res['tcp_new']['ok']} ok, {res['tcp_new']['failed']} failed")
    # Each kept the color the split at 10% gave it (its hash), and its backend.
    for c in longs:
        want = "green" if model.share_color(flow_hash(c["sport"]), 1000) else "blue"
        assert c["color"] == want, c
    assert res["tcp_new"]["failed"] == 0, res["tcp_new"]["failures"][:5]


# -- (c) a rollout under traffic -----------------------------------------------------------------

def test_canary_rollout_under_traffic_fails_nothing_and_ends_on_green(topo, sw):
    sw.setup_service("web")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 10, "--new-rate", 100,
                       "--long", 8)
    try:
        run.wait_ready()
        time.sleep(1.0)
        t0 = time.time()
        p = sw.run("rollout", "web", "--steps", "20,60,100", "--interval", "2s", "--no-check",
                   timeout=60)
        t1 = time.time()
        time.sleep(1.0)
    finally:
        res = run.finish(early=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    for i, pct in enumerate(("20%", "60%", "100%")):
        assert any(re.fullmatch(rf"rollout web: step {i + 1}/3, green {pct} of new flows "
                                r"\(generation \d+\)", ln) for ln in lines), p.stdout
    assert lines[-1] == "rollout web: done, green 100% of new flows", p.stdout
    assert 3.8 <= t1 - t0 <= 8, f"rollout took {t1 - t0:.1f}s (two 2s holds)"
    new = res["tcp_new"]
    assert new["failed"] == 0, new["failures"][:5]
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c
    svc = sw.service("web")
    assert (svc["active"], svc["green_share"]) == ("green", 100.0), svc
    secs = [s for s in new["per_second"] if s["blue"] + s["green"]]
    trace = " ".join(f"{100 * s['green'] / (s['blue'] + s['green']):.0f}%" for s in secs)
    print(f"\n[canary rollout] {new['ok']} new connections, {new['failed']} failed, "
          f"{len(res['tcp_long'])} long-lived kept blue; green share per second: {trace}; "
          f"rollout took {t1 - t0:.1f}s")


# -- (d) a guarded rollout to a broken green rolls back ------------------------------------------

def test_canary_rollout_guard_rolls_back_a_broken_green(topo, sw):
    sw("service", "add", "web", f"{VIP}:{VIP_PORT}")
    for addr, port in topo.backends["blue"]:
        sw("backend", "add", "web", "blue", f"{addr}:{port}")
    for addr, _ in topo.backends["green"]:
        sw("backend", "add", "web", "green", f"{addr}:8099")  # closed port: a RST per SYN
    # Long-lived connections on blue, and our own paced connections from known ports.
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 12, "--long", 8)
    try:
        run.wait_ready()
        proc = sw.popen("rollout", "web", "--steps", "20,60,100", "--interval", "3s",
                        "--guard", "--no-check")
        t0 = time.time()
        done = {}

        def wait():
            done["out"], done["err"] = proc.communicate(timeout=60)
            done["t"] = time.time()

        waiter = threading.Thread(target=wait)
        waiter.start()
        results, _ = conns(topo, 26000, 800, rate=100, timeout=1.0)
        waiter.join(70)
        topo.end(proc)
        out, err, t1 = done["out"], done["err"], done["t"]
    finally:
        res = run.finish(early=True, timeout=60)
    assert proc.returncode == EXIT_GUARD, (proc.returncode, out, err)
    assert "rolled web back to blue" in err and "resets" in err, err
    reached = [int(m) for m in re.findall(r"step \d/3, green (\d+)% of new flows", out)]
    assert reached == [20], f"the guard let the rollout go on: {out}"
    svc = sw.service("web")
    assert (svc["active"], svc["green_share"]) == ("blue", 0.0), svc

    # Every failed connection is one the 20% split sent to green (its bucket is below 2000);
    # every connection blue would take succeeded, before, during and after the rollback.
    failed = [r for r in results if not r["ok"]]
    off = [r for r in failed if model.share_bucket(flow_hash(r["sport"])) >= 2000]
    assert not off, f"connections of blue's part failed: {off[:5]}"
    assert all(r["error"] in ("refused", "reset", "eof") for r in failed), failed[:5]
    assert all(t0 - 0.5 <= r["t"] <= t1 + 0.5 for r in failed), failed[:5]
    assert t1 - t0 < 3, f"rolled back {t1 - t0:.1f}s after the start, not at the first second"
    blue_part = [r for r in results if model.share_bucket(flow_hash(r["sport"])) >= 2000]
    assert blue_part and all(r["ok"] and r["color"] == "blue" for r in blue_part)
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c
    guard_lines = [ln for ln in out.splitlines() if ln.startswith("guard web green")]
    print(f"\n[canary guard] rollout exit {proc.returncode} {t1 - t0:.1f}s after its start, "
          f"{len(guard_lines)} guard line(s); of 800 connections paced over 8s, {len(failed)} "
          f"failed, all in green's 20%, and the {len(blue_part)} of blue's part all ok; "
          f"{err.strip()}")


# -- (e) weights ----------------------------------------------------------------------------------

def test_canary_weights_split_new_connections_and_move_only_their_share(topo, sw):
    sw.setup_service("web")
    b0, b1 = (f"{a}:{p}" for a, p in topo.backends["blue"])
    before, _ = conns(topo, 20000, N)  # weights 1 and 1
    check_all_ok(before, "1:1")
    t_before = Tables(sw)

    out = sw("backend", "add", "web", "blue", b1, "--weight", "3")
    assert re.search(rf"blue backend {b1} weight 3, generation \d+", out), out
    svc = sw.service("web")
    blue = {f"{b['address']}:{b['port']}": b for b in svc["colors"]["blue"]["backends"]}
    assert (blue[b0]["weight"], blue[b1]["weight"]) == (1, 3)
    assert blue[b0]["table_positions"] + blue[b1]["table_positions"] == svc["table_size"]

    after, elapsed = conns(topo, 20000, N)  # the same client ports
    check_all_ok(after, "1:3")
    tables = Tables(sw)
    check_predicted(after, 0, tables, "1:3")
    table_share = tables.shares("blue")[b1]
    assert abs(table_share - 0.75) < 0.01, table_share
    assert abs(blue[b1]["table_positions"] / svc["table_size"] - table_share) < 1e-9
    k = sum(1 for r in after if r["backend"] == b1)
    p, sigma, z = binomial(k, N, table_share)
    print(f"\n[canary weights] 1:3 -> {N - k} / {k} of {N} new connections "
          f"({100 * (1 - p):.2f}% / {100 * p:.2f}%; table {100 * table_share:.2f}% for "
          f"weight 3, {z:+.2f} sigma)")
    assert abs(z) < SIGMAS, (k, N, z)
    assert abs(p - 0.75) < SIGMAS * math.sqrt(0.75 * 0.25 / N) + 0.01

    # The weight change moved about a quarter of the connections (0.5 -> 0.75), those whose
    # table position changed hands, and (here) all of them toward the backend that gained.
    moved = [(x, y) for x, y in zip(before, after) if x["backend"] != y["backend"]]
    tb, ta = t_before.table["blue"], tables.table["blue"]
    pos_moved = [(x, y) for x, y in zip(tb, ta) if x != y]
    frac_pos = len(pos_moved) / len(ta)
    assert {(x["backend"], y["backend"]) for x, y in moved} <= set(pos_moved)
    toward = sum(1 for x, y in moved if (x["backend"], y["backend"]) == (b0, b1))
    p, sigma, z = binomial(len(moved), N, frac_pos)
    print(f"[canary weights] 1:1 -> 1:3 moved {len(moved)} of {N} connections ({100 * p:.1f}%, "
          f"{toward} of them toward weight 3; table positions moved {100 * frac_pos:.2f}%, "
          f"ideal 25%)")
    assert abs(frac_pos - 0.25) < 0.02 and abs(z) < SIGMAS
    assert toward >= 0.95 * len(moved)

    # Weight 0: no new connection, and the backend stays in the set.
    sw("backend", "add", "web", "blue", b0, "--weight", "0")
    res, _ = conns(topo, 23500, 300)
    check_all_ok(res, "0:3")
    assert {r["backend"] for r in res} == {b1}
    svc = sw.service("web")
    blue = {f"{b['address']}:{b['port']}": b for b in svc["colors"]["blue"]["backends"]}
    assert (blue[b0]["state"], blue[b0]["weight"], blue[b0]["table_positions"]) == (
        "active", 0, 0)
    print(f"[canary weights] 0:3 -> all 300 new connections on {b1} "
          f"({N / elapsed:.0f} conn/s measured above)")


def test_canary_tables_follow_backends_not_their_order(topo, sw):
    """The same backends give the same table whatever order they were added in (the table is
    built from their addresses); adding one backend to N moves about 1/(N+1) of the positions,
    nearly all of them to it (Maglev reshuffles a little between the others), removing it
    again restores the table exactly, and removing one of N moves about 1/N."""
    addrs = [f"10.77.2.{11 + i}:8081" for i in range(10)]
    sw("service", "add", "a", f"{VIP}:{VIP_PORT}")
    sw("service", "add", "b", f"{VIP}:81")
    for a in addrs:
        sw("backend", "add", "a", "blue", a)
    for a in reversed(addrs):
        sw("backend", "add", "b", "blue", a)
    ta, tb = Tables(sw, "a").table["blue"], Tables(sw, "b").table["blue"]
    assert len(ta) == 16381 and ta == tb
    shares = sorted(ta.count(a) / len(ta) for a in addrs)
    print(f"\n[canary tables] 10 backends in 16381 positions: each {100 * shares[0]:.2f}% to "
          f"{100 * shares[-1]:.2f}% (ideal 10%)")
    assert shares[0] > 0.099 and shares[-1] < 0.101

    new = "10.77.2.99:8081"
    sw("backend", "add", "a", "blue", new)
    t11 = Tables(sw, "a").table["blue"]
    moved = [(x, y) for x, y in zip(ta, t11) if x != y]
    to_new = sum(1 for _, y in moved if y == new) / len(ta)
    between = len(moved) / len(ta) - to_new
    print(f"[canary tables] adding an 11th backend moved {100 * len(moved) / len(ta):.2f}% of "
          f"the positions: {100 * to_new:.2f}% to it (ideal {100 / 11:.2f}%), "
          f"{100 * between:.2f}% between the others")
    assert abs(to_new - t11.count(new) / len(ta)) < 1e-9 and abs(to_new - 1 / 11) < 0.005
    assert between < 0.01
    sw("backend", "del", "a", "blue", new)
    assert Tables(sw, "a").table["blue"] == ta

    sw("backend", "del", "a", "blue", addrs[3])
    t9 = Tables(sw, "a").table["blue"]
    moved = [(x, y) for x, y in zip(ta, t9) if x != y]
    own = sum(1 for x, _ in moved if x == addrs[3]) / len(ta)
    between = len(moved) / len(ta) - own
    print(f"[canary tables] removing one of 10 moved {100 * len(moved) / len(ta):.2f}% of the "
          f"positions: its own {100 * own:.2f}% (ideal 10%), {100 * between:.2f}% between "
          f"the others")
    assert abs(own - ta.count(addrs[3]) / len(ta)) < 1e-9 and between < 0.01

    sw("service", "set", "a", "--table-size", "65537")
    svc = sw.service("a")
    assert svc["table_size"] == 65537 and len(Tables(sw, "a").table["blue"]) == 65537
