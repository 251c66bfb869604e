"""End-to-end tests of the flow table's state (data plane layout 4): one entry per connection,
found from both directions, and a reply rewritten only when it is a live flow's.

Topology as in test_e2e.py (tests/netns.py): client -> node (bgswitch on n-client) -> blue and
green backends. The client routes the backends' addresses through the node too, so it can
reach a backend directly. Client-side scenarios run in tests/conns.py (in the client
namespace); captures use tcpdump (netns.Capture).

Run as root: /usr/bin/pytest -q tests/test_e2e_flows.py
"""

import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402
from netns import CLIENT_IFACE, CLIENT_IP, NODE_IFACE, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53
CONNS = os.path.join(netns.HERE, "conns.py")


@pytest.fixture
def sw(topo):
    """bgswitch attached to the node's client-facing veth with the web service (TCP, both
    colors), purged afterwards; receivers saw no bad checksum."""
    csum_before = topo.csum_errors()
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    s.setup_service("web")
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:  # shown by pytest when the test failed
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:400]}{err}")
        assert s.purge() == []
    assert topo.csum_errors() == csum_before, "packets dropped for bad checksums"


def conns(topo, *args, timeout=60):
    """tests/conns.py in the client namespace: its JSON."""
    p = topo.ns_run("client", [netns.PY, CONNS] + [str(a) for a in args], timeout=timeout)
    return json.loads(p.stdout)


def counters(sw):
    return sw.status()["counters"]


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# -- 1. a stale flow never rewrites a direct connection ------------------------------------

@pytest.mark.parametrize("close,sport_base,counter", [
    ("rst", 41000, "reply_superseded"),
    ("fin", 41100, "reply_superseded"),
])
def test_reply_direct_connection_on_reused_port_after_vip_flow(topo, sw, close, sport_base,
                                                                counter):
    """A client connects to the VIP from port p (a blue backend B answers), ends it (RST, or
    FIN both ways), then connects from p straight to B: B's SYN-ACK must leave as B's, not
    as the VIP's. 10 of 10 such direct connections succeed, each on the backend the VIP
    connection had; the egress program counts each superseded flow once."""
    before = counters(sw)
    res = conns(topo, "stale", "--vip", VIP, "--port", VIP_PORT, "--count", 10, "--close",
                close, "--sport-base", sport_base)["results"]
    d = delta(counters(sw), before)
    print(json.dumps({"results": res, "counters": d}))
    ok = [r for r in res if r["ok"]]
    assert len(ok) == 10, [r for r in res if not r["ok"]]
    assert all(r["vip"][0] == "blue" for r in res), res
    assert d.get(counter) == 10, d
