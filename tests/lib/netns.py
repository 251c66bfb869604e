#!/usr/bin/python3
"""Network-namespace topology for bgswitch's end-to-end tests and demo.

Four namespaces, named PREFIX-client, PREFIX-node, PREFIX-blue and PREFIX-green, where PREFIX is
unique per run ("bgse" and 4 random hex digits unless given):

    client                 node                                   backends
    c-node 10.77.1.2 ----- n-client 10.77.1.1   n-blue 10.77.2.1 -----  b-node: blue
    fd77:77:77:1::2        fd77:77:77:1::1      fd77:77:77:2::1         10.77.2.11, .12 :8081
                           (bgswitch attaches                           fd77:77:77:2::11, ::12
                            here: XDP + TC)     n-green 10.77.3.1 ----  g-node: green
                                                fd77:77:77:3::1         10.77.3.11, .12 :8082
                                                                        fd77:77:77:3::11, ::12

The topology is dual-stack, IPv4 in 10.77.0.0/16 and IPv6 in the ULA prefix fd77:77:77::/48
(one /64 per link). The VIPs (10.77.100.1 and fd77:77:77:100::1) live nowhere: only bgswitch's
XDP program on n-client turns them into a backend address. The client routes 10.77.0.0/16 and
fd77:77:77::/48 (VIPs and backends) via the node; the backends default-route via the node (both
families); the node forwards both. The node has no route to a VIP, so without bgswitch a
packet for a VIP gets an ICMP (ICMPv6) "unreachable" back (not rate-limited: the node's
icmp_ratelimit and icmp/ratelimit are 0) and a connect() fails at once (the detach test relies
on that).

Backend i of a color is one server process listening on both its addresses (IPv4 and IPv6),
TCP and UDP, on the color's port; it answers as "<color> <addr>:<port>" for IPv4 and
"<color> [<addr>]:<port>" for IPv6.

IPv6 without flakes: duplicate address detection is off in every namespace (accept_dad=0, and
every address is added `nodad`), so an address is usable the moment it is added instead of
"tentative" for a second or two; router advertisements are ignored (accept_ra=0); and _build()
resolves every neighbour a test packet will need (client <-> node, node <-> each backend address,
both families) before it returns, so the first packets of a test never wait in a neighbour queue.

Everything uses addresses of 10.77.0.0/16 and fd77:77:77::/48, only inside these namespaces;
every process is started by this module, recorded, and ended by its PID; teardown
deletes the namespaces and bgswitch pin roots this module created, and nothing else.

Checksums. Two settings make the topology behave like real NICs, and make checksum mistakes
visible instead of hiding them:
  * the client's veth (c-node) gets `ethtool -K c-node tx off`. With offload on, the client's
    segments cross the veth as CHECKSUM_PARTIAL: the checksum field holds only the pseudo-header
    sum, which XDP (it cannot see ip_summed) then "updates" as if it were a full checksum, in
    the wrong direction, and it must not touch it for the port at all. A real NIC receives full
    checksums from the wire, which "tx off" reproduces.
  * strict_csum (default on): every receiver verifies (`rx off` on c-node, b-node, g-node) and the
    node finishes any partial checksum itself before sending (`tx off` on n-client, n-blue,
    n-green), as a NIC's offload would, so that what XDP and TC wrote is what gets checked.
    Without it a veth hands CHECKSUM_PARTIAL packets along unverified end to end.
Verified on kernel 6.18 with `/usr/bin/python3 tests/lib/netns.py csum-check` (see csum_check()):
with the client's tx on and strict_csum off, every TCP and UDP request through the VIP still
succeeds, in generic and native mode, because nobody checks the (wrong) checksums; with the
client's tx on and strict_csum on, every one fails and the backend counts TcpInCsumErrors and
UdpInCsumErrors; with tx off, all succeed with zero checksum errors on both sides, strict or not.
So "tx off" is needed for correct packets, and strict_csum is what proves them correct; the
tests check the InCsumErrors counters (csum_errors()) after traffic. The same ethtool features
(the veth's NETIF_F_HW_CSUM and RXCSUM) cover IPv6, and csum_errors() also reads the IPv6 and
ICMP counters: TcpInCsumErrors (TCP's counter is shared by both families), UdpInCsumErrors,
Udp6InCsumErrors, IcmpInCsumErrors and Icmp6InCsumErrors (ICMP errors translated by the egress
program are checked by the client's stack).

Also usable from the shell (the demo does):
    netns.py up --prefix bgsdemo --state FILE     build, start servers, write state, exit
    netns.py down --state FILE                    stop recorded PIDs, delete recorded namespaces
    netns.py down --prefix bgsdemo                same, for a state file that was lost
"""

import argparse
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"  # Debian's python3; never the pyenv one on PATH
BGSWITCH = os.environ.get("BGSWITCH", os.path.join(REPO, ".output", "bgswitch"))
BPFFS = "/sys/fs/bpf"
CONNS = os.path.join(HERE, "conns.py")

ROLES = ("client", "node", "blue", "green")
NET = "10.77.0.0/16"
CLIENT_IP = "10.77.1.2"
NODE_CLIENT_IP = "10.77.1.1"
NODE_IFACE = "n-client"  # where bgswitch attaches
CLIENT_IFACE = "c-node"
VIP = "10.77.100.1"
VIP_PORT = 80
COLOR_NET = {"blue": ("10.77.2", "n-blue", "b-node", 8081),
             "green": ("10.77.3", "n-green", "g-node", 8082)}
# IPv6: the same plan in the ULA prefix fd77:77:77::/48 (one /64 per link).
NET6 = "fd77:77:77::/48"
CLIENT_IP6 = "fd77:77:77:1::2"
NODE_CLIENT_IP6 = "fd77:77:77:1::1"
VIP6 = "fd77:77:77:100::1"
COLOR_NET6 = {"blue": "fd77:77:77:2", "green": "fd77:77:77:3"}  # link N::/64, node N::1
# A container on the node (add_container): a local client behind a veth, default route via the
# node. (base, node side, container side)
CONTAINER_NET = ("10.77.4", "n-ctr", "c-ctr")


def backend_addrs(color, per_color=2):
    """[(ip, port)] of the IPv4 backends of a color."""
    base, _, _, port = COLOR_NET[color]
    return [(f"{base}.{11 + i}", port) for i in range(per_color)]


def backend_addrs6(color, per_color=2):
    """[(ip, port)] of the IPv6 backends of a color (the same servers as backend_addrs)."""
    port = COLOR_NET[color][3]
    return [(f"{COLOR_NET6[color]}::{11 + i}", port) for i in range(per_color)]


def hostport(addr, port):
    """"a:p" for IPv4, "[a]:p" for IPv6: as bgswitch takes it and the servers name themselves."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class CmdError(RuntimeError):
    pass


def run(argv, check=True, timeout=30, input=None, env=None):
    """Run argv, return CompletedProcess (text). check: raise CmdError on non-zero exit.
    env: variables added to (or, with None values, removed from) this process's environment."""
    full = None
    if env:
        full = dict(os.environ)
        for k, v in env.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = str(v)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL, env=full)
    if check and p.returncode != 0:
        raise CmdError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def read_line(proc, timeout):
    """One line from proc.stdout within timeout seconds, or None (stdout is a text pipe)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([proc.stdout], [], [], left)
        if r:
            line = proc.stdout.readline()
            return line if line else None


def proc_starttime(pid):
    """Start time (clock ticks since boot) of a process, or None: with the PID, an identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def end_pid(pid, starttime, timeout=5.0):
    """SIGTERM, then SIGKILL, the process with this PID if it is still the one recorded."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc_starttime(pid) != starttime:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc_starttime(pid) != starttime:
                return
            try:  # reap it if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            time.sleep(0.05)


class Topology:
    """The four namespaces, their links and the backend servers. Use as a context manager:
    teardown runs on every exit, failures included.
    """

    def __init__(self, prefix=None, per_color=2, client_tx_csum=False, strict_csum=True,
                 servers=True):
        self.prefix = prefix or "bgse" + secrets.token_hex(2)
        if not re.fullmatch(r"[a-z][a-z0-9]{2,9}", self.prefix):
            raise ValueError(f"bad prefix {self.prefix!r}")
        self.ns = {role: f"{self.prefix}-{role}" for role in ROLES}
        self.per_color = per_color
        self.client_tx_csum = client_tx_csum
        self.strict_csum = strict_csum
        self.want_servers = servers
        self.created_ns = []
        self.procs = []  # Popen objects we started and have not ended
        self.switches = []  # Bgswitch handles whose pin roots we own
        self.backends = {c: backend_addrs(c, per_color) for c in COLOR_NET}
        self.backends6 = {c: backend_addrs6(c, per_color) for c in COLOR_NET}
        self._pin_seq = 0
        # bgswitch's audit trail for this run (BGSWITCH_AUDIT_LOG), not the system's.
        self.audit_dir = f"/tmp/{self.prefix}-audit"
        self.audit_log = os.path.join(self.audit_dir, "audit.log")

    # -- commands in a namespace ------------------------------------------------------------
    def nsargv(self, role, argv):
        """argv run inside a namespace with nsenter (exec, so the PID is the command's)."""
        return ["nsenter", f"--net=/run/netns/{self.ns[role]}", "--"] + list(argv)

    def ns_run(self, role, argv, **kw):
        return run(self.nsargv(role, argv), **kw)

    def ip(self, role, *args, **kw):
        return run(["ip", "-n", self.ns[role]] + list(args), **kw)

    def link_mac(self, role, dev):
        """The MAC address of an interface of a namespace."""
        return json.loads(self.ip(role, "-j", "link", "show", dev).stdout)[0]["address"]

    def sysctl(self, role, key, value):
        path = "/proc/sys/" + key.replace(".", "/")
        self.ns_run(role, ["sh", "-c", f"echo {value} > {path}"])

    # -- build / teardown -------------------------------------------------------------------
    def up(self):
        try:
            self._build()
            if self.want_servers:
                self.start_servers()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self):
        existing = set(run(["ip", "netns", "list"]).stdout.split())
        clash = [n for n in self.ns.values() if n in existing]
        if clash:
            raise CmdError(f"namespaces already exist: {clash}")
        for role in ROLES:
            run(["ip", "netns", "add", self.ns[role]])
            self.created_ns.append(self.ns[role])
            # Before any link exists, so that every interface (its link-local address too)
            # inherits it: no DAD (addresses usable at once), no router advertisements.
            for scope in ("all", "default"):
                self.sysctl(role, f"net.ipv6.conf.{scope}.disable_ipv6", 0)
                self.sysctl(role, f"net.ipv6.conf.{scope}.accept_dad", 0)
                self.sysctl(role, f"net.ipv6.conf.{scope}.accept_ra", 0)
            self.ip(role, "link", "set", "lo", "up")

        self.ip("node", "link", "add", NODE_IFACE, "type", "veth", "peer", "name", CLIENT_IFACE,
                "netns", self.ns["client"])
        self.ip("node", "addr", "add", f"{NODE_CLIENT_IP}/24", "dev", NODE_IFACE)
        self.ip("client", "addr", "add", f"{CLIENT_IP}/24", "dev", CLIENT_IFACE)
        self.ip("node", "addr", "add", f"{NODE_CLIENT_IP6}/64", "dev", NODE_IFACE, "nodad")
        self.ip("client", "addr", "add", f"{CLIENT_IP6}/64", "dev", CLIENT_IFACE, "nodad")
        for color, (base, node_if, be_if, _) in COLOR_NET.items():
            base6 = COLOR_NET6[color]
            self.ip("node", "link", "add", node_if, "type", "veth", "peer", "name", be_if,
                    "netns", self.ns[color])
            self.ip("node", "addr", "add", f"{base}.1/24", "dev", node_if)
            self.ip("node", "addr", "add", f"{base6}::1/64", "dev", node_if, "nodad")
            for addr, _ in self.backends[color]:
                self.ip(color, "addr", "add", f"{addr}/24", "dev", be_if)
            for addr, _ in self.backends6[color]:
                self.ip(color, "addr", "add", f"{addr}/64", "dev", be_if, "nodad")
            self.ip(color, "link", "set", be_if, "up")
            self.ip("node", "link", "set", node_if, "up")
            self.ip(color, "route", "add", "default", "via", f"{base}.1")
            self.ip(color, "-6", "route", "add", "default", "via", f"{base6}::1", "dev", be_if)
        self.ip("node", "link", "set", NODE_IFACE, "up")
        self.ip("client", "link", "set", CLIENT_IFACE, "up")
        self.ip("client", "route", "add", NET, "via", NODE_CLIENT_IP)
        self.ip("client", "-6", "route", "add", NET6, "via", NODE_CLIENT_IP6, "dev", CLIENT_IFACE)

        self.sysctl("node", "net.ipv4.ip_forward", 1)
        self.sysctl("node", "net.ipv4.conf.all.forwarding", 1)
        self.sysctl("node", "net.ipv6.conf.all.forwarding", 1)
        # Every packet for an unrouted address (the VIP without bgswitch) gets its ICMP
        # unreachable, so that a client fails at once, every time, instead of timing out.
        self.sysctl("node", "net.ipv4.icmp_ratelimit", 0)
        self.sysctl("node", "net.ipv6.icmp.ratelimit", 0)
        # See the module docstring: XDP cannot fix up a CHECKSUM_PARTIAL checksum.
        if not self.client_tx_csum:
            self.ns_run("client", ["ethtool", "-K", CLIENT_IFACE, "tx", "off"])
        if self.strict_csum:
            for role, dev in [("client", CLIENT_IFACE)] + [(c, COLOR_NET[c][2]) for c in COLOR_NET]:
                self.ns_run(role, ["ethtool", "-K", dev, "rx", "off"])
            for dev in [NODE_IFACE] + [COLOR_NET[c][1] for c in COLOR_NET]:
                self.ns_run("node", ["ethtool", "-K", dev, "tx", "off"])
        self._wait_links()
        self._resolve_neighbours()

    def _resolve_neighbours(self, timeout=5.0):
        """Resolve every neighbour a test packet needs, both families, before the first test.
        The node sends one UDP datagram to the discard port of the client's and of each
        backend's addresses: that resolves them on the node, and their ICMP port-unreachable
        answers resolve the node on the client and on the backends. Then `ip neigh` is polled
        until every entry has a link-layer address. NDP crosses bgswitch's programs when it is
        attached later: ICMPv6 that is not an error, which must pass untouched.

        Only the node sends here, so the node sends no ICMP error to the client: with
        icmp_ratelimit 0, one would reset the client's inet_peer token bucket, which the node's
        "no route" errors (ip_error(), one a second, a burst of five) share, and connect()s to
        an unrouted VIP would time out instead of failing at once for the next few seconds."""
        wanted = {"node": [CLIENT_IP, CLIENT_IP6], "client": [NODE_CLIENT_IP, NODE_CLIENT_IP6]}
        for color, (base, _, _, _) in COLOR_NET.items():
            wanted[color] = [f"{base}.1", f"{COLOR_NET6[color]}::1"]
            wanted["node"] += [a for a, _ in self.backends[color] + self.backends6[color]]
        kick = ("import socket\n"
                f"for a in {wanted['node']!r}:\n"
                "    s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET,"
                " socket.SOCK_DGRAM)\n"
                "    s.sendto(b'nd', (a, 9))\n"
                "    s.close()\n")
        left = {role: set(addrs) for role, addrs in wanted.items()}
        deadline = time.monotonic() + timeout
        for attempt in range(int(timeout / 0.05) + 1):
            if attempt % 20 == 0:  # again every second: a first datagram can be dropped
                self.ns_run("node", [PY, "-c", kick], timeout=5)
            for role in [r for r in left if left[r]]:
                neigh = json.loads(self.ip(role, "-j", "neigh", "show").stdout or "[]")
                left[role] -= {n["dst"] for n in neigh if n.get("lladdr") and
                               not set(n.get("state", [])) & {"INCOMPLETE", "FAILED"}}
            if not any(left.values()):
                return
            if time.monotonic() > deadline:
                unresolved = {self.ns[r]: sorted(a) for r, a in left.items() if a}
                raise CmdError(f"neighbours unresolved: {unresolved}")
            time.sleep(0.05)

    def _wait_links(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        checks = [("node", NODE_IFACE), ("client", CLIENT_IFACE)]
        for c in COLOR_NET:
            checks += [(c, COLOR_NET[c][2]), ("node", COLOR_NET[c][1])]
        for role, dev in checks:
            while True:
                out = self.ip(role, "-o", "link", "show", dev).stdout
                if "LOWER_UP" in out:
                    break
                if time.monotonic() > deadline:
                    raise CmdError(f"{self.ns[role]}/{dev} did not come up: {out}")
                time.sleep(0.02)

    def start_servers(self, detach=False):
        """One server per backend: its IPv4 and its IPv6 address, TCP and UDP."""
        for color in COLOR_NET:
            for (addr, port), (addr6, _) in zip(self.backends[color], self.backends6[color]):
                self.spawn_server(color, [addr, addr6], port, detach=detach)

    def spawn_server(self, color, addr, port, detach=False, role=None):
        """servers.py for one address, or a list of addresses, on port, in the color's namespace
        (or role's: "node" for a backend on the node itself)."""
        addrs = [addr] if isinstance(addr, str) else list(addr)
        argv = self.nsargv(role or color, [PY, os.path.join(HERE, "servers.py"), "--color", color,
                                   "--port", str(port)] +
                           [a for x in addrs for a in ("--addr", x)])
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                             start_new_session=detach)
        self.procs.append(p)
        line = read_line(p, 10)
        if line != "ready\n":
            raise CmdError(f"server {color} {addrs}:{port} did not start: {line!r}")
        return p

    def add_container(self, role="ctr"):
        """A namespace PREFIX-ROLE on the node, as a container is: a veth to the node (node side
        10.77.4.1, container 10.77.4.2, its default route via the node). Removed at teardown;
        returns its path under /run/netns."""
        base, node_if, ctr_if = CONTAINER_NET
        self.ns[role] = f"{self.prefix}-{role}"
        run(["ip", "netns", "add", self.ns[role]])
        self.created_ns.append(self.ns[role])
        self.ip(role, "link", "set", "lo", "up")
        self.ip("node", "link", "add", node_if, "type", "veth", "peer", "name", ctr_if, "netns",
                self.ns[role])
        self.ip("node", "addr", "add", f"{base}.1/24", "dev", node_if)
        self.ip(role, "addr", "add", f"{base}.2/24", "dev", ctr_if)
        self.ip("node", "link", "set", node_if, "up")
        self.ip(role, "link", "set", ctr_if, "up")
        self.ip(role, "route", "add", "default", "via", f"{base}.1")
        return f"/run/netns/{self.ns[role]}"

    def spawn(self, role, argv, **popen_kw):
        """Start argv in a namespace; the process is ended by PID at teardown if still alive."""
        p = subprocess.Popen(self.nsargv(role, argv), **popen_kw)
        self.procs.append(p)
        return p

    def end(self, p, timeout=5.0):
        """End one of our processes by its PID: SIGTERM, then SIGKILL."""
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        if p in self.procs:
            self.procs.remove(p)

    def down(self):
        """Remove everything this object created. Safe to call more than once."""
        errors = []
        for p in list(self.procs):
            try:
                self.end(p)
            except Exception as e:  # keep going: the namespaces must still go
                errors.append(f"pid {p.pid}: {e}")
        for sw in list(self.switches):
            try:
                sw.purge()
            except Exception as e:
                errors.append(f"{sw.pin_root}: {e}")
        for name in reversed(self.created_ns):
            p = run(["ip", "netns", "del", name], check=False)
            if p.returncode != 0:
                errors.append(f"ip netns del {name}: {p.stderr.strip()}")
        self.created_ns = []
        shutil.rmtree(self.audit_dir, ignore_errors=True)
        return errors

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
        return False

    def csum_errors(self):
        """{role: {"tcp": n, "udp": n, "udp6": n, "icmp": n, "icmp6": n}}: packets the client
        and backends dropped for a bad checksum (InCsumErrors of /proc/net/snmp and
        /proc/net/snmp6 in each namespace; TCP has one counter for both families)."""
        out = {}
        for role in ("client",) + tuple(COLOR_NET):
            text = self.ns_run(role, ["cat", "/proc/net/snmp"]).stdout
            rows = {}
            for head, vals in zip(text.splitlines()[0::2], text.splitlines()[1::2]):
                name = head.split(":")[0]
                rows[name] = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:])))
            text6 = self.ns_run(role, ["cat", "/proc/net/snmp6"]).stdout
            v6 = {k: int(v) for k, v in (line.split() for line in text6.splitlines() if line)}
            out[role] = {"tcp": rows["Tcp"]["InCsumErrors"], "udp": rows["Udp"]["InCsumErrors"],
                         "udp6": v6["Udp6InCsumErrors"], "icmp": rows["Icmp"]["InCsumErrors"],
                         "icmp6": v6["Icmp6InCsumErrors"]}
        return out

    # -- bgswitch ---------------------------------------------------------------------------
    def bgswitch(self, pin_root=None):
        """A handle on one bgswitch state with a pin root of our own, purged at teardown."""
        if pin_root is None:
            self._pin_seq += 1
            pin_root = f"{BPFFS}/{self.prefix}-{self._pin_seq}"
        sw = Bgswitch(self, pin_root)
        self.switches.append(sw)
        return sw

    # -- traffic ----------------------------------------------------------------------------
    def traffic(self, *args, role="client"):
        """Start tests/lib/traffic.py in the client namespace (or role's); see TrafficRun."""
        return TrafficRun(self, list(args), role=role)

    def probe(self, addr, port, udp=False, count=1, timeout=1.0, role="client"):
        """Each of count fresh connections (or UDP sockets) to addr:port: one request. Returns
        traffic.py's probe JSON: {"results": [{"ok", "color", "backend", "error", "elapsed"}]}.
        """
        argv = [PY, os.path.join(HERE, "traffic.py"), "probe", "--addr", addr, "--port",
                str(port), "--count", str(count), "--timeout", str(timeout)]
        if udp:
            argv.append("--udp")
        p = self.ns_run(role, argv, timeout=30 + count * timeout * 2)
        return json.loads(p.stdout)

    def upload(self, addr, port, nbytes=200000, timeout=10.0):
        """traffic.py upload from the client: one TCP connection carrying nbytes, acknowledged
        by the server with the count and digest it received. Returns its JSON."""
        argv = [PY, os.path.join(HERE, "traffic.py"), "upload", "--addr", addr, "--port",
                str(port), "--bytes", str(nbytes), "--timeout", str(timeout)]
        return json.loads(self.ns_run("client", argv, timeout=timeout + 30).stdout)

    def bigudp(self, addr, port, size=4000, reply_size=4000, count=1, timeout=2.0,
               role="client"):
        """traffic.py bigudp from the client: count datagrams of size bytes, replies of
        reply_size bytes. Returns its JSON ({"results": [...]})."""
        argv = [PY, os.path.join(HERE, "traffic.py"), "bigudp", "--addr", addr, "--port",
                str(port), "--size", str(size), "--reply-size", str(reply_size), "--count",
                str(count), "--timeout", str(timeout)]
        return json.loads(self.ns_run(role, argv, timeout=30 + count * timeout).stdout)

    def ping(self, addr, size=3000, count=1, timeout=2.0):
        """traffic.py ping from the client: count echo requests with size bytes of payload.
        Returns its JSON ({"results": [...]})."""
        argv = [PY, os.path.join(HERE, "traffic.py"), "ping", "--addr", addr, "--size",
                str(size), "--count", str(count), "--timeout", str(timeout)]
        return json.loads(self.ns_run("client", argv, timeout=30 + count * timeout).stdout)

    def conns(self, *args, timeout=60):
        """tests/lib/conns.py (a flow-state scenario) in the client namespace: its JSON."""
        p = self.ns_run("client", [PY, CONNS] + [str(a) for a in args], timeout=timeout)
        return json.loads(p.stdout)

    def colors_of(self, addr, port, udp=False, count=10, timeout=1.0, role="client"):
        """Colors (or "error:<kind>") that count fresh connections got, as a list."""
        res = self.probe(addr, port, udp=udp, count=count, timeout=timeout, role=role)["results"]
        return [r["color"] if r["ok"] else f"error:{r['error']}" for r in res]


class Bgswitch:
    """Runs the bgswitch command in the node namespace with one pin root."""

    def __init__(self, topo, pin_root):
        self.topo = topo
        self.pin_root = pin_root
        self.history = []  # (argv, rc, stdout, stderr), for failure messages

    def argv(self, *args):
        return ["nsenter", f"--net=/run/netns/{self.topo.ns['node']}", BGSWITCH,
                "--pin-root", self.pin_root] + [str(a) for a in args]

    def env(self, extra=None):
        """The environment changes of a run: the topology's audit trail unless the caller's
        environment or extra names one, then extra (BGSWITCH_FAULT, say)."""
        env = {}
        if "BGSWITCH_AUDIT_LOG" not in os.environ:
            env["BGSWITCH_AUDIT_LOG"] = self.topo.audit_log
        env.update(extra or {})
        return env

    def run(self, *args, timeout=30, env=None):
        """CompletedProcess of `bgswitch --pin-root ROOT args...`, whatever its exit status."""
        p = run(self.argv(*args), check=False, timeout=timeout, env=self.env(env))
        self.history.append((args, p.returncode, p.stdout, p.stderr))
        return p

    def popen(self, *args, env=None, **kw):
        """Start `bgswitch --pin-root ROOT args...` (text pipes); the topology ends it by PID
        at teardown if it is still running."""
        full = dict(os.environ)
        full.update({k: str(v) for k, v in self.env(env).items()})
        p = subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=full, **kw)
        self.topo.procs.append(p)
        return p

    def __call__(self, *args, timeout=30):
        """Run, require success, return stdout."""
        p = self.run(*args, timeout=timeout)
        if p.returncode != 0:
            raise CmdError(f"bgswitch {' '.join(map(str, args))}: exit {p.returncode}\n"
                           f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p.stdout

    def status(self, name=None):
        args = ["status"] + ([name] if name else []) + ["--json"]
        return json.loads(self(*args))

    def service(self, name):
        """The service's record from status --json."""
        for s in self.status(name)["services"]:
            if s["name"] == name:
                return s
        raise KeyError(name)

    def live_flows(self, name, color):
        return self.service(name)["colors"][color]["live_flows"]

    def setup_service(self, name, vip=VIP, port=VIP_PORT, proto="tcp", colors=("blue", "green")):
        """service add, and backend add for every backend of the topology's colors, of the
        VIP's family (an IPv6 VIP gets the IPv6 backends)."""
        self("service", "add", name, hostport(vip, port), "--proto", proto)
        table = self.topo.backends6 if ":" in vip else self.topo.backends
        for color in colors:
            for addr, bport in table[color]:
                self("backend", "add", name, color, hostport(addr, bport))

    def purge(self):
        """`detach IFACE --purge`, then remove the pin root if that left it (it is ours: its
        name has the topology's prefix). Returns what went wrong, for callers that check the
        command: [] when detach --purge alone removed everything.
        """
        problems = []
        if not self.pin_root.startswith(f"{BPFFS}/{self.topo.prefix}"):
            return problems  # not one we made up: leave it alone
        if os.path.isdir(self.pin_root) and os.path.exists(BGSWITCH):
            if self.topo.created_ns:  # the node namespace still exists
                p = self.run("detach", NODE_IFACE, "--purge")
                if p.returncode != 0:
                    problems.append(f"detach --purge: exit {p.returncode}: {p.stderr.strip()}")
        if os.path.isdir(self.pin_root):
            problems.append(f"{self.pin_root} left behind: {os.listdir(self.pin_root)}")
            shutil.rmtree(self.pin_root, ignore_errors=True)
        if self in self.topo.switches:
            self.topo.switches.remove(self)
        return problems


class TrafficRun:
    """tests/lib/traffic.py `load` running in the client namespace (or another role's).

    Its stdout carries "READY" once the long-lived connections are open, then the JSON summary
    when it ends. close_long() asks it (SIGUSR1) to close the long-lived connections and keep
    the rest going; finish() waits for the end (SIGINT first if early=True) and returns the
    summary.
    """

    def __init__(self, topo, args, role="client"):
        self.topo = topo
        argv = [PY, os.path.join(HERE, "traffic.py"), "load"] + [str(a) for a in args]
        self.proc = topo.spawn(role, argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.summary = None

    def wait_ready(self, timeout=15):
        line = read_line(self.proc, timeout)
        if line != "READY\n":
            err = ""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
            raise CmdError(f"traffic did not get ready: {line!r} {err}")

    def close_long(self):
        self.proc.send_signal(signal.SIGUSR1)

    def finish(self, early=False, timeout=60):
        if early and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.topo.end(self.proc)
        if self.proc.returncode != 0:
            raise CmdError(f"traffic exited {self.proc.returncode}: {err}")
        self.summary = json.loads(out)
        return self.summary


class Held:
    """One TCP connection held open by `conns.py hold` in the client namespace; req() sends a
    request on it and returns conns.py's JSON for it (color, backend, sport, snd_nxt)."""

    def __init__(self, topo, addr, port, sport=0):
        self.topo = topo
        self.proc = topo.spawn("client", [PY, CONNS, "hold", "--addr", addr, "--port",
                                          str(port), "--iface", CLIENT_IFACE, "--sport",
                                          str(sport)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def req(self, timeout=10):
        self.proc.stdin.write("req\n")
        self.proc.stdin.flush()
        line = read_line(self.proc, timeout)
        if not line:
            raise CmdError(f"conns.py hold: no answer ({self.proc.poll()})")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.topo.end(self.proc)


class Capture:
    """tcpdump on one interface of one namespace, started and ended by PID, its lines kept.
    The tests read it to show what crossed the client's link."""

    def __init__(self, topo, role, iface, bpf_filter, count=100, verbose=False, direction=None):
        """direction: "in" or "out" (tcpdump -Q) to keep packets of one direction only."""
        self.topo = topo
        argv = ["tcpdump", "-l", "-n", "-i", iface, "-c", str(count)]
        argv += ["-Q", direction] if direction else []
        argv += (["-vv"] if verbose else []) + [bpf_filter]
        self.proc = topo.spawn(role, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 5
        err = ""
        fd = self.proc.stderr.fileno()  # read raw: a buffered readline could hide a line
        while "listening on" not in err and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                err += chunk.decode("ascii", "replace")
        if "listening on" not in err:
            topo.end(self.proc)
            raise CmdError(f"tcpdump did not start: {err}")

    def stop(self, settle=0.3):
        """End tcpdump (after settle seconds for the last packets); its output lines."""
        time.sleep(settle)
        self.topo.end(self.proc)
        return self.proc.stdout.read().splitlines()


def addr_of(token):
    """The address of a tcpdump endpoint ("10.77.1.2.4000", "fd77::1.53", "10.77.1.2:")."""
    token = token.rstrip(":,")
    if ":" in token:  # IPv6: the port, if any, follows the last "."
        return token.rsplit(".", 1)[0] if "." in token else token
    parts = token.split(".")
    return ".".join(parts[:4])


PKT_RE = re.compile(r"\bIP6? (\S+) > (\S+?):? ")


def endpoints(lines):
    """[(src address, dst address)] of the packet lines of a tcpdump capture."""
    out = []
    for line in lines:
        m = PKT_RE.search(line)
        if m:
            out.append((addr_of(m.group(1)), addr_of(m.group(2))))
    return out


# -- checks and shell interface -------------------------------------------------------------

def csum_check():
    """Show why the client's TX checksum offload must be off: TCP and UDP through the VIP with it
    on and off, strict_csum on and off, in generic and native mode. Needs the bgswitch binary.
    """
    for tx_on in (True, False):
        for strict in (False, True):
            for mode in ("generic", "native"):
                with Topology(client_tx_csum=tx_on, strict_csum=strict) as t:
                    sw = t.bgswitch()
                    sw("attach", NODE_IFACE, "--mode", mode)
                    sw.setup_service("web", colors=("blue",))
                    sw.setup_service("echo", port=53, proto="udp", colors=("blue",))
                    tcp = t.colors_of(VIP, VIP_PORT, count=3, timeout=0.5)
                    udp = t.colors_of(VIP, 53, udp=True, count=3, timeout=0.5)
                    print(f"client tx {'on ' if tx_on else 'off'} strict_csum {strict!s:5} "
                          f"{mode:7}: tcp {tcp} udp {udp} csum errors {t.csum_errors()}")


def _state_procs(topo, path):
    procs = [{"pid": p.pid, "start": proc_starttime(p.pid)} for p in topo.procs]
    with open(path, "w") as f:
        json.dump({"prefix": topo.prefix, "namespaces": topo.created_ns, "procs": procs}, f)


def cmd_up(args):
    topo = Topology(prefix=args.prefix, per_color=args.per_color, servers=False)
    try:
        topo._build()
        topo.start_servers(detach=True)
        _state_procs(topo, args.state)
    except BaseException:
        topo.down()
        raise
    # The servers outlive us: forget them here; `down` ends them by their recorded PIDs.
    for p in topo.procs:
        p.stdout.close()
        p.returncode = 0  # keep Popen.__del__ quiet
    return 0


def cmd_down(args):
    state = None
    if args.state and os.path.exists(args.state):
        with open(args.state) as f:
            state = json.load(f)
    if state is None:
        if not args.prefix:
            return 0
        # Lost state: the namespaces of this prefix are ours by name; so are their processes.
        existing = set(run(["ip", "netns", "list"]).stdout.split())
        names = [f"{args.prefix}-{r}" for r in ROLES if f"{args.prefix}-{r}" in existing]
        procs = []
        for n in names:
            for pid in run(["ip", "netns", "pids", n], check=False).stdout.split():
                procs.append({"pid": int(pid), "start": proc_starttime(int(pid))})
        state = {"namespaces": names, "procs": procs}
    for p in state["procs"]:
        if p["start"] is not None:
            end_pid(p["pid"], p["start"])
    for n in reversed(state["namespaces"]):
        run(["ip", "netns", "del", n], check=False)
    if args.state and os.path.exists(args.state):
        os.unlink(args.state)
    return 0


def main():
    # Run as a script (the demo): the same spawn check as the test session's.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lib import programs
    programs.install()
    ap = argparse.ArgumentParser(description="bgswitch test topology")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the topology and start the servers")
    up.add_argument("--prefix", required=True)
    up.add_argument("--state", required=True)
    up.add_argument("--per-color", type=int, default=2)
    down = sub.add_parser("down", help="tear down what `up` built")
    down.add_argument("--state")
    down.add_argument("--prefix")
    sub.add_parser("csum-check", help="is `ethtool -K tx off` on the client needed?")
    env = sub.add_parser("env", help="print the topology's addresses as shell assignments")
    env.add_argument("--prefix", required=True)
    args = ap.parse_args()
    if args.cmd == "up":
        return cmd_up(args)
    if args.cmd == "down":
        return cmd_down(args)
    if args.cmd == "csum-check":
        csum_check()
        return 0
    if args.cmd == "env":
        print(f"NODE_NS={args.prefix}-node CLIENT_NS={args.prefix}-client "
              f"NODE_IFACE={NODE_IFACE} VIP={VIP} VIP6={VIP6} VIP_PORT={VIP_PORT}")
        for c in COLOR_NET:
            print(f"{c.upper()}_BACKENDS='{' '.join(f'{a}:{p}' for a, p in backend_addrs(c))}'")
            print(f"{c.upper()}_BACKENDS6='"
                  f"{' '.join(hostport(a, p) for a, p in backend_addrs6(c))}'")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())


# -- the pytest fixture every end-to-end suite uses --------------------------------------------

def cli_state_fixture(topo):
    """Body of a module-scoped fixture for command-line error tests: one state attached to the
    node (mode auto) with web (blue and green backends), half (blue only, port 81) and echo
    (UDP, port 53), purged at the end. Error paths must leave it exactly as it was."""
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    try:
        s.setup_service("web")
        s.setup_service("half", port=81, colors=("blue",))
        s.setup_service("echo", port=53, proto="udp")
        yield s
    finally:
        s.purge()


def one_line_error(p, rc=None):
    """A refused command: non-zero (or rc) exit, one line on stderr. Returns the line."""
    assert p.returncode != 0 if rc is None else p.returncode == rc, (p.returncode, p.stdout,
                                                                     p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bgswitch: "), p.stderr
    return lines[0]


def _sigterm(*_):
    raise KeyboardInterrupt("SIGTERM")


def topology_fixture():
    """Body of a module-scoped `topo` fixture: one topology for the module, torn down at its
    end, also when pytest is ended by SIGTERM (a CI timeout, say) rather than finishing: SIGTERM
    stops the session like Ctrl-C, and atexit catches what the finalizers miss."""
    import atexit

    if not os.access(BGSWITCH, os.X_OK):
        raise RuntimeError(f"{BGSWITCH} missing: run make first")
    t = Topology()
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)
    atexit.register(t.down)
    t.up()
    try:
        yield t
    finally:
        errors = t.down()
        atexit.unregister(t.down)
        assert not errors, errors
