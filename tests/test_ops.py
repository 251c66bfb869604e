"""End-to-end tests of the operations around a cutover: draining, removing a backend with live
flows, the checks before a flip, the guard after it, generations and concurrent operators, the
audit trail, replacing the programs under load, the map-layout version, and SIGKILL at every
fault point of the command.

Topology and style as tests/test_e2e.py (tests/lib/netns.py: client -> node -> blue / green, two
servers per color); every test attaches bgswitch afresh with a pin root of its own and purges
it afterwards. Processes are ended by PID, namespaces and pins removed, also on failure.

Run as root: /usr/bin/pytest -q tests/test_ops.py   (BGSWITCH=path picks another binary)
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import bpfsys  # noqa: E402
from lib import model  # noqa: E402
from lib import netns  # noqa: E402
from lib.poll import wait_for  # noqa: E402
from lib.netns import NODE_IFACE, PY, VIP, VIP_PORT, one_line_error  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

COLORS = ("blue", "green")
KILLED = -signal.SIGKILL  # returncode of a command that SIGKILLed itself (BGSWITCH_FAULT)
EXIT_CHECK, EXIT_GUARD, EXIT_TIMEOUT, EXIT_GENERATION = 3, 4, 5, 6


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def sw(topo):
    """bgswitch attached to the node's client-facing veth (mode auto), purged afterwards."""
    csum_before = topo.csum_errors()
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:  # shown by pytest when the test failed
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:600]}{err}")
        problems = s.purge()
        assert problems == [], problems
    assert topo.csum_errors() == csum_before, "packets dropped for bad checksums"


# -- helpers ----------------------------------------------------------------------------------

def finish(topo, p, timeout=30):
    """Wait for a process started with Bgswitch.popen: (returncode, stdout, stderr)."""
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        topo.end(p)
    return p.returncode, out, err


def snapshot(s):
    """The configuration as status --json shows it, without counters."""
    svcs = []
    for svc in s.status()["services"]:
        cols = {c: [(b["address"], b["port"], b["slot"], b["state"])
                    for b in svc["colors"][c]["backends"]] for c in COLORS}
        svcs.append((svc["name"], svc["active"], svc["previous"], svc["generation"], cols))
    return svcs


def backends_of(s, name, color):
    return {f"{b['address']}:{b['port']}": b for b in s.service(name)["colors"][color]["backends"]}


def backends_seen(topo, n=10, port=VIP_PORT):
    res = topo.probe(VIP, port, count=n)["results"]
    return {r["backend"] for r in res if r["ok"]}


def assert_long_steady(conns, color, min_requests):
    assert conns
    for c in conns:
        assert c["failures"] == [] and c["changes"] == [], c
        assert c["color"] == color and c["ok"] >= min_requests, c


def drops(s):
    return {k: v for k, v in s.status()["drops"].items() if v}


def blue(i):
    return "%s:%d" % netns.backend_addrs("blue")[i]


def green(i):
    return "%s:%d" % netns.backend_addrs("green")[i]


# -- drain ------------------------------------------------------------------------------------

def test_drain_flip_wait_drain_returns_once_old_color_drains(topo, sw):
    sw.setup_service("web")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 20, "--long", 4,
                       "--long-close-spread", 0.2)
    run.wait_ready()
    assert wait_for(lambda: sw.live_flows("web", "blue") == 4, 3), sw.service("web")

    t0 = time.monotonic()
    p = sw.popen("flip", "web", "--wait-drain", "--timeout", "15")
    time.sleep(1.5)
    assert p.poll() is None, "flip --wait-drain returned while blue still had live flows"
    run.close_long()
    rc, out, err = finish(topo, p, 20)
    elapsed = time.monotonic() - t0
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert re.fullmatch(r"web: blue -> green \(generation \d+\)", lines[0]), lines
    assert any(re.match(r"web: blue 4 live flows draining \(\d", ln) for ln in lines), lines
    assert re.match(r"web: blue drained, 0 live flows", lines[-1]), lines
    assert 1.5 <= elapsed < 6, elapsed
    assert sw.live_flows("web", "blue") == 0
    res = run.finish(early=True, timeout=30)
    assert_long_steady(res["tcp_long"], "blue", min_requests=10)


def test_drain_timeout_reports_remaining_flows(topo, sw):
    sw.setup_service("web")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 20, "--long", 3)
    run.wait_ready()
    assert wait_for(lambda: sw.live_flows("web", "blue") == 3, 3), sw.service("web")

    t0 = time.monotonic()
    p = sw.run("flip", "web", "--wait-drain", "--timeout", "2")
    elapsed = time.monotonic() - t0
    line = one_line_error(p, EXIT_TIMEOUT)
    assert "blue still has 3 live flows" in line, line
    assert 2 <= elapsed < 4, elapsed
    assert sw.service("web")["active"] == "green"  # the flip itself is done

    # `drain` alone: the same progress, one line per interval, the same verdict.
    p = sw.run("drain", "web", "--timeout", "1", "--interval", "200")
    line = one_line_error(p, EXIT_TIMEOUT)
    assert "blue still has 3 live flows" in line, line
    progress = p.stdout.splitlines()
    assert len(progress) >= 5 and all("blue 3 live flows draining" in ln for ln in progress), \
        progress
    res = run.finish(early=True, timeout=30)
    assert_long_steady(res["tcp_long"], "blue", min_requests=10)


def test_drain_idle_flows_stop_counting(topo, sw):
    """Open connections that have gone idle past the TCP idle timeout are not live: the drain
    ends although they stay open."""
    sw.setup_service("web")
    sw("timeouts", "--tcp-idle", "2s")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 20, "--long", 3,
                       "--long-interval", 60)  # one request each, then silence
    run.wait_ready()
    sw("flip", "web")
    t0 = time.monotonic()
    p = sw.run("drain", "web", "--timeout", "8", "--interval", "250")
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p
    lines = p.stdout.splitlines()
    assert "blue 3 live flows draining" in lines[0], lines
    assert "blue drained, 0 live flows" in lines[-1], lines
    assert 0.5 < elapsed < 4, elapsed
    res = run.finish(early=True, timeout=30)
    for c in res["tcp_long"]:  # still open, and fine, when the drain ended
        assert c["failures"] == [] and c["ok"] == 1 and c["color"] == "blue", c
        assert c["closed_at"] > time.time() - 2, c


# -- backend removal --------------------------------------------------------------------------

def test_backend_del_with_live_flows_refused_unless_force_cuts_them(topo, sw):
    sw.setup_service("web")
    gone, kept = blue(0), blue(1)
    # 16 long-lived connections: the chance that all hash to one of the two backends (leaving
    # nothing to check on the other) is 2^-15 (with 8 it was 1 in 128).
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 30, "--long", 16,
                       "--timeout", 1)
    run.wait_ready()
    n_gone = backends_of(sw, "web", "blue")[gone]["live_flows"]
    assert n_gone > 0, "no long-lived connection hashed to the backend (16 of them: unlikely)"

    before = snapshot(sw)
    line = one_line_error(sw.run("backend", "del", "web", "blue", gone))
    assert f"still has {n_gone} live flows" in line and "--force" in line, line
    assert snapshot(sw) == before
    one_line_error(sw.run("backend", "del", "web", "blue", gone, "--drain", "--force"))
    assert snapshot(sw) == before

    out = sw("backend", "del", "web", "blue", gone, "--force")
    assert f"{n_gone} live flows cut" in out, out
    assert list(backends_of(sw, "web", "blue")) == [kept]  # gone at once, not draining
    assert backends_seen(topo, 10) == {kept}
    time.sleep(1.5)
    res = run.finish(early=True, timeout=30)
    cut = [c for c in res["tcp_long"] if c["backend"] == gone]
    assert len(cut) == n_gone
    for c in cut:
        assert c["failures"], c
    assert_long_steady([c for c in res["tcp_long"] if c["backend"] == kept], "blue",
                       min_requests=10)


# -- checks -----------------------------------------------------------------------------------

def test_check_tcp_probes_refuse_flip_and_rollback_naming_failures(topo, sw):
    sw.setup_service("web")
    out = sw("check", "web", "green")
    assert [ln.split()[:3] for ln in out.splitlines()] == [
        ["green", green(0), "ok"], ["green", green(1), "ok"]], out

    refused = "10.77.3.11:8099"  # the host answers, nothing listens: connection refused
    silent = ["10.77.3.98:8082", "10.77.3.99:8082"]  # no such hosts: no answer at all
    for b in [refused] + silent:
        sw("backend", "add", "web", "green", b)
    t0 = time.monotonic()
    p = sw.run("check", "web", "green", "--check-timeout", "600ms")
    elapsed = time.monotonic() - t0
    assert p.returncode == EXIT_CHECK, p
    assert "3 of 5 green backends failed" in one_line_error(p, EXIT_CHECK)
    got = {ln.split()[1]: ln for ln in p.stdout.splitlines()}
    assert set(got) == {green(0), green(1), refused, *silent}, got
    assert " ok " in got[green(0)] and " ok " in got[green(1)], got
    assert "FAILED" in got[refused] and "refused" in got[refused], got
    for b in silent:
        assert "FAILED" in got[b] and "timed out" in got[b], got
    assert elapsed < 1.1, f"probes run concurrently: two 600 ms timeouts took {elapsed:.2f}s"

    before = snapshot(sw)
    line = one_line_error(sw.run("flip", "web", "--check-timeout", "300ms"), EXIT_CHECK)
    for b in [refused] + silent:
        assert b in line, line
    assert green(0) not in line and green(1) not in line, line
    assert snapshot(sw) == before
    sw("flip", "web", "--no-check")
    assert sw.service("web")["active"] == "green"

    # Rollback probes the color it goes back to.
    sw("backend", "add", "web", "blue", "10.77.2.12:8099")
    before = snapshot(sw)
    line = one_line_error(sw.run("rollback", "web"), EXIT_CHECK)
    assert "10.77.2.12:8099" in line and blue(0) not in line, line
    assert snapshot(sw) == before
    p = sw.run("rollback", "web", "--force")
    assert p.returncode == 0 and "--force" in p.stderr, p
    assert sw.service("web")["active"] == "blue"


HTTP_SERVER = r'''
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = {"/healthz": 200, "/moved": 302}.get(self.path, 503)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/healthz")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
'''


def test_check_http_path_status_decides(topo, sw):
    servers = []
    try:
        for addr, _ in topo.backends["green"]:
            p = topo.spawn("green", [PY, "-c", HTTP_SERVER, addr, "8090"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert netns.read_line(p, 10) == "ready\n"
        sw("service", "add", "api", f"{VIP}:90")
        sw("backend", "add", "api", "blue", blue(0))
        for addr, _ in topo.backends["green"]:
            sw("backend", "add", "api", "green", f"{addr}:8090")

        for path in ("/healthz", "/moved"):  # 2xx and 3xx pass
            out = sw("check", "api", "green", "--check-http", path)
            assert [ln.split()[2] for ln in out.splitlines()] == ["ok", "ok"], out
        p = sw.run("check", "api", "green", "--check-http", "/down")
        one_line_error(p, EXIT_CHECK)
        assert p.stdout.count("FAILED  HTTP 503") == 2, p.stdout
        # A TCP service that is not HTTP fails an HTTP check, though it accepts connections.
        sw("check", "api", "blue")
        p = sw.run("check", "api", "blue", "--check-http", "/")
        one_line_error(p, EXIT_CHECK)
        assert "no HTTP status line" in p.stdout, p.stdout

        before = snapshot(sw)
        line = one_line_error(sw.run("flip", "api", "--check-http", "/down"), EXIT_CHECK)
        assert "HTTP 503" in line and "2 of 2" in line, line
        assert snapshot(sw) == before
        sw("flip", "api", "--check-http", "/healthz")
        assert sw.service("api")["active"] == "green"
        one_line_error(sw.run("flip", "api", "--check-http", "no-slash"))
    finally:
        for p in servers:
            topo.end(p)


# -- guard ------------------------------------------------------------------------------------

def _guarded_flip(topo, sw, *flip_args, rate=60):
    """Blue healthy under load; flip with a guard; return (process, t_start, t_end, load)."""
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 8, "--new-rate", rate,
                       "--timeout", 1)
    run.wait_ready()
    time.sleep(0.7)
    t0 = time.time()
    p = sw.run("flip", "web", *flip_args)
    t1 = time.time()
    res = run.finish(timeout=30)
    return p, t0, t1, res


def _assert_failures_only_while_green(res, t0, t1):
    new = res["tcp_new"]
    assert new["by_color"].get("blue", 0) > 200, new["by_color"]
    for f in new["failures"]:
        assert t0 - 0.1 <= f["ts"] <= t1 + 1.5, f"failure outside the guarded window: {f}"


def test_guard_rolls_back_on_resets(topo, sw):
    sw("service", "add", "web", f"{VIP}:{VIP_PORT}")
    for i in range(2):
        sw("backend", "add", "web", "blue", blue(i))
    sw("backend", "add", "web", "green", "10.77.3.11:8099")  # closed port: a RST per SYN
    p, t0, t1, res = _guarded_flip(topo, sw, "--no-check", "--guard", "5", "--max-resets", "3")
    line = one_line_error(p, EXIT_GUARD)
    assert "resets" in line and "rolled web back to blue" in line, line
    assert t1 - t0 < 3.5, f"rolled back after {t1 - t0:.1f}s, not at the first bad second"
    assert re.match(r"guard web green 1s/5s: \d+ new flows", p.stdout.splitlines()[1]), p.stdout
    svc = sw.service("web")
    assert (svc["active"], svc["previous"]) == ("blue", "green"), svc
    _assert_failures_only_while_green(res, t0, t1)


def test_guard_rolls_back_on_silent_backend(topo, sw):
    sw("service", "add", "web", f"{VIP}:{VIP_PORT}")
    for i in range(2):
        sw("backend", "add", "web", "blue", blue(i))
    sw("backend", "add", "web", "green", green(0))
    sw("backend", "add", "web", "green", "10.77.3.99:8082")  # no such host: never answers
    # A connection to the silent backend never gets past its SYN, so its entry stays live for
    # the TCP idle timeout, and a later connection that reuses its client port (the client gave
    # up on the first) would take it as a retransmission. A short idle timeout ends those
    # entries soon after the rollback. (Comparing a SYN's sequence number with the entry's first
    # SYN would tell a retransmission from a new connection; the data plane does not yet.)
    sw("timeouts", "--tcp-idle", "1s")
    p, t0, t1, res = _guarded_flip(topo, sw, "--no-check", "--guard", "6")
    line = one_line_error(p, EXIT_GUARD)
    assert "1 silent backends" in line and "10.77.3.99:8082" in line, line
    assert green(0) not in line, line
    assert t1 - t0 < 4, f"rolled back after {t1 - t0:.1f}s"
    assert sw.service("web")["active"] == "blue"
    _assert_failures_only_while_green(res, t0, t1)


def test_guard_rolls_back_without_traffic_and_passes_a_healthy_flip(topo, sw):
    sw.setup_service("web")
    p = sw.run("flip", "web", "--guard", "2")
    line = one_line_error(p, EXIT_GUARD)
    assert "no traffic: 0 new flows in 2s" in line, line
    assert len([ln for ln in p.stdout.splitlines() if ln.startswith("guard web green")]) == 2
    assert sw.service("web")["active"] == "blue"
    assert sw("flip", "web", "--guard", "1", "--min-new-flows", "0").count("passed") == 1
    sw("flip", "web", "blue")

    # Under load with the default thresholds, a healthy color passes.
    p, t0, t1, res = _guarded_flip(topo, sw, "--guard", "3", rate=80)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "guard: web on green passed" in p.stdout, p.stdout
    assert sw.service("web")["active"] == "green"
    assert res["tcp_new"]["failed"] == 0, res["tcp_new"]["failures"][:5]
    assert drops(sw) == {}


# -- generations and concurrent operators -----------------------------------------------------

def test_generation_if_generation_refuses_stale_changes(topo, sw):
    sw.setup_service("web")
    g = sw.service("web")["generation"]
    before = snapshot(sw)
    for args in [("flip", "web"), ("rollback", "web"),
                 ("backend", "add", "web", "blue", "10.77.2.13:8081"),
                 ("backend", "del", "web", "blue", blue(0))]:
        line = one_line_error(sw.run(*args, "--if-generation", g - 1), EXIT_GENERATION)
        assert f"generation is {g}, not {g - 1}" in line, (args, line)
        assert snapshot(sw) == before, args
    sw("flip", "web", "--if-generation", g)
    sw("rollback", "web", "--if-generation", g + 1)
    sw("backend", "add", "web", "blue", "10.77.2.13:8081", "--if-generation", g + 2)
    sw("backend", "del", "web", "blue", "10.77.2.13:8081", "--if-generation", g + 3)
    assert sw.service("web")["generation"] == g + 4


def test_generation_racing_operators_exactly_one_wins(topo, sw):
    sw.setup_service("web")
    g = sw.service("web")["generation"]
    # Deterministic: A holds the lock, slowed at its write by the test hook; B arrives then.
    a = sw.popen("flip", "web", "--if-generation", g,
                 env={"BGSWITCH_FAULT": "flip-before-write:sleep=800"})
    time.sleep(0.3)
    b = sw.popen("flip", "web", "--if-generation", g)
    (ra, oa, ea), (rb, ob, eb) = finish(topo, a), finish(topo, b)
    assert (ra, rb) == (0, EXIT_GENERATION), (oa, ea, ob, eb)
    assert f"generation is {g + 1}, not {g}" in eb, eb
    svc = sw.service("web")
    assert (svc["active"], svc["generation"]) == ("green", g + 1), svc

    # Free-running: two operators toggle the same generation at once, six times over.
    for _ in range(6):
        g = sw.service("web")["generation"]
        procs = [sw.popen("flip", "web", "--if-generation", g) for _ in range(2)]
        rcs = sorted(finish(topo, p)[0] for p in procs)
        assert rcs == [0, EXIT_GENERATION], rcs
        assert sw.service("web")["generation"] == g + 1


def test_generation_concurrent_backend_adds_all_land(topo, sw):
    """Two operators add backends at the same moment: the flock serialises every
    read-modify-write of the set, so none is lost and every change gets its own generation."""
    sw("service", "add", "web", f"{VIP}:{VIP_PORT}")
    outs, errors = [], []

    def operator(first):
        for i in range(first, first + 12):
            p = sw.run("backend", "add", "web", "blue", f"10.77.2.{100 + i}:8081")
            (outs if p.returncode == 0 else errors).append(p.stdout or p.stderr)

    threads = [threading.Thread(target=operator, args=(k * 12,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(backends_of(sw, "web", "blue")) == 24
    gens = sorted(int(re.search(r"generation (\d+)", o).group(1)) for o in outs)
    assert gens == list(range(2, 26)), gens
    assert sw.service("web")["generation"] == 25


# -- audit trail ------------------------------------------------------------------------------

VALUE = r'(?:"(?:[^"\\]|\\.)*"|\S+)'  # a bare word, or quoted with \" and \\ escaped
AUDIT_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)((?: [a-z]+=" + VALUE + r")+)$")
FIELD_RE = re.compile(r" ([a-z]+)=(" + VALUE + r")")


def audit_fields(line):
    m = AUDIT_RE.match(line)
    assert m, line
    out = {}
    for k, v in FIELD_RE.findall(m.group(2)):
        if v.startswith('"'):
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[k] = v
    return out


def test_audit_trail_records_changes_user_reason_and_refusals(topo, sw, tmp_path):
    log = tmp_path / "new" / "dir" / "audit.log"  # the directories are created
    env = {"BGSWITCH_AUDIT_LOG": str(log), "SUDO_USER": "alice"}

    def op(*args, ok=True):
        p = sw.run(*args, env=env)
        assert (p.returncode == 0) == ok, p
        return p

    op("service", "add", "web", f"{VIP}:{VIP_PORT}", "--reason", "new service")
    op("backend", "add", "web", "blue", blue(0))
    op("backend", "add", "web", "green", green(0), "--reason", "green 1.2")
    op("flip", "web", "--reason", "deploy 42")
    op("flip", "web", "green")  # already green: no change, no line
    op("rollback", "web", "--reason", 'oops "quoted"')
    op("flip", "web", "--if-generation", "1", ok=False)
    op("backend", "add", "web", "green", green(1))
    op("backend", "del", "web", "green", green(1), "--reason", "scale down")
    op("service", "add", "web2", f"{VIP}:81")
    op("service", "del", "web2")
    lines = [audit_fields(ln) for ln in log.read_text().splitlines()]
    got = [(f["action"], f["from"], f["to"], f["generation"], f["result"], f.get("reason"))
           for f in lines]
    assert got == [
        ("service-add", "-", f"{VIP}:{VIP_PORT}/tcp", "0->1", "done", "new service"),
        ("backend-add", "-", f"blue/{blue(0)}", "1->2", "done", None),
        ("backend-add", "-", f"green/{green(0)}", "2->3", "done", "green 1.2"),
        ("flip", "blue", "green", "3->4", "done", "deploy 42"),
        ("rollback", "green", "blue", "4->5", "done", 'oops "quoted"'),
        ("flip", "blue", "green", "5->5", "refused", None),
        ("backend-add", "-", f"green/{green(1)}", "5->6", "done", None),
        ("backend-del", f"green/{green(1)}", "-", "6->7", "done", "scale down"),
        ("service-add", "-", f"{VIP}:81/tcp", "0->1", "done", None),
        ("service-del", f"{VIP}:81/tcp", "-", "1->0", "done", None),
    ], got
    assert all(f["user"] == "alice" for f in lines)
    assert [f["service"] for f in lines] == ["web"] * 8 + ["web2"] * 2
    assert "generation is 5, not 1" in lines[5]["error"], lines[5]

    # Without SUDO_USER, the login name of the uid; --audit-log beats the environment.
    other = tmp_path / "other.log"
    p = sw.run("--audit-log", other, "flip", "web", env={"BGSWITCH_AUDIT_LOG": str(log),
                                                         "SUDO_USER": None})
    assert p.returncode == 0, p
    assert len(log.read_text().splitlines()) == 10
    f = audit_fields(other.read_text().strip())
    assert (f["user"], f["action"], f["from"], f["to"]) == ("root", "flip", "blue", "green"), f

    # An audit log that cannot be written refuses the change.
    before = snapshot(sw)
    one_line_error(sw.run("flip", "web", env={"BGSWITCH_AUDIT_LOG": "/proc/bgswitch.log"}))
    assert snapshot(sw) == before

    # syslog, ident bgswitch, LOG_USER|LOG_INFO: /dev/log is our socket in a private mount
    # namespace (tmpfs on /dev there; the host's /dev is untouched).
    sock_path = str(tmp_path / "log.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(sock_path)
        s.settimeout(5)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs tmpfs /dev && ln -s "$0" /dev/log && exec "$@"', sock_path]
        p = netns.run(argv + sw.argv("rollback", "web", "--reason", "via syslog"), check=False,
                      env=sw.env({"SUDO_USER": "bob"}))
        assert p.returncode == 0, p
        msg = s.recv(4096).decode()
    finally:
        s.close()
    assert re.match(r"<14>.*bgswitch\[\d+\]: user=bob service=web action=rollback from=green "
                    r"to=blue generation=\d+->\d+ result=done reason=\"via syslog\"$", msg), msg


# -- replacing the programs, layout version ---------------------------------------------------

def prog_ids(topo):
    """(XDP program id, TC egress program id) on the node's client-facing veth."""
    link = topo.ip("node", "-d", "link", "show", NODE_IFACE).stdout
    xdp = re.search(r"prog/xdp id (\d+)", link)
    tc = netns.run(["tc", "-n", topo.ns["node"], "filter", "show", "dev", NODE_IFACE,
                    "egress"]).stdout
    tcid = re.search(r"bgs_egress.* id (\d+)", tc)
    return (xdp and int(xdp.group(1)), tcid and int(tcid.group(1)))


def test_replace_swaps_programs_under_load_without_dropping_a_flow(topo, sw):
    sw.setup_service("web")
    sw.setup_service("echo", port=53, proto="udp")
    ids = [prog_ids(topo)]
    mode = sw.status()["interfaces"][0]["mode"]
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--udp-port", 53, "--duration", 6.5,
                       "--new-rate", 150, "--long", 8, "--udp-long", 2, "--udp-new-rate", 20,
                       "--timeout", 2)
    run.wait_ready()
    for _ in range(3):
        time.sleep(1.2)
        out = sw("attach", NODE_IFACE, "--replace")
        assert "programs replaced" in out and "pinned maps reused" in out, out
        ids.append(prog_ids(topo))
    res = run.finish(timeout=30)

    assert len({i[0] for i in ids}) == 4 and len({i[1] for i in ids}) == 4, ids
    new = res["tcp_new"]
    assert new["failed"] == 0, new["failures"][:5]
    assert new["ok"] >= 800 and new["slow"] == 0, (new["ok"], new["slow"])
    assert res["udp_new"]["failed"] == 0, res["udp_new"]["failures"][:5]
    assert_long_steady(res["tcp_long"], "blue", min_requests=40)
    assert_long_steady(res["udp_long"], "blue", min_requests=40)
    assert drops(sw) == {}
    assert sw.status()["interfaces"][0]["mode"] == mode
    assert "already attached" in sw("attach", NODE_IFACE)  # the record names the new programs

    # Refused: another mode (not atomic), or an interface this state is not attached to.
    other = "generic" if "native" in mode else "native"
    one_line_error(sw.run("attach", NODE_IFACE, "--replace", "--mode", other))
    s2 = topo.bgswitch()
    try:
        line = one_line_error(s2.run("attach", "n-blue", "--replace"))
        assert "not attached by the state" in line, line
        assert not os.path.exists(s2.pin_root)
    finally:
        s2.purge()
    assert prog_ids(topo) == ids[-1]


def test_replace_refuses_incompatible_layout(topo, sw):
    sw.setup_service("web")
    layout = int(re.search(r"map layout (\d+)", sw("--version")).group(1))
    ids = prog_ids(topo)
    with bpfsys.Map.open(f"{sw.pin_root}/bgs_config") as cfg_map:
        cfg = model.unpack_config(cfg_map.lookup(model.u32(0)))
        assert cfg.layout_version == layout
        cfg_map.update(model.u32(0), model.pack_config(cfg._replace(layout_version=layout + 98)))
        try:
            for args in [("status",), ("flip", "web"), ("attach", NODE_IFACE, "--replace"),
                         ("attach", NODE_IFACE), ("backend", "add", "web", "blue", blue(0))]:
                line = one_line_error(sw.run(*args))
                assert f"map layout {layout + 98}, this build uses {layout}" in line, line
            assert prog_ids(topo) == ids
            assert topo.colors_of(VIP, VIP_PORT, count=3) == ["blue"] * 3  # still serving
        finally:
            cfg_map.update(model.u32(0), model.pack_config(cfg))
    assert sw.status()["layout_version"] == layout
    sw("flip", "web")


# -- SIGKILL at every fault point -------------------------------------------------------------

def check_state(pin_root, after_kill=False):
    """Read the maps and check what the control plane promises: every slot a current set names
    is active and belongs to that service and color, every VIP entry names a service. Once the
    next command has run (not after_kill), also: no unfinished service record, no slot in use
    of a missing service, no active slot in no set (an orphan), and reference-counted address
    maps that match exactly what uses them (after a kill they may hold more).
    Returns the number of orphans."""
    maps = {n: bpfsys.Map.open(f"{pin_root}/{n}") for n in (
        "bgs_services", "bgs_vips", "bgs_switch", "bgs_sets", "bgs_backends",
        "bgs_backend_addrs", "bgs_vip_addrs")}
    u32 = lambda raw: int.from_bytes(raw[:4], "little")  # noqa: E731
    try:
        visible, vip_addrs = {}, set()
        for svc in range(1024):
            rec = maps["bgs_services"].lookup(model.u32(svc))
            name = rec[:32].split(b"\0")[0].decode()
            if not name:
                continue
            vipkey = rec[32:52]
            v = maps["bgs_vips"].lookup(vipkey)
            if v is None or u32(v) != svc:
                assert after_kill, f"unfinished service record {svc} ({name})"
                continue
            visible[svc] = name
            vip_addrs.add(vipkey[:16] + vipkey[19:20] + bytes(3))
        for _, v in maps["bgs_vips"].items():
            assert u32(v) in visible, "VIP entry of no service"
        in_set = {}
        for svc in visible:
            sw = model.unpack_switch(maps["bgs_switch"].lookup(model.u32(svc)))
            for color in (0, 1):
                raw = maps["bgs_sets"].lookup(model.u32(sw.set_index(svc, color)))
                for slot in model.unpack_set(raw):
                    in_set[slot] = (svc, color)
        backend_addrs, orphans = set(), 0
        for slot in range(8192):
            raw = maps["bgs_backends"].lookup(model.u32(slot))
            b = model.unpack_backend(raw)
            if slot in in_set:
                assert b.state == model.BGS_BACKEND_ACTIVE and (b.svc, b.color) == in_set[slot], \
                    f"slot {slot} in a set: {b}"
            if b.state == model.BGS_BACKEND_FREE:
                continue
            assert after_kill or b.svc in visible, f"slot {slot} of a missing service: {b}"
            if b.state == model.BGS_BACKEND_ACTIVE and slot not in in_set:
                orphans += 1
            backend_addrs.add(raw[:18] + bytes([b.proto, b.family]))
        assert after_kill or orphans == 0, f"{orphans} active slots in no set"
        for name, want in (("bgs_vip_addrs", vip_addrs), ("bgs_backend_addrs", backend_addrs)):
            have = set(maps[name].keys())
            assert have >= want if after_kill else have == want, (name, have ^ want)
        return orphans
    finally:
        for m in maps.values():
            m.close()


def test_crash_sigkill_at_every_fault_point_under_traffic(topo, sw):
    sw("service", "add", "web", f"{VIP}:{VIP_PORT}")
    sw("backend", "add", "web", "blue", blue(0))
    sw("backend", "add", "web", "green", green(0))
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 90, "--new-rate", 40,
                       "--long", 4, "--timeout", 2)
    run.wait_ready()
    killed = []

    def crash(point, *args):
        """Kill `args` at point, check the state, re-run it: it completes."""
        p = sw.run(*args, env={"BGSWITCH_FAULT": point})
        assert p.returncode == KILLED, (point, p.returncode, p.stdout, p.stderr)
        killed.append(point)
        sw("status")
        orphans = check_state(sw.pin_root, after_kill=True)
        p = sw.run(*args)
        assert p.returncode == 0, (point, p.stdout, p.stderr)
        check_state(sw.pin_root)
        return orphans

    # backend add: killed with the slot active but in no set; gc collects that orphan.
    p = sw.run("backend", "add", "web", "blue", blue(1),
               env={"BGSWITCH_FAULT": "backend-add-before-commit"})
    assert p.returncode == KILLED, p
    killed.append("backend-add-before-commit")
    assert check_state(sw.pin_root, after_kill=True) == 1
    assert blue(1) not in backends_of(sw, "web", "blue")
    sw("gc")
    check_state(sw.pin_root)
    sw("backend", "add", "web", "blue", blue(1))
    assert blue(1) in backends_of(sw, "web", "blue")

    crash("set-before-switch", "backend", "del", "web", "blue", blue(1), "--drain")
    assert list(backends_of(sw, "web", "blue")) in ([blue(0)], [blue(0), blue(1)])
    crash("set-before-switch", "backend", "add", "web", "blue", blue(1))
    assert backends_of(sw, "web", "blue")[blue(1)]["state"] == "active"
    crash("backend-del-after-commit", "backend", "del", "web", "blue", blue(1), "--drain")
    assert backends_of(sw, "web", "blue").get(blue(1), {"state": "draining"})["state"] == \
        "draining"
    crash("backend-add-before-commit", "backend", "add", "web", "blue", blue(1))
    assert backends_of(sw, "web", "blue")[blue(1)]["state"] == "active"

    crash("flip-before-write", "flip", "web", "green")
    assert sw.service("web")["active"] == "green"
    crash("flip-after-write", "flip", "web", "blue")
    assert sw.service("web")["active"] == "blue"

    crash("service-add-before-vip", "service", "add", "api", f"{VIP}:81")
    sw("backend", "add", "api", "blue", blue(1))
    crash("service-del-after-vip", "service", "del", "api")
    sw("service", "add", "api", f"{VIP}:81")
    sw("backend", "add", "api", "blue", blue(1))
    crash("service-del-before-record", "service", "del", "api")
    assert [s["name"] for s in sw.status()["services"]] == ["web"]

    ids = prog_ids(topo)
    for point in ("attach-after-load", "attach-after-pin", "attach-after-tc",
                  "attach-before-record"):
        crash(point, "attach", NODE_IFACE, "--replace")
        assert "already attached" in sw("attach", NODE_IFACE), point
        assert prog_ids(topo) != ids, point
        ids = prog_ids(topo)

    time.sleep(0.5)
    res = run.finish(early=True, timeout=30)
    assert len(killed) == 14
    new = res["tcp_new"]
    assert new["failed"] == 0, new["failures"][:5]
    assert new["ok"] > 100, new["ok"]
    assert_long_steady(res["tcp_long"], "blue", min_requests=20)
    assert drops(sw) == {}
