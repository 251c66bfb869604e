"""The views on a live switch: status --json, the Prometheus exporter, and watch in a terminal;
also a service split between colors, with weights and lookup tables, as each view shows it.

Same topology as the end-to-end tests (tests/lib/netns.py): client -> node (bgswitch) -> blue and
green backends. Traffic is counted on the client side and compared with what the views report.

Run as root: /usr/bin/pytest -q tests/test_views.py
"""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import httpabuse  # noqa: E402
from lib import model  # noqa: E402
from lib import netns  # noqa: E402
from lib.netns import NODE_IFACE, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")


@pytest.fixture
def sw(topo):
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    s.setup_service("web")
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:400]}{err}")
        assert s.purge() == []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def exporter(sw):
    """bgswitch exporter on 127.0.0.1:<free port> (host namespace, loopback only)."""
    port = free_port()
    p = subprocess.Popen([netns.BGSWITCH, "--pin-root", sw.pin_root, "exporter", "--listen",
                          f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"exporter did not start: {p.communicate()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", port, p
    finally:
        if p.poll() is None:
            p.terminate()  # SIGTERM: it must stop cleanly
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0, (p.returncode, out, err)


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def samples(text):
    """[(name, {label: value}, float)] of a Prometheus text exposition, checked line by line."""
    out, typed = [], set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name in typed, f"{name} has no # TYPE"
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        out.append((name, lab, float(value)))
    return out


def total(ss, name, **want):
    return sum(v for n, lab, v in ss if n == name and all(lab.get(k) == w for k, w in want.items()))


# -- status --json ---------------------------------------------------------------------------

def test_views_status_json_counts_match_traffic(topo, sw):
    res = topo.probe(VIP, VIP_PORT, count=30)["results"]
    assert all(r["ok"] for r in res), res
    st = sw.status()
    assert set(st) >= {"layout_version", "pin_root", "interfaces", "flow_table", "timeouts",
                       "services", "counters", "drops", "interval_ms"}
    assert st["interfaces"][0]["name"] == NODE_IFACE
    (web,) = st["services"]
    assert (web["name"], web["vip"], web["port"], web["proto"]) == ("web", VIP, VIP_PORT, "tcp")
    assert web["active"] == "blue" and web["previous"] is None and web["generation"] >= 1
    # layout 3: the green share, the lookup tables, weights
    assert (web["green_share"], web["previous_green_share"]) == (0.0, None)
    assert (web["lb"], web["table_size"]) == ("maglev", 16381)
    assert (web["colors"]["blue"]["share"], web["colors"]["green"]["share"]) == (100.0, 0.0)
    for color in ("blue", "green"):
        bes = web["colors"][color]["backends"]
        assert [b["weight"] for b in bes] == [1, 1]
        assert sum(b["table_positions"] for b in bes) == 16381
        assert all(abs(b["table_positions"] - 16381 / 2) < 16381 * 0.01 for b in bes), bes
    blue = web["colors"]["blue"]["backends"]
    assert sum(b["new_flows"] for b in blue) == 30 == web["syn_miss"]
    assert all(b["rx_packets"] > 0 and b["tx_packets"] > 0 and b["rx_bytes"] > 0 for b in blue)
    assert sum(b["new_flows"] for b in web["colors"]["green"]["backends"]) == 0
    assert web["nosyn_miss"] == 0 and not any(web["drops"].values())
    assert all(b["rx_pps"] is None for b in blue)  # --json reads at once: no rates
    assert st["counters"]["syn_miss"] == 30 and st["counters"]["reply_nat"] > 0
    # the names and order of include/bgswitch.h's lists, as model.py reads them
    assert list(st["counters"]) == [e.name for e in model.STAT_LIST]
    assert list(st["drops"]) == list(web["drops"]) == [e.name for e in model.DROP_LIST]
    assert st["flow_table"]["entries"] >= 30


def test_views_status_rates_under_load(topo, sw):
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 4, "--new-rate", 40)
    try:
        run.wait_ready()
        time.sleep(1.0)
        st = json.loads(sw("status", "web", "--json", "--interval", "1000"))
        (web,) = st["services"]
        assert 900 <= st["interval_ms"] <= 1500
        rate = sum(b["new_flows_per_s"] for b in web["colors"]["blue"]["backends"])
        assert 20 <= rate <= 60, rate  # 40 new connections per second
        text = sw("status", "web", "--interval", "500")
        assert "FLOWS/S" in text and "active blue" in text
    finally:
        run.finish(timeout=30)


# -- exporter --------------------------------------------------------------------------------

def test_views_exporter_metrics_match_traffic(topo, sw, exporter):
    url, port, _ = exporter
    res = topo.probe(VIP, VIP_PORT, count=25)["results"]
    assert all(r["ok"] for r in res), res
    ss = samples(scrape(url))
    assert total(ss, "bgswitch_new_flows_total", service="web", color="blue") == 25
    assert total(ss, "bgswitch_new_flows_total", service="web", color="green") == 0
    assert total(ss, "bgswitch_flow_misses_total", service="web", kind="syn") == 25
    assert total(ss, "bgswitch_active_color", service="web", color="blue") == 1
    assert total(ss, "bgswitch_active_color", service="web", color="green") == 0
    assert total(ss, "bgswitch_color_share", service="web", color="blue") == 1
    assert total(ss, "bgswitch_color_share", service="web", color="green") == 0
    assert total(ss, "bgswitch_packets_total", service="web", direction="in") > 25 * 2
    assert total(ss, "bgswitch_packets_total", service="web", direction="out") > 25
    assert total(ss, "bgswitch_bytes_total", service="web", direction="in") > 0
    gen = total(ss, "bgswitch_generation", service="web")

    sw("flip", "web")
    res = topo.probe(VIP, VIP_PORT, count=10)["results"]
    assert [r["color"] for r in res] == ["green"] * 10
    ss = samples(scrape(url))
    assert total(ss, "bgswitch_active_color", service="web", color="green") == 1
    assert total(ss, "bgswitch_color_share", service="web", color="green") == 1
    assert total(ss, "bgswitch_color_share", service="web", color="blue") == 0
    assert total(ss, "bgswitch_generation", service="web") == gen + 1
    assert total(ss, "bgswitch_new_flows_total", service="web", color="green") == 10
    assert total(ss, "bgswitch_flows", service="web", color="blue") == 0  # all closed


def test_views_split_share_weights_and_tables(topo, sw, exporter):
    """A service split between colors, with weights: status (text and JSON), service list and
    the exporter all say so."""
    url, port, _ = exporter
    b0, b1 = ("%s:%d" % a for a in topo.backends["blue"])
    sw("backend", "add", "web", "blue", b1, "--weight", "3")
    out = sw("shift", "web", "green", "12.5%")
    assert re.search(r"^web: blue -> green 12\.5% \(generation \d+\)$", out, re.M), out
    web = sw.service("web")
    assert (web["active"], web["previous"]) == ("split", "blue")
    assert (web["green_share"], web["previous_green_share"]) == (12.5, 0.0)
    assert (web["colors"]["green"]["share"], web["colors"]["blue"]["share"]) == (12.5, 87.5)
    assert web["draining"] is True  # the second chance stays on while split
    blue = {f"{b['address']}:{b['port']}": b for b in web["colors"]["blue"]["backends"]}
    assert (blue[b0]["weight"], blue[b1]["weight"]) == (1, 3)
    pos = blue[b1]["table_positions"]
    assert blue[b0]["table_positions"] + pos == web["table_size"] == 16381
    assert abs(pos / 16381 - 0.75) < 0.01, pos

    text = sw("status", "web", "--interval", "0")
    head = next(ln for ln in text.splitlines() if ln.startswith("web "))
    assert re.fullmatch(r"web  10\.77\.100\.1:80/tcp  active split \(green 12\.5%\)  "
                        r"generation \d+  \(was blue\)  maglev 16381", head), head
    cols = next(ln for ln in text.splitlines() if "COLOR" in ln).split()
    assert cols[:5] == ["COLOR", "BACKEND", "STATE", "WEIGHT", "TABLE"], cols
    row = next(ln for ln in text.splitlines() if b1 in ln).split()
    assert row[3] == "3" and row[4] == "%.2f%%" % (100 * pos / 16381), row
    listed = sw("service", "list").splitlines()[1].split()
    assert listed[:4] == ["web", "10.77.100.1:80", "tcp", "split"], listed

    res = topo.probe(VIP, VIP_PORT, count=40)["results"]
    assert all(r["ok"] for r in res), res
    ss = samples(scrape(url))
    assert total(ss, "bgswitch_color_share", service="web", color="green") == 0.125
    assert total(ss, "bgswitch_color_share", service="web", color="blue") == 0.875
    assert total(ss, "bgswitch_active_color", service="web") == 0  # split: neither takes all
    took = {c: total(ss, "bgswitch_new_flows_total", service="web", color=c)
            for c in ("blue", "green")}
    assert took["blue"] + took["green"] == 40 and took["blue"] > 0, took

    # A service without tables says so: lb modulo, table_size 0, no positions.
    sw("service", "add", "legacy", "10.77.100.2:80", "--lb", "modulo")
    sw("backend", "add", "legacy", "blue", b0)
    leg = sw.service("legacy")
    assert (leg["lb"], leg["table_size"], leg["active"]) == ("modulo", 0, "blue")
    (be,) = leg["colors"]["blue"]["backends"]
    assert (be["weight"], be["table_positions"]) == (1, 0)
    text = sw("status", "legacy", "--interval", "0")
    assert re.search(r"^legacy  10\.77\.100\.2:80/tcp  active blue  generation \d+  lb modulo$",
                     text, re.M), text
    ss = samples(scrape(url))
    assert total(ss, "bgswitch_color_share", service="legacy", color="blue") == 1

    # Back to all blue: a rollback restores the share and the exporter's view.
    sw("rollback", "web")
    web = sw.service("web")
    assert (web["active"], web["green_share"], web["previous"]) == ("blue", 0.0, "split")
    assert web["previous_green_share"] == 12.5
    ss = samples(scrape(url))
    assert total(ss, "bgswitch_active_color", service="web", color="blue") == 1
    assert total(ss, "bgswitch_color_share", service="web", color="green") == 0


def test_views_exporter_draining_flows_and_concurrent_scrapes(topo, sw, exporter):
    url, port, _ = exporter
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 6, "--new-rate", 30,
                       "--long", 3)
    try:
        run.wait_ready()
        sw("flip", "web")
        time.sleep(1.0)
        results, errors = [], []

        def worker():
            try:
                for _ in range(5):
                    results.append(samples(scrape(url)))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(results) == 40, errors
        ss = results[-1]
        assert total(ss, "bgswitch_flows", service="web", color="blue") == 3  # draining
        assert total(ss, "bgswitch_backend_flows", service="web", color="blue") == 3
    finally:
        run.finish(early=True, timeout=30)


def test_views_exporter_http_edges_and_bind(exporter):
    url, port, _ = exporter
    with urllib.request.urlopen(url + "/", timeout=5) as r:
        assert r.status == 200
    for path, code in (("/nope", 404),):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + path, timeout=5)
        assert e.value.code == code
    req = urllib.request.Request(url + "/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    # It binds only where it is told: another loopback address is not served.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", port), timeout=1).close()


# -- the exporter under abuse: scrapes still answered --------------------------------------------

EXP_PER_PEER = 64  # user/exporter.c EXP_PER_PEER


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


# (load, coroutine factory(port) -> result, check(result)). Every load runs from loopback
# source addresses of its own (httpabuse.sources) while scrapes come from 127.0.0.1.
ABUSE = [
    # 1,008 idle connections from 16 peers (63 each, under the per-peer bound): all held, and
    # 5 scrapes meanwhile all answered.
    ("idle-1000", lambda port: httpabuse.with_idle("127.0.0.1", port, httpabuse.sources(16),
                                                   63, count=5, interval=0.5),
     lambda r: r == (5, 1008, 1008)),
    # 1,000 idle connections from one peer: it keeps only EXP_PER_PEER of them.
    ("idle-one-peer", lambda port: httpabuse.with_idle("127.0.0.1", port,
                                                       httpabuse.sources(1, 50), 1000,
                                                       count=5, interval=0.5),
     lambda r: r == (5, 1000, EXP_PER_PEER)),
    # 64 slow clients (a header line every 2 s) from one peer, then from 4: 8 scrapes answered.
    ("slow-64", lambda port: httpabuse.with_slow("127.0.0.1", port, httpabuse.sources(1, 60),
                                                 64, count=8, interval=1.0),
     lambda r: r == 8),
    ("slow-64-4-peers", lambda port: httpabuse.with_slow("127.0.0.1", port,
                                                         httpabuse.sources(4, 70), 16,
                                                         count=8, interval=1.0),
     lambda r: r == 8),
    # 1,000 concurrent scrapes from 20 peers (50 each): every one answered.
    ("concurrent-1000", lambda port: httpabuse.concurrent("127.0.0.1", port,
                                                          httpabuse.sources(20, 100), 50),
     lambda r: r == 1000),
]


@pytest.mark.parametrize("load,run,check", ABUSE, ids=[a[0] for a in ABUSE])
def test_views_exporter_answers_scrapes_under_abuse(exporter, load, run, check):
    url, port, p = exporter
    httpabuse.raise_fd_limit(1200)
    before = rss_kib(p.pid)
    result = asyncio.run(run(port))
    print(f"{load}: {result}, exporter RSS {before} -> {rss_kib(p.pid)} KiB")
    assert check(result), (load, result)
    # Memory stays bounded: the connections' buffers are capped, a crowd shares collections.
    assert rss_kib(p.pid) - before < 64 * 1024, (before, rss_kib(p.pid))
    assert samples(scrape(url))  # and it still serves afterwards


def test_views_exporter_rejects_bad_listen(sw):
    for bad in ("127.0.0.1", "nohost:80", "127.0.0.1:0", "127.0.0.1:99999"):
        p = subprocess.run([netns.BGSWITCH, "--pin-root", sw.pin_root, "exporter", "--listen",
                            bad], capture_output=True, text=True, timeout=10)
        assert p.returncode != 0 and len(p.stderr.splitlines()) == 1, (bad, p)


# -- watch in a pseudo-terminal -----------------------------------------------------------------

TMUX = shutil.which("tmux")


@pytest.fixture
def tmux(sw):
    """A tmux session running a shell, its server on a socket of our own."""
    assert TMUX, "tmux is missing (scripts/install-deps.sh installs it)"
    sock = f"/tmp/bgs-tmux-{os.getpid()}"
    name = "bgswatch"
    base = [TMUX, "-S", sock]
    subprocess.run(base + ["new-session", "-d", "-s", name, "-x", "110", "-y", "30", "sh"],
                   check=True, timeout=10)

    def send(*keys):
        subprocess.run(base + ["send-keys", "-t", name] + list(keys), check=True, timeout=10)

    def screen():
        return subprocess.run(base + ["capture-pane", "-p", "-t", name], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    try:
        yield send, screen
    finally:
        subprocess.run(base + ["kill-server"], timeout=10, check=False)
        if os.path.exists(sock):
            os.unlink(sock)


def wait_screen(screen, pred, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        s = screen()
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_views_watch_shows_flip_and_drain_then_restores_terminal(topo, sw, tmux, quit_key):
    send, screen = tmux
    send("clear; echo BEFORE-WATCH", "Enter")
    s = wait_screen(screen, lambda s: "BEFORE-WATCH" in s)  # the shell is reading
    assert "BEFORE-WATCH" in s, s
    send(f"{netns.BGSWITCH} --pin-root {sw.pin_root} watch --interval 300; echo WATCH-EXIT:$?",
         "Enter")
    s = wait_screen(screen, lambda s: "bgswitch watch" in s, timeout=20)
    assert "web" in s and "active blue" in s, s
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 6, "--new-rate", 30,
                       "--long", 2)
    try:
        run.wait_ready()
        time.sleep(1.0)
        sw("flip", "web")
        s = wait_screen(screen, lambda s: "active green" in s and "draining" in s)
        assert "active green" in s and "draining" in s, s
        assert re.search(r"green\s+\d+\.\d\s", s), s
        assert any(ch in s for ch in "▁▂▃▄▅▆▇█"), s  # the history
    finally:
        run.finish(early=True, timeout=30)
    send(quit_key)
    # The exit status, not the command line that echoes it (it holds "WATCH-EXIT:$?").
    s = wait_screen(screen, lambda s: re.search(r"WATCH-EXIT:\d", s))
    # Back on the normal screen: the shell's earlier output is there, the view is gone.
    assert "BEFORE-WATCH" in s and "bgswitch watch" not in s, s
    assert re.search(r"WATCH-EXIT:0", s), s


def test_views_watch_refuses_without_terminal(sw):
    p = subprocess.run([netns.BGSWITCH, "--pin-root", sw.pin_root, "watch"],
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and "terminal" in p.stderr and len(p.stderr.splitlines()) == 1


# -- the flow path's counters (layout 4) in every view ----------------------------------------

FLOW_PATH = {  # status counter: its exporter metric
    "untracked": "bgswitch_untracked_flows_total",
    "rst_miss": "bgswitch_rst_misses_total",
    "reply_no_flow": "bgswitch_reply_no_flow_total",
    "reply_wrong_dev": "bgswitch_reply_wrong_dev_total",
    "reply_superseded": "bgswitch_reply_superseded_total",
}


def flow_path_events(topo, sw):
    """At least one packet of each FLOW_PATH counter, then nothing more."""
    # reply_superseded: a direct connection from a port a VIP flow used (and its later
    # replies: reply_no_flow).
    res = topo.conns("stale", "--vip", VIP, "--port", VIP_PORT, "--count", 1, "--close", "rst",
                     "--sport-base", 41500)["results"]
    assert res[0]["ok"], res
    # reply_wrong_dev: a frame from the client side with a live flow's backend as its source.
    h = netns.Held(topo, VIP, VIP_PORT)
    try:
        r = h.req()
        baddr, bport = r["backend"].rsplit(":", 1)
        topo.conns("spoof", "--src", baddr, "--sport", bport, "--dst", netns.CLIENT_IP,
                   "--dport", r["sport"], "--flags", "A", "--seq", 1, "--ack", 1, "--l2",
                   netns.CLIENT_IFACE, "--dmac", topo.link_mac("node", NODE_IFACE))
    finally:
        h.close()
    # rst_miss: an RST of no flow.
    topo.conns("spoof", "--src", netns.CLIENT_IP, "--sport", 41600, "--dst", VIP, "--dport",
               VIP_PORT, "--flags", "R", "--seq", 1)
    # untracked: new flows over an insert limit of one a second.
    sw("limits", "--new-flows", 1, "--burst", 0)
    topo.ns_run("client", [netns.PY, os.path.join(netns.HERE, "flood.py"), "--src",
                           netns.CLIENT_IP, "--dst", VIP, "--port", str(VIP_PORT), "--kind",
                           "syn", "--count", "50"])
    time.sleep(1.0)  # the client's resets of the SYN-ACKs it did not ask for


def test_views_flow_path_counters_in_status_exporter_and_watch(topo, sw, exporter, tmux):
    """untracked, rst_miss and the replies left untouched (no flow, wrong device, superseded)
    appear with the same values in status --json, status, the exporter and watch; the insert
    limit's drop reason is gone from all of them."""
    flow_path_events(topo, sw)
    st = sw.status()
    got = {k: st["counters"][k] for k in FLOW_PATH}
    print(json.dumps(got))
    assert got["untracked"] >= 40 and all(v >= 1 for v in got.values()), got
    assert "insert_limit" not in st["drops"] and "insert_limit" not in st["counters"]
    text = sw("status")
    for k, v in got.items():
        assert f" {k}={v}" in text, (k, v, text)
    assert "insert_limit" not in text
    ss = samples(scrape(exporter[0]))
    assert {k: total(ss, m) for k, m in FLOW_PATH.items()} == got
    assert not [lab for n, lab, _ in ss if lab.get("reason") == "insert_limit"]
    send, screen = tmux
    send(f"{netns.BGSWITCH} --pin-root {sw.pin_root} watch --interval 300", "Enter")
    s = wait_screen(screen, lambda s: "replies untouched" in s, timeout=20)
    send("q")
    for k, v in got.items():
        assert re.search(rf"\b{k} {v}\b", s), (k, v, s)
    assert re.search(r"flow table\s+evicted \d+", s), s
