"""Parts 3 (cutover under load) and 4 (through the network path) of the suite.

A topology of four network namespaces made for this run only (the idea of tests/lib/netns.py, with
addresses of its own, 10.78.0.0/16, and bench-httpd as the backends):

    client                    node                               blue  10.78.2.11:8081
    c-node 10.78.1.2 ------- n-client 10.78.1.1     n-blue 10.78.2.1 ----- b-node
                             (bgswitch or nftables   n-green 10.78.3.1 ---- g-node
                              on this side)                          green 10.78.3.11:8082

The VIP 10.78.100.1:80 lives nowhere: bgswitch on n-client (XDP ingress, TC egress), or an
nftables DNAT rule in the node's prerouting hook (conntrack undoes it on the replies), turns it
into the active backend. "direct" is the client talking to the blue backend's own address over
the same path, with neither. The client's veth has TX checksum offload off in every case (XDP
cannot update a CHECKSUM_PARTIAL checksum; a real NIC receives full checksums from the wire; see
tests/lib/netns.py), so every case pays the same for it.

Load is wrk (one thread, pinned to CPU 0) against bench-httpd (one thread each, pinned to the
last CPU), for a fixed duration, keep-alive or with "Connection: close" (one connection per
request). Every process is started here, recorded, and ended by its PID.
"""

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from typing import Dict, List, Optional

from common import (BGSWITCH, BPFFS, CONNLOAD, FLIPBENCH, HERE, HTTPD, BenchError, Cleanup,
                    end_process, log, median, netns_add, nsargv, remove_pin_root, run,
                    timed_run)

ROLES = ("client", "node", "blue", "green")
CLIENT_IP, NODE_IP = "10.78.1.2", "10.78.1.1"
VIP, VPORT = "10.78.100.1", 80
BACKENDS = {"blue": ("10.78.2", "n-blue", "b-node", 8081),
            "green": ("10.78.3", "n-green", "g-node", 8082)}
WRK_LUA = os.path.join(HERE, "wrk-report.lua")
NFT_TABLE = "bgsbench"
ATTACH_FLOWS: Optional[int] = None  # `attach --flows` (None: the default); smaller for --smoke


def backend(color: str):
    base, _, _, port = BACKENDS[color]
    return f"{base}.11", port


def nft_rule(color: str) -> str:
    addr, port = backend(color)
    return f"ip daddr {VIP} tcp dport {VPORT} dnat to {addr}:{port}"


class Topology:
    def __init__(self, cleanup: Cleanup, prefix: str):
        self.cleanup = cleanup
        self.prefix = prefix
        self.ns = {r: f"{prefix}-{r}" for r in ROLES}
        self.servers: Dict[str, subprocess.Popen] = {}
        self.ncpu = os.cpu_count() or 1
        self.pin_seq = 0
        for role in ROLES:
            netns_add(cleanup, self.ns[role])
            self.ip(role, "link", "set", "lo", "up")
        self.ip("node", "link", "add", "n-client", "type", "veth", "peer", "name", "c-node",
                "netns", self.ns["client"])
        self.ip("node", "addr", "add", f"{NODE_IP}/24", "dev", "n-client")
        self.ip("client", "addr", "add", f"{CLIENT_IP}/24", "dev", "c-node")
        for color, (base, node_if, be_if, _) in BACKENDS.items():
            self.ip("node", "link", "add", node_if, "type", "veth", "peer", "name", be_if,
                    "netns", self.ns[color])
            self.ip("node", "addr", "add", f"{base}.1/24", "dev", node_if)
            self.ip(color, "addr", "add", f"{base}.11/24", "dev", be_if)
            self.ip(color, "link", "set", be_if, "up")
            self.ip("node", "link", "set", node_if, "up")
            self.ip(color, "route", "add", "default", "via", f"{base}.1")
        self.ip("node", "link", "set", "n-client", "up")
        self.ip("client", "link", "set", "c-node", "up")
        self.ip("client", "route", "add", "10.78.0.0/16", "via", NODE_IP)
        self.sysctl("node", "net.ipv4.ip_forward", "1")
        self.sysctl("client", "net.ipv4.ip_local_port_range", "1024 65535")
        # The servers close first after "Connection: close". With TIME_WAIT kept, a client
        # reusing a port within 60 s meets the old connection's TIME_WAIT socket on the backend
        # and the run slows down as those pile up (first runs fast, later ones 2-5 times
        # slower); without it every case starts from the same state.
        for color in BACKENDS:
            self.sysctl(color, "net.ipv4.tcp_max_tw_buckets", "0")
        run(nsargv(self.ns["client"], ["ethtool", "-K", "c-node", "tx", "off"]))
        self._wait_links()
        for color in BACKENDS:
            self._start_server(color)

    def ip(self, role: str, *args: str, **kw):
        return run(["ip", "-n", self.ns[role]] + list(args), **kw)

    def sysctl(self, role: str, key: str, value: str) -> None:
        run(nsargv(self.ns[role], ["sysctl", "-q", "-w", f"{key}={value}"]))

    def _wait_links(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        checks = [("node", "n-client"), ("client", "c-node")] + [
            (c, BACKENDS[c][2]) for c in BACKENDS] + [("node", BACKENDS[c][1]) for c in BACKENDS]
        for role, dev in checks:
            while "LOWER_UP" not in self.ip(role, "-o", "link", "show", dev).stdout:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.ns[role]}/{dev} did not come up")
                time.sleep(0.02)

    def spawn(self, role: str, argv: List[str], cpu: Optional[int] = None, **kw):
        """Start argv in a namespace (pinned to a CPU); ended by PID at cleanup."""
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        p = subprocess.Popen(nsargv(self.ns[role], argv), stdin=subprocess.DEVNULL, **kw)
        self.cleanup.push(f"pid {p.pid} ({os.path.basename(argv[0])})",
                          lambda: end_process(p))
        return p

    def _start_server(self, color: str) -> None:
        addr, port = backend(color)
        p = self.spawn(color, [HTTPD, "--addr", addr, "--port", str(port), "--color", color],
                       cpu=self.ncpu - 1, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if line != "ready\n":
            raise BenchError(f"bench-httpd {color} did not start: {line!r}")
        self.servers[color] = p

    def served(self) -> Dict[str, int]:
        """Requests each backend has served so far (GET /stats, asked in the backend's own
        namespace: from the client, a stale bgswitch reverse entry for the same 5-tuple could
        rewrite the reply)."""
        out = {}
        script = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2]))"
                  ",2)\ns.sendall(b'GET /stats HTTP/1.0\\r\\n\\r\\n')\nd=b''\nwhile True:\n"
                  " c=s.recv(4096)\n if not c: break\n d+=c\n"
                  "print(d.split(b'served ')[1].split()[0].decode())")
        for color in BACKENDS:
            addr, port = backend(color)
            p = run(nsargv(self.ns[color], ["/usr/bin/python3", "-c", script, addr, str(port)]))
            out[color] = int(p.stdout.strip())
        return out

    # -- bgswitch ---------------------------------------------------------------------------
    def bgswitch_argv(self, pin_root: str, *args: str) -> List[str]:
        return nsargv(self.ns["node"], [BGSWITCH, "--pin-root", pin_root] + list(args))

    @staticmethod
    def flip_argv(pin_root: str, color: str) -> List[str]:
        """`bgswitch flip web COLOR --no-check`: maps only, so no need to enter the node's
        namespace. Without --no-check the command would first probe the color's backends,
        from this (the host's) namespace, where their addresses are not ours: the probes are
        not what is measured, and they must not leave the machine."""
        return [BGSWITCH, "--pin-root", pin_root, "flip", "web", color, "--no-check"]

    def attach(self, mode: str) -> str:
        """Attach bgswitch on n-client in a mode, service web with one backend per color.
        Returns the pin root (detached and purged by detach(), or at cleanup)."""
        self.pin_seq += 1
        root = f"{BPFFS}/{self.prefix}-net{self.pin_seq}"
        idx = self.cleanup.push(f"bgswitch {root}", lambda: self._purge(root))
        self._roots = getattr(self, "_roots", {})
        self._roots[root] = idx
        flows = ["--flows", str(ATTACH_FLOWS)] if ATTACH_FLOWS else []
        run(self.bgswitch_argv(root, "attach", "n-client", "--mode", mode, *flows))
        run(self.bgswitch_argv(root, "service", "add", "web", f"{VIP}:{VPORT}"))
        for color in BACKENDS:
            addr, port = backend(color)
            run(self.bgswitch_argv(root, "backend", "add", "web", color, f"{addr}:{port}"))
        return root

    def _purge(self, root: str) -> None:
        if os.path.isdir(root):
            run(self.bgswitch_argv(root, "detach", "n-client", "--purge"), check=False)
        remove_pin_root(root)

    def detach(self, root: str) -> None:
        self.cleanup.run_one(self._roots.pop(root))

    # -- nftables ---------------------------------------------------------------------------
    def nft(self, text: str) -> None:
        """One nft transaction (nft -f reads the whole file as one)."""
        p = subprocess.run(nsargv(self.ns["node"], ["nft", "-f", "-"]), input=text, text=True,
                           capture_output=True, timeout=30)
        if p.returncode:
            raise BenchError(f"nft -f: {p.stderr.strip()}\n{text}")

    def nft_up(self, color: str = "blue") -> None:
        self.nft(f"table ip {NFT_TABLE} {{\n chain pre {{\n  type nat hook prerouting priority"
                 f" dstnat; policy accept;\n  {nft_rule(color)}\n }}\n}}\n")
        self._nft_idx = self.cleanup.push("nft table", self.nft_down)

    def nft_swap(self, color: str) -> None:
        """Replace the DNAT rule atomically: flush and add in one transaction (nft -f)."""
        with tempfile.NamedTemporaryFile("w", prefix="bgsb-nft-", suffix=".nft") as f:
            f.write(f"flush chain ip {NFT_TABLE} pre\nadd rule ip {NFT_TABLE} pre "
                    f"{nft_rule(color)}\n")
            f.flush()
            rc, err, _ = timed_run(nsargv(self.ns["node"], ["nft", "-f", f.name]))
        if rc:
            raise BenchError(f"nft -f (swap to {color}): {err.strip()}")

    def nft_down(self) -> None:
        subprocess.run(nsargv(self.ns["node"], ["nft", "delete", "table", "ip", NFT_TABLE]),
                       capture_output=True, timeout=30)

    # -- load -------------------------------------------------------------------------------
    def wrk(self, url: str, seconds: int, conns: int, close: bool) -> Dict:
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s", "-s", WRK_LUA]
        if close:
            argv += ["-H", "Connection: close"]
        p = self.spawn("client", argv + [url], cpu=0, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=seconds + 30)
        finally:
            end_process(p)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode or not lines:
            raise BenchError(f"wrk {url}: exit {p.returncode}: {err.strip()} {out.strip()}")
        r = json.loads(lines[-1])
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        return r


# --- part 4 ---------------------------------------------------------------------------------

CASES = ("direct", "native", "generic", "nft")


def _url(case: str) -> str:
    if case == "direct":
        addr, port = backend("blue")
        return f"http://{addr}:{port}/"
    return f"http://{VIP}:{VPORT}/"


def _flip_test(t: Topology, what: str, seconds: int, conns: int, flips: int,
               root: Optional[str]) -> Dict:
    """wrk with one connection per request for `seconds`, while the active color changes
    `flips` times at even intervals (bgswitch flip, or the nft rule swapped atomically)."""
    before = t.served()
    done = threading.Event()
    flip_ms: List[float] = []
    errors: List[str] = []

    def flipper():
        color = "blue"
        interval = seconds / (flips + 1)
        for _ in range(flips):
            if done.wait(interval):
                return
            color = "green" if color == "blue" else "blue"
            t0 = time.monotonic()
            try:
                if root:
                    rc, err, _ = timed_run(t.flip_argv(root, color))
                    if rc:
                        raise BenchError(f"bgswitch flip: {err.strip()}")
                else:
                    t.nft_swap(color)
            except Exception as e:  # reported, and the test fails below
                errors.append(str(e))
                return
            flip_ms.append((time.monotonic() - t0) * 1000)

    th = threading.Thread(target=flipper)
    th.start()
    try:
        r = t.wrk(_url("native"), seconds, conns, close=True)
    finally:
        done.set()
        th.join()
    if errors:
        raise BenchError(f"{what} flip: {errors[0]}")
    after = t.served()
    return {"requests": r["requests"], "failed": r["errors"],
            "errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")},
            "flips": len(flip_ms), "flip_ms": median(flip_ms),
            "served": {c: after[c] - before[c] for c in after}}


def part_net(t: Topology, rounds: int, seconds: int, conns: int, flips: int,
             flip_seconds: int, cases=CASES) -> Dict:
    cases = tuple(c for c in CASES if c in cases)
    if "direct" not in cases:
        raise BenchError("the network part needs the direct case: ratios are to it")
    log(f"network path: {rounds} rounds x {len(cases)} cases x (keep-alive, close), "
        f"wrk {seconds} s each")
    out_rounds = []
    for rnd in range(rounds):
        res: Dict[str, Dict] = {}
        order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
        for case in order:
            root = None
            if case in ("native", "generic"):
                root = t.attach(case)
            elif case == "nft":
                t.nft_up()
            try:
                for mode, close in (("keepalive", False), ("close", True)):
                    r = t.wrk(_url(case), seconds, conns, close)
                    if r["requests"] == 0:  # nothing got through: the setup is broken
                        raise BenchError(f"{case} {mode}: no request succeeded: {r}")
                    res[f"{case}.{mode}"] = {k: r[k] for k in ("rps", "p50_us", "p99_us",
                                                               "mean_us", "requests",
                                                               "errors")}
            finally:
                if root:
                    t.detach(root)
                elif case == "nft":
                    t.cleanup.run_one(t._nft_idx)
        for key, v in res.items():
            case, mode = key.split(".")
            d = res[f"direct.{mode}"]
            v["rps_ratio"] = round(v["rps"] / d["rps"], 3)
            v["p50_ratio"] = round(v["p50_us"] / d["p50_us"], 3) if d["p50_us"] else None
            v["p99_ratio"] = round(v["p99_us"] / d["p99_us"], 3) if d["p99_us"] else None
        # Failed requests while the active color changes, in the same round.
        root = t.attach("native")
        try:
            res["flip.bgswitch"] = _flip_test(t, "bgswitch", flip_seconds, conns, flips, root)
        finally:
            t.detach(root)
        t.nft_up()
        try:
            res["flip.nft"] = _flip_test(t, "nft", flip_seconds, conns, flips, None)
        finally:
            t.cleanup.run_one(t._nft_idx)
        log(f"  round {rnd + 1}: " + ", ".join(
            f"{k} {v['rps']:.0f}/s" for k, v in res.items() if "rps" in v))
        out_rounds.append(res)
    summary = {}
    for key in out_rounds[0]:
        rows = [r[key] for r in out_rounds]
        if key.startswith("flip."):
            summary[key] = {"failed": sum(x["failed"] for x in rows),
                            "requests": sum(x["requests"] for x in rows),
                            "flips": sum(x["flips"] for x in rows),
                            "flip_ms": median([x["flip_ms"] for x in rows]),
                            "served": {c: sum(x["served"][c] for x in rows) for c in BACKENDS}}
        else:
            summary[key] = {k: median([x[k] for x in rows])
                            for k in ("rps", "p50_us", "p99_us", "rps_ratio", "p50_ratio",
                                      "p99_ratio")}
            summary[key]["failed"] = sum(x["errors"] for x in rows)
            summary[key]["rps_range"] = [min(x["rps"] for x in rows),
                                         max(x["rps"] for x in rows)]
            summary[key]["rps_ratio_range"] = [min(x["rps_ratio"] for x in rows),
                                               max(x["rps_ratio"] for x in rows)]
    return {"rounds": out_rounds, "summary": summary, "seconds": seconds, "conns": conns,
            "flips_per_test": flips, "flip_seconds": flip_seconds, "cases": list(cases)}


# --- part 3: cutover under load -----------------------------------------------------------

def _cutover_of(recs, t_start: int, t_end: int, lo: int, hi: int, new: str, old: str) -> Dict:
    """From connload records (start, connected, end, outcome), around a flip that began at
    t_start and was surely done at t_end, among connections started in [lo, hi): the start of
    the first one served by the new color and of the last one served by the old, relative to
    t_start; and the connections that contradict the flip: served by the old color though begun
    (connect() called) after t_end, or by the new one though connect() had returned (the SYN
    was through) before t_start. Both must be 0."""
    sel = [r for r in recs if lo <= r[0] < hi]
    starts_new = [r[0] for r in sel if r[3] == new]
    starts_old = [r[0] for r in sel if r[3] == old]
    return {"to_first_new_us": (min(starts_new) - t_start) / 1e3 if starts_new else None,
            "to_last_old_us": (max(starts_old) - t_start) / 1e3 if starts_old else None,
            "old_after": sum(1 for r in sel if r[3] == old and r[0] > t_end),
            "new_before": sum(1 for r in sel if r[3] == new and r[1] < t_start)}


def part_cutover(t: Topology, rounds: int, rate: int, load_ms: int, conns: int = 256) -> Dict:
    """New connections at full speed; flip once with the in-process write (flipbench once),
    and back with the `bgswitch flip` command; per flip: time from its start to the first new
    connection served by the new color, and to the last one served by the old color."""
    log(f"cutover under load: {rounds} rounds, {rate} new connections/s")
    out = []
    for _ in range(rounds):
        root = t.attach("native")
        try:
            p = t.spawn("client", [CONNLOAD, "--addr", VIP, "--port", str(VPORT), "--rate",
                                   str(rate), "--conns", str(conns), "--duration-ms",
                                   str(load_ms), "--timeout-ms", "2000", "--max", "2000000"],
                        cpu=0, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The in-process write: flipbench, ready and asleep, flips at a set time.
            t_load = time.monotonic_ns()
            t1 = t_load + load_ms * 1_000_000 // 3
            # Flips run on the servers' CPU, the load on CPU 0: the flipping process must not
            # delay the connections whose start times measure it.
            pin = ["taskset", "-c", str(t.ncpu - 1)]
            fb = subprocess.run(pin + [FLIPBENCH, "once", f"{root}/bgs_switch", "0", str(t1)],
                                capture_output=True, text=True, timeout=load_ms / 1000 + 30)
            if fb.returncode:
                raise BenchError(f"flipbench once: {fb.stderr.strip()}")
            w = json.loads(fb.stdout)
            # The command, from its start (fork) to its exit.
            time.sleep(max(0.0, (t_load + 2 * load_ms * 1_000_000 // 3 - time.monotonic_ns())
                           / 1e9))
            t2 = time.monotonic_ns()
            rc, err, wall = timed_run(pin + t.flip_argv(root, "blue"))
            if rc:
                raise BenchError(f"bgswitch flip: {err.strip()}")
            t2_end = t2 + wall
            stdout, stderr = p.communicate(timeout=load_ms / 1000 + 30)
            end_process(p)
        finally:
            t.detach(root)
        recs = []
        for line in stdout.splitlines():
            s, c, e, what = line.split()
            recs.append((int(s), int(c), int(e), what))
        if not recs:
            raise BenchError("connload recorded nothing")
        failed = [r for r in recs if r[3].startswith("error")]
        load_s = (max(r[0] for r in recs) - min(r[0] for r in recs)) / 1e9 or 1
        skipped = re.search(r"(\d+) paced starts skipped", stderr)
        res = {"connections": len(recs), "failed": len(failed), "rate": rate,
               "skipped_starts": int(skipped.group(1)) if skipped else None,
               "conn_per_s": round(len(recs) / load_s),
               "write": _cutover_of(recs, w["t_start_ns"], w["t_end_ns"], 0, t2, "green",
                                    "blue"),
               "command": _cutover_of(recs, t2, t2_end, w["t_end_ns"] + 1, 1 << 63, "blue",
                                      "green"),
               "command_wall_us": (t2_end - t2) / 1e3,
               "write_wall_us": (w["t_end_ns"] - w["t_start_ns"]) / 1e3}
        t1 = w["t_start_ns"]
        res["timeline"] = [((r[0] - t1) / 1e6, r[3]) for r in recs
                           if -3e6 <= r[0] - t1 <= 3e6] if not out else None
        if failed:
            raise BenchError(f"cutover: {len(failed)} of {len(recs)} connections failed: "
                             f"{sorted(set(r[3] for r in failed))}")
        out.append(res)
    med = {}
    for flip in ("write", "command"):
        for k in ("to_first_new_us", "to_last_old_us"):
            med[f"{flip}.{k}"] = median([r[flip][k] for r in out])
        for k in ("old_after", "new_before"):
            med[f"{flip}.{k}"] = sum(r[flip][k] for r in out)
    med["command_wall_us"] = median([r["command_wall_us"] for r in out])
    med["conn_per_s"] = median([r["conn_per_s"] for r in out])
    med["failed"] = sum(r["failed"] for r in out)
    med["skipped_starts"] = sum(r["skipped_starts"] or 0 for r in out)
    return {"rounds": out, "summary": med, "rate": rate, "conns": conns, "load_ms": load_ms}
