"""End-to-end tests of local clients (cgroup socket hooks, `bgswitch local`) and of backends on
the node's own address.

Topology (tests/lib/netns.py): client -> node (bgswitch on n-client) -> blue / green backends, plus
a "container" namespace on the node (add_container: 10.77.4.2, default route via the node). The
client namespace stands for a remote machine: it is never named with `local add`, so its sockets
must be left alone (its connections go through XDP and leave flow entries). Every test attaches
bgswitch with a pin root of its own and purges it afterwards, which also removes the hooks.

Run as root: /usr/bin/pytest -q tests/test_local.py   (BGSWITCH=path picks another binary)
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import netns  # noqa: E402
from lib.poll import wait_for  # noqa: E402
from lib.netns import NODE_CLIENT_IP, NODE_IFACE, VIP, VIP6, VIP_PORT  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

UDP_PORT = 53
NODE_PORTS = {"blue": 8181, "green": 8182}  # backends on the node's own address
LOCAL_ROLES = ("node", "ctr")  # the node itself, and a container on it
N = 40  # probes before and after a flip


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctr(topo):
    """The container namespace's path (removed with the topology)."""
    return topo.add_container()


@pytest.fixture(scope="module")
def node_backends(topo):
    """Blue and green servers on the node itself, on its client-facing address."""
    for color, port in NODE_PORTS.items():
        topo.spawn_server(color, NODE_CLIENT_IP, port, role="node")
    return {c: f"{NODE_CLIENT_IP}:{p}" for c, p in NODE_PORTS.items()}


@pytest.fixture
def sw(topo, ctr):
    """bgswitch attached to n-client, purged afterwards (hooks and all)."""
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    try:
        yield s
    finally:
        for args, rc, out, err in s.history:
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:400]}{err}")
        links = hook_links(s)
        problems = s.purge()
        assert problems == [], problems
        attached = attached_prog_ids()
        assert not (set(links.values()) & attached), "a hook outlived detach --purge"


@pytest.fixture
def local(sw, ctr):
    """sw serving local clients of the node's namespace and of the container's."""
    sw("local", "add")
    sw("local", "add", "--netns", ctr)
    return sw


# -- helpers ----------------------------------------------------------------------------------

def bpftool_json(*args):
    return json.loads(netns.run(["bpftool", "-j"] + list(args)).stdout)


def hook_links(sw):
    """{hook name: program id} of the links pinned under the pin root."""
    d = os.path.join(sw.pin_root, "links")
    if not os.path.isdir(d):
        return {}
    return {n: bpftool_json("link", "show", "pinned", os.path.join(d, n))["prog_id"]
            for n in sorted(os.listdir(d))}


def attached_prog_ids():
    """Program ids attached by any bpf link on the machine."""
    return {ln["prog_id"] for ln in bpftool_json("link", "show") if "prog_id" in ln}


def colors(topo, role, port=VIP_PORT, vip=VIP, n=N, udp=False):
    return topo.colors_of(vip, port, udp=udp, count=n, role=role)


def assert_clean_run(res, color, what, with_new=True):
    """No failed request; long-lived connections all on color; new ones made if with_new."""
    new = res["tcp_new"]
    print(f"{what}: {new['ok']} new connections answered {new['by_color']}, {new['failed']} "
          f"failed; long-lived {[(c['color'], c['ok']) for c in res['tcp_long']]}")
    assert new["failed"] == 0, f"{what}: {new['failed']} failed: {new['failures'][:10]}"
    assert (new["ok"] > 0) == with_new, new
    assert res["tcp_long"], res
    for c in res["tcp_long"]:
        assert c["failures"] == [] and c["changes"] == [] and c["color"] == color, (what, c)


def peer_of(topo, role, addr, port):
    """getpeername() of a TCP connection to addr:port made in role's namespace, as [ip, port]."""
    code = ("import socket,sys\n"
            "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
            "print(s.getpeername()[0], s.getpeername()[1])\n")
    out = topo.ns_run(role, [netns.PY, "-c", code, addr, str(port)]).stdout.split()
    return [out[0], int(out[1])]


# -- local clients through a flip -------------------------------------------------------------

def test_local_clients_switch_with_flip_under_load(topo, local):
    """The node and a container on it, under load, through a flip: 40 blue before, 40 green
    after, no failed request; their long-lived connections stay on blue and count as blue's
    live (local) flows until they close, then the drain finishes."""
    sw = local
    sw.setup_service("web")
    runs = {role: topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 30, "--new-rate",
                               40, "--long", 4, "--timeout", 2, role=role)
            for role in LOCAL_ROLES}
    for r in runs.values():
        r.wait_ready()
    for role in LOCAL_ROLES + ("client",):
        assert colors(topo, role) == ["blue"] * N, role
    time.sleep(2)  # load on blue
    blue = sw.service("web")["colors"]["blue"]
    # the 8 long-lived connections, and any new one open at this instant
    assert blue["local_flows"] >= 8 and blue["live_flows"] >= blue["local_flows"], blue

    sw("flip", "web")
    for role in LOCAL_ROLES + ("client",):
        assert colors(topo, role) == ["green"] * N, role
    time.sleep(1.0)  # the long-lived connections keep talking on blue
    svc = sw.service("web")
    assert svc["colors"]["blue"]["local_flows"] == 8, svc["colors"]["blue"]
    assert sw.run("drain", "web", "--timeout", "1s").returncode == 5  # they hold the drain

    for r in runs.values():
        r.close_long()
    assert wait_for(lambda: sw.live_flows("web", "blue") == 0, 10), sw.service("web")
    sw("drain", "web", "--timeout", "5s")
    for role, r in runs.items():
        assert_clean_run(r.finish(early=True, timeout=30), "blue", role)
    st = sw.status()
    assert st["flow_table"]["local"] == 0, st["flow_table"]


def test_local_flip_wait_drain_waits_for_local_sockets(topo, local):
    """flip --wait-drain counts local connections: it times out (exit 5) while they are open."""
    sw = local
    sw.setup_service("web")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 30, "--long", 3,
                       role="node")
    run.wait_ready()
    p = sw.run("flip", "web", "--no-check", "--wait-drain", "--timeout", "1s")
    assert p.returncode == 5, p
    assert sw.service("web")["colors"]["blue"]["local_flows"] == 3
    text = sw("status", "web")
    assert "local sockets among them: green 0, blue 3" in text, text
    run.close_long()
    assert wait_for(lambda: sw.service("web")["colors"]["blue"]["live_flows"] == 0, 10)
    assert_clean_run(run.finish(early=True, timeout=30), "blue", "node", with_new=False)


def test_local_guard_passes_on_local_traffic(topo, sw):
    """A flip guarded while only local clients connect: their connections are the new color's
    new flows, and no backend is called silent for replies the data plane never sees."""
    sw.setup_service("web")
    sw("local", "add")
    run = topo.traffic("--vip", VIP, "--port", VIP_PORT, "--duration", 30, "--new-rate", 30,
                       "--timeout", 2, role="node")
    run.wait_ready()
    p = sw.run("flip", "web", "--guard", "2s", timeout=60)
    assert p.returncode == 0 and "guard: web on green passed" in p.stdout, p
    green = sw.service("web")["colors"]["green"]["backends"]
    assert sum(b["local_new_flows"] for b in green) >= 20, green
    assert sum(b["new_flows"] for b in green) == 0, green  # none through XDP
    res = run.finish(early=True, timeout=30)
    assert res["tcp_new"]["failed"] == 0 and res["tcp_new"]["by_color"].get("green"), res


# -- UDP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", LOCAL_ROLES)
def test_local_udp_reply_shows_vip_as_peer(topo, local, role):
    """Unconnected UDP (sendto/recvfrom) sees the VIP as the reply's source; connected UDP and
    TCP go to the active color, and getpeername() gives the VIP."""
    sw = local
    sw.setup_service("echo", port=UDP_PORT, proto="udp")
    sw.setup_service("web")
    res = topo.bigudp(VIP, UDP_PORT, size=200, reply_size=200, count=5, role=role)["results"]
    for r in res:
        assert r["ok"] and r["color"] == "blue" and r["from"] == [VIP, UDP_PORT], r
    assert colors(topo, role, port=UDP_PORT, udp=True, n=10) == ["blue"] * 10
    assert peer_of(topo, role, VIP, VIP_PORT) == [VIP, VIP_PORT]
    sw("flip", "echo")
    assert colors(topo, role, port=UDP_PORT, udp=True, n=10) == ["green"] * 10
    res = topo.bigudp(VIP, UDP_PORT, size=200, reply_size=200, count=3, role=role)["results"]
    for r in res:
        assert r["ok"] and r["color"] == "green" and r["from"] == [VIP, UDP_PORT], r


def test_local_ipv6_connect_udp_and_peer(topo, sw):
    """IPv6 (connect6, sendmsg6, recvmsg6, getpeername6): the node's client through a flip."""
    sw.setup_service("web6", vip=VIP6)
    sw.setup_service("echo6", vip=VIP6, port=UDP_PORT, proto="udp")
    sw("local", "add")
    assert colors(topo, "node", vip=VIP6, n=20) == ["blue"] * 20
    assert peer_of(topo, "node", VIP6, VIP_PORT) == [VIP6, VIP_PORT]
    res = topo.bigudp(VIP6, UDP_PORT, size=200, reply_size=200, count=3, role="node")["results"]
    for r in res:
        assert r["ok"] and r["color"] == "blue" and r["from"][:2] == [VIP6, UDP_PORT], r
    sw("flip", "web6")
    assert colors(topo, "node", vip=VIP6, n=20) == ["green"] * 20


# -- backends on the node's own address -------------------------------------------------------

@pytest.mark.parametrize("where", ["node", "containers"])
def test_local_vip_on_node_address_remote_and_local(topo, local, node_backends, where):
    """VIP = the node's address on port 80, with blue and green on its own ports 8181 and 8182
    (node) or in the backend namespaces (containers): remote clients (XDP; from the node's own
    backends the reply leaves by TC from the local stack) and local ones (hooks) switch with
    the flip, 40 before and 40 after, with no failure under load."""
    sw = local
    sw("service", "add", "self", f"{NODE_CLIENT_IP}:80")
    for color in ("blue", "green"):
        eps = [node_backends[color]] if where == "node" else [
            netns.hostport(a, p) for a, p in topo.backends[color]]
        for ep in eps:
            sw("backend", "add", "self", color, ep)
    roles = ("client",) + LOCAL_ROLES
    runs = {role: topo.traffic("--vip", NODE_CLIENT_IP, "--port", 80, "--duration", 30,
                               "--new-rate", 30, "--long", 2, "--timeout", 2, role=role)
            for role in roles}
    for r in runs.values():
        r.wait_ready()
    for role in roles:
        assert colors(topo, role, vip=NODE_CLIENT_IP, port=80) == ["blue"] * N, role
    time.sleep(2)  # load on blue
    sw("flip", "self")
    for role in roles:
        assert colors(topo, role, vip=NODE_CLIENT_IP, port=80) == ["green"] * N, role
    time.sleep(2)  # load on green
    for role, r in runs.items():
        assert_clean_run(r.finish(early=True, timeout=30), "blue", role)
    assert sw.status()["counters"]["reply_nat"] > 0  # the remote replies were translated


@pytest.mark.parametrize("ep,ok", [
    (f"{NODE_CLIENT_IP}:8181", True), (f"{NODE_CLIENT_IP}:80", False)],
    ids=["other-port", "vip-itself"])
def test_local_backend_on_vip_address_needs_another_port(topo, sw, ep, ok):
    sw("service", "add", "self", f"{NODE_CLIENT_IP}:80")
    p = sw.run("backend", "add", "self", "blue", ep)
    assert (p.returncode == 0) == ok, p
    if not ok:
        assert p.stderr.count("\n") == 1 and "cannot be the VIP" in p.stderr, p.stderr


# -- scope ------------------------------------------------------------------------------------

def test_local_namespace_not_added_is_untouched(topo, sw, ctr):
    """Only the named namespaces are served: the container, not added, reaches no backend
    through the VIP (it is routed nowhere); the remote client goes through XDP (flow entries,
    no local socket); after `local del` the node is not served either."""
    sw.setup_service("web")
    sw("local", "add")
    assert colors(topo, "node", n=10) == ["blue"] * 10
    assert all(c.startswith("error:") for c in colors(topo, "ctr", n=5)), "ctr was served"
    assert colors(topo, "client", n=10) == ["blue"] * 10
    st = sw.status()
    assert st["flow_table"]["entries"] >= 10 and st["flow_table"]["local"] == 0, st
    sw("local", "del")
    assert all(c.startswith("error:") for c in colors(topo, "node", n=5)), "node still served"


# -- the command ------------------------------------------------------------------------------

def test_local_cli_add_list_del(topo, sw, ctr):
    assert sw("local", "list").strip() == "no local namespaces"
    sw("local", "add", "--netns", ctr)
    out = sw("local", "add", "--netns", ctr)
    assert "already served" in out, out
    sw("local", "add")
    lines = sw("local", "list").splitlines()
    assert len(lines) == 2 and any(ctr in ln for ln in lines) and \
        any("(this namespace)" in ln for ln in lines), lines
    sw("local", "del", "--netns", ctr)
    assert len(sw("local", "list").splitlines()) == 1


@pytest.mark.parametrize("args", [
    ("local", "del", "--netns", "/run/netns/PLACEHOLDER"),  # never added
    ("local", "add", "--netns", "/etc/hostname"),  # not a namespace
    ("local", "add", "--netns", "/nonexistent/ns"),
    ("local", "frob"),
    ("local", "list", "--netns", "/proc/self/ns/net"),
], ids=["del-not-added", "not-netns", "missing", "unknown", "list-netns"])
def test_local_cli_rejects_bad_input(topo, sw, ctr, args):
    args = tuple(a.replace("/run/netns/PLACEHOLDER", ctr) for a in args)
    before = sw("local", "list")
    p = sw.run(*args)
    assert p.returncode != 0 and p.stdout == "", p
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert sw("local", "list") == before


def test_local_hooks_kept_by_attach_replace(topo, local):
    """attach --replace moves every attached hook to the new programs (one link update each),
    so local clients are served throughout; detach --purge (the fixture) removes them."""
    sw = local
    sw.setup_service("web")
    before = hook_links(sw)
    assert len(before) == 9, before
    sw("attach", NODE_IFACE, "--replace")
    after = hook_links(sw)
    assert set(after) == set(before)
    for name, pid in after.items():
        pinned = bpftool_json("prog", "show", "pinned", f"{sw.pin_root}/progs/{name}")["id"]
        assert pid == pinned and pid != before[name], (name, before[name], pid, pinned)
    assert colors(topo, "node", n=10) == ["blue"] * 10


def test_local_attach_completes_a_state_made_before_the_local_maps(topo, sw):
    """A layout-4 state without the local clients' maps (made by an earlier build): commands
    refuse it until `attach` (plain) loads and pins what is missing."""
    for name in ("bgs_local_netns", "bgs_local_counts", "bgs_socks"):
        os.unlink(os.path.join(sw.pin_root, name))
    p = sw.run("local", "list")
    assert p.returncode != 0 and "bgs_local_netns" in p.stderr, p
    sw("attach", NODE_IFACE)
    assert sw("local", "list").strip() == "no local namespaces"
    sw.setup_service("web")
    sw("local", "add")
    assert colors(topo, "node", n=10) == ["blue"] * 10


def test_local_mounts_cgroup2_when_none_is_mounted(topo, sw):
    """In a mount namespace of its own with every cgroup2 mount removed, `local add` mounts the
    hierarchy, says so, and the hooks serve the node (the root cgroup is the machine's)."""
    made = [d for d in ("/run/bgswitch", "/run/bgswitch/cgroup2") if not os.path.exists(d)]
    sw.setup_service("web")
    script = ("set -e; for m in $(awk '$3 == \"cgroup2\" { print $2 }' /proc/self/mounts); do "
              "umount \"$m\"; done; exec \"$@\"")
    try:
        p = netns.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                       "sh"] + sw.argv("local", "add"), check=False, env=sw.env())
        assert p.returncode == 0, p
        assert "mounted it at /run/bgswitch/cgroup2" in p.stdout, p.stdout
        assert len(hook_links(sw)) == 9
        assert colors(topo, "node", n=10) == ["blue"] * 10
    finally:
        for d in reversed(made):
            if os.path.isdir(d):
                os.rmdir(d)
