"""Fleet tests: one flip across many nodes, coordinated through a real etcd.

Topology (prefix "bgsf" + 4 hex digits, unique per run), IPv4 only, 10.79.0.0/16:

    PREFIX-c0 cn 10.79.1.2 --- nc 10.79.1.1 PREFIX-n0 nb 10.79.51.1 --- b0 10.79.51.2 \\
    PREFIX-c1 cn 10.79.2.2 --- nc 10.79.2.1 PREFIX-n1 nb 10.79.52.1 --- b1 10.79.52.2  PREFIX-be
    PREFIX-c2 ...                           PREFIX-n2 ...                              blue
    PREFIX-c3 ...                           PREFIX-n3 ...                  10.79.200.11,.12:8081
                                                                           green
                                                                           10.79.201.11,.12:8082

Each node namespace has its own bgswitch attachment on nc (generic XDP + TC) and its own pin
root, /sys/fs/bpf/PREFIX/nN, on the one shared bpffs; each client reaches the VIP 10.79.100.1
(TCP and UDP port 80) through its own node. etcd runs on loopback (free ports, data directory
in a temporary directory, ended by PID); the agents and the fleet commands run in the root
namespace, where that loopback is (the agent only touches pinned maps and etcd, so it needs no
place in the node's namespace). Everything is removed at teardown, also on failure.

Run: /usr/bin/pytest -q -s tests/test_fleet.py (the convergence figures are printed, and
written to .output/fleet-convergence.json).
"""

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

import pytest

from lib import fleetdocs
from lib.netns import BGSWITCH, BPFFS, PY, HERE, REPO, run, read_line

NODES = 4
VIP = "10.79.100.1"
PORT = 80
BLUE = [("10.79.200.11", 8081), ("10.79.200.12", 8081)]
GREEN = [("10.79.201.11", 8082), ("10.79.201.12", 8082)]
SERVICES = (("web", "tcp"), ("webu", "udp"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Etcd:
    """etcd on 127.0.0.1, two free ports, its data in a temporary directory."""

    def __init__(self, prefix):
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-etcd-")
        self.client = free_port()
        self.peer = free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc = None
        self.log = None

    def start(self):
        peer = f"http://127.0.0.1:{self.peer}"
        argv = ["etcd", "--name", "bgsf", "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bgsf={peer}"]
        self.log = open(os.path.join(self.dir, "etcd.log"), "a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(self.url + "/v3/kv/range", data=b'{"key":"AA=="}',
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        with open(os.path.join(self.dir, "etcd.log")) as f:
            raise RuntimeError(f"etcd did not start: {f.read()[-2000:]}")

    def kill(self):
        """SIGKILL by PID: etcd is gone at once, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Fleet:
    def __init__(self):
        self.prefix = "bgsf" + secrets.token_hex(2)
        self.key_prefix = "/" + self.prefix
        self.ns = {}
        self.created_ns = []
        self.procs = []
        self.agents = {}
        self.pin_base = f"{BPFFS}/{self.prefix}"
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.env = dict(os.environ, BGSWITCH_AUDIT_LOG=os.path.join(self.tmp, "audit.log"))
        self.etcd = Etcd(self.prefix)
        self.history = []

    # -- plumbing --------------------------------------------------------------------------
    def nsname(self, role):
        return f"{self.prefix}-{role}"

    def ip(self, role, *args):
        return run(["ip", "-n", self.nsname(role)] + list(args))

    def nsrun(self, role, argv, **kw):
        return run(["nsenter", f"--net=/run/netns/{self.nsname(role)}", "--"] + argv, **kw)

    def sysctl(self, role, key, value):
        path = "/proc/sys/" + key.replace(".", "/")
        self.nsrun(role, ["sh", "-c", f"echo {value} > {path}"])

    def pin_root(self, i):
        return f"{self.pin_base}/n{i}"

    def bgs(self, *args, timeout=30, pin_root=None):
        """The bgswitch command in the root namespace (fleet commands, local views)."""
        argv = [BGSWITCH] + (["--pin-root", pin_root] if pin_root else []) + [str(a) for a in args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                           stdin=subprocess.DEVNULL)
        self.history.append((args, p.returncode, p.stdout, p.stderr))
        return p

    def fleet(self, *args, timeout=30):
        return self.bgs(*args, "--etcd", self.etcd.url, "--prefix", self.key_prefix,
                        timeout=timeout)

    def ok(self, p):
        assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        return p.stdout

    # -- build -----------------------------------------------------------------------------
    def build(self):
        roles = ["be"] + [f"n{i}" for i in range(NODES)] + [f"c{i}" for i in range(NODES)]
        existing = set(run(["ip", "netns", "list"]).stdout.split())
        assert not [r for r in roles if self.nsname(r) in existing]
        for r in roles:
            run(["ip", "netns", "add", self.nsname(r)])
            self.created_ns.append(self.nsname(r))
            self.ip(r, "link", "set", "lo", "up")
            self.sysctl(r, "net.ipv4.conf.all.rp_filter", 0)
            self.sysctl(r, "net.ipv4.conf.default.rp_filter", 0)
        for addr, _ in BLUE + GREEN:
            self.ip("be", "addr", "add", f"{addr}/32", "dev", "lo")
        for i in range(NODES):
            n, c, k = f"n{i}", f"c{i}", i + 1
            self.ip(n, "link", "add", "nc", "type", "veth", "peer", "name", "cn", "netns",
                    self.nsname(c))
            self.ip(n, "link", "add", "nb", "type", "veth", "peer", "name", f"b{i}", "netns",
                    self.nsname("be"))
            self.ip(n, "addr", "add", f"10.79.{k}.1/24", "dev", "nc")
            self.ip(c, "addr", "add", f"10.79.{k}.2/24", "dev", "cn")
            self.ip(n, "addr", "add", f"10.79.{50 + k}.1/24", "dev", "nb")
            self.ip("be", "addr", "add", f"10.79.{50 + k}.2/24", "dev", f"b{i}")
            for r, dev in ((n, "nc"), (n, "nb"), (c, "cn"), ("be", f"b{i}")):
                self.ip(r, "link", "set", dev, "up")
            self.ip(c, "route", "add", "10.79.0.0/16", "via", f"10.79.{k}.1")
            self.ip(n, "route", "add", "10.79.200.0/23", "via", f"10.79.{50 + k}.2")
            self.ip("be", "route", "add", f"10.79.{k}.0/24", "via", f"10.79.{50 + k}.1")
            self.sysctl(n, "net.ipv4.ip_forward", 1)
            # XDP cannot finish a CHECKSUM_PARTIAL checksum (see tests/lib/netns.py)
            self.nsrun(c, ["ethtool", "-K", "cn", "tx", "off"])
        for color, addrs in (("blue", BLUE), ("green", GREEN)):
            for addr, port in addrs:
                argv = ["nsenter", f"--net=/run/netns/{self.nsname('be')}", "--", PY,
                        os.path.join(HERE, "servers.py"), "--color", color, "--port", str(port),
                        "--addr", addr]
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True)
                self.procs.append(p)
                assert read_line(p, 10) == "ready\n", f"server {addr} did not start"
        os.makedirs(self.pin_base, exist_ok=True)
        for i in range(NODES):
            self.nsrun(f"n{i}", [BGSWITCH, "--pin-root", self.pin_root(i), "attach", "nc",
                                 "--mode", "generic", "--flows", "16384"],
                       env={"BGSWITCH_AUDIT_LOG": self.env["BGSWITCH_AUDIT_LOG"]})
        self.etcd.start()
        for i in range(NODES):
            self.start_agent(i)
        for name, proto in SERVICES:
            self.ok(self.fleet("service", "add", name, f"{VIP}:{PORT}", "--proto", proto))
            for color, addrs in (("blue", BLUE), ("green", GREEN)):
                for addr, port in addrs:
                    self.ok(self.fleet("backend", "add", name, color, f"{addr}:{port}"))
            self.ok(self.fleet("status", name, "--wait", "--timeout", "10s"))

    def start_agent(self, i):
        log = open(os.path.join(self.tmp, f"agent-n{i}.log"), "a")
        argv = [BGSWITCH, "--pin-root", self.pin_root(i), "agent", "--etcd", self.etcd.url,
                "--node", f"n{i}", "--prefix", self.key_prefix]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=self.env)
        log.close()
        self.procs.append(p)
        self.agents[i] = p
        return p

    def kill_agent(self, i, sig=signal.SIGKILL):
        p = self.agents.pop(i)
        p.send_signal(sig)
        rc = p.wait(10)
        self.procs.remove(p)
        return rc

    def down(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs = []
        self.etcd.cleanup()
        for i in range(NODES):
            if os.path.isdir(self.pin_root(i)) and self.nsname(f"n{i}") in self.created_ns:
                self.nsrun(f"n{i}", [BGSWITCH, "--pin-root", self.pin_root(i), "detach", "nc",
                                     "--purge"], check=False,
                           env={"BGSWITCH_AUDIT_LOG": self.env["BGSWITCH_AUDIT_LOG"]})
        shutil.rmtree(self.pin_base, ignore_errors=True)
        for name in reversed(self.created_ns):
            run(["ip", "netns", "del", name], check=False)
        self.created_ns = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- views -----------------------------------------------------------------------------
    def status(self, name):
        out = json.loads(self.ok(self.fleet("status", name, "--json")))
        return out["services"][0]

    def local(self, i, name, sets=False):
        """The node's own view: (active color, local generation) of the service, and with
        sets the sizes of its blue and green sets."""
        out = self.ok(self.bgs("service", "list", pin_root=self.pin_root(i)))
        for line in out.splitlines()[1:]:
            w = line.split()
            if w and w[0] == name:
                return (w[3], int(w[4])) + ((int(w[5]), int(w[6])) if sets else ())
        return (None, None) + ((None, None) if sets else ())

    def load(self, i, duration, rate=30, udp_rate=15, long=2, udp_long=1):
        argv = ["nsenter", f"--net=/run/netns/{self.nsname(f'c{i}')}", "--", PY,
                os.path.join(HERE, "traffic.py"), "load", "--vip", VIP, "--port", str(PORT),
                "--duration", str(duration), "--new-rate", str(rate), "--long", str(long),
                "--udp-new-rate", str(udp_rate), "--udp-long", str(udp_long)]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def load_ready(self, procs):
        for p in procs:
            assert read_line(p, 15) == "READY\n", "load did not start"

    def load_result(self, p):
        out, err = p.communicate(timeout=60)
        self.procs.remove(p)
        assert p.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def probe(self, i, udp=False, count=4):
        argv = ["nsenter", f"--net=/run/netns/{self.nsname(f'c{i}')}", "--", PY,
                os.path.join(HERE, "traffic.py"), "probe", "--addr", VIP, "--port", str(PORT),
                "--count", str(count)] + (["--udp"] if udp else [])
        out = json.loads(run(argv).stdout)
        return [r["color"] if r["ok"] else "FAILED" for r in out["results"]]


def assert_clean(res, what):
    for part in ("tcp_new", "udp_new"):
        s = res[part]
        assert s["failed"] == 0, f"{what} {part}: {s['failed']} failed: {s['failures'][:5]}"
        assert s["ok"] > 0, f"{what} {part}: no traffic"
    for kind in ("tcp_long", "udp_long"):
        for r in res[kind]:
            assert not r["failures"], f"{what} {kind}: {r['failures'][:5]}"
            assert not r["changes"], f"{what} {kind} moved: {r['changes'][:5]}"


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    try:
        f.build()
        yield f
    finally:
        if f.history:
            print("\nfleet commands (last 15):")
            for args, rc, out, err in f.history[-15:]:
                print(f"  {' '.join(map(str, args))} -> {rc}\n    {out.strip()[:300]}\n"
                      f"    {err.strip()[:300]}")
        for i in range(NODES):
            path = os.path.join(f.tmp, f"agent-n{i}.log")
            if os.path.exists(path):
                print(f"--- agent n{i} (tail)\n" + open(path).read()[-1500:])
        f.down()


def flip_all(fleet, name):
    """A fleet flip with --wait: the per-flip convergence, ms (median and max over nodes)."""
    out = fleet.ok(fleet.fleet("flip", name, "--wait", "--timeout", "10s"))
    line = [x for x in out.splitlines() if "applied by" in x][0]
    assert f"applied by {NODES}/{NODES} live nodes" in line, out
    med = float(line.split("median ")[1].split(" ms")[0])
    mx = float(line.split("max ")[1].split(" ms")[0])
    return med, mx


def test_fleet_flip_under_load(fleet):
    """Fleet flips of a TCP and a UDP service under load through every node: zero failures,
    every node on the new color, and the time from the etcd write to the last node's apply."""
    loads = [fleet.load(i, 10) for i in range(NODES)]
    fleet.load_ready(loads)
    # the nodes report live flows per color (counted every 2 s)
    time.sleep(2.2)
    st = fleet.status("web")
    assert not st["lagging"] and not st["missing"], st
    assert all(sum(n["live_flows"].values()) > 0 for n in st["nodes"]), st
    per_flip_max, per_node_median = [], []
    for k in range(6):
        name = SERVICES[k % 2][0]
        med, mx = flip_all(fleet, name)
        per_flip_max.append(mx)
        per_node_median.append(med)
        st = fleet.status(name)
        for i in range(NODES):
            assert fleet.local(i, name)[0] == st["color"], (i, name, st)
        time.sleep(0.7)
    results = [fleet.load_result(p) for p in loads]
    for i, res in enumerate(results):
        assert_clean(res, f"client c{i}")
        assert res["tcp_new"]["by_color"].get("green", 0) > 0, res["tcp_new"]["by_color"]
        assert res["tcp_new"]["by_color"].get("blue", 0) > 0, res["tcp_new"]["by_color"]
    figures = {"nodes": NODES, "flips": len(per_flip_max),
               "write_to_all_applied_ms": {"median": round(statistics.median(per_flip_max), 2),
                                           "max": max(per_flip_max), "all": per_flip_max},
               "write_to_node_applied_ms_median_per_flip": per_node_median,
               "requests": sum(r["tcp_new"]["ok"] + r["udp_new"]["ok"] for r in results),
               "failed": 0,
               "measured_by": "bgswitch flip NAME --etcd URL --wait: node reports' applied_us "
                              "minus the time just before the etcd transaction was sent"}
    print(f"\nFLEET CONVERGENCE: {json.dumps(figures)}")
    os.makedirs(os.path.join(REPO, ".output"), exist_ok=True)
    with open(os.path.join(REPO, ".output", "fleet-convergence.json"), "w") as f:
        json.dump(figures, f, indent=1)


def test_fleet_racing_conditional_flips_one_wins(fleet):
    for _ in range(3):
        gen = fleet.status("web")["generation"]
        argv = [BGSWITCH, "flip", "web", "--if-generation", str(gen), "--etcd", fleet.etcd.url,
                "--prefix", fleet.key_prefix]
        ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=fleet.env) for _ in range(2)]
        outs = [p.communicate(timeout=30) for p in ps]
        rcs = sorted(p.returncode for p in ps)
        assert rcs == [0, 6], (rcs, outs)
        assert fleet.status("web")["generation"] == gen + 1
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    # a stale generation is refused with the local exit status
    p = fleet.fleet("rollback", "web", "--if-generation", "1")
    assert p.returncode == 6 and "--if-generation" in p.stderr, p.stderr


def test_fleet_agent_killed_converges_after_restart(fleet):
    # Killed before the flip: its report lives on until its lease expires, and --wait names it.
    assert fleet.kill_agent(1) == -signal.SIGKILL
    before = fleet.local(1, "web")
    p = fleet.fleet("flip", "web", "--wait", "--timeout", "1s")
    assert p.returncode == 5, (p.stdout, p.stderr)
    assert "n1" in p.stderr and "3 of 4" in p.stderr, p.stderr
    want = fleet.status("web")["color"]
    assert want != before[0]
    assert fleet.local(1, "web") == before  # nobody applied it there
    # the data plane of n1 runs on without its agent
    assert set(fleet.probe(1)) == {before[0]}
    st = fleet.status("web")
    assert "n1" in st["lagging"], st
    text = fleet.ok(fleet.fleet("status", "web"))
    assert "4 nodes: 3 ok, lagging: n1\n" in text, text
    fleet.start_agent(1)
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    assert fleet.local(1, "web")[0] == want
    assert set(fleet.probe(1)) == {want}
    # Killed during a flip (right after the write): it converges once restarted.
    p = subprocess.Popen([BGSWITCH, "flip", "web", "--etcd", fleet.etcd.url, "--prefix",
                          fleet.key_prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=fleet.env)
    fleet.kill_agent(2)
    p.communicate(timeout=30)
    assert p.returncode == 0
    fleet.start_agent(2)
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    want = fleet.status("web")["color"]
    for i in range(NODES):
        assert fleet.local(i, "web")[0] == want, i
    # a clean stop (SIGTERM) revokes the lease: the node shows as missing at once
    assert fleet.kill_agent(3, signal.SIGTERM) == 0
    st = fleet.status("web")
    assert st["missing"] == ["n3"], st
    assert "4 nodes: 3 ok, missing: n3\n" in fleet.ok(fleet.fleet("status", "web"))
    fleet.start_agent(3)
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))


def test_fleet_etcd_down_traffic_goes_on(fleet):
    before = {i: fleet.local(i, "web") for i in range(NODES)}
    loads = [fleet.load(i, 5) for i in range(NODES)]
    fleet.load_ready(loads)
    time.sleep(0.5)
    fleet.etcd.kill()
    time.sleep(0.5)
    p = fleet.fleet("flip", "web")
    assert p.returncode != 0 and "unreachable" in p.stderr, p.stderr
    time.sleep(2.0)
    assert all(a.poll() is None for a in fleet.agents.values()), "an agent died with etcd"
    assert {i: fleet.local(i, "web") for i in range(NODES)} == before
    fleet.etcd.start()
    for i, p in enumerate(loads):
        assert_clean(fleet.load_result(p), f"client c{i} across the etcd outage")
    # the agents resume: a new flip reaches every node
    med, mx = flip_all(fleet, "web")
    want = fleet.status("web")["color"]
    for i in range(NODES):
        assert fleet.local(i, "web")[0] == want
        assert set(fleet.probe(i, count=2)) == {want}


def etcd_call(url, path, req):
    req = urllib.request.Request(url + path, data=json.dumps(req).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


def b64(v):
    return base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()


def etcd_put(url, key, value):
    """Put value (str or bytes) at key: the revision of the put."""
    return int(etcd_call(url, "/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]
               ["revision"])


def etcd_get(url, key):
    """The value at key (bytes), or None."""
    kvs = etcd_call(url, "/v3/kv/range", {"key": b64(key)}).get("kvs", [])
    return base64.b64decode(kvs[0].get("value", "")) if kvs else None


def etcd_delete(url, key):
    etcd_call(url, "/v3/kv/deleterange", {"key": b64(key)})


def test_fleet_shift_and_weights_reach_every_node(fleet):
    """`shift web green 25% --etcd --wait`: every node's switch word carries share 2500 (its
    status says green_share 25.0, active "split"); the fleet status shows each node "split".
    `backend add --etcd --weight 3` on a backend there already changes its weight on every
    node (status shows weight 3 and 75% of the blue table positions for it with one other
    blue backend of weight 1), and each node built the same table (the same positions per
    backend: the table is built from addresses, not local slots). A flip to a whole color
    then applies everywhere."""
    start = fleet.local(0, "web")[0]
    fleet.ok(fleet.fleet("shift", "web", "green", "25%", "--wait", "--timeout", "10s"))
    st = fleet.status("web")
    assert st["green_share"] == 25.0 and all(n["color"] == "split" for n in st["nodes"]), st
    for i in range(NODES):
        js = json.loads(fleet.ok(fleet.bgs("status", "web", "--json", pin_root=fleet.pin_root(i))))
        svc = js["services"][0]
        assert (svc["active"], svc["green_share"]) == ("split", 25.0), (i, svc)
    a, p = BLUE[0]
    fleet.ok(fleet.fleet("backend", "add", "web", "blue", f"{a}:{p}", "--weight", "3", "--wait",
                         "--timeout", "10s"))
    tables = []
    for i in range(NODES):
        js = json.loads(fleet.ok(fleet.bgs("status", "web", "--json", pin_root=fleet.pin_root(i))))
        blue = js["services"][0]["colors"]["blue"]["backends"]
        tables.append(sorted((b["address"], b["port"], b["weight"], b["table_positions"])
                             for b in blue if b["state"] == "active"))
        me = [b for b in blue if (b["address"], b["port"]) == (a, p)][0]
        assert me["weight"] == 3, (i, blue)
        total = sum(b["table_positions"] for b in blue)
        wsum = sum(b["weight"] for b in blue if b["state"] == "active")
        assert abs(me["table_positions"] / total - 3 / wsum) < 0.001, (i, blue)
    assert all(t == tables[0] for t in tables), tables
    p = fleet.fleet("backend", "add", "web", "blue", f"{a}:{p}", "--weight", "3")
    assert p.returncode != 0 and "already" in p.stderr, p.stderr
    fleet.ok(fleet.fleet("flip", "web", start, "--wait", "--timeout", "10s"))
    st = fleet.status("web")
    assert all(n["state"] == "ok" and not n["error"] and n["color"] == start
               for n in st["nodes"]), st


def test_fleet_backend_changing_color_in_one_change(fleet):
    """A document that moves a backend from green to blue (written by another tool): each agent
    removes it from green first, then adds it to blue."""
    gen = fleet.status("web")["generation"]
    color = fleet.local(0, "web")[0]
    moved = f"{GREEN[1][0]}:{GREEN[1][1]}"

    def doc(gen, blue, green):
        return fleetdocs.text(fleetdocs.doc(vip=f"{VIP}:{PORT}", generation=gen,
                                            green_share=10000 if color == "green" else 0,
                                            blue=blue, green=green))
    blue = [f"{a}:{p}" for a, p in BLUE]
    green = [f"{a}:{p}" for a, p in GREEN]
    etcd_put(fleet.etcd.url, f"{fleet.key_prefix}/services/web",
             doc(gen + 1, blue + [moved], green[:1]))
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    assert all(fleet.local(i, "web", sets=True)[2:] == (3, 1) for i in range(NODES))
    etcd_put(fleet.etcd.url, f"{fleet.key_prefix}/services/web", doc(gen + 2, blue, green))
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    assert all(fleet.local(i, "web", sets=True)[2:] == (2, 2) for i in range(NODES))


def node_snapshot(fleet, i):
    """What node i's data plane does with new and open flows, from its own `status --json`: each
    service's VIP, color, share, local generation (every switch write moves it), table and
    backends with weight, state and table positions (no counters)."""
    js = json.loads(fleet.ok(fleet.bgs("status", "--json", pin_root=fleet.pin_root(i))))
    keep = ("name", "vip", "port", "proto", "active", "green_share", "previous_green_share",
            "lb", "table_size", "split_by", "generation")
    snap = []
    for svc in js["services"]:
        bes = {c: sorted((b["address"], b["port"], b["weight"], b["state"], b["table_positions"])
                         for b in svc["colors"][c]["backends"]) for c in ("blue", "green")}
        snap.append(tuple(svc[k] for k in keep) + (json.dumps(bes),))
    return sorted(snap)


def wait_refused(fleet, name, rev, timeout=10):
    """status NAME --etcd --json until every node reports the document at rev refused."""
    deadline = time.monotonic() + timeout
    while True:
        p = fleet.fleet("status", name, "--json")
        assert p.returncode == 0 and not p.stderr, (p.returncode, p.stderr)
        st = json.loads(p.stdout)["services"][0]
        if all(n["refused_revision"] == rev for n in st["nodes"]) or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_fleet_bad_documents_change_nothing(fleet):
    """Every bad document of issue 16 (and the rest of the rules, tests/lib/fleetdocs.py) written
    over web's in etcd: every agent refuses it, changing nothing on its node (the data plane's
    own view before and after is the same), and reports it under its node key with the
    document's revision and the reason; `status --etcd` shows it (state "refused"); the change
    commands refuse to build on it (one line, exit 1); no agent or command crashes. A valid
    document afterwards applies on every node."""
    key = f"{fleet.key_prefix}/services/web"
    base = json.loads(etcd_get(fleet.etcd.url, key))
    before = {i: node_snapshot(fleet, i) for i in range(NODES)}
    refused, changes, t0 = 0, [], time.monotonic()
    for cid, fn, want in fleetdocs.bad_cases():
        rev = etcd_put(fleet.etcd.url, key, fleetdocs.render(fn, base))
        st = wait_refused(fleet, "web", rev)
        assert not st["valid"] and st["revision"] == rev and want in st["document_error"], (
            cid, st)
        for n in st["nodes"]:
            assert n["state"] == "refused" and f"revision {rev} is not valid" in n["error"] \
                and want in n["error"] and n["generation"] == base["generation"], (cid, n)
        refused += 1
        p = fleet.fleet("flip", "web")
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "not valid" in p.stderr, (
            cid, p.stderr)
        for i in range(NODES):
            if node_snapshot(fleet, i) != before[i]:
                changes.append((cid, i))
        assert all(a.poll() is None for a in fleet.agents.values()), f"an agent died at {cid}"
    took = time.monotonic() - t0
    text = fleet.ok(fleet.fleet("status", "web"))
    assert "is not valid" in text and "4 nodes: 0 ok, refused: n0 n1 n2 n3" in text, text
    assert "not valid" in fleet.ok(fleet.fleet("service", "list"))
    # a valid document (the next generation) applies on every node; the refusal is cleared
    base["generation"] += 1
    etcd_put(fleet.etcd.url, key, fleetdocs.text(base))
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    st = fleet.status("web")
    assert st["valid"] and all(n["state"] == "ok" and n["refused_revision"] == 0
                               and not n["error"] for n in st["nodes"]), st
    assert {i: node_snapshot(fleet, i) for i in range(NODES)} == before
    for i in range(NODES):
        assert set(fleet.probe(i, count=2)) == {st["color"]}
    print(f"\nFLEET BAD DOCUMENTS: {refused} of {len(fleetdocs.bad_cases())} refused with the "
          f"error and revision in all {NODES} node reports, 0 crashes, {len(changes)} "
          f"data-plane changes ({took:.1f} s)")
    assert not changes, changes


def test_fleet_fuzzed_documents_through_agents(fleet):
    """Mutated, damaged and random documents (tests/lib/fleetdocs.py, seeded) written over web's one
    after another, as fast as etcd takes them: the valid ones apply, the others are refused; no
    agent crashes; then the document from before (next generation) brings every node back to
    the same data plane (generations aside) and traffic goes to its color."""
    seed = os.environ.get("FLEET_DOC_FUZZ_SEED", "0")
    seed = int(seed) if seed.isdigit() else 0
    count = int(os.environ.get("FLEET_AGENT_FUZZ_COUNT", "100"))
    key = f"{fleet.key_prefix}/services/web"
    base = json.loads(etcd_get(fleet.etcd.url, key))

    def plane(i):  # the snapshot without the switch's generation and previous share
        return [t[:6] + t[7:10] + t[11:] for t in node_snapshot(fleet, i)]
    before = {i: plane(i) for i in range(NODES)}
    t0 = time.monotonic()
    for _, d in fleetdocs.generate(seed, count, base):
        etcd_put(fleet.etcd.url, key, d)
    base["generation"] += 1
    etcd_put(fleet.etcd.url, key, fleetdocs.text(base))
    # not --wait: a fuzzed document of a higher generation, applied before, would satisfy it
    deadline = time.monotonic() + 30
    while True:
        st = fleet.status("web")
        done = all(n["state"] == "ok" and n["generation"] == base["generation"]
                   for n in st["nodes"])
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert all(a.poll() is None for a in fleet.agents.values()), "an agent died"
    assert done, st
    assert {i: plane(i) for i in range(NODES)} == before
    for i in range(NODES):
        assert set(fleet.probe(i, count=2)) == {st["color"]}
    print(f"\nFLEET AGENT FUZZ seed {seed}: {count} documents through {NODES} agents and back "
          f"in {took:.1f} s, 0 crashes")


def test_fleet_document_taking_another_services_vip_changes_nothing(fleet):
    """A valid document that moves web onto webu's VIP (udp): no node deletes web to make room
    (before, web was deleted and never re-created); each reports why, and the next document
    applies."""
    key = f"{fleet.key_prefix}/services/web"
    base = json.loads(etcd_get(fleet.etcd.url, key))
    before = {i: node_snapshot(fleet, i) for i in range(NODES)}
    etcd_put(fleet.etcd.url, key, fleetdocs.text(dict(base, proto="udp",
                                                      generation=base["generation"] + 1)))
    deadline = time.monotonic() + 10
    while True:
        st = fleet.status("web")
        if all("belongs to service 'webu'" in n["error"] for n in st["nodes"]) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(n["state"] == "error" and n["generation"] == base["generation"]
               for n in st["nodes"]), st
    assert {i: node_snapshot(fleet, i) for i in range(NODES)} == before
    base["generation"] += 2
    etcd_put(fleet.etcd.url, key, fleetdocs.text(base))
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))
    assert {i: node_snapshot(fleet, i) for i in range(NODES)} == before


def test_fleet_bad_keys_reported_not_skipped(fleet):
    """A document under a key that is no service name (32 characters or more, a space) is
    reported under that key by every node, not skipped; the node's services are untouched;
    deleting the key clears it."""
    before = {i: node_snapshot(fleet, i) for i in range(NODES)}
    for name in ("w" * 32, "x" * 100, "we b"):
        key = f"{fleet.key_prefix}/services/{name}"
        rev = etcd_put(fleet.etcd.url, key, fleetdocs.text(fleetdocs.doc(
            name=name, vip="10.79.100.9:80")))
        st = wait_refused(fleet, name, rev)
        assert all(n["state"] == "refused" and "name" in n["error"] for n in st["nodes"]), st
        etcd_delete(fleet.etcd.url, key)
    assert {i: node_snapshot(fleet, i) for i in range(NODES)} == before
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))


def test_fleet_writers_refuse_invalid_documents(fleet):
    """An --etcd writer never writes what the agents would refuse: weight 0 on every backend of
    the color taking new flows is refused (one line, exit 1, the generation unchanged); a
    document that is not valid can be deleted with service del --etcd."""
    st = fleet.status("web")
    color, gen = st["color"], st["generation"]
    addrs = [f"{a}:{p}" for a, p in (BLUE if color == "blue" else GREEN)]
    fleet.ok(fleet.fleet("backend", "add", "web", color, addrs[0], "--weight", "0"))
    p = fleet.fleet("backend", "add", "web", color, addrs[1], "--weight", "0")
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "refusing to write" in p.stderr and f"{color} takes new flows" in p.stderr, p.stderr
    assert fleet.status("web")["generation"] == gen + 1
    fleet.ok(fleet.fleet("backend", "add", "web", color, addrs[0], "--weight", "1", "--wait",
                         "--timeout", "10s"))
    # a bad document under a new key: readers refuse it in one line, service del removes it
    key = f"{fleet.key_prefix}/services/junk"
    etcd_put(fleet.etcd.url, key, '{"name":"junk","proto":null}')
    p = fleet.fleet("shift", "junk", "green", "10%")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "vip: missing" in p.stderr \
        and "not valid" in p.stderr, p.stderr
    fleet.ok(fleet.fleet("service", "del", "junk", "--wait", "--timeout", "10s"))
    assert etcd_get(fleet.etcd.url, key) is None


def test_fleet_changes_and_refusals(fleet):
    # plain http:// to a non-loopback address is refused before any connection
    p = fleet.bgs("flip", "web", "--etcd", "http://10.79.1.1:2379")
    assert p.returncode == 1 and "refusing plain http://" in p.stderr, p.stderr
    p = fleet.bgs("agent", "--etcd", "http://10.79.1.1:2379", "--node", "x",
                  pin_root=fleet.pin_root(0))
    assert p.returncode == 1 and "refusing plain http://" in p.stderr, p.stderr
    # a dead endpoint first: the next one answers
    out = fleet.ok(fleet.bgs("status", "web", "--json", "--etcd",
                             f"http://127.0.0.1:{free_port()},{fleet.etcd.url}", "--prefix",
                             fleet.key_prefix))
    assert json.loads(out)["services"][0]["name"] == "web"
    p = fleet.fleet("flip", "web", "--check-http", "/")
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
    # backend del drains; backend add; an unknown service
    fleet.ok(fleet.fleet("backend", "del", "web", "blue", "10.79.200.12:8081", "--wait",
                         "--timeout", "10s"))
    assert all(fleet.local(i, "web", sets=True)[2:] == (1, 2) for i in range(NODES))
    fleet.ok(fleet.fleet("backend", "add", "web", "blue", "10.79.200.12:8081", "--wait",
                         "--timeout", "10s"))
    assert all(fleet.local(i, "web", sets=True)[2:] == (2, 2) for i in range(NODES))
    p = fleet.fleet("flip", "nosuch")
    assert p.returncode == 1 and "unknown service" in p.stderr
    # a service deleted from the fleet leaves every node; its table size and split-by (in the
    # document) reach every node; a weight on a modulo service is refused
    fleet.ok(fleet.fleet("service", "add", "tmp", "10.79.100.2:81", "--table-size", "251",
                         "--split-by", "client", "--wait", "--timeout", "10s"))
    assert all(fleet.local(i, "tmp")[0] == "blue" for i in range(NODES))
    for i in range(NODES):
        js = json.loads(fleet.ok(fleet.bgs("status", "tmp", "--json", pin_root=fleet.pin_root(i))))
        svc = js["services"][0]
        assert (svc["table_size"], svc["split_by"], svc["lb"]) == (251, "client", "maglev"), svc
    fleet.ok(fleet.fleet("service", "del", "tmp", "--wait", "--timeout", "10s"))
    assert all(fleet.local(i, "tmp")[0] is None for i in range(NODES))
    p = fleet.fleet("service", "add", "tmp", "10.79.100.2:81", "--table-size", "1000")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "prime" in p.stderr, p.stderr
    fleet.ok(fleet.fleet("service", "add", "mod", "10.79.100.3:81", "--lb", "modulo"))
    p = fleet.fleet("backend", "add", "mod", "blue", "10.79.200.11:8081", "--weight", "2")
    assert p.returncode == 1 and "modulo" in p.stderr, p.stderr
    fleet.ok(fleet.fleet("service", "del", "mod", "--wait", "--timeout", "10s"))


def test_fleet_one_revision_deleting_two_services_reaches_every_node(fleet):
    """Two services deleted by one etcd request (one range delete: both events carry the same
    revision): every agent applies both events from its watch, well before its 30 s full
    reconcile (within 5 s)."""
    for name, port in (("ra", 82), ("rb", 83)):
        fleet.ok(fleet.fleet("service", "add", name, f"10.79.100.2:{port}", "--wait",
                             "--timeout", "10s"))
    assert all(fleet.local(i, n)[0] == "blue" for i in range(NODES) for n in ("ra", "rb"))
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    body = json.dumps({"key": b64(f"{fleet.key_prefix}/services/ra"),
                       "range_end": b64(f"{fleet.key_prefix}/services/rc")}).encode()
    req = urllib.request.Request(f"{fleet.etcd.url}/v3/kv/deleterange", data=body,
                                 headers={"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(req, timeout=5).read())["deleted"] == "2"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [(i, n) for i in range(NODES) for n in ("ra", "rb")
                if fleet.local(i, n)[0] is not None]
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"still there after 5 s: {left}"


def test_fleet_agent_with_nothing_in_etcd_deletes_nothing(fleet):
    """An agent that finds no service at all under its prefix (a wrong --prefix, a wiped etcd)
    keeps the node's services and says so in its report, instead of deleting them."""
    before = fleet.local(0, "web")
    fleet.kill_agent(0, signal.SIGTERM)
    wrong = fleet.key_prefix + "-empty"
    log = open(os.path.join(fleet.tmp, "agent-n0-wrong.log"), "w")
    p = subprocess.Popen([BGSWITCH, "--pin-root", fleet.pin_root(0), "agent", "--etcd",
                          fleet.etcd.url, "--node", "n0", "--prefix", wrong],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=fleet.env)
    log.close()
    fleet.procs.append(p)
    try:
        deadline = time.monotonic() + 10
        while True:
            with open(os.path.join(fleet.tmp, "agent-n0-wrong.log")) as f:
                text = f.read()
            if "local services kept" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "no service under " + wrong in text, text
        assert fleet.local(0, "web") == before
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        fleet.procs.remove(p)
    fleet.start_agent(0)
    fleet.ok(fleet.fleet("status", "web", "--wait", "--timeout", "10s"))


def test_fleet_agents_stop_cleanly(fleet):
    """SIGTERM: every agent revokes its lease (all nodes missing at once) and exits 0; no
    sanitizer report in its log (with BGSWITCH= the ASan/UBSan build, a leak fails the exit)."""
    for i in list(fleet.agents):
        assert fleet.kill_agent(i, signal.SIGTERM) == 0, i
    st = fleet.status("web")
    assert sorted(st["missing"]) == [f"n{i}" for i in range(NODES)], st
    for i in range(NODES):
        with open(os.path.join(fleet.tmp, f"agent-n{i}.log")) as f:
            log = f.read()
        assert "runtime error" not in log and "Sanitizer" not in log, log[-3000:]
    # the data plane runs on without any agent
    for i in range(NODES):
        assert set(fleet.probe(i, count=2)) == {st["color"]}


def _certs(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in directory d."""
    def ossl(*args):
        run(["openssl"] + list(args), timeout=30)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "1", "-subj", "/CN=bgsf test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN=bgsf {name}", "-addext", ext, "-keyout", f"{d}/{name}.key",
             "-out", f"{d}/{name}.csr")
        ossl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey",
             f"{d}/ca.key", "-CAcreateserial", "-days", "1", "-copy_extensions", "copy",
             "-out", f"{d}/{name}.pem")


def test_fleet_tls_client_certificates(fleet):
    """etcd over TLS with client-certificate authentication: the fleet commands connect with
    --cacert/--cert/--key, and fail (one line, nothing written) without them."""
    d = tempfile.mkdtemp(prefix=f"{fleet.prefix}-tls-")
    e = Etcd(fleet.prefix)
    try:
        _certs(d)
        e.url = f"https://127.0.0.1:{e.client}"
        peer = f"http://127.0.0.1:{e.peer}"
        argv = ["etcd", "--name", "bgsf", "--data-dir", os.path.join(e.dir, "data"),
                "--listen-client-urls", e.url, "--advertise-client-urls", e.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bgsf={peer}", "--cert-file", f"{d}/server.pem",
                "--key-file", f"{d}/server.key", "--client-cert-auth",
                "--trusted-ca-file", f"{d}/ca.pem"]
        e.log = open(os.path.join(e.dir, "etcd.log"), "a")
        e.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=e.log, stderr=e.log)
        tls = ["--etcd", e.url, "--prefix", fleet.key_prefix, "--cacert", f"{d}/ca.pem",
               "--cert", f"{d}/client.pem", "--key", f"{d}/client.key"]
        deadline = time.monotonic() + 15
        while True:
            p = fleet.bgs("service", "add", "tls", f"{VIP}:443", *tls)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        fleet.ok(p)
        out = fleet.ok(fleet.bgs("status", "tls", "--json", *tls))
        assert json.loads(out)["services"][0]["generation"] == 1
        # without the client certificate, or without the CA: refused, nothing written
        p = fleet.bgs("backend", "add", "tls", "blue", "10.79.200.11:8081", *tls[:6])
        assert p.returncode == 1 and "unreachable" in p.stderr, p.stderr
        p = fleet.bgs("backend", "add", "tls", "blue", "10.79.200.11:8081",
                      *(tls[:4] + tls[6:]))
        assert p.returncode == 1 and "unreachable" in p.stderr, p.stderr
        out = fleet.ok(fleet.bgs("status", "tls", "--json", *tls))
        assert json.loads(out)["services"][0]["generation"] == 1
        p = fleet.bgs("flip", "tls", "--etcd", e.url, "--cacert", f"{d}/ca.pem", "--cert",
                      f"{d}/client.pem")
        assert p.returncode == 1 and "--cert and --key go together" in p.stderr, p.stderr
    finally:
        e.cleanup()
        shutil.rmtree(d, ignore_errors=True)
