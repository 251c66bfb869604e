"""Parts 2, 3 (in-process and command flips) and 5 of the suite: the data plane's cost as the
tables grow, the cost of a flip, and map memory; and what part 1 (pktbench.py) runs on: a
private state, a case, and how one is timed.

Each measurement runs on a private bgswitch state made by the real command: a network
namespace set up as a forwarding node (see State: a veth pair up, a route and a resolved
neighbour toward the backends; nothing but our own test runs reaches the programs),
`bgswitch --pin-root /sys/fs/bpf/<run>-<name> attach <veth>`, and the pinned programs and maps
opened with BPF_OBJ_GET (tests/lib/bpfsys.py), as tests/lib/unit_fixtures.py does. XDP programs are
told the frames arrive on the attached interface, so the fast path's route lookup succeeds and a
rewritten packet leaves as XDP_TX, as on a node.

How a packet is timed: see benchlib.c. Many BPF_PROG_TEST_RUN calls with repeat=1, one frame
each; the figure is the mean of the per-call durations the kernel reports, the slowest 1% of
calls (interrupts) left out. Every call's verdict must be the first call's, and one the data
plane may give for that packet (XDP: PASS, TX or REDIRECT; TC: OK or REDIRECT; never DROP):
nothing assumes XDP_PASS. Every call's output must be the expected frame (computed from scratch
by pkt.py), or differ from it only where a forwarding fast path may write (Ethernet addresses,
TTL / hop limit, and then a valid IPv4 header checksum). The counters must say that each call
took the path the case is about (FLOW_NEW, FLOW_HIT, NOT_VIP, REPLY_NAT).
"""

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import struct
import time
from typing import Dict, List, Optional, Tuple

from lib import bpfsys
from lib import model
import pkt
from common import (BBResult, BenchError, BGSWITCH, BPFFS, FLIPBENCH, Cleanup, close_all,
                    header_define, in_netns, lib, log, median, netns_add, nsargv,
                    on_one_cpu, remove_pin_root, run, timed_run, trimmed_mean)

STATS = model.STATS  # enum bgs_stat, read from include/bgswitch.h
DROPS = model.DROPS
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
TC_VERDICTS = {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}
XDP_FORWARD = {2, 3, 4}  # what the data plane may answer for a packet it lets through
TC_FORWARD = {0, 7}
CLOCK_MONOTONIC_COARSE = 6
BB_TC_CTX = 1 << 31  # benchlib.c: the ifindex given to a TC program's skb

ADDRS = {
    4: {"vip": "10.0.0.100", "other": "10.0.0.200", "client": "192.0.2.7",
        "blue": ("10.0.1.1", 8080), "green": ("10.0.2.1", 9090)},
    6: {"vip": "fd00::100", "other": "fd00::200", "client": "2001:db8::7",
        "blue": ("fd00:1::1", 8080), "green": ("fd00:2::1", 9090)},
}
VPORT = 80
EST_SPORT = 40000
# Flow-table size of the states other than the memory one (None: the default, as deployed).
# The smoke run makes it small, so that each attach does not preallocate two 1M-entry tables.
STATE_FLOWS: Optional[int] = None


def ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def fresh_client(fam: int, k: int) -> Tuple[str, int]:
    """Client address and port number k of the new flows (100.64.0.0/10, 2001:db8::/32)."""
    host, port = divmod(k, 60000)
    if fam == 4:
        return str(ipaddress.IPv4Address(0x64400000 + host)), 1024 + port
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + host)), 1024 + port


# --- a private bgswitch state ---------------------------------------------------------------------

# The node's side of its link toward the backends (all of ADDRS' backends and the part 2 ones
# are behind the gateway): a route and a resolved neighbour, as on a node that forwards.
NODE_NET = {4: ("10.9.0.2/24", "10.9.0.1", "10.0.0.0/8"),
            6: ("fd09::2/64", "fd09::1", "fd00::/16")}


class State:
    """A private attached bgswitch state (see the module docstring); torn down by cleanup.

    The node is set up as a user's: forwarding on, the attached interface (bga) up with an
    address, a route toward the backends through a gateway (its peer, bgb) whose neighbour
    entry is resolved. So the fast path's FIB lookup succeeds and a rewritten packet leaves as
    XDP_TX when the program is told it arrived on bga (self.ifindex, see benchlib.c). With
    node=False the links stay down and nothing is routed: the fast path falls back to the stack
    (XDP_PASS), as in the suite's runs before issue 13 (pktbench.part_factors())."""

    def __init__(self, cleanup: Cleanup, prefix: str, name: str, flows: Optional[int] = 0,
                 node: bool = True):
        self.cleanup = cleanup
        self.ns = f"{prefix}-{name}"
        self.pin_root = f"{BPFFS}/{prefix}-{name}"
        self.iface = "bga"
        self.maps: Dict[str, bpfsys.Map] = {}
        self.fds: List[int] = []
        self.services: Dict[str, int] = {}
        self.next_fresh = {4: 0, 6: 0}
        netns_add(cleanup, self.ns)
        self._down_idx = cleanup.push(f"state {self.pin_root}", self._down)
        if node:
            self.ifindex = self._node_network()
        else:  # what the suite measured before: links down, no route (tests/bench/factors)
            run(["ip", "-n", self.ns, "link", "add", "bga", "type", "veth", "peer", "name",
                 "bgb"])
            self.ifindex = 0
        if flows == 0:
            flows = STATE_FLOWS
        self.flows = flows or header_define("BGS_DEFAULT_FLOWS")
        argv = ["attach", self.iface] + (["--flows", str(flows)] if flows else [])
        self.cli(*argv, netns=True)
        # The insert limit (125000 new flows a second per CPU, burst 10000 by default) would
        # drop most of a run of BPF_PROG_TEST_RUN new flows, which come far faster: raise it
        # out of reach, so that its check is still timed but never refuses.
        self.cli("limits", "--new-flows", "100000000", "--burst", "100000000")
        self.ingress_fd = self._fd(bpfsys.obj_get(f"{self.pin_root}/progs/bgs_ingress"))
        self.egress_fd = self._fd(bpfsys.obj_get(f"{self.pin_root}/progs/bgs_egress"))

    def _node_network(self) -> int:
        """Forwarding, bga/bgb up, NODE_NET's addresses, routes and permanent neighbours (IPv6
        on bga only, without autoconfiguration: nothing but our test runs reaches the
        programs). Returns bga's ifindex."""
        ip = ["ip", "-n", self.ns]
        for key, val in (("net.ipv6.conf.default.disable_ipv6", 1),
                         ("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1)):
            run(nsargv(self.ns, ["sysctl", "-q", "-w", f"{key}={val}"]))
        run(ip + ["link", "add", "bga", "address", pkt.MAC_NODE.hex(":"), "type", "veth",
                  "peer", "name", "bgb", "address", pkt.MAC_GATEWAY.hex(":")])
        for key, val in (("accept_ra", 0), ("autoconf", 0), ("addr_gen_mode", 1),
                         ("disable_ipv6", 0)):
            run(nsargv(self.ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.bga.{key}={val}"]))
        for dev in ("bgb", "bga"):
            run(ip + ["link", "set", dev, "up"])
        for fam, (addr, gw, dst) in NODE_NET.items():
            run(ip + [f"-{fam}", "addr", "add", addr, "dev", "bga"]
                + (["nodad"] if fam == 6 else []))
            run(ip + [f"-{fam}", "neigh", "replace", gw, "lladdr", pkt.MAC_GATEWAY.hex(":"),
                      "dev", "bga", "nud", "permanent"])
            run(ip + [f"-{fam}", "route", "add", dst, "via", gw, "dev", "bga"])
        return json.loads(run(ip + ["-j", "link", "show", "bga"]).stdout)[0]["ifindex"]

    def _fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def _down(self) -> None:
        close_all(self.maps, self.fds)
        if os.path.isdir(self.pin_root) and os.path.exists(f"/run/netns/{self.ns}"):
            self.cli("detach", self.iface, "--purge", netns=True, check=False)
        remove_pin_root(self.pin_root)

    def down(self) -> None:
        self.cleanup.run_one(self._down_idx)

    def prog_maps(self) -> Dict[str, Dict]:
        """bpftool's view of every map the state's pinned programs use, by name."""
        ids = set()
        for p in sorted(os.listdir(f"{self.pin_root}/progs")):
            info = json.loads(run(["bpftool", "prog", "show", "pinned",
                                   f"{self.pin_root}/progs/{p}", "-j"]).stdout)
            ids.update(info.get("map_ids", []))
        maps = {}
        for mid in sorted(ids):
            m = json.loads(run(["bpftool", "map", "show", "id", str(mid), "-j"]).stdout)
            maps[m["name"]] = m
        return maps

    def run_prog(self, fd: int, frame: bytes) -> bpfsys.TestRun:
        """One BPF_PROG_TEST_RUN of a frame, from inside the state's namespace."""
        with in_netns(self.ns):
            return bpfsys.prog_test_run(fd, frame)

    def fresh(self, fam: int, n: int) -> List[Tuple[str, int]]:
        """n client (address, port) pairs never used before on this state: new flows."""
        k = self.next_fresh[fam]
        self.next_fresh[fam] += n
        return [fresh_client(fam, k + i) for i in range(n)]

    def cli(self, *args: str, netns: bool = False, check: bool = True):
        """The bgswitch command on this state (in the namespace for attach/detach)."""
        argv = [BGSWITCH, "--pin-root", self.pin_root] + [str(a) for a in args]
        return run(nsargv(self.ns, argv) if netns else argv, check=check)

    def map(self, name: str) -> bpfsys.Map:
        if name not in self.maps:
            self.maps[name] = bpfsys.Map.open(f"{self.pin_root}/{name}")
        return self.maps[name]

    def add_service(self, name: str, vip: str, port: int, *opts: str) -> int:
        """service add NAME VIP:PORT [opts, e.g. --lb modulo or --table-size M]."""
        self.cli("service", "add", name, ep(vip, port), *opts)
        fam = 6 if ":" in vip else 4
        key = (pkt.addr_bytes(vip) + bytes(16 - len(pkt.addr_bytes(vip)))
               + struct.pack("!H", port) + struct.pack("<BB", 6, fam))
        raw = self.map("bgs_vips").lookup(key)
        if raw is None:
            raise BenchError(f"service add {name}: no bgs_vips entry")
        self.services[name] = struct.unpack_from("<I", raw)[0]  # bgs_vip.svc comes first
        return self.services[name]

    def add_backend(self, name: str, color: str, addr: str, port: int) -> None:
        self.cli("backend", "add", name, color, ep(addr, port))

    def stats(self) -> Dict[str, int]:
        m = self.map("bgs_stats")
        return {n: sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(model.u32(i)))
                for i, n in enumerate(STATS)}

    def switch_word(self, svc: int) -> model.Switch:
        return model.unpack_switch(self.map("bgs_switch").lookup(model.u32(svc)))

    def backend_at(self, slot: int) -> Tuple[str, int]:
        b = model.unpack_backend(self.map("bgs_backends").lookup(model.u32(slot)))
        return b.addr, b.port

    def table(self, svc: int, color: int) -> Optional[List[int]]:
        """The backend slots of a color's current lookup table (bgs_tables), or None when the
        color has none (`--lb modulo`, or no backend yet)."""
        sw = self.switch_word(svc)
        raw = self.map("bgs_tables").lookup(model.u32(sw.set_index(svc, color)))
        if raw is None:
            return None
        with bpfsys.Map.by_id(struct.unpack("<I", raw)[0]) as inner:
            vals = [struct.unpack("<I", v)[0] for v in inner.array_values()]
        return vals[1:1 + vals[0]]

    def table_info(self, svc: int, color: int) -> Optional[Dict]:
        """bpftool's view of a color's current lookup table: max_entries and bytes_memlock."""
        sw = self.switch_word(svc)
        raw = self.map("bgs_tables").lookup(model.u32(sw.set_index(svc, color)))
        if raw is None:
            return None
        info = json.loads(run(["bpftool", "map", "show", "id",
                               str(struct.unpack("<I", raw)[0]), "-j"]).stdout)
        return {"max_entries": info["max_entries"], "bytes_memlock": info["bytes_memlock"]}

    def picker(self, svc: int):
        """pick(client, sport, vip, vport) -> (address, port): the backend the data plane gives
        a new TCP flow of the service now, as bpf/flow.bpf.h picks it: the color from the
        green share (model.share_color), then position hash % M of the color's lookup table,
        or, without a table (`--lb modulo`), set->slot[hash % count]."""
        sw = self.switch_word(svc)
        by_color = {}
        for color in (model.BGS_BLUE, model.BGS_GREEN):
            table = self.table(svc, color)
            if table is None:
                table = model.unpack_set(self.map("bgs_sets").lookup(
                    model.u32(sw.set_index(svc, color))))
            by_color[color] = [self.backend_at(s) for s in table]

        def pick(client: str, sport: int, vip: str, vport: int) -> Tuple[str, int]:
            h = model.flow_hash(client, vip, sport, vport, 6)
            t = by_color[model.share_color(h, sw.share)]
            return t[h % len(t)]

        return pick

    def slot_of(self, svc: int, color: int, addr: str, port: int) -> int:
        be = self.map("bgs_backends")
        for slot in range(be.info.max_entries):
            raw = be.lookup(model.u32(slot))
            b = model.unpack_backend(raw)
            if b.state == 1 and b.svc == svc and b.color == color and raw[:16] == (
                    pkt.addr_bytes(addr) + bytes(16 - len(pkt.addr_bytes(addr)))) and \
                    b.port == port:
                return slot
        raise BenchError(f"no slot for backend {ep(addr, port)}")

    def flow_present(self, client: str, sport: int, svc: int) -> bool:
        return self.map("bgs_flows").lookup(model.pack_conn_key(client, sport, svc, 6)) \
            is not None


# --- timing one case --------------------------------------------------------------------------

class Case:
    """Frames to run through a program and what each must come out as. exact: every output
    must be the expected frame byte for byte (else MACs, TTL and the IPv4 header checksum may
    differ, as a forwarding fast path writes them)."""

    def __init__(self, name: str, prog: str, frames: List[bytes], expects: List[bytes],
                 stat: Optional[str], verdicts=None, exact: bool = False):
        self.name, self.prog, self.frames, self.expects, self.stat = (name, prog, frames,
                                                                      expects, stat)
        self.verdicts = verdicts or (XDP_FORWARD if prog in ("xdp", "floor_xdp")
                                     else TC_FORWARD)
        self.exact = exact


def run_case(ns: Optional[str], ifindex: int, fd: int, case: Case, calls: int, warmup: int,
             counters=None, pin: bool = True) -> Dict:
    """Run case.frames (cycled) calls+warmup times inside network namespace ns (None: ours),
    telling the program the frames arrive on ifindex (0: nothing said; a TC program gets it as
    skb->ingress_ifindex), on one CPU unless pin is False; return the figures of the last
    `calls`. counters() -> {name: count}: case.stat must move by one per call."""
    total = calls + warmup
    if ifindex and case.prog in ("tc", "floor_tc"):
        ifindex |= BB_TC_CTX
    flen, wlen = len(case.frames[0]), len(case.expects[0])
    if any(len(f) != flen for f in case.frames) or any(len(f) != wlen for f in case.expects):
        raise BenchError(f"{case.name}: frames of different lengths")
    durations = (ctypes.c_uint32 * total)()
    res = BBResult()
    before = counters() if counters and case.stat else None
    # From inside the namespace: a program that looks up routes (bpf_fib_lookup) sees that
    # namespace's, never the host's.
    with in_netns(ns) if ns else contextlib.nullcontext(), \
            on_one_cpu() if pin else contextlib.nullcontext():
        rc = lib().bb_run(fd, b"".join(case.frames), flen, len(case.frames),
                          b"".join(case.expects), wlen, pkt.ETH_LEN, ifindex, total,
                          durations, ctypes.byref(res))
    if rc:
        raise BenchError(f"{case.name}: BPF_PROG_TEST_RUN failed: {os.strerror(-rc)}")
    names = XDP_VERDICTS if case.prog in ("xdp", "floor_xdp") else TC_VERDICTS
    vname = names.get(res.verdict, str(res.verdict))
    if res.verdict not in case.verdicts or res.verdict_mismatch:
        raise BenchError(f"{case.name}: verdict {vname}, {res.verdict_mismatch} calls differing "
                         f"(want one of {sorted(names.get(v, v) for v in case.verdicts)})")
    if res.bad or (case.exact and res.exact != total):
        i = (res.first_bad if res.bad else 0) % len(case.frames)
        raise BenchError(f"{case.name}: {res.bad + (res.masked if case.exact else 0)} of "
                         f"{total} outputs wrong; first at call {max(res.first_bad, 0)}: input "
                         f"{pkt.parse_tcp(case.frames[i])}, expected "
                         f"{case.expects[i].hex()}, output length {res.out_len}")
    if before is not None:
        after = counters()
        moved = after[case.stat] - before[case.stat]
        if moved != total:
            delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            raise BenchError(f"{case.name}: {case.stat} moved by {moved}, want {total}: {delta}")
    d = list(durations)[warmup:]
    return {"ns": round(trimmed_mean(d), 1), "median_ns": median(d),
            "mean_ns": round(sum(d) / len(d), 1), "verdict": vname, "calls": calls,
            "exact": res.exact, "fastpath_rewrites": res.masked}


def time_case(st: Optional[State], fd: int, case: Case, calls: int, warmup: int) -> Dict:
    """run_case() on a state: in its namespace, XDP frames arriving on its interface, its
    counters checked."""
    if st is None:
        return run_case(None, 0, fd, case, calls, warmup)
    return run_case(st.ns, st.ifindex, fd, case, calls, warmup,
                    st.stats)


# --- flips ------------------------------------------------------------------------------------

def flipbench(st: State, svc: int, count: int, mode: str = "bench") -> float:
    """ns per switch store: flips ("bench"), or shifts of the green share ("shift")."""
    p = run([FLIPBENCH, mode, f"{st.pin_root}/bgs_switch", str(svc), str(count)])
    return json.loads(p.stdout)["ns_per_flip"]


def wall_ms(argv: List[str], n: int) -> float:
    """Median wall time of n runs of a command (fork to exit), in ms."""
    return median([timed_run(argv)[2] / 1e6 for _ in range(n)])


def cli_flip_ms(st: State, name: str, n: int, *args: str) -> float:
    """Median wall time of n `bgswitch flip NAME --no-check` commands (from fork to exit), or
    of n `bgswitch ARGS...` if given. --no-check: the backends are addresses that exist nowhere
    (probes from the host's namespace must not leave the machine), and probing is not what is
    measured."""
    argv = list(args) if args else ["flip", name, "--no-check"]
    times = []
    for _ in range(n):
        rc, err, ns = timed_run([BGSWITCH, "--pin-root", st.pin_root] + argv)
        if rc:
            raise BenchError(f"bgswitch {' '.join(argv)}: {err.strip()}")
        times.append(ns / 1e6)
    return median(times)


def part_flip(cleanup: Cleanup, prefix: str, runs: int, flips: int, cli_n: int) -> Dict:
    """Part 3, in process: the flip write averaged over `flips` flips, and the command."""
    log(f"flip cost: {runs} runs x {flips} flips, {cli_n} flip commands")
    st = State(cleanup, prefix, "flip")
    svc = st.add_service("web", ADDRS[4]["vip"], VPORT)
    st.add_backend("web", "blue", *ADDRS[4]["blue"])
    st.add_backend("web", "green", *ADDRS[4]["green"])
    gen0 = st.switch_word(svc).generation
    per_run = [flipbench(st, svc, flips) for _ in range(runs)]
    gen1 = st.switch_word(svc).generation
    if gen1 - gen0 != runs * (flips + 2):
        raise BenchError(f"flipbench: generation moved by {gen1 - gen0}, "
                         f"want {runs * (flips + 2)}")
    # A shift is the same one store with another share: 10%, 25%, 50%, 0% in turn.
    per_shift = [flipbench(st, svc, flips, "shift") for _ in range(runs)]
    if st.switch_word(svc).share != 0 or \
            st.switch_word(svc).generation - gen1 != runs * (flips + 2):
        raise BenchError(f"flipbench shift: switch word {st.switch_word(svc)}")
    # The command, and in the same loop what any command costs before it does anything: a
    # process (/bin/true), and bgswitch's own start (`-V`: dynamic loading of its libraries).
    cli, spawn, version, shift = [], [], [], []
    for _ in range(runs):
        for _ in range(cli_n):
            spawn.append(wall_ms(["/bin/true"], 1))
            version.append(wall_ms([BGSWITCH, "-V"], 1))
            cli.append(cli_flip_ms(st, "web", 1))
            shift.append(cli_flip_ms(st, "web", 1, "shift", "web", "green", "10%",
                                     "--no-check"))
            cli_flip_ms(st, "web", 1, "shift", "web", "green", "0%", "--no-check")
    st.down()
    cli, spawn, version = median(cli), median(spawn), median(version)
    return {"ns_per_flip_runs": per_run, "ns_per_flip": median(per_run), "flips": flips,
            "ns_per_shift_runs": per_shift, "ns_per_shift": median(per_shift),
            "cli_ms": cli, "cli_n": cli_n * runs, "cli_shift_ms": median(shift),
            "spawn_true_ms": spawn, "bgswitch_version_ms": version}


# --- part 2: cost as things grow --------------------------------------------------------------

def _expected_backend(pick, client: str, sport: int, vip: str, vport: int) -> Tuple[str, int]:
    """pick: State.picker()'s function."""
    return pick(client, sport, vip, vport)


def _measure_point(st: State, svc: int, vip: str, est: List[Tuple[str, int, str, int]],
                   new_clients, runs: int, calls: int, warmup: int,
                   after_new=None) -> Dict:
    """est: [(client, sport, backend addr, backend port)] of live flows to cycle through.
    new_clients(run) -> [(client, sport)] fresh tuples. after_new(run) runs after each new-flow
    run (to delete what it inserted)."""
    backends = st.picker(svc)
    est_in = [pkt.tcp_frame(c, vip, sp, VPORT, pkt.TCP_ACK, seq=1001, ack=1)
              for c, sp, _, _ in est]
    est_out = [pkt.tcp_frame(c, ba, sp, bp, pkt.TCP_ACK, seq=1001, ack=1)
               for c, sp, ba, bp in est]
    e_ns, n_ns, h_ns = [], [], []
    for r in range(runs):
        # A full LRU table may have evicted some of them while new flows went in.
        live = [i for i, (c, sp, _, _) in enumerate(est) if st.flow_present(c, sp, svc)]
        if len(live) < len(est) // 2:
            raise BenchError(f"only {len(live)} of {len(est)} established flows left")
        e = time_case(st, st.ingress_fd, Case("est", "xdp", [est_in[i] for i in live],
                                              [est_out[i] for i in live], "FLOW_HIT"),
                      calls, warmup)
        fresh = new_clients(r)
        new_in, new_out = [], []
        for c, sp in fresh:
            ba, bp = _expected_backend(backends, c, sp, vip, VPORT)
            new_in.append(pkt.tcp_frame(c, vip, sp, VPORT, pkt.TCP_SYN))
            new_out.append(pkt.tcp_frame(c, ba, sp, bp, pkt.TCP_SYN))
        n = time_case(st, st.ingress_fd, Case("new", "xdp", new_in, new_out, "FLOW_NEW"),
                      calls, warmup)
        if after_new:
            after_new(r)
        h = time_case(st, st.ingress_fd, Case("est1", "xdp", [est_in[live[0]]],
                                              [est_out[live[0]]], "FLOW_HIT"), calls, warmup)
        e_ns.append(e["ns"])
        n_ns.append(n["ns"])
        h_ns.append(h["ns"])
    return {"est_ns": median(e_ns), "est_hot_ns": median(h_ns), "new_ns": median(n_ns),
            "est_runs": e_ns, "est_hot_runs": h_ns, "new_runs": n_ns,
            "est_flows_cycled": len(live)}


def _flip_point(st: State, name: str, svc: int, runs: int, flips: int, cli_n: int) -> Dict:
    """The flip write, and the command: its wall time, and its own work, i.e. its wall time
    less that of `bgswitch -V` run just before it (process start and library loading)."""
    walls, own = [], []
    for _ in range(cli_n):
        v = wall_ms([BGSWITCH, "-V"], 1)
        f = cli_flip_ms(st, name, 1)
        walls.append(f)
        own.append(f - v)
    return {"flip_ns": median([flipbench(st, svc, flips) for _ in range(runs)]),
            "cli_flip_ms": median(walls), "cli_own_ms": median(own)}


def _flow_templates(svc: int, slot: int):
    """bgs_flows key and value templates of the synthetic IPv4 flows of a service (benchlib.c
    patches the client address and port)."""
    key = model.pack_conn_key("0.0.0.0", 0, svc, 6)
    now = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
    val = model.pack_flow(model.Flow(slot, 0, model.BGS_FLOW_SYN, 0, model.seen_of(now)))
    return key, val


def scale_flows(cleanup, prefix, levels, runs, calls, warmup, flips, cli_n, ncycle):
    st = State(cleanup, prefix, "sflows")
    a = ADDRS[4]
    svc = st.add_service("web", a["vip"], VPORT)
    st.add_backend("web", "blue", *a["blue"])
    st.add_backend("web", "green", *a["green"])
    slot = st.slot_of(svc, 0, *a["blue"])
    key, val = _flow_templates(svc, slot)
    flows_fd = st.map("bgs_flows").fd
    capacity = st.map("bgs_flows").info.max_entries
    filled, out, batched = 0, [], ctypes.c_int(0)
    scratch = 1 << 21  # synthetic indexes of the new-flow runs: deleted after each run
    for level in levels:
        t0 = time.monotonic()
        rc = lib().bb_fill_flows(flows_fd, filled, level - filled, key, val,
                                 ctypes.byref(batched))
        if rc:
            raise BenchError(f"filling bgs_flows: {os.strerror(-rc)}")
        fill_s = time.monotonic() - t0
        filled = level
        present = lib().bb_count(flows_fd, st.map("bgs_flows").key_size)
        rng = random.Random(level)
        sample = []
        for i in rng.sample(range(level), min(level, ncycle * 2)):
            c, sp = pkt.flow_client(i)
            if st.flow_present(c, sp, svc):
                sample.append((c, sp, *a["blue"]))
            if len(sample) == ncycle:
                break

        def new_clients(r, level=level):
            base = scratch + r * (calls + warmup)
            return [pkt.flow_client(base + i) for i in range(calls + warmup)]

        def after_new(r):
            lib().bb_delete_flows(flows_fd, scratch + r * (calls + warmup), calls + warmup, key)

        log(f"  {level} flows (present {present}, filled in {fill_s:.1f} s)")
        pt = _measure_point(st, svc, a["vip"], sample, new_clients, runs, calls, warmup,
                            after_new)
        pt.update(_flip_point(st, "web", svc, runs, flips, cli_n))
        pt.update({"level": level, "present": present, "capacity": capacity,
                   "fill_s": round(fill_s, 2), "batched": bool(batched.value)})
        out.append(pt)
    st.down()
    return out


def scale_services(cleanup, prefix, levels, runs, calls, warmup, flips, cli_n, ncycle):
    st = State(cleanup, prefix, "ssvc")
    out, count = [], 0
    for level in levels:
        t0 = time.monotonic()
        while count < level:
            count += 1
            vip = f"10.{100 + count // 65536}.{count // 256 % 256}.{count % 256}"
            svc = st.add_service(f"s{count}", vip, VPORT)
        name = f"s{count}"  # measured: the newest, the last a linear search would find
        st.add_backend(name, "blue", "10.0.1.1", 8080)
        st.add_backend(name, "green", "10.0.2.1", 9090)
        setup_s = time.monotonic() - t0
        log(f"  {level} services (set up in {setup_s:.1f} s)")
        pt = _scale_new_then_est(st, svc, vip, runs, calls, warmup, ncycle)
        pt.update(_flip_point(st, name, svc, runs, flips, cli_n))
        pt.update({"level": level, "svc_id": svc, "setup_s": round(setup_s, 2)})
        out.append(pt)
    st.down()
    return out


def scale_backends(cleanup, prefix, levels, runs, calls, warmup, flips, cli_n, ncycle):
    st = State(cleanup, prefix, "sbe")
    vip = ADDRS[4]["vip"]
    svc = st.add_service("web", vip, VPORT)
    out, count = [], 0
    for level in levels:
        t0 = time.monotonic()
        while count < level:
            count += 1
            st.add_backend("web", "blue", f"10.1.{count // 256}.{count % 256}", 8080)
            st.add_backend("web", "green", f"10.2.{count // 256}.{count % 256}", 9090)
        setup_s = time.monotonic() - t0
        log(f"  {level} backends per color (set up in {setup_s:.1f} s)")
        pt = _scale_new_then_est(st, svc, vip, runs, calls, warmup, ncycle)
        pt.update(_flip_point(st, "web", svc, runs, flips, cli_n))
        pt.update({"level": level, "setup_s": round(setup_s, 2)})
        out.append(pt)
    st.down()
    return out


def _delete_new_flows(st: State, svc: int, fresh) -> None:
    """Delete the bgs_flows entries a new-flow run made, so that the table does not grow from
    one measured point to the next."""
    flows = st.map("bgs_flows")
    for c, sp in fresh:
        flows.delete(model.pack_conn_key(c, sp, svc, 6))


def _scale_new_then_est(st, svc, vip, runs, calls, warmup, ncycle):
    """Open ncycle flows with SYNs (through the program), then measure est and new; the
    new-flow runs' entries are deleted after each run."""
    backends = st.picker(svc)
    opened = []
    for c, sp in st.fresh(4, ncycle):
        syn = pkt.tcp_frame(c, vip, sp, VPORT, pkt.TCP_SYN)
        r = st.run_prog(st.ingress_fd, syn)
        if r.retval not in XDP_FORWARD:
            raise BenchError(f"SYN to {vip}: verdict {r.retval}")
        opened.append((c, sp, *_expected_backend(backends, c, sp, vip, VPORT)))
    batches = []

    def new_clients(r):
        batches.append(st.fresh(4, calls + warmup))
        return batches[-1]

    return _measure_point(st, svc, vip, opened, new_clients, runs, calls, warmup,
                          lambda r: _delete_new_flows(st, svc, batches[r]))


# How a color's backend is picked, side by side: (name, service add options).
LB_CONFIGS = (("modulo", ("--lb", "modulo")), ("maglev 16381", ()),
              ("maglev 65537", ("--table-size", "65537")))


def scale_lb(cleanup, prefix, levels, runs, calls, warmup, cli_n, ncycle):
    """The new-flow cost by how the backend is picked, in one state and the same run: `--lb
    modulo` (set[hash % count], the previous way), Maglev with the default table (16381
    positions) and with 65537, each with `level` backends (the same addresses) in blue. The
    rounds interleave the configurations, and the ratio to modulo is taken within each round,
    then its median reported. Also what a table rebuild costs the command that makes it (a
    weight change, `backend add ... --weight 2` then `--weight 1`: nothing but the new set and
    table and one switch store; its wall time less that of `bgswitch -V`), and the memory of
    one table."""
    st = State(cleanup, prefix, "slb")
    out, nsvc = [], 0
    for level in levels:
        t0 = time.monotonic()
        svcs = {}
        for name, opts in LB_CONFIGS:
            nsvc += 1
            sname, vip = f"lb{nsvc}", f"10.200.{nsvc // 256}.{nsvc % 256}"
            svc = st.add_service(sname, vip, VPORT, *opts)
            for i in range(level):
                st.add_backend(sname, "blue", f"10.3.{i // 250}.{i % 250 + 1}", 8080)
            pick = st.picker(svc)
            opened = []
            for c, sp in st.fresh(4, ncycle):
                r = st.run_prog(st.ingress_fd, pkt.tcp_frame(c, vip, sp, VPORT, pkt.TCP_SYN))
                if r.retval not in XDP_FORWARD:
                    raise BenchError(f"SYN to {vip}: verdict {r.retval}")
                opened.append((c, sp, *pick(c, sp, vip, VPORT)))
            svcs[name] = (sname, svc, vip, opened)
        setup_s = time.monotonic() - t0
        log(f"  {level} backends: {', '.join(n for n, _ in LB_CONFIGS)} (set up in "
            f"{setup_s:.1f} s)")
        figs = {name: {"est": [], "new": []} for name, _ in LB_CONFIGS}
        ratios = {name: [] for name, _ in LB_CONFIGS}
        for r in range(runs):
            for name, _ in LB_CONFIGS:
                sname, svc, vip, opened = svcs[name]
                batch = []

                def new_clients(_r, batch=batch):
                    batch.append(st.fresh(4, calls + warmup))
                    return batch[-1]

                pt = _measure_point(st, svc, vip, opened, new_clients, 1, calls, warmup,
                                    lambda _r, b=batch, s=svc: _delete_new_flows(st, s, b[0]))
                figs[name]["est"].append(pt["est_ns"])
                figs[name]["new"].append(pt["new_ns"])
            for name, _ in LB_CONFIGS:
                ratios[name].append(figs[name]["new"][-1] / figs["modulo"]["new"][-1])
        point = {"level": level, "setup_s": round(setup_s, 2), "configs": {}}
        for name, _ in LB_CONFIGS:
            sname, svc, vip, _ = svcs[name]
            table = st.table_info(svc, model.BGS_BLUE)
            own = []
            for _ in range(cli_n if table else 0):
                for w in ("2", "1"):
                    v = wall_ms([BGSWITCH, "-V"], 1)
                    own.append(cli_flip_ms(st, sname, 1, "backend", "add", sname, "blue",
                                           "10.3.0.1:8080", "--weight", w) - v)
            point["configs"][name] = {
                "est_ns": median(figs[name]["est"]), "new_ns": median(figs[name]["new"]),
                "est_runs": figs[name]["est"], "new_runs": figs[name]["new"],
                "new_ratio_modulo": round(median(ratios[name]), 3),
                "rebuild_own_ms": median(own) if own else None,
                "table_entries": table["max_entries"] if table else 0,
                "table_bytes_memlock": table["bytes_memlock"] if table else 0}
        out.append(point)
    st.down()
    return out


def part_scale(cleanup: Cleanup, prefix: str, runs: int, calls: int, warmup: int, flips: int,
               cli_n: int, flows_levels, svc_levels, be_levels, ncycle: int,
               lb_levels=()) -> Dict:
    log(f"cost as things grow: flows {flows_levels}, services {svc_levels}, "
        f"backends {be_levels}, backend choice {lb_levels}")
    args = (runs, calls, warmup, flips, cli_n, ncycle)
    out = {"flows": scale_flows(cleanup, prefix, flows_levels, *args),
           "services": scale_services(cleanup, prefix, svc_levels, *args),
           "backends": scale_backends(cleanup, prefix, be_levels, *args)}
    if lb_levels:
        out["lb"] = scale_lb(cleanup, prefix, lb_levels, runs, calls, warmup, cli_n, ncycle)
    return out


# --- part 5: memory ---------------------------------------------------------------------------

# The two states of the per-flow figure: this many flows, then twice as many (bench.py sets
# it from its profile: the smoke run's states are smaller).
MEM_FLOWS = 131072


def _memlock_by_map(st: State) -> Dict[str, int]:
    return {n: m["bytes_memlock"] for n, m in st.prog_maps().items()}


def part_memory(cleanup: Cleanup, prefix: str, katran_obj: Optional[str] = None) -> Dict:
    """bytes_memlock of every map of a state attached with the default sizes; the memory per
    tracked flow: the growth of the summed memlock of every map the programs use, from a state
    attached with --flows MEM_FLOWS to one with twice as many, over the growth of flows (no
    map is named: whatever grows with the flow table counts); and Katran's, the same way from
    its per-core LRU (katran.py) when its object is given."""
    log("memory at default sizes, and per tracked flow")
    st = State(cleanup, prefix, "mem", flows=None)
    maps = {}
    for name in sorted(os.listdir(st.pin_root)):
        path = f"{st.pin_root}/{name}"
        if not name.startswith("bgs_") or os.path.isdir(path):
            continue
        info = json.loads(run(["bpftool", "map", "show", "pinned", path, "-j"]).stdout)
        maps[name] = {"type": info["type"], "max_entries": info["max_entries"],
                      "key": info["bytes_key"], "value": info["bytes_value"],
                      "bytes_memlock": info["bytes_memlock"]}
    st.down()
    sizes = []
    for i, n in enumerate((MEM_FLOWS, 2 * MEM_FLOWS)):
        s = State(cleanup, prefix, f"mem{i}", flows=n)
        sizes.append(_memlock_by_map(s))
        s.down()
    grown = {n: (sizes[1][n] - sizes[0].get(n, 0)) / MEM_FLOWS for n in sizes[1]
             if sizes[1][n] != sizes[0].get(n, 0)}
    out = {"maps": maps, "total_bytes": sum(m["bytes_memlock"] for m in maps.values()),
           "flow_entries": header_define("BGS_DEFAULT_FLOWS"),
           "growth_flows": [MEM_FLOWS, 2 * MEM_FLOWS],
           "growth_bytes_memlock": [sum(x.values()) for x in sizes],
           "bytes_per_flow": round((sum(sizes[1].values()) - sum(sizes[0].values()))
                                   / MEM_FLOWS, 1),
           "bytes_per_flow_by_map": {n: round(v, 1) for n, v in grown.items()},
           "katran": None}
    if katran_obj:
        import katran
        out["katran"] = katran.lru_bytes_per_flow(katran_obj, MEM_FLOWS)
    return out
