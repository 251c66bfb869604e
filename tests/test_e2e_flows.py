"""End-to-end tests of the flow table's state (data plane layout 4): one entry per connection,
found from both directions, and a reply rewritten only when it is a live flow's.

Topology as in test_e2e.py (tests/lib/netns.py): client -> node (bgswitch on n-client) -> blue and
green backends. The client routes the backends' addresses through the node too, so it can
reach a backend directly. Client-side scenarios run in tests/lib/conns.py (in the client
namespace); captures use tcpdump (netns.Capture).

Run as root: /usr/bin/pytest -q tests/test_e2e_flows.py
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import netns  # noqa: E402
from lib.netns import CLIENT_IFACE, CLIENT_IP, NODE_IFACE, VIP, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53


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


def counters(sw):
    return sw.status()["counters"]


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# -- 1. a stale flow never rewrites a direct connection ------------------------------------

@pytest.mark.parametrize("family,close,sport_base", [
    (4, "rst", 41000),
    (4, "fin", 41100),
    (6, "rst", 41200),
    (6, "fin", 41300),
])
def test_reply_direct_connection_on_reused_port_after_vip_flow(topo, sw, family, close,
                                                                sport_base):
    """A client connects to the VIP from port p (a blue backend B answers), ends it (RST, or
    FIN both ways), then connects from p straight to B: B's SYN-ACK must leave as B's, not
    as the VIP's. 10 of 10 such direct connections succeed, each on the backend the VIP
    connection had; the egress program counts each superseded flow once."""
    vip = VIP if family == 4 else netns.VIP6
    if family == 6:
        sw.setup_service("web6", vip=vip)
    before = counters(sw)
    res = topo.conns("stale", "--vip", vip, "--port", VIP_PORT, "--count", 10, "--close",
                     close, "--sport-base", sport_base)["results"]
    d = delta(counters(sw), before)
    print(json.dumps({"results": res, "counters": d}))
    ok = [r for r in res if r["ok"]]
    assert len(ok) == 10, [r for r in res if not r["ok"]]
    assert all(r["vip"][0] == "blue" for r in res), res
    assert d.get("reply_superseded") == 10, d


# -- helpers: held connections, the node's MAC -----------------------------------------------

@pytest.fixture
def held(topo):
    """Connections held open for a test (netns.Held), each closed at its end."""
    opened = []

    def open_(addr=VIP, port=VIP_PORT, sport=0):
        h = netns.Held(topo, addr, port, sport)
        opened.append(h)
        return h
    try:
        yield open_
    finally:
        for h in opened:
            h.close()


def split_ident(ident):
    host, port = ident.rsplit(":", 1)
    return host.strip("[]"), int(port)


# -- 3. a spoofed or out-of-window RST does not end a flow ----------------------------------

def spoofed_rst_after_flip(topo, sw, h, offset):
    """Flip web to green, then send an RST on h's connection from the client side: its real
    4-tuple, sequence number snd_nxt + offset. Returns h's first answer (before the flip)."""
    first = h.req()
    assert first["ok"] and first["color"] == "blue", first
    sw("flip", "web")
    again = h.req()  # the latest sequence number
    assert again["ok"] and again["snd_nxt"] is not None, again
    seq = (again["snd_nxt"] + offset) & 0xFFFFFFFF
    topo.conns("spoof", "--src", CLIENT_IP, "--sport", again["sport"], "--dst", VIP,
               "--dport", VIP_PORT, "--flags", "R", "--seq", seq)
    return first


RST_OUT_OF_WINDOW = 0x80000000  # the backend drops it silently
RST_IN_WINDOW = 1000  # in the window, not exact: the backend answers with a challenge ACK


@pytest.mark.parametrize("quiet", [False, True], ids=["gc-soon", "quiet-past-closing"])
@pytest.mark.parametrize("offset", [RST_OUT_OF_WINDOW, RST_IN_WINDOW])
def test_rst_spoofed_on_draining_flow_keeps_backend(topo, sw, held, offset, quiet):
    """After a flip, a spoofed RST on a quiet long-lived blue connection (its real 4-tuple, a
    wrong sequence number), which the backend ignores (RFC 5961); then `gc`, within the
    closing timeout, or (quiet) after the connection stayed quiet past it (1 s here): the RST
    came from the client's side only, so its entry waits for the idle timeout, not the closing
    one, and `gc` keeps it even once the drain is over (the flow is not live). Either way the
    connection's next request is answered by the same blue backend, and the flow is live
    again (both sides sent after the RST)."""
    if quiet:
        sw("timeouts", "--closing", "1s")
    h = held()
    first = spoofed_rst_after_flip(topo, sw, h, offset)
    time.sleep(1.6 if quiet else 0.3)
    sw("gc")
    after = h.req()
    web = sw.service("web")
    print(json.dumps({"first": first, "after": after, "draining": web["draining"],
                      "live": {c: web["colors"][c]["live_flows"] for c in ("blue", "green")}}))
    assert after["ok"], after
    assert (after["color"], after["backend"]) == (first["color"], first["backend"]), after
    assert web["colors"]["blue"]["live_flows"] == 1, web


# -- 4. UDP: an entry expired during a drain keeps its backend --------------------------------

def test_udp_flow_silent_past_idle_timeout_keeps_backend_while_draining(topo, sw):
    """udp-idle 2s. A UDP flow (one source port) on blue; a flip to green while another blue
    UDP flow keeps the drain open; the first flow is silent 3 s (its entry expires; gc keeps
    it), then sends again: the second chance sends it to the same blue backend."""
    sw.setup_service("dns", port=UDP_PORT, proto="udp")
    sw("timeouts", "--udp-idle", "2s")
    udp = ("udp", "--addr", VIP, "--port", UDP_PORT, "--sport", 40001)
    first = topo.conns(*udp)["results"][0]
    assert first["ok"] and first["color"] == "blue", first
    run = topo.traffic("--vip", VIP, "--udp-port", UDP_PORT, "--duration", 15, "--udp-long", 1,
                       "--long-interval", 0.2)
    try:
        run.wait_ready()
        sw("flip", "dns")
        time.sleep(3.0)
        sw("gc")
        dns = sw.service("dns")
        again = topo.conns(*udp)["results"][0]
        fresh = topo.conns("udp", "--addr", VIP, "--port", UDP_PORT, "--sport", 40002)
    finally:
        res = run.finish(early=True, timeout=40)
    print(json.dumps({"first": first, "again": again, "second_chance": dns["second_chance"],
                      "reopen": dns["reopen"]}))
    assert dns["draining"], dns
    assert again["ok"], again
    assert (again["color"], again["backend"]) == (first["color"], first["backend"])
    assert fresh["results"][0]["color"] == "green", fresh  # a new flow goes to the new color
    for c in res["udp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == "blue", c


# -- 5. a client-side packet with a backend's source is never rewritten as the VIP -----------

@pytest.mark.parametrize("family,proto", [(4, "tcp"), (4, "udp"), (6, "tcp"), (6, "udp")])
def test_reply_from_client_side_with_backend_source_not_laundered(topo, sw, held, family,
                                                                  proto):
    """A client has a live flow on blue backend B. Frames sent from the client side, with B's
    address and port as source, toward that client, are forwarded by the node back out of
    its client-facing interface: they arrive as B's (not rewritten as the VIP), and the
    egress program counts them reply_wrong_dev. The flow itself keeps working."""
    vip, client = (VIP, CLIENT_IP) if family == 4 else (netns.VIP6, netns.CLIENT_IP6)
    vport = VIP_PORT if proto == "tcp" else UDP_PORT
    if family == 6 or proto == "udp":
        sw.setup_service("other", vip=vip, port=vport, proto=proto)
    if proto == "tcp":
        h = held(vip)
        first = h.req()
        sport = first["sport"]
    else:
        sport = 40011
        first = topo.conns("udp", "--addr", vip, "--port", vport, "--sport", sport)
        first = first["results"][0]
    assert first["ok"] and first["color"] == "blue", first
    baddr, bport = split_ident(first["backend"])
    cap = netns.Capture(topo, "client", CLIENT_IFACE,
                        f"{proto} and dst port {sport} and (src host {vip} or src host {baddr})",
                        direction="in")
    before = counters(sw)
    topo.conns("spoof", "--proto", proto, "--src", baddr, "--sport", bport, "--dst", client,
               "--dport", sport, "--flags", "PA", "--seq", 1, "--ack", 1, "--payload",
               "launder", "--l2", CLIENT_IFACE, "--dmac", topo.link_mac("node", NODE_IFACE),
               "--count", 5)
    lines = cap.stop(settle=0.5)
    d = delta(counters(sw), before)
    got = netns.endpoints(lines)
    print(json.dumps({"counters": d, "captured": lines}))
    assert (vip, client) not in got, lines
    assert got.count((baddr, client)) == 5, lines
    assert d.get("reply_wrong_dev") == 5 and "reply_nat" not in d, d
    if proto == "tcp":
        after = h.req()
    else:
        after = topo.conns("udp", "--addr", vip, "--port", vport, "--sport", sport)
        after = after["results"][0]
    assert after["ok"] and after["backend"] == first["backend"], after


# -- 6. one backend endpoint in several services ----------------------------------------------

def test_backend_shared_by_services_replies_as_each_vip(topo, sw, held):
    """Blue backend B (10.77.2.11:8081) serves web (the fixture's) and three more services on
    VIPs of their own, the most a backend endpoint may serve (BGS_ADDR_SVCS, 4): connections
    to each VIP, held open together, are all answered, each as its own VIP (a reply from any
    other address would be reset by the client). A fifth service for B is refused with one
    error line, and nothing of it is applied. Deleting one of the services and a gc leave the
    others' connections on B alone."""
    b = netns.backend_addrs("blue")[0]
    vips = [f"10.77.100.{i}" for i in (2, 3, 4, 5)]
    for i, vip in enumerate(vips[:3]):
        sw("service", "add", f"shared{i}", netns.hostport(vip, VIP_PORT))
        sw("backend", "add", f"shared{i}", "blue", netns.hostport(*b))
    conns_ = [held(vip) for vip in vips[:3]]
    for rnd in range(3):
        for vip, h in zip(vips[:3], conns_):
            r = h.req()
            assert r["ok"] and r["backend"] == netns.hostport(*b), (vip, rnd, r)
    for vip in vips[:3]:
        res = topo.probe(vip, VIP_PORT, count=5)["results"]
        assert [r["backend"] for r in res] == [netns.hostport(*b)] * 5, res
    # A fifth service for the same endpoint.
    sw("service", "add", "shared3", netns.hostport(vips[3], VIP_PORT))
    p = sw.run("backend", "add", "shared3", "blue", netns.hostport(*b))
    print(p.stderr)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "4 services" in p.stderr, p.stderr
    s3 = sw.service("shared3")
    assert s3["colors"]["blue"]["backends"] == [], s3
    # Another endpoint is not held to B's count.
    sw("backend", "add", "shared3", "blue", netns.hostport(*netns.backend_addrs("blue")[1]))
    # One service of B gone (its flows cut), then gc: the others' flows on B are untouched.
    sw("service", "del", "shared1", "--force")
    sw("gc")
    for vip, h in [(vips[0], conns_[0]), (vips[2], conns_[2])]:
        r = h.req()
        assert r["ok"] and r["backend"] == netns.hostport(*b), (vip, r)


def port_reused_across_services(sw, held):
    """Client port 41700 talks to blue backend B through reuse0's VIP, closes (FIN both
    ways), then talks to B from the same port through reuse1's VIP and stays. Returns the
    second connection (held) and the counters' change over its opening."""
    b = netns.backend_addrs("blue")[0]
    for i, vip in enumerate(("10.77.100.2", "10.77.100.3")):
        sw("service", "add", f"reuse{i}", netns.hostport(vip, VIP_PORT))
        sw("backend", "add", f"reuse{i}", "blue", netns.hostport(*b))
    sw("timeouts", "--closing", "1s")
    first = held("10.77.100.2", sport=41700)
    assert first.req()["ok"]
    first.close()
    time.sleep(0.2)  # the last ACK
    before = counters(sw)
    second = held("10.77.100.3", sport=41700)
    r = second.req()
    assert r["ok"] and r["sport"] == 41700 and r["backend"] == netns.hostport(*b), r
    return second, delta(counters(sw), before)


def test_backend_shared_port_reused_across_services_survives_gc(topo, sw, held):
    """The first flow's entry is collected (closing timeout 1 s, then gc): the second flow's
    replies still leave as its own VIP (on layout 3, gc deleted the reverse entry both flows
    shared, and the second connection's next reply left untranslated)."""
    second, d = port_reused_across_services(sw, held)
    time.sleep(1.5)
    sw("gc")
    r = second.req()
    print(json.dumps(d))
    assert r["ok"] and r["backend"] == netns.hostport(*netns.backend_addrs("blue")[0]), r


def test_backend_shared_port_reused_across_services_replies_at_once(topo, sw, held):
    """The second connection's SYN-ACK finds its own, live, flow (reuse1's) and is translated
    at once: no reply left untouched while it opens."""
    _, d = port_reused_across_services(sw, held)
    print(json.dumps(d))
    assert d.get("reply_superseded", 0) == 0 and d.get("reply_no_flow", 0) == 0, d


# -- 7. upgrade from layout 3 ----------------------------------------------------------------

def config_layout(sw, version=None):
    """bgs_config's layout_version (its first 4 bytes), set to version when given."""
    path = f"{sw.pin_root}/bgs_config"
    dump = json.loads(netns.run(["bpftool", "-j", "map", "dump", "pinned", path]).stdout)
    value = [int(x, 16) for x in dump[0]["value"]]
    if version is not None:
        value[0:4] = list(version.to_bytes(4, "little"))
        netns.run(["bpftool", "map", "update", "pinned", path, "key", "0", "0", "0", "0",
                   "value"] + [str(x) for x in value])
    return int.from_bytes(bytes(value[0:4]), "little")


def test_upgrade_replace_refuses_layout_3_state(topo, sw):
    """A state pinned by a layout-3 build (simulated: layout_version 3 written into
    bgs_config): `attach --replace` refuses with one error line and a non-zero exit that
    names the way out (`detach --purge` with the build that made it: this build refuses that
    too), and leaves the attached programs and the traffic alone."""
    xdp_before = sw.status()["interfaces"]
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 6, "--long", 4,
                       "--new-rate", 50)
    try:
        run.wait_ready()
        assert config_layout(sw, 3) == 3
        try:
            p = sw.run("attach", NODE_IFACE, "--replace")
            # This build cannot purge it either: only the build that made it can.
            purge = sw.run("detach", NODE_IFACE, "--purge")
        finally:
            config_layout(sw, 4)
        xdp_after = sw.status()["interfaces"]
    finally:
        res = run.finish(timeout=40)
    print(p.returncode, p.stderr, json.dumps(xdp_before), json.dumps(xdp_after))
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "layout 3, this build uses 4" in p.stderr, p.stderr
    assert "with the build that made it" in p.stderr, p.stderr  # the way out it names
    assert xdp_after == xdp_before
    assert purge.returncode != 0 and purge.stderr == p.stderr, purge.stderr
    assert res["tcp_new"]["failed"] == 0 and res["tcp_new"]["ok"] > 100, res["tcp_new"]
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [], c
