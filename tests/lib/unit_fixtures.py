"""Fixtures of the data-plane unit tests: a private, attached, pinned bgswitch state.

The ``bgs`` fixture gives each test its own state, made by the real command:

1. a network namespace ``bgsu<hex>`` with a veth pair in it (both ends left down, IPv6 off,
   so that no stray packet reaches the programs and moves a counter);
2. ``nsenter --net=/run/netns/NS bgswitch --pin-root /sys/fs/bpf/bgsu<hex> attach <veth>``
   (nsenter, not ``ip netns exec``: the latter remounts /sys and the pins would vanish);
3. the pinned programs and maps opened with BPF_OBJ_GET (tests/lib/bpfsys.py).

The programs are run (BPF_PROG_TEST_RUN) from inside that namespace: the XDP fast path's
bpf_fib_lookup() looks routes up in the namespace of the thread that runs the test, and the
private one has no route (its links are down, without addresses), so every rewritten packet
falls back to the stack (FWD_STACK) whatever the host's routes and neighbours are.

They also always run on one CPU (``BgsState.cpu``; the calling thread is pinned to it for the
run): per-CPU state that decides a verdict, the flow-table insert budget (bgs_insert_budget,
a token bucket per CPU), is then the one bucket of that CPU, so that a test can count on it.

Teardown always runs, on failure too: ``detach --purge``, delete the namespace, remove the pin
root if it is left. Only what the fixture made is removed.

The command is ``.output/bgswitch`` of the work tree, or the path in $BGSWITCH; when it is
missing the tests fail (never skip) and say how to build it.
"""

import ctypes
import os
import secrets
import shutil
import struct
import subprocess
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Optional

import pytest

from . import bpfsys
from . import model

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Run the block with the calling thread pinned to ``cpu`` (sched_setaffinity(2) on the
    thread itself migrates it before returning), then give it its affinity back."""
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, home)


@contextmanager
def in_netns(ns_fd: int) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace ``ns_fd``, then put it
    back (setns(2) moves only the calling thread)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(ns_fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BGSWITCH = os.environ.get("BGSWITCH", os.path.join(TOP, ".output", "bgswitch"))
BPFFS = "/sys/fs/bpf"
PREFIX = "bgsu"  # namespaces, interfaces and pin roots of the unit tests
CLI_TIMEOUT = 30

MAP_NAMES = [
    "bgs_config", "bgs_vips", "bgs_services", "bgs_switch", "bgs_sets", "bgs_backends",
    "bgs_backend_addrs", "bgs_flows", "bgs_nexthops", "bgs_vip_addrs", "bgs_frags", "bgs_ifaces",
    "bgs_stats", "bgs_drops", "bgs_backend_stats", "bgs_service_stats", "bgs_tx_ports",
    "bgs_insert_budget", "bgs_tables", "bgs_vip_filter", "bgs_local_netns", "bgs_local_counts",
    "bgs_socks",
]


class FlowEntry(NamedTuple):
    """A bgs_flows entry (model.Flow) with the address and port of the backend its slot names
    (bgs_backends), where its packets go and its replies must come from."""

    daddr: str
    dport: int
    slot: int
    color: int
    state: int
    ifindex: int
    seen: int

    @property
    def flow(self) -> model.Flow:
        """The entry as stored (model.Flow)."""
        return model.Flow(self.slot, self.color, self.state, self.ifindex, self.seen)


class CLIError(AssertionError):
    """The bgswitch command failed: the message holds the command line and its output."""


def _run(argv: List[str], check: bool = True, timeout: int = CLI_TIMEOUT):
    """Run a command, capture its output; raise CLIError (with the output) when it fails."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise CLIError(f"command failed (exit {p.returncode}): {' '.join(argv)}\n"
                       f"stdout: {p.stdout.strip()}\nstderr: {p.stderr.strip()}")
    return p


CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it


def monotonic_coarse_ns() -> int:
    """What bpf_ktime_get_coarse_ns() returns now, give or take a tick."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


class BgsState:
    """One private bgswitch state: its namespace, interface, pin root and open fds.

    ``cli(...)`` runs the command on this state; ``ingress(frame)`` / ``egress(frame)`` run
    the pinned programs on a packet with BPF_PROG_TEST_RUN; the other methods read or poke
    the maps with model.py's codecs. A color's lookup table is read through bgs_tables: the
    outer entry holds the inner map's id, opened with BPF_MAP_GET_FD_BY_ID (``table``,
    ``table_at``, ``table_map``).
    """

    def __init__(self, tag: str, flows: int = 4096):
        self.tag = tag
        self.flows = flows
        self.netns = tag
        self.iface = tag + "a"
        self.peer = tag + "b"
        self.pin_root = f"{BPFFS}/{tag}"
        self.ingress_fd = -1
        self.egress_fd = -1
        self.ns_fd = -1
        self.maps: Dict[str, bpfsys.Map] = {}
        self.services: Dict[str, int] = {}
        self.cpu = min(os.sched_getaffinity(0))  # where the programs run (module docstring)

    # --- the command -----------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True):
        """Run ``bgswitch --pin-root ROOT ARGS...`` inside the namespace."""
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", BGSWITCH,
                "--pin-root", self.pin_root, *args]
        return _run(argv, check=check)

    def add_service(self, name: str, vip: str, port: int, proto: str = "tcp",
                    *options: str) -> int:
        """``service add`` (IPv4 or IPv6 VIP, more options such as "--lb", "modulo" or
        "--table-size", "251" after the protocol); returns the service id read back from
        bgs_vips."""
        self.cli("service", "add", name, model.endpoint(vip, port), "--proto", proto, *options)
        pnum = model.IPPROTO_TCP if proto == "tcp" else model.IPPROTO_UDP
        raw = self.map("bgs_vips").lookup(model.pack_vip_key(vip, port, pnum))
        assert raw is not None, f"service add {name}: no bgs_vips entry for {vip}:{port}/{proto}"
        svc = struct.unpack_from("<I", raw)[0]
        self.services[name] = svc
        return svc

    def add_backend(self, name: str, color: str, addr: str, port: int,
                    weight: Optional[int] = None) -> int:
        """``backend add`` (with ``--weight`` when given); returns the backend's slot, found
        in bgs_backends."""
        extra = () if weight is None else ("--weight", str(weight))
        self.cli("backend", "add", name, color, model.endpoint(addr, port), *extra)
        slot = self.find_slot(name, color, addr, port)
        assert slot is not None, f"backend add {name} {color} {addr}:{port}: no active slot"
        return slot

    def find_slot(self, name: str, color: str, addr: str, port: int,
                  state: int = model.BGS_BACKEND_ACTIVE) -> Optional[int]:
        """The slot of a backend in bgs_backends (by service, color, address), or None."""
        svc = self.services[name]
        be = self.map("bgs_backends")
        for slot in range(be.info.max_entries):
            b = model.unpack_backend(be.lookup(model.u32(slot)))
            if (b.state == state and b.svc == svc and b.color == model.COLORS[color]
                    and b.addr == model.norm(addr) and b.port == port):
                return slot
        return None

    def route(self, addr_cidr: str) -> int:
        """Give the namespace a route: ``addr_cidr`` (e.g. "10.0.1.254/24") on the veth, both
        ends up, IPv4 forwarding on (bpf_fib_lookup() needs it on the packet's interface).
        Nothing answers ARP there: a lookup toward that subnet finds the route but no
        neighbour (NO_NEIGH). Returns the veth's ifindex."""
        ns = ["ip", "-n", self.netns]
        _run(["nsenter", f"--net=/run/netns/{self.netns}", "--", "sysctl", "-q", "-w",
              "net.ipv4.ip_forward=1"])
        _run(ns + ["addr", "add", addr_cidr, "dev", self.iface])
        for dev in (self.peer, self.iface):
            _run(ns + ["link", "set", dev, "up"])
        return int(_run(ns + ["-o", "link", "show", "dev", self.iface]).stdout.split(":", 1)[0])

    # --- programs --------------------------------------------------------------------------

    def ingress(self, frame: bytes) -> bpfsys.TestRun:
        """Run bgs_ingress (XDP) on a frame, from inside the namespace."""
        with in_netns(self.ns_fd), on_cpu(self.cpu):
            return bpfsys.prog_test_run(self.ingress_fd, frame)

    def egress(self, frame: bytes, ingress_ifindex: Optional[int] = None) -> bpfsys.TestRun:
        """Run bgs_egress (TC) on a frame, from inside the namespace. ``ingress_ifindex`` is
        the interface the packet came in by (skb->ingress_ifindex); by default the kernel's,
        0, as for a packet the node itself sends."""
        ctx = None if ingress_ifindex is None else bpfsys.skb_ctx(ingress_ifindex)
        with in_netns(self.ns_fd), on_cpu(self.cpu):
            return bpfsys.prog_test_run(self.egress_fd, frame, ctx_in=ctx)

    # --- maps ------------------------------------------------------------------------------

    def map(self, name: str) -> bpfsys.Map:
        """A pinned map of this state, opened once."""
        if name not in self.maps:
            self.maps[name] = bpfsys.Map.open(f"{self.pin_root}/{name}")
        return self.maps[name]

    def _percpu_u64(self, name: str, names: List[str]) -> Dict[str, int]:
        m = self.map(name)
        return {n: sum(model.unpack_u64(v) for v in m.lookup_percpu(model.u32(i)))
                for i, n in enumerate(names)}

    def stats(self) -> Dict[str, int]:
        """bgs_stats summed over the CPUs, by enum bgs_stat name (e.g. "FLOW_NEW")."""
        return self._percpu_u64("bgs_stats", model.STATS)

    def drops(self) -> Dict[str, int]:
        """bgs_drops summed over the CPUs, by enum bgs_drop_reason name (e.g. "NO_BACKEND")."""
        return self._percpu_u64("bgs_drops", model.DROPS)

    def service_stats(self, svc: int) -> Dict[str, int]:
        """bgs_service_stats of one service summed over the CPUs (drops as drop_<REASON>)."""
        total = dict.fromkeys(model.SERVICE_STATS, 0)
        for raw in self.map("bgs_service_stats").lookup_percpu(model.u32(svc)):
            for k, v in model.unpack_service_stats(raw).items():
                total[k] += v
        return total

    def backend_stats(self, slot: int) -> Dict[str, int]:
        """bgs_backend_stats of one slot summed over the CPUs."""
        total = dict.fromkeys(model.BACKEND_STATS, 0)
        for raw in self.map("bgs_backend_stats").lookup_percpu(model.u32(slot)):
            for k, v in model.unpack_backend_stats(raw).items():
                total[k] += v
        return total

    def conn_key(self, saddr: str, daddr: str, sport: int, dport: int,
                 proto: int = model.IPPROTO_TCP) -> bytes:
        """The bgs_flows key (struct bgs_conn_key) of a client-to-VIP 5-tuple: the client's
        address and port and the service id bgs_vips gives the VIP, port and protocol."""
        raw = self.map("bgs_vips").lookup(model.pack_vip_key(daddr, dport, proto))
        assert raw is not None, f"{daddr}:{dport}/{proto} is not a service"
        return model.pack_conn_key(saddr, sport, struct.unpack_from("<I", raw)[0], proto)

    def flow(self, saddr: str, daddr: str, sport: int, dport: int,
             proto: int = model.IPPROTO_TCP) -> Optional[FlowEntry]:
        """The bgs_flows entry of a client-to-VIP 5-tuple, with its backend, or None."""
        raw = self.map("bgs_flows").lookup(self.conn_key(saddr, daddr, sport, dport, proto))
        if raw is None:
            return None
        f = model.unpack_flow(raw)
        b = self.backend(f.slot)
        return FlowEntry(b.addr, b.port, *f)

    def put_flow(self, saddr: str, daddr: str, sport: int, dport: int, proto: int,
                 flow) -> None:
        """Write a bgs_flows entry (a model.Flow or a FlowEntry): to age it, close it, or give
        it another reply interface without waiting."""
        if isinstance(flow, FlowEntry):
            flow = flow.flow
        self.map("bgs_flows").update(self.conn_key(saddr, daddr, sport, dport, proto),
                                     model.pack_flow(flow))

    def delete_flow(self, saddr: str, daddr: str, sport: int, dport: int,
                    proto: int = model.IPPROTO_TCP) -> bool:
        """Delete a bgs_flows entry (as the LRU evicts one); False when it was not there."""
        return self.map("bgs_flows").delete(self.conn_key(saddr, daddr, sport, dport, proto))

    def nexthop(self, slot: int, cpu: Optional[int] = None) -> model.Nexthop:
        """bgs_nexthops of a slot on a CPU (by default the one the programs run on)."""
        raws = self.map("bgs_nexthops").lookup_percpu(model.u32(slot))
        return model.unpack_nexthop(raws[self.cpu if cpu is None else cpu])

    def backend_ref(self, addr: str, port: int,
                    proto: int = model.IPPROTO_TCP) -> Optional[model.BackendRef]:
        """The bgs_backend_addrs entry of a backend address:port/proto, or None."""
        raw = self.map("bgs_backend_addrs").lookup(model.pack_backend_addr(addr, port, proto))
        return model.unpack_backend_ref(raw) if raw is not None else None

    def bucket(self, cpu: Optional[int] = None) -> model.Bucket:
        """The insert budget (bgs_insert_budget) of a CPU, by default the one the programs
        run on."""
        raws = self.map("bgs_insert_budget").lookup_percpu(model.u32(0))
        return model.unpack_bucket(raws[self.cpu if cpu is None else cpu])

    def put_bucket(self, b: model.Bucket) -> None:
        """Set the insert budget of every CPU (e.g. to a known number of inserts)."""
        self.map("bgs_insert_budget").update(model.u32(0), model.pack_bucket(b)
                                             * bpfsys.possible_cpus())

    def frag(self, saddr: str, daddr: str, frag_id: bytes, proto: int) -> Optional[model.Frag]:
        """The bgs_frags entry of a datagram (``frag_id`` as model.pack_frag_key_raw takes
        it), or None."""
        fam = model.family_of(saddr)
        raw = self.map("bgs_frags").lookup(model.pack_frag_key_raw(
            model.addr16(saddr), model.addr16(daddr), frag_id, proto, fam))
        return model.unpack_frag(raw, fam) if raw is not None else None

    def count(self, name: str) -> int:
        """Number of entries of a hash map."""
        return sum(1 for _ in self.map(name).keys())

    def switch(self, svc: int) -> model.Switch:
        """bgs_switch of a service."""
        return model.unpack_switch(self.map("bgs_switch").lookup(model.u32(svc)))

    def put_switch(self, svc: int, sw: model.Switch) -> None:
        """Overwrite the switch word of a service (a share, prev_share or flags the commands
        would not write, or not yet)."""
        self.map("bgs_switch").update(model.u32(svc), model.pack_switch(sw))

    def active_set(self, svc: int, color: Optional[int] = None) -> List[int]:
        """The slots of the set buffer a color (default: the active one) uses now."""
        sw = self.switch(svc)
        color = sw.active if color is None else color
        assert color in (model.BGS_BLUE, model.BGS_GREEN), f"service {svc} is split: {sw}"
        raw = self.map("bgs_sets").lookup(model.u32(sw.set_index(svc, color)))
        return model.unpack_set(raw)

    def service(self, svc: int) -> model.Service:
        """bgs_services of a service id."""
        return model.unpack_service(self.map("bgs_services").lookup(model.u32(svc)))

    def table_id(self, idx: int) -> Optional[int]:
        """The id of the inner map under bgs_tables key ``idx`` (what a lookup of a map of
        maps gives user space), or None when there is none."""
        raw = self.map("bgs_tables").lookup(model.u32(idx))
        return None if raw is None else struct.unpack("<I", raw)[0]

    def table_map(self, idx: int) -> Optional[bpfsys.Map]:
        """The inner map under bgs_tables key ``idx``, opened by id (BPF_MAP_GET_FD_BY_ID);
        the caller closes it. None when there is none."""
        map_id = self.table_id(idx)
        if map_id is None:
            return None
        return bpfsys.Map.by_id(map_id)

    def table_at(self, idx: int) -> Optional[List[int]]:
        """The lookup table under bgs_tables key ``idx``: the slots of positions 1..M (M is
        entry 0; [] for M = 0), or None when the key has no table."""
        m = self.table_map(idx)
        if m is None:
            return None
        with m:
            return model.unpack_table(m.array_raw())

    def table(self, svc: int, color: int) -> Optional[List[int]]:
        """The lookup table a color of a service uses now (the buffer set_sel selects), as
        table_at gives it: None when the color has none (an empty color, a modulo service)."""
        return self.table_at(self.switch(svc).set_index(svc, color))

    def current_set(self, svc: int, color: int) -> List[int]:
        """The slots of the set buffer ``color`` uses now (split or not)."""
        raw = self.map("bgs_sets").lookup(model.u32(self.switch(svc).set_index(svc, color)))
        return model.unpack_set(raw)

    def pick(self, svc: int, color: int, h: int):
        """model.pick_slot on what ``color`` of the service uses now (its table, else its
        set): (slot, None) or (None, drop reason)."""
        return model.pick_slot(self.table(svc, color), self.current_set(svc, color), h)

    def backend(self, slot: int) -> model.Backend:
        """bgs_backends of a slot."""
        return model.unpack_backend(self.map("bgs_backends").lookup(model.u32(slot)))

    def config(self) -> model.Config:
        """bgs_config."""
        return model.unpack_config(self.map("bgs_config").lookup(model.u32(0)))

    def close(self) -> None:
        """Close every fd this object opened."""
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        for attr in ("ingress_fd", "egress_fd", "ns_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


def _require_environment() -> None:
    """Fail (not skip) with a clear message when the suite cannot run here."""
    if not os.path.isfile(BGSWITCH) or not os.access(BGSWITCH, os.X_OK):
        pytest.fail(f"bgswitch command not found at {BGSWITCH}: build it with 'make' "
                    f"(or point $BGSWITCH at it)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the data-plane unit tests need root (BPF, namespaces)", pytrace=False)
    if not os.path.ismount(BPFFS):
        _run(["mount", "-t", "bpf", "bpf", BPFFS])


def _setup(st: BgsState) -> None:
    """Namespace, veth pair, attach, open the programs."""
    _run(["ip", "netns", "add", st.netns])
    ns = ["ip", "-n", st.netns]
    # No IPv6 (no router solicitations or DAD) and links left down: nothing but the tests'
    # own BPF_PROG_TEST_RUN packets reaches the programs.
    for conf in ("default", "all"):
        _run(["nsenter", f"--net=/run/netns/{st.netns}", "--", "sysctl", "-q", "-w",
              f"net.ipv6.conf.{conf}.disable_ipv6=1"])
    _run(ns + ["link", "add", st.iface, "type", "veth", "peer", "name", st.peer])
    st.cli("attach", st.iface, "--flows", str(st.flows))
    st.ns_fd = os.open(f"/run/netns/{st.netns}", os.O_RDONLY)
    st.ingress_fd = bpfsys.obj_get(f"{st.pin_root}/progs/bgs_ingress")
    st.egress_fd = bpfsys.obj_get(f"{st.pin_root}/progs/bgs_egress")


def _teardown(st: BgsState, prefix: str = PREFIX) -> List[str]:
    """Undo _setup as far as it got; returns what went wrong (never raises)."""
    problems = []
    st.close()
    if os.path.exists(f"/run/netns/{st.netns}"):
        if os.path.isdir(st.pin_root):
            p = st.cli("detach", st.iface, "--purge", check=False)
            if p.returncode != 0:
                problems.append(f"detach {st.iface} --purge failed (exit {p.returncode}): "
                                f"{p.stderr.strip()}")
        p = _run(["ip", "netns", "del", st.netns], check=False)
        if p.returncode != 0:
            problems.append(f"ip netns del {st.netns}: {p.stderr.strip()}")
    if os.path.lexists(st.pin_root):
        # Only ever our own unique directory under the BPF filesystem.
        assert os.path.basename(st.pin_root).startswith(prefix)
        shutil.rmtree(st.pin_root, ignore_errors=True)
        if os.path.lexists(st.pin_root):
            problems.append(f"could not remove {st.pin_root}")
    return problems


@contextmanager
def bgs_state(prefix: str = PREFIX, flows: int = 4096) -> Iterator[BgsState]:
    """The ``bgs`` fixture as a context manager, for other fixtures: a state under its own
    ``prefix`` (namespace, interfaces, pin root) with ``flows`` flow-table entries."""
    _require_environment()
    st = BgsState(prefix + secrets.token_hex(4), flows=flows)
    try:
        _setup(st)
        yield st
    finally:
        problems = _teardown(st, prefix)
    if problems:
        pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def bgs():
    """A fresh attached bgswitch state in a private namespace (see the module docstring).

    The test configures services and backends through ``bgs.cli`` / ``bgs.add_service`` /
    ``bgs.add_backend`` and runs packets through ``bgs.ingress`` / ``bgs.egress``.
    A failed ``detach --purge`` at teardown is reported as an error of the test, after the
    namespace and pin root are removed anyway.
    """
    with bgs_state() as st:
        yield st
