"""Flow-table pressure: a flood of new flows must not move established flows to the other color.

Topology as in test_e2e.py (tests/netns.py). The flow table is made small (--flows 1024) and a
flood of new UDP flows (tests/flood.py) runs while long-lived TCP connections cross a flip. The
insert limit sheds the flood; flow entries lost anyway (deleted here, as an LRU evicts them) are
re-pinned by the second chance.

Run as root: /usr/bin/pytest -q tests/test_pressure.py
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpfsys  # noqa: E402
import netns  # noqa: E402
from netns import CLIENT_IP, NODE_IFACE, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53
FLOOD = 30000


@pytest.fixture
def sw(topo):
    s = topo.bgswitch()
    s("attach", NODE_IFACE, "--flows", 1024)
    s.setup_service("web")
    s.setup_service("dns", port=UDP_PORT, proto="udp")
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:300]}{err}")
        assert s.purge() == []


def flood(topo, count=FLOOD):
    p = topo.ns_run("client", [netns.PY, os.path.join(netns.HERE, "flood.py"), "--src",
                               CLIENT_IP, "--dst", VIP, "--port", str(UDP_PORT), "--count",
                               str(count), "--duration", "20"], timeout=60)
    return int(p.stdout)


def long_lived_through_flip_under_flood(topo, sw):
    """8 long-lived connections open on blue, then a flood and a flip; returns their summary
    and the status afterwards."""
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 12, "--long", 8,
                       "--timeout", 2)
    try:
        run.wait_ready()
        time.sleep(0.5)
        sent = flood(topo, FLOOD // 2)
        sw("flip", "web")
        sent += flood(topo, FLOOD // 2)
        time.sleep(1.0)
        st = sw.status()
    finally:
        res = run.finish(early=True, timeout=40)
    return res, st, sent


def test_pressure_insert_limit_keeps_established_flows(topo, sw):
    """With the insert limit, the flood is shed (insert_limit drops) instead of evicting the
    table: the long-lived connections stay on blue through the flip, none fails."""
    sw("limits", "--new-flows", 200, "--burst", 100)
    res, st, sent = long_lived_through_flip_under_flood(topo, sw)
    print(json.dumps({"sent": sent, "flow_table": st["flow_table"], "drops": st["drops"]}))
    assert sent >= FLOOD * 0.9
    assert st["drops"]["insert_limit"] > sent // 2
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c


def evict_tcp_flows(sw):
    """Delete every TCP entry of the flow table, as a full LRU would: what the flood may or may
    not hit, made certain. Returns how many were deleted."""
    n = 0
    with bpfsys.Map.open(f"{sw.pin_root}/bgs_flows") as m:
        for key in list(bpfsys.map_keys(m.fd, m.info.key_size)):
            if key[36] == 6:  # struct bgs_flow_key.proto
                n += bpfsys.map_delete(m.fd, key)
    return n


def test_pressure_second_chance_rescues_evicted_flows(topo, sw):
    """During the drain after a flip, with a flood running (shed by the insert limit), the
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
