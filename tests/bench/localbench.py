"""Local clients (`make bench`, part "local"): what bgswitch's cgroup socket hooks cost a
connect().

One namespace, bgswitch attached to a veth in it, a UDP and a TCP service whose backend is an
address of that namespace. tests/bench/sockbench (socket, connect, close; TCP also accept) runs
in it three ways: straight to the backend before any hook is attached, then, after `bgswitch
local add`, to the VIP (rewritten by the hooks) and straight to the backend (the hooks run and
find no VIP) in alternating batches of one run. Every ratio is taken within a round, and its
median over the rounds is reported.
"""

import json
import os
from typing import Dict, List

from common import (BGSWITCH, BPFFS, BENCH_OUT, Cleanup, log, median, netns_add, nsargv,
                    remove_pin_root, run)

SOCKBENCH = os.path.join(BENCH_OUT, "sockbench")
NET = "10.79.0"
BACKEND = f"{NET}.1"
VIP = "10.79.100.1"
PORTS = {"udp": (53, 9053), "tcp": (80, 9080)}  # VIP port, backend port


def _sockbench(ns: str, proto: str, rounds: int, iters: int, vip: bool) -> List[List[float]]:
    vport, bport = PORTS[proto]
    argv = [SOCKBENCH, "--proto", proto, "--backend", f"{BACKEND}:{bport}", "--rounds",
            str(rounds), "--iters", str(iters)] + (["--vip", f"{VIP}:{vport}"] if vip else [])
    out = run(nsargv(ns, argv), timeout=300).stdout
    return [[float(x) for x in line.split()] for line in out.splitlines() if line.strip()]


def part_local(cleanup: Cleanup, prefix: str, rounds: int, iters: int) -> Dict:
    ns = f"{prefix}-local"
    netns_add(cleanup, ns)
    for argv in (["link", "set", "lo", "up"],
                 ["link", "add", "l0", "type", "veth", "peer", "name", "l1"],
                 ["addr", "add", f"{BACKEND}/24", "dev", "l0"],
                 ["link", "set", "l0", "up"], ["link", "set", "l1", "up"]):
        run(["ip", "-n", ns] + argv)
    # TCP: the client closes first; without TIME_WAIT kept every round starts alike
    run(nsargv(ns, ["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=0"]))
    pin = f"{BPFFS}/{prefix}-local"

    def bgs(*args):
        return run(nsargv(ns, [BGSWITCH, "--pin-root", pin] + list(args)))

    def purge():
        run(nsargv(ns, [BGSWITCH, "--pin-root", pin, "detach", "l0", "--purge"]), check=False)
        remove_pin_root(pin)

    cleanup.push(f"pin root {pin}", purge)
    bgs("attach", "l0", "--mode", "generic")
    for proto, (vport, bport) in PORTS.items():
        bgs("service", "add", f"{proto}svc", f"{VIP}:{vport}", "--proto", proto)
        bgs("backend", "add", f"{proto}svc", "blue", f"{BACKEND}:{bport}")

    res = {"rounds": rounds, "iters": iters}
    log("local: connect() straight to the backend, no hooks attached")
    bare = {p: _sockbench(ns, p, rounds, iters, vip=False) for p in PORTS}
    bgs("local", "add")
    log("local: connect() to the VIP through the hooks, and straight to the backend")
    hooked = {p: _sockbench(ns, p, rounds, iters, vip=True) for p in PORTS}
    for proto in PORTS:
        v = [r[0] for r in hooked[proto]]
        d = [r[1] for r in hooked[proto]]
        b = [r[1] for r in bare[proto]]
        res[proto] = {
            "vip_ns": median(v), "direct_ns": median(d), "bare_ns": median(b),
            "vip_over_direct": median([x / y for x, y in zip(v, d)]),
            "vip_over_direct_range": [min(x / y for x, y in zip(v, d)),
                                      max(x / y for x, y in zip(v, d))],
            "direct_over_bare": median(d) / median(b),
        }
    # every socket closed: the count is back to zero
    res["local_live_after"] = json.loads(bgs("status", "--json").stdout)["flow_table"]["local"]
    return res
