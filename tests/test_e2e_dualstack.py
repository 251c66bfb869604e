"""End-to-end tests over both address families: IPv6 services, UDP draining, path-MTU
discovery through the VIP, fragments, and the refusal to mix families in one service.

Topology (tests/lib/netns.py, dual-stack): client -> node (bgswitch on n-client) -> blue / green
backends; each backend serves its IPv4 and its IPv6 address. One topology serves the whole
module; every test attaches bgswitch afresh with a pin root of its own and purges it afterwards,
and the receivers' checksum-error counters (TCP, UDP, UDP6, ICMP, ICMP6) must not move.

Run as root: /usr/bin/pytest -q tests/test_e2e_dualstack.py   (BGSWITCH=path picks another
binary)
"""

import os
import re
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import netns  # noqa: E402
from lib.poll import wait_for  # noqa: E402
from lib.netns import (CLIENT_IP, CLIENT_IP6, COLOR_NET, COLOR_NET6, NODE_IFACE, VIP,  # noqa: E402
                   VIP6, VIP_PORT, hostport)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53
COLORS = ("blue", "green")
FAMILIES = {4: VIP, 6: VIP6}


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def sw(topo, request):
    """bgswitch attached to the node's client-facing veth, purged afterwards; checksums
    verified by every receiver must all have been right."""
    mode = getattr(request, "param", None)
    csum_before = topo.csum_errors()
    s = topo.bgswitch()
    try:
        s("attach", NODE_IFACE, *(["--mode", mode] if mode else []))
        yield s
    finally:
        for args, rc, out, err in s.history:  # shown by pytest when the test failed
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:400]}{err}")
        problems = s.purge()
        link = topo.ip("node", "-d", "link", "show", NODE_IFACE).stdout
        assert "prog/xdp" not in link, f"XDP left on {NODE_IFACE}:\n{link}"
        tc = netns.run(["tc", "-n", topo.ns["node"], "filter", "show", "dev", NODE_IFACE,
                        "egress"], check=False).stdout
        assert "bgs" not in tc, f"TC filter left on {NODE_IFACE}:\n{tc}"
        assert problems == [], problems
    assert topo.csum_errors() == csum_before, "packets dropped for bad checksums"


# -- helpers ----------------------------------------------------------------------------------

def timed(fn, *args):
    t0 = time.time()
    out = fn(*args)
    return t0, time.time(), out


def counters(sw):
    return sw.status()["counters"]


def drops(sw):
    return {k: v for k, v in sw.status()["drops"].items() if v}


def backend_names(topo, color, family):
    table = topo.backends6 if family == 6 else topo.backends
    return {hostport(a, p) for a, p in table[color]}


def assert_no_failures(part, what):
    assert part["failed"] == 0, f"{what}: {part['failed']} failed: {part['failures'][:10]}"


def assert_long_steady(conns, color, min_requests, backends=None):
    """Each long-lived connection or flow answered by one backend of color, every time."""
    assert conns
    for c in conns:
        assert c["failures"] == [], c
        assert c["changes"] == [], c
        assert c["color"] == color, c
        assert c["ok"] >= min_requests, c
        if backends is not None:
            assert c["backend"] in backends, c


def assert_split_at_flip(part, flip_start, flip_end, old="blue", new="green"):
    """All one-shot connections that began after the flip returned got the new color, and
    none that ended before the flip began got it."""
    times = part["times"]
    assert times.get(old) and times.get(new), f"both colors expected: {part['by_color']}"
    assert times[old]["last_start"] <= flip_end, (
        f"a connection started {times[old]['last_start'] - flip_end:.3f}s after the flip "
        f"returned still reached {old}")
    assert times[new]["first_end"] >= flip_start, (
        f"a connection reached {new} {flip_start - times[new]['first_end']:.3f}s before the "
        f"flip began")


def snapshot(s):
    """The configuration as status --json and service list show it, without counters."""
    st = s.status()
    svcs = []
    for svc in st["services"]:
        cols = {c: [(b["address"], b["port"], b["slot"], b["state"])
                    for b in svc["colors"][c]["backends"]] for c in COLORS}
        svcs.append((svc["name"], svc["id"], svc["vip"], svc["port"], svc["proto"],
                     svc["active"], svc["previous"], svc["generation"], cols))
    return {"interfaces": st["interfaces"], "services": svcs, "list": s("service", "list")}


def assert_cli_error(s, *args):
    before = snapshot(s)
    p = s.run(*args)
    after = snapshot(s)
    cmd = "bgswitch " + " ".join(map(str, args))
    assert p.returncode != 0, f"{cmd}: exit 0\n{p.stdout}{p.stderr}"
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"{cmd}: stderr must be one line: {p.stderr!r}"
    assert p.stdout == "", f"{cmd}: stdout {p.stdout!r}"
    assert after == before, f"{cmd} changed the state"
    return lines[0]


# -- IPv6: flip under load ---------------------------------------------------------------------

@pytest.mark.parametrize("sw", ["native", "generic"], indirect=True)
def test_ipv6_flip_under_load_zero_failures(topo, sw):
    sw.setup_service("web6", vip=VIP6)
    svc = sw.service("web6")
    assert (svc["vip"], svc["port"], svc["proto"], svc["active"]) == (VIP6, VIP_PORT, "tcp",
                                                                      "blue"), svc
    blue6, green6 = backend_names(topo, "blue", 6), backend_names(topo, "green", 6)
    assert {hostport(b["address"], b["port"]) for b in svc["colors"]["blue"]["backends"]} == blue6
    assert topo.colors_of(VIP6, VIP_PORT, count=5) == ["blue"] * 5

    n = 6
    run = topo.traffic("--vip", VIP6, "--port", VIP_PORT, "--duration", 6, "--new-rate", 120,
                       "--long", n, "--long-close-spread", 0.1, "--timeout", 2)
    run.wait_ready()
    assert wait_for(lambda: sw.live_flows("web6", "blue") >= n, 3), sw.service("web6")
    time.sleep(1.5)
    flip_start, flip_end, _ = timed(sw, "flip", "web6", "green")
    time.sleep(1.0)  # long-lived connections keep talking on blue; new ones go green
    svc = sw.service("web6")
    assert svc["active"] == "green" and svc["colors"]["blue"]["live_flows"] == n, svc

    run.close_long()
    seen = []
    assert wait_for(lambda: seen.append(sw.live_flows("web6", "blue")) or seen[-1] == 0, 8), seen
    assert seen == sorted(seen, reverse=True), f"blue's live flows must only fall: {seen}"
    res = run.finish(timeout=30)

    new = res["tcp_new"]
    assert_no_failures(new, "new IPv6 connections")
    assert new["ok"] >= 500, new["attempts"]
    assert new["slow"] == 0, f"{new['slow']} connections took over 0.5 s (a lost SYN?)"
    assert set(new["by_backend"]) <= blue6 | green6, new["by_backend"]
    assert_split_at_flip(new, flip_start, flip_end)
    assert_long_steady(res["tcp_long"], "blue", min_requests=20, backends=blue6)
    for c in res["tcp_long"]:
        assert c["first_ok_at"] < flip_start and c["last_ok_at"] > flip_end + 0.5, c

    # Every connection closed: nothing is live on either color, nor in the table.
    assert wait_for(lambda: sw.status()["flow_table"]["live"] == 0, 5), sw.status()["flow_table"]
    svc = sw.service("web6")
    for color in COLORS:
        assert svc["colors"][color]["live_flows"] == 0, svc
        for be in svc["colors"][color]["backends"]:
            assert be["live_flows"] == 0, be

    gen = svc["generation"]
    sw("rollback", "web6")
    svc = sw.service("web6")
    assert (svc["active"], svc["previous"]) == ("blue", "green") and svc["generation"] > gen, svc
    res = topo.probe(VIP6, VIP_PORT, count=10)["results"]
    assert [r["color"] for r in res] == ["blue"] * 10, res
    assert {r["backend"] for r in res} <= blue6
    assert drops(sw) == {}


# -- UDP: draining after a flip, idle timeout, gc ----------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_udp_flows_drain_after_flip_and_gc_collects(topo, sw, family):
    vip = FAMILIES[family]
    assert "udp-idle 2s" in sw("timeouts", "--udp-idle", "2s")
    assert sw.status()["timeouts"]["udp_idle_s"] == 2
    sw.setup_service("echo", vip=vip, port=UDP_PORT, proto="udp")
    blue = backend_names(topo, "blue", family)

    run = topo.traffic("--vip", vip, "--udp-port", UDP_PORT, "--duration", 6.5, "--udp-long", 2,
                       "--udp-new-rate", 20, "--long-interval", 0.1,
                       "--udp-sport-range", "20000-29999", "--timeout", 1)
    run.wait_ready()
    time.sleep(1.0)
    flip_start, flip_end, _ = timed(sw, "flip", "echo")
    time.sleep(1.0)
    svc = sw.service("echo")
    assert svc["active"] == "green", svc
    assert svc["colors"]["blue"]["live_flows"] >= 2, svc  # the pinned flows, still talking
    assert svc["colors"]["green"]["live_flows"] >= 1, svc  # new flows since the flip

    run.close_long()  # the pinned flows stop; new flows go on, on green
    stopped = time.monotonic()
    seen = []
    assert wait_for(lambda: seen.append(sw.live_flows("echo", "blue")) or seen[-1] == 0, 6), seen
    fell_after = time.monotonic() - stopped
    svc = sw.service("echo")
    assert svc["colors"]["green"]["live_flows"] >= 1, f"green idle too soon: {svc}"
    res = run.finish(timeout=30)

    assert fell_after > 1.0, f"blue fell to 0 {fell_after:.2f}s after the flows stopped"
    assert_no_failures(res["udp_new"], "new UDP flows")
    assert_split_at_flip(res["udp_new"], flip_start, flip_end)
    assert_long_steady(res["udp_long"], "blue", min_requests=15, backends=blue)
    for c in res["udp_long"]:
        assert c["first_ok_at"] < flip_start and c["last_ok_at"] > flip_end + 0.5, c

    # All idle now (2 s): no live flow, but the entries stay until gc collects them.
    assert wait_for(lambda: sw.status()["flow_table"]["live"] == 0, 5), sw.status()["flow_table"]
    before = sw.status()["flow_table"]["entries"]
    assert before >= 2 + res["udp_new"]["ok"] // 2, (before, res["udp_new"]["ok"])
    sw("gc")
    after = sw.status()["flow_table"]
    assert after["entries"] < before and after["entries"] == 0, (before, after)
    # Collected flows leave the service working: a new flow goes to green.
    assert topo.colors_of(vip, UDP_PORT, udp=True, count=3) == ["green"] * 3
    assert drops(sw) == {}


# -- path-MTU discovery through the VIP -------------------------------------------------------

def _bottleneck(topo, family, mtu):
    """argv (for topo.ip on the node) that limit, and that restore, the route to blue."""
    _, node_if, _, _ = COLOR_NET["blue"]
    if family == 4:
        base = COLOR_NET["blue"][0]
        route = [f"{base}.0/24", "dev", node_if, "proto", "kernel", "scope", "link", "src",
                 f"{base}.1"]
        return (["route", "replace"] + route + ["mtu", str(mtu)], ["route", "replace"] + route)
    route = [f"{COLOR_NET6['blue']}::/64", "dev", node_if, "proto", "kernel", "metric", "256"]
    return (["-6", "route", "replace"] + route + ["mtu", str(mtu)],
            ["-6", "route", "replace"] + route)


@pytest.mark.parametrize("family,mtu", [(4, 1000), (6, 1280)], ids=["ipv4", "ipv6"])
def test_pmtu_discovery_across_the_switch(topo, sw, family, mtu):
    """A bottleneck the client cannot see (the node's route to blue) makes the node send
    "fragmentation needed" / "packet too big" quoting client -> backend; the egress program must
    make it quote client -> VIP, or the client's stack drops it and the upload stalls."""
    vip = FAMILIES[family]
    fam = f"-{family}"
    sw.setup_service("web", vip=vip, colors=("blue",))
    blue = backend_names(topo, "blue", family)
    cached = topo.ns_run("client", ["ip", fam, "route", "get", vip]).stdout
    assert " mtu " not in cached, f"a path MTU is cached already: {cached}"

    limit, restore = _bottleneck(topo, family, mtu)
    ptb = "icmp[0] == 3 and icmp[1] == 4" if family == 4 else "icmp6 and ip6[40] == 2"
    topo.ip("node", *limit)
    cap = None
    try:
        cap = netns.Capture(topo, "client", netns.CLIENT_IFACE, ptb, count=50, verbose=True)
        up = topo.upload(vip, VIP_PORT, 200000, timeout=10)
        st = sw.status()
        cached = topo.ns_run("client", ["ip", fam, "route", "get", vip]).stdout
    finally:
        lines = cap.stop() if cap else []
        topo.ip("node", *restore)
        topo.ns_run("client", ["ip", fam, "route", "flush", "cache"], check=False)
    assert f"mtu {mtu}" not in topo.ip("node", fam, "route", "show", "dev", "n-blue").stdout

    capture = "\n".join(lines[:12])
    assert up["ok"] and up["acked"] == 200000 and up["digest_ok"], f"{up}\n{capture}"
    assert up["color"] == "blue" and up["backend"] in blue, up
    assert st["counters"]["icmp_out"] >= 1, (st["counters"], capture)
    assert st["counters"]["icmp_no_flow"] == 0, st["counters"]
    # The client's stack took the translated error: it caches the bottleneck for the VIP and
    # its connection's segments shrank to fit.
    assert f"mtu {mtu}" in cached, cached
    assert up["mss"] <= mtu - (40 if family == 4 else 60), up
    # On the wire: the errors the client got quote its packets to the VIP, not the backend.
    if family == 4:
        quoted = [ln for ln in lines if re.search(r"> \S+: Flags", ln)]
        assert quoted and all(f" > {VIP}.{VIP_PORT}: " in ln for ln in quoted), capture
    else:
        sums = [ln for ln in lines if "packet too big" in ln]
        assert sums and all("icmp6 sum ok" in ln for ln in sums), capture
    assert drops(sw) == {}


# -- address families do not mix -------------------------------------------------------------

def test_cli_family_mix_refused(topo, sw):
    sw.setup_service("web6", vip=VIP6)
    sw.setup_service("web", vip=VIP)
    for color in COLORS:
        v4, port = topo.backends[color][0]
        v6, _ = topo.backends6[color][0]
        assert_cli_error(sw, "backend", "add", "web6", color, f"{v4}:{port}")
        assert_cli_error(sw, "backend", "add", "web", color, f"[{v6}]:{port}")
    assert_cli_error(sw, "backend", "add", "web6", "blue", "10.77.2.13:8081")
    # Both services still steer as configured.
    assert topo.colors_of(VIP6, VIP_PORT, count=3) == ["blue"] * 3
    assert topo.colors_of(VIP, VIP_PORT, count=3) == ["blue"] * 3
    assert drops(sw) == {}


# -- fragments --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_fragments_udp_datagram_whole_to_one_backend(topo, sw, family):
    """A 4000-byte datagram leaves the client in three fragments: the first (ports) is steered,
    the later ones follow it to the same backend, which gets the datagram whole; its 4000-byte
    reply comes back in three fragments, every one with the VIP as source."""
    vip = FAMILIES[family]
    client = CLIENT_IP6 if family == 6 else CLIENT_IP
    sw.setup_service("echo", vip=vip, port=UDP_PORT, proto="udp")
    blue = backend_names(topo, "blue", family)
    count = 3
    frags = "ip6 and ip6[6] == 44" if family == 6 else "ip and (ip[6:2] & 0x3fff) != 0"
    cap = netns.Capture(topo, "client", netns.CLIENT_IFACE, frags, count=100)
    try:
        res = topo.bigudp(vip, UDP_PORT, size=4000, reply_size=4000, count=count)["results"]
    finally:
        lines = cap.stop()

    capture = "\n".join(lines[:20])
    for r in res:
        assert r["ok"], f"{r}\n{capture}"
        assert r["server_len"] == 4000 and r["digest_ok"], r  # arrived whole, reassembled
        assert r["reply_len"] == 4000 and r["from"] == [vip, UDP_PORT], r
        assert r["color"] == "blue" and r["backend"] in blue, r
    assert len({r["backend"] for r in res}) == 1, res  # one socket: one flow, one backend

    c = counters(sw)
    # Each datagram: its first fragment steered in, the reply's first fragment tracked out;
    # two later fragments each way, of which ingress counts the client's.
    assert (c["frag_first"], c["frag_later"]) == (2 * count, 2 * count), c
    assert c["flow_new"] == 1, c
    pkts = netns.endpoints(lines)
    sent = [p for p in pkts if p[0] == client]
    got = [p for p in pkts if p[1] == client]
    assert len(sent) == 3 * count and all(d == vip for _, d in sent), capture
    assert len(got) == 3 * count and all(s == vip for s, _ in got), capture
    assert drops(sw) == {}


NODE_UDP_PORT = 5300  # a port of the VIP address that no service uses


@pytest.mark.parametrize("family", [4, 6])
def test_fragments_to_vip_address_outside_services_pass(topo, sw, family):
    """The VIP address is also one of the node's own (on lo), and a TCP service listens on it.
    Fragmented traffic to that address that is no service's passes untouched: a 3000-byte
    ping (three fragments each way) is answered, and 4000-byte datagrams to another UDP port
    reach a server on the node whole, its replies too. Each first fragment leaves a pass
    marker, so the two later fragments of each datagram pass (frag_pass), and none is
    dropped as frag_miss."""
    vip = FAMILIES[family]
    sw.setup_service("web", vip=vip, port=VIP_PORT, proto="tcp")
    count = 3
    plen = 128 if family == 6 else 32
    topo.ip("node", "addr", "add", f"{vip}/{plen}", "dev", "lo")
    try:
        srv = topo.spawn_server("node", vip, NODE_UDP_PORT)
        try:
            pings = topo.ping(vip, size=3000, count=count)["results"]
            big = topo.bigudp(vip, NODE_UDP_PORT, size=4000, reply_size=4000,
                              count=count)["results"]
        finally:
            topo.end(srv)
    finally:
        topo.ip("node", "addr", "del", f"{vip}/{plen}", "dev", "lo")

    for r in pings:
        assert r["ok"] and r["len"] == 3000 and r["from"] == vip, pings
    for r in big:
        assert r["ok"] and r["server_len"] == 4000 and r["digest_ok"], big
        assert r["color"] == "node" and r["from"] == [vip, NODE_UDP_PORT], big
    c = counters(sw)
    assert c["frag_pass"] == 2 * count * 2, c  # two later fragments per request, both kinds
    assert (c["frag_first"], c["frag_later"], c["flow_new"]) == (0, 0, 0), c
    assert drops(sw) == {}
