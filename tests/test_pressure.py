"""Flow-table pressure: a flood of new flows must neither break nor move established flows.

Topology as in test_e2e.py (tests/lib/netns.py). The flow table is made small (--flows 4096) and
floods of new flows (tests/lib/flood.py: spoofed SYNs, bare ACKs and UDP) run while long-lived
connections cross a flip. The insert limit (by default the table's size every 2 s for the
node, a burst of an eighth) keeps the flood from turning the table over; a new flow over it is
still forwarded, only without an entry (counted untracked). Flow entries lost anyway (deleted
here, as an LRU evicts them) are re-pinned by the second chance.

Spoofed sources are in SPOOF_NET, which the node routes to a blackhole for the test: the
backends' answers to them die there, silently.

Run as root: /usr/bin/pytest -q tests/test_pressure.py
"""

import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import bpfsys  # noqa: E402
from lib import netns  # noqa: E402
from lib.netns import CLIENT_IP, NODE_IFACE, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53
FLOWS = 4096  # attach --flows
SPOOF_NET = "10.99.0.0"  # /16: spoofed sources, blackholed on the node
FLOOD = 30000


@pytest.fixture
def sw(topo):
    s = topo.bgswitch()
    s("attach", NODE_IFACE, "--flows", FLOWS)
    s.setup_service("web")
    s.setup_service("dns", port=UDP_PORT, proto="udp")
    topo.ip("node", "route", "add", "blackhole", f"{SPOOF_NET}/16")
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:300]}{err}")
        topo.ip("node", "route", "del", "blackhole", f"{SPOOF_NET}/16", check=False)
        assert s.purge() == []


def flood_argv(dst, port, kind, count, spoof=True):
    src = ["--spoof-net", SPOOF_NET] if spoof else ["--src", CLIENT_IP]
    return [netns.PY, os.path.join(netns.HERE, "flood.py"), "--dst", dst, "--port", str(port),
            "--kind", kind, "--count", str(count), "--duration", "30"] + src


def flood(topo, count=FLOOD, kind="udp", port=UDP_PORT, spoof=False):
    """One flooder, to its end: the number of packets it sent."""
    return int(topo.ns_run("client", flood_argv(VIP, port, kind, count, spoof), timeout=90).stdout)


def floods(topo, jobs):
    """Flooders run side by side, [(kind, port, count)]: {kind: packets sent}, and
    {kind: what the flooder said of its rate}."""
    procs = [(kind, topo.spawn("client", flood_argv(VIP, port, kind, count),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for kind, port, count in jobs]
    sent, rates = {}, {}
    for kind, p in procs:
        out, err = p.communicate(timeout=90)
        topo.end(p)
        assert p.returncode == 0, err
        sent[kind], rates[kind] = int(out), err.strip()
    return sent, rates


def possible_cpus():
    """CPUs as libbpf counts them (possible CPUs): the insert limit is split between them."""
    with open("/sys/devices/system/cpu/possible") as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n


def test_pressure_limits_default_fits_flow_table(topo, sw):
    """The default insert limit is the node's, sized to the flow table: its size every 2 s,
    with a burst of an eighth, each CPU getting its part."""
    out = sw("limits").strip()
    n = possible_cpus()
    rate, burst = FLOWS // 2, FLOWS // 8
    assert out == (f"new flows {rate} per second, burst {burst} (per CPU: {-(-rate // n)}, "
                   f"burst {-(-burst // n)})"), out


def test_pressure_flood_during_drain_breaks_no_connection(topo, sw):
    """attach --flows 4096 and the default limits. 8 long-lived connections on blue (4 where
    the client speaks, 4 where the server does), a flip to green (blue drains), then spoofed
    SYNs, bare ACKs and UDP, 10x the flow table's capacity in new flows: none of the 8 breaks
    or moves, and new connections made during and after the flood are counted."""
    each = FLOWS * 10 // 3 + 1
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 16, "--long", 4,
                       "--push-long", 4, "--new-rate", 20, "--timeout", 3)
    try:
        run.wait_ready()
        time.sleep(0.5)
        sw("flip", "web")
        sw("flip", "dns")
        t0 = time.monotonic()
        sent, rates = floods(topo, [("syn", VIP_PORT, each), ("ack", VIP_PORT, each),
                                    ("udp", UDP_PORT, each)])
        took = time.monotonic() - t0
        time.sleep(2.0)
        st = sw.status()
    finally:
        res = run.finish(early=True, timeout=60)
    web = next(s for s in st["services"] if s["name"] == "web")
    new = res["tcp_new"]
    print(json.dumps({"sent": sent, "flows": sum(sent.values()), "seconds": round(took, 2),
                      "rates": rates,
                      "flow_table": st["flow_table"], "counters": {
                          k: st["counters"][k] for k in ("flow_new", "untracked", "nosyn_miss",
                                                         "second_chance", "reply_no_flow")},
                      "drops": st["drops"], "new_ok": new["ok"], "new_failed": new["failed"],
                      "new_failures": new["failures"][:5], "blue_live": web["colors"]["blue"]
                      ["live_flows"]}))
    assert sum(sent.values()) >= FLOWS * 10
    assert st["counters"]["untracked"] > 0  # the flood did go over the insert limit
    long_lived = res["tcp_long"] + res["tcp_push"]
    assert len(long_lived) == 8
    broken = [c for c in long_lived if c["failures"] or c["changes"] or c["color"] != "blue"]
    assert broken == [], broken
    assert all(c["ok"] >= 20 for c in long_lived), long_lived
    assert new["ok"] >= 0.8 * new["attempts"], new


def test_pressure_over_limit_flows_forwarded_untracked(topo, sw):
    """Over the insert limit a new flow is forwarded without an entry: a flood of new UDP flows
    all reach the blue backends, the part over the limit counted untracked, none dropped,
    and the table holds no more than the limit let in. The long-lived connections keep
    their entries and their backends through a flip."""
    sw("limits", "--new-flows", 200, "--burst", 100)
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 12, "--long", 8,
                       "--timeout", 2)
    try:
        run.wait_ready()
        before = sw.service("dns")
        t0 = time.monotonic()
        sent = flood(topo, FLOOD // 2)
        sw("flip", "web")
        sent += flood(topo, FLOOD // 2, spoof=True)  # other sources: other flows
        took = time.monotonic() - t0
        time.sleep(1.0)
        st = sw.status()
    finally:
        res = run.finish(early=True, timeout=40)
    dns = next(s for s in st["services"] if s["name"] == "dns")

    def rx(svc):
        return sum(b["rx_packets"] for b in svc["colors"]["blue"]["backends"])
    forwarded = rx(dns) - rx(before)
    print(json.dumps({"sent": sent, "seconds": round(took, 2), "forwarded": forwarded,
                      "flow_table": st["flow_table"], "untracked": st["counters"]["untracked"],
                      "drops": st["drops"]}))
    assert sent >= FLOOD * 0.9
    # Every datagram reached a backend (and a few of the client's ICMP errors about the
    # replies it has no socket for, translated toward the backend, count there too).
    assert forwarded >= sent
    assert set(st["drops"].values()) == {0}, st["drops"]
    limit = 100 + 200 * (took + 1.0) + 2 * possible_cpus()
    assert sent - limit <= st["counters"]["untracked"] <= sent, st["counters"]
    assert st["flow_table"]["entries"] <= limit + 8
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c


def evict_tcp_flows(sw):
    """Delete every TCP entry of the flow table, as a full LRU would: what the flood may or may
    not hit, made certain. Returns how many were deleted."""
    n = 0
    with bpfsys.Map.open(f"{sw.pin_root}/bgs_flows") as m:
        for key in list(bpfsys.map_keys(m.fd, m.info.key_size)):
            if key[20] == 6:  # struct bgs_conn_key.proto
                n += bpfsys.map_delete(m.fd, key)
    return n


def test_pressure_second_chance_rescues_evicted_flows(topo, sw):
    """During the drain after a flip, with a flood running (over the insert limit), the
    long-lived connections' flow entries are lost (deleted, as a full LRU would evict them).
    Their next segments miss the table and get a second chance toward blue, which drains:
    re-pinned there, no connection moves to green and none fails."""
    sw("limits", "--new-flows", 200, "--burst", 100)
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 12, "--long", 8,
                       "--timeout", 2)
    try:
        run.wait_ready()
        time.sleep(0.5)
        sw("flip", "web")
        sent = flood(topo, FLOOD)
        evicted = evict_tcp_flows(sw)
        time.sleep(1.5)
        st = sw.status()
    finally:
        res = run.finish(early=True, timeout=40)
    web = next(s for s in st["services"] if s["name"] == "web")
    print(json.dumps({"sent": sent, "flow_table": st["flow_table"], "deleted": evicted,
                      "second_chance": web["second_chance"], "nosyn_miss": web["nosyn_miss"]}))
    assert evicted >= 8
    for c in res["tcp_long"]:
        assert c["changes"] == [] and c["color"] == "blue", c
        assert c["failures"] == [], c
    assert web["second_chance"] == web["nosyn_miss"] >= 8, web
    assert web["draining"] and web["colors"]["blue"]["live_flows"] == 8


def test_pressure_repin_to_active_when_nothing_drains(topo, sw):
    """Before any flip (nothing drains), a connection whose entry is gone is re-pinned to the
    active color, the only one it can be on: it survives."""
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 6, "--long", 4,
                       "--timeout", 2)
    try:
        run.wait_ready()
        time.sleep(0.5)
        assert evict_tcp_flows(sw) >= 4
        time.sleep(1.0)
        web = sw.service("web")
    finally:
        res = run.finish(early=True, timeout=40)
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c
    assert web["second_chance"] >= 4 and not web["draining"]
