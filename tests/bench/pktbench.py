"""Part 1 of the suite: the per-packet cost of bgswitch, and of Katran in the same run when the
user gives its object (`make bench KATRAN_OBJ=path`, see katran.py).

bgswitch runs in the state a user's node gets (microbench.State): `bgswitch attach` on an up
veth with a route and a resolved neighbour toward the backends, the default flow-table size, a
Maglev service with one backend per color (IPv4 and IPv6), the insert limit raised out of reach
(`limits --new-flows 100000000`). The programs are told the frames arrive on the attached
interface, so the fast path routes them back out of it: XDP_TX, as on a one-armed node.
Katran runs at its default sizes, configured as its user space would for the same VIPs.

Both get the same frames: TCP with the options clients send (MSS, window scale and SACK
permitted on SYNs; timestamps on ACKs), 66 bytes over IPv4, 86 over IPv6. Cases:
  nonvip    an ACK to another address: both pass it to the stack
  est       ACKs cycling over EST_FLOWS connections opened by SYNs through each program
  new       SYNs of new flows, the flow tables under 25 % full
  new_full  SYNs of new flows, the flow tables full, so every insert evicts: a second bgswitch
            state filled by SYNs through its own program (whatever its table layout), and a
            second per-core LRU for Katran, filled by batched updates, swapped into its
            lru_mapping for these blocks
  reply     bgswitch's reply path (TC egress); Katran has none (replies bypass it: DSR)

Each round times, per family, the floor program (bpf/floor.bpf.c) and then every case for
both programs, one block after the other (which program goes first alternates by round), all
on one CPU, with BPF_PROG_TEST_RUN repeat=1 (benchlib.c). Every call's verdict and output are
checked (bgswitch: the DNAT'd frame toward the backend, MACs from the neighbour entry, TTL
decremented; Katran: the IPIP / IPv6-in-IPv6 frame toward the real), and each program's
counters must say every call took the case's path. A case's cost is its time less the same
round's floor; the ratio bgswitch / Katran is taken within each round and its median reported.
"""

import ctypes
import os
from typing import Dict, List, Optional, Tuple

import bpfsys
import pkt
from common import (BenchError, Cleanup, FLOOR_OBJ, bench_cpu, in_netns, lib, log, median,
                    on_one_cpu)
from katran import KATRAN_LRU_SIZE, Katran
from microbench import ADDRS, VPORT, Case, State, fresh_client, run_case

EST_FLOWS = 1024  # established connections the est case cycles over
XDP_PASS, XDP_TX = 2, 3
KINDS = ("nonvip", "est", "new", "new_full", "reply")
TC_ACT_OK = 0


def setup_state(cleanup: Cleanup, prefix: str, name: str) -> State:
    st = State(cleanup, prefix, name)
    for fam, svc in ((4, "web"), (6, "web6")):
        a = ADDRS[fam]
        st.add_service(svc, a["vip"], VPORT)
        st.add_backend(svc, "blue", *a["blue"])
        st.add_backend(svc, "green", *a["green"])
    return st


def fill_state(st: State, count: int) -> None:
    """Open `count` synthetic flows to the IPv4 VIP through the state's own program."""
    tmpl = pkt.client_syn("198.18.0.0", ADDRS[4]["vip"], 1, VPORT)
    bad = ctypes.c_uint64(0)
    with in_netns(st.ns), on_one_cpu():
        rc = lib().bb_prime(st.ingress_fd, tmpl, len(tmpl), pkt.ETH_LEN, st.ifindex, 0, count,
                            1 << XDP_TX, ctypes.byref(bad))
    if rc or bad.value:
        raise BenchError(f"filling {st.pin_root}: {os.strerror(-rc) if rc else ''}"
                         f"{bad.value} of {count} SYNs not sent out by the fast path")


def flow_tables(st: State) -> Dict[str, Dict]:
    """The state's hash maps sized by its flow-table size, and how many keys each holds."""
    out = {}
    for name, m in st.prog_maps().items():
        if "hash" in m["type"] and m["max_entries"] == st.flows:
            with bpfsys.Map.by_id(m["id"]) as mp:
                out[name] = {"max_entries": m["max_entries"],
                             "keys": lib().bb_count(mp.fd, mp.key_size)}
    return out


def verified_insns(st: State) -> Dict[str, int]:
    """The kernel's verified_insns (instructions its verifier processed) of every pinned
    program of the state, by pin name."""
    out = {}
    for name in sorted(os.listdir(f"{st.pin_root}/progs")):
        fd = bpfsys.obj_get(f"{st.pin_root}/progs/{name}")
        try:
            out[name] = lib().bb_prog_verified_insns(fd)
        finally:
            os.close(fd)
    return out


# --- frames -----------------------------------------------------------------------------------

_next_client = {4: 1 << 20, 6: 1 << 20}  # past what microbench.State.fresh() hands out


def fresh(fam: int, n: int) -> List[Tuple[str, int]]:
    k = _next_client[fam]
    _next_client[fam] += n
    return [fresh_client(fam, k + i) for i in range(n)]


def _to_backend(fam: int, frame_fn, client: str, sport: int) -> bytes:
    """What bgswitch's fast path sends for a client frame to the VIP: DNAT'd to the blue
    backend, TTL decremented, from the node's MAC to the gateway's."""
    baddr, bport = ADDRS[fam]["blue"]
    return frame_fn(client, baddr, sport, bport, ttl=63, macs=(pkt.MAC_GATEWAY, pkt.MAC_NODE))


class Sides:
    """The two programs under test (and the floor programs: fds of floor_xdp, floor_tc), and
    the cases of one family for each."""

    def __init__(self, st: State, full: State, kat: Optional[Katran], floors: List[int]):
        self.st, self.full, self.kat, self.floors = st, full, kat, floors

    def bgs(self, fam: int, kind: str, clients) -> Tuple[State, Case]:
        a = ADDRS[fam]
        st = self.full if kind == "new_full" else self.st
        if kind == "nonvip":
            f = pkt.client_ack(a["client"], a["other"], 40000, VPORT)
            return st, Case(f"v{fam}.nonvip", "xdp", [f], [f], "NOT_VIP", {XDP_PASS}, True)
        if kind == "reply":
            baddr, bport = a["blue"]
            rin = [pkt.tcp_frame(baddr, c, bport, sp, pkt.TCP_ACK, seq=1, ack=1001,
                                 opts=pkt.ACK_OPTS) for c, sp in clients]
            rout = [pkt.tcp_frame(a["vip"], c, VPORT, sp, pkt.TCP_ACK, seq=1, ack=1001,
                                  opts=pkt.ACK_OPTS) for c, sp in clients]
            return st, Case(f"v{fam}.reply", "tc", rin, rout, "REPLY_NAT", None, True)
        fn = pkt.client_ack if kind == "est" else pkt.client_syn
        fin = [fn(c, a["vip"], sp, VPORT) for c, sp in clients]
        fout = [_to_backend(fam, fn, c, sp) for c, sp in clients]
        stat = "FLOW_HIT" if kind == "est" else "FLOW_NEW"
        return st, Case(f"v{fam}.{kind}", "xdp", fin, fout, stat, {XDP_TX}, True)

    def katran(self, fam: int, kind: str, clients) -> Case:
        a = ADDRS[fam]
        if kind == "nonvip":
            f = pkt.client_ack(a["client"], a["other"], 40000, VPORT)
            return Case(f"katran v{fam}.nonvip", "xdp", [f], [f], "PASS", {XDP_PASS}, True)
        fn = pkt.client_ack if kind == "est" else pkt.client_syn
        fin = [fn(c, a["vip"], sp, VPORT) for c, sp in clients]
        fout = [self.kat.expected_output(f, a["blue"][0]) for f in fin]
        return Case(f"katran v{fam}.{kind}", "xdp", fin, fout, "HIT" if kind == "est" else "NEW",
                    {XDP_TX}, True)

    def run_bgs(self, fam, kind, clients, calls, warmup) -> Dict:
        st, case = self.bgs(fam, kind, clients)
        fd = st.egress_fd if kind == "reply" else st.ingress_fd
        return run_case(st.ns, st.ifindex if case.prog == "xdp" else 0, fd, case, calls,
                        warmup, st.stats)

    def run_katran(self, fam, kind, clients, calls, warmup) -> Dict:
        case = self.katran(fam, kind, clients)
        if kind.startswith("new"):
            self.kat.reset_conn_rate()
        return run_case(self.st.ns, self.st.ifindex, self.kat.prog_fd, case, calls, warmup,
                        self.kat.counters)


# --- the part -----------------------------------------------------------------------------------

def _load_katran(cleanup: Cleanup, path: str, full_entries_extra: float = 1 / 16) -> Dict:
    """Katran loaded and configured (katran.py), its fresh per-core LRUs in place and a full
    one made for the bench CPU. Returns {"kat": Katran, figures}."""
    kat = Katran(path)
    cleanup.push(f"Katran {path}", kat.close)
    kat.set_gateway(pkt.MAC_GATEWAY)
    for fam in (4, 6):
        kat.add_vip(ADDRS[fam]["vip"], VPORT, ADDRS[fam]["blue"][0])
    per_core = KATRAN_LRU_SIZE // bpfsys.possible_cpus()
    kat.make_lrus("fresh", per_core)
    kat.use_lrus("fresh")
    cpu = bench_cpu()
    full = kat.make_lrus("full", per_core, cpus=[cpu])
    count = per_core + int(per_core * full_entries_extra)
    kat.fill_lru(full[cpu], ADDRS[4]["vip"], VPORT, count, 0)
    keys = lib().bb_count(full[cpu], kat.lru_key_size)
    return {"kat": kat, "lru_per_core": per_core, "cores": bpfsys.possible_cpus(),
            "full_pushed": count, "full_keys": keys, "verified_insns": kat.verified_insns(),
            "obj": path}


def _open_est(sides: Sides, est: Dict[int, List]) -> None:
    """Open the established connections with their SYNs, through each program."""
    for fam, clients in est.items():
        sides.run_bgs(fam, "new", clients, len(clients), 0)
        if sides.kat:
            sides.run_katran(fam, "new", clients, len(clients), 0)


def _one_round(sides: Sides, r: int, est, calls, warmup, new_calls, new_warmup) -> Dict:
    out: Dict[str, Dict] = {}
    order = ("bgs", "kat") if r % 2 == 0 else ("kat", "bgs")

    def both(fam, kind, clients, c, w):
        for who in order:
            if who == "bgs":
                out[f"v{fam}.{kind}"] = sides.run_bgs(fam, kind, clients, c, w)
            elif sides.kat:
                out[f"katran.v{fam}.{kind}"] = sides.run_katran(fam, kind, clients, c, w)

    floor_xdp, floor_tc = sides.floors
    for fam in (4, 6):
        f = sides.bgs(fam, "nonvip", None)[1].frames[0]
        out[f"v{fam}.floor"] = run_case(sides.st.ns, sides.st.ifindex, floor_xdp,
                                        Case("floor", "floor_xdp", [f], [f], None, {XDP_TX},
                                             True), calls, warmup)
        both(fam, "nonvip", None, calls, warmup)
        both(fam, "est", est[fam], calls, warmup)
        both(fam, "new", fresh(fam, new_calls + new_warmup), new_calls, new_warmup)
    if sides.kat:
        sides.kat.use_lrus("full")
    for fam in (4, 6):
        both(fam, "new_full", fresh(fam, new_calls + new_warmup), new_calls, new_warmup)
    if sides.kat:
        sides.kat.use_lrus("fresh")
    for fam in (4, 6):
        rep = sides.bgs(fam, "reply", est[fam])[1]
        out[f"v{fam}.floor_tc"] = run_case(sides.st.ns, 0, floor_tc, Case(
            "floor_tc", "tc", rep.frames[:1], rep.frames[:1], None, {TC_ACT_OK}, True),
            calls, warmup)
        out[f"v{fam}.reply"] = sides.run_bgs(fam, "reply", est[fam], calls, warmup)
    return out


def _summary(rounds: List[Dict], katran: bool) -> Dict:
    s = {}
    for fam in (4, 6):
        s[f"v{fam}.floor"] = {"ns": median([r[f"v{fam}.floor"]["ns"] for r in rounds])}
        s[f"v{fam}.floor_tc"] = {"ns": median([r[f"v{fam}.floor_tc"]["ns"] for r in rounds])}
        for kind in KINDS:
            floor = f"v{fam}.floor_tc" if kind == "reply" else f"v{fam}.floor"
            name = f"v{fam}.{kind}"
            b = [r[name]["ns"] - r[floor]["ns"] for r in rounds]
            v = {"ns": median([r[name]["ns"] for r in rounds]), "over_floor_ns": median(b),
                 "over_floor_runs": b, "verdict": rounds[0][name]["verdict"],
                 "katran": None}
            if katran and kind != "reply":
                k = [r[f"katran.{name}"]["ns"] - r[floor]["ns"] for r in rounds]
                ratios = [x / y if y > 0 else None for x, y in zip(b, k)]
                ok = [x for x in ratios if x is not None]
                v["katran"] = {"ns": median([r[f"katran.{name}"]["ns"] for r in rounds]),
                               "over_floor_ns": median(k), "over_floor_runs": k,
                               "verdict": rounds[0][f"katran.{name}"]["verdict"]}
                v["ratio"] = round(median(ok), 3) if ok else None
                v["ratio_range"] = [round(min(ok), 3), round(max(ok), 3)] if ok else None
            s[name] = v
    return s


def part_pkt(cleanup: Cleanup, prefix: str, runs: int, calls: int, warmup: int, new_calls: int,
             new_warmup: int, katran_obj: Optional[str]) -> Dict:
    log(f"per-packet cost: {runs} rounds x {calls} calls per case ({new_calls} per new-flow "
        f"case), Katran {'from ' + katran_obj if katran_obj else 'not measured'}")
    floors = [lib().bb_load(FLOOR_OBJ.encode(), n) for n in (b"floor_xdp", b"floor_tc")]
    if min(floors) < 0:
        raise BenchError(f"cannot load {FLOOR_OBJ}: {os.strerror(-min(floors))}")
    for fd in floors:
        cleanup.push("floor program", lambda fd=fd: os.close(fd))
    st = setup_state(cleanup, prefix, "pkt")
    full = setup_state(cleanup, prefix, "pktfull")
    with on_one_cpu():
        kinfo = _load_katran(cleanup, katran_obj) if katran_obj else None
        push = full.flows + full.flows // 16
        fill_state(full, push)
        sides = Sides(st, full, kinfo["kat"] if kinfo else None, floors)
        est = {fam: fresh(fam, EST_FLOWS) for fam in (4, 6)}
        _open_est(sides, est)
        rounds = [_one_round(sides, r, est, calls, warmup, new_calls, new_warmup)
                  for r in range(runs)]
    fresh_fill = {n: t["keys"] / t["max_entries"] for n, t in flow_tables(st).items()}
    if any(x >= 0.25 for x in fresh_fill.values()):
        raise BenchError(f"the fresh state's tables are not under 25 % full: {fresh_fill}")
    out = {"rounds": rounds, "summary": _summary(rounds, bool(kinfo)), "calls": calls,
           "warmup": warmup, "new_calls": new_calls, "new_warmup": new_warmup,
           "est_flows": EST_FLOWS, "flows": st.flows, "verified_insns": verified_insns(st),
           "fresh_fill": fresh_fill, "full_fill": {"pushed": push, "tables": flow_tables(full)},
           "frame_bytes": {4: 66, 6: 86}, "katran": None}
    if kinfo:
        kat = kinfo.pop("kat")
        kinfo["fresh_fill"] = lib().bb_count(kat.lrus["fresh"][bench_cpu()],
                                             kat.lru_key_size) / kinfo["lru_per_core"]
        out["katran"] = kinfo
    st.down()
    full.down()
    return out
