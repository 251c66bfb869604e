"""Part "cmd" of the suite: what the commands an operator runs cost, from spawn to exit.

`bgswitch flip`, `shift` and `rollback` (probes off: --no-check) of the last of many services
(the topology's, then fillers: its id the last a scan of the ids reaches), beside what any command costs (/bin/true, and `bgswitch -V`: bgswitch's own start), `socat` to a
unix socket answered by a trivial echo server (a thread of this process), and HAProxy's runtime
API doing the same job through socat (`set weight` of its two servers: all of a backend's
traffic to the other one, or 10 % of it). HAProxy runs with a backend of the topology's two
addresses and carries no traffic: its API's cost is measured, not its data path.

tests/bench/cmdtime runs every command in turn, one run each per round, so that a change of load
falls on all of them alike; idle, then under the cutover part's load (connload opening new
connections through bgswitch at a fixed rate). Each command's figure is the median (and p99) of
its runs; a ratio is the median over the rounds of the two commands' ratio in the round.
With --ref-bgswitch PATH (another build, the one before a change, say) its flip, rollback and
shifts run in the same rounds. One `strace -f -c` of a flip gives its system calls, `ldd` its
shared libraries; and HAProxy's API is timed from a process already running too (connect, the
two commands, the answer: what a client that stays up pays), to show what process start costs.
"""

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from typing import Dict, List, Optional

from common import (BENCH_OUT, BGSWITCH, CONNLOAD, BenchError, Cleanup, end_process, log,
                    median, percentile, run)
from netbench import VIP, VPORT, Topology, backend

CMDTIME = os.path.join(BENCH_OUT, "cmdtime")

# (name, what the table calls it). A round runs them in this order; the bgswitch ones leave
# the service as they found it (blue), each changing it: flip to green, roll back to blue,
# 10 % to green, back to blue; the HAProxy ones likewise.
COMMANDS = ("true", "version", "echo", "flip", "rollback", "shift", "shift_back",
            "haproxy_flip", "haproxy_back", "haproxy_shift", "haproxy_shift_back")
# With a reference build (--ref-bgswitch: another bgswitch, the one before a change, say), its
# flip, rollback and shifts run in the same rounds, after this build's.
REF_COMMANDS = ("ref_flip", "ref_rollback", "ref_shift", "ref_shift_back")
# cmdtime's groups (see cmdtime.c), each begun by one of these: the order of the groups turns
# round by round, a group's commands (a change, then the ones that undo it) stay in order.
GROUP_FIRST = ("true", "version", "echo", "flip", "haproxy_flip", "ref_flip")
# The service the commands change: the last of `services` (the topology's web first, then
# fillers without backends), the id a scan of the service ids would reach last.
SERVICE = "far"


def _services(root: str, services: int) -> int:
    """Fill the state up to `services` services, SERVICE last, with web's two backends.
    Returns SERVICE's id."""
    bgs = [BGSWITCH, "--pin-root", root]
    for i in range(services - 2):
        run(bgs + ["service", "add", f"f{i}", f"10.77.{i // 250}.{i % 250 + 1}:80"])
    run(bgs + ["service", "add", SERVICE, "10.77.255.1:80"])
    for color in ("blue", "green"):
        addr, port = backend(color)
        run(bgs + ["backend", "add", SERVICE, color, f"{addr}:{port}"])
    return json.loads(run(bgs + ["status", SERVICE, "--json"]).stdout)["services"][0]["id"]


class EchoServer:
    """A unix stream socket that sends back what it reads, until the peer's end of input."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                data = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(data)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _haproxy(cleanup: Cleanup, tmp: str) -> str:
    """Start HAProxy with a backend of the topology's two servers, all weight on blue; returns
    its runtime API socket. Ended by PID at cleanup."""
    sock = os.path.join(tmp, "haproxy.sock")
    cfg = os.path.join(tmp, "haproxy.cfg")
    (baddr, bport), (gaddr, gport) = backend("blue"), backend("green")
    with open(cfg, "w") as f:
        f.write(f"global\n    stats socket {sock} mode 600 level admin\n"
                "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n"
                "    timeout server 10s\n"
                f"backend web\n    server blue {baddr}:{bport} weight 100\n"
                f"    server green {gaddr}:{gport} weight 0\n")
    p = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cleanup.push(f"pid {p.pid} (haproxy)", lambda: end_process(p))
    for _ in range(200):
        if os.path.exists(sock) or p.poll() is not None:
            break
        time.sleep(0.01)
    if not os.path.exists(sock):
        end_process(p)
        raise BenchError(f"haproxy did not start: {p.stderr.read().strip()}")
    return sock


def _argvs(root: str, tmp: str, echo: str, hsock: str, ref: str) -> Dict[str, List[str]]:
    """Each command's cmdtime arguments ([--in FILE] ARGV)."""
    def infile(name: str, text: str) -> List[str]:
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return ["--in", path]

    bgs = [BGSWITCH, "--pin-root", root]
    hap = ["socat", "-", f"UNIX-CONNECT:{hsock}"]
    changes = {"flip": ["flip", SERVICE, "green", "--no-check"],
               "rollback": ["rollback", SERVICE, "--no-check"],
               "shift": ["shift", SERVICE, "green", "10%", "--no-check"],
               "shift_back": ["shift", SERVICE, "green", "0%", "--no-check"]}
    out = {k: bgs + v for k, v in changes.items()}
    if ref:
        out |= {f"ref_{k}": [ref, "--pin-root", root] + v for k, v in changes.items()}
    return out | {
        "true": ["/bin/true"],
        "version": [BGSWITCH, "-V"],
        "echo": infile("ping", "ping\n") + ["socat", "-", f"UNIX-CONNECT:{echo}"],
        "haproxy_flip": infile("h1", "set weight web/blue 0;set weight web/green 100\n") + hap,
        "haproxy_back": infile("h2", "set weight web/blue 100;set weight web/green 0\n") + hap,
        "haproxy_shift": infile("h3", "set weight web/blue 90;set weight web/green 10\n") + hap,
        "haproxy_shift_back": infile("h4", "set weight web/blue 100;set weight web/green 0\n")
        + hap,
    }


def _cmdtime(argvs: Dict[str, List[str]], rounds: int) -> Dict[str, List[float]]:
    """{command: [ms per round]}."""
    names = COMMANDS + (REF_COMMANDS if "ref_flip" in argvs else ())
    argv = [CMDTIME, str(rounds)]
    for i, name in enumerate(names):
        argv += ([] if not i else ["---"] if name in GROUP_FIRST else ["--"]) + argvs[name]
    p = run(argv, timeout=600)
    ns = json.loads(p.stdout)["ns"]
    return {name: [x / 1e6 for x in ns[i]] for i, name in enumerate(names)}


def _summary(ms: Dict[str, List[float]]) -> Dict:
    """Medians, p99s, and the ratios (median over rounds of the per-round ratio)."""
    pairs = {"shift": "shift_back", "haproxy_flip": "haproxy_back",
             "haproxy_shift": "haproxy_shift_back", "ref_shift": "ref_shift_back"}
    series = {k: v + ms[pairs[k]] if k in pairs else v for k, v in ms.items()
              if k not in pairs.values()}
    out = {k: {"median_ms": median(v), "p99_ms": percentile(v, 99), "min_ms": min(v)}
           for k, v in series.items()}

    def ratio(a: str, b: str) -> float:
        return median([x / y for x, y in zip(series[a], series[b])])

    for cmd, hap in (("flip", "haproxy_flip"), ("rollback", "haproxy_flip"),
                     ("shift", "haproxy_shift")):
        out[cmd]["vs_true"] = ratio(cmd, "true")
        out[cmd]["vs_echo"] = ratio(cmd, "echo")
        out[cmd]["vs_haproxy"] = ratio(cmd, hap)
        if f"ref_{cmd}" in series:
            out[cmd]["vs_ref"] = ratio(cmd, f"ref_{cmd}")
            out[f"ref_{cmd}"]["vs_true"] = ratio(f"ref_{cmd}", "true")
            out[f"ref_{cmd}"]["vs_haproxy"] = ratio(f"ref_{cmd}", hap)
    out["version"]["vs_true"] = ratio("version", "true")
    out["haproxy_flip"]["vs_echo"] = ratio("haproxy_flip", "echo")
    return out


def _api_round_trip(hsock: str, n: int) -> float:
    """Median ms of HAProxy's runtime API from a process already running (this one): connect,
    the flip's two `set weight`, its answer to the end, and the flip back likewise."""
    times = []
    for i in range(2 * n):
        cmd = (b"set weight web/blue 0;set weight web/green 100\n" if i % 2 == 0 else
               b"set weight web/blue 100;set weight web/green 0\n")
        t0 = time.monotonic_ns()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(hsock)
            s.sendall(cmd)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        times.append((time.monotonic_ns() - t0) / 1e6)
    return median(times)


def _syscalls(root: str, tmp: str) -> Dict:
    """One flip (blue to green, a change: an "already green" does less) under strace -f -c: its
    system calls, in all and bpf() alone; and the shared libraries bgswitch loads (ldd)."""
    out = os.path.join(tmp, "strace.txt")
    flip = [BGSWITCH, "--pin-root", root, "flip", SERVICE]
    run(["strace", "-f", "-c", "-o", out] + flip + ["green", "--no-check"])
    run(flip + ["blue", "--no-check"])  # back to where the rounds start
    total = bpf = 0
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                total += int(m.group(1))
                bpf += int(m.group(1)) if m.group(2) == "bpf" else 0
    libs = [ln for ln in run(["ldd", BGSWITCH]).stdout.splitlines()
            if "=>" in ln or "ld-linux" in ln]
    return {"syscalls": total, "bpf_calls": bpf, "shared_libs": len(libs),
            "libs": [ln.split()[0] for ln in libs]}


def part_cmd(cleanup: Cleanup, t: Topology, rounds: int, rate: int, services: int,
             ref: Optional[str] = None) -> Dict:
    log(f"commands: {services} services, {len(COMMANDS)} commands x {rounds} rounds, idle and "
        f"under {rate} new connections/s")
    root = t.attach("native")
    tmp = tempfile.mkdtemp(prefix=f"{t.prefix}-cmd-")
    cleanup.push(f"folder {tmp}", lambda: subprocess.run(["rm", "-rf", tmp], check=False))
    echo = EchoServer(os.path.join(tmp, "echo.sock"))
    cleanup.push("echo server", echo.close)
    try:
        hsock = _haproxy(cleanup, tmp)
        argvs = _argvs(root, tmp, echo.sock.getsockname(), hsock, ref)
        res = {"rounds": rounds, "rate": rate, "ref_bgswitch": ref, "services": services,
               "service_id": _services(root, services),
               "argv": {k: " ".join(v) for k, v in argvs.items()}}
        res.update(_syscalls(root, tmp))
        _cmdtime(argvs, 3)  # warm the page cache
        res["idle"] = _summary(_cmdtime(argvs, rounds))
        res["idle"]["haproxy_api_ms"] = _api_round_trip(hsock, rounds)
        load = t.spawn("client", [CONNLOAD, "--addr", VIP, "--port", str(VPORT), "--rate",
                                  str(rate), "--conns", "256", "--duration-ms", "600000",
                                  "--timeout-ms", "2000", "--max", "10000000"],
                       cpu=0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)  # the load at its pace
            res["load"] = _summary(_cmdtime(argvs, rounds))
            res["load"]["haproxy_api_ms"] = _api_round_trip(hsock, rounds)
        finally:
            end_process(load)
    finally:
        t.detach(root)
    return res
