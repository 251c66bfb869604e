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

Each round times every case of each family as one block: the floor program (bpf/floor.bpf.c,
on the case's first frame), bgswitch and Katran, each in CHUNKS pieces, their pieces interleaved
(the order turned by one each piece and round), all on one CPU, with BPF_PROG_TEST_RUN repeat=1
(benchlib.c). Every call's verdict and output are checked (bgswitch: the DNAT'd frame toward
the backend, MACs from the neighbour entry, TTL decremented; Katran: the IPIP / IPv6-in-IPv6
frame toward the real), and each program's counters must say every call took the case's path.
A case's cost is its time less the floor's in the same block; the ratio bgswitch / Katran is
taken within each round and its median reported.
"""

import ctypes
import os
from typing import Dict, List, Optional, Tuple

from lib import bpfsys
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
        return run_case(st.ns, st.ifindex, fd, case, calls, warmup, st.stats)

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


# Each block is run in this many pieces, the programs' pieces interleaved (bench.py sets it
# from its profile).
CHUNKS = 4


def _merge(parts: List[Dict]) -> Dict:
    """One figure from the pieces of a block: the mean of their means."""
    return {"ns": round(sum(p["ns"] for p in parts) / len(parts), 1),
            "verdict": parts[0]["verdict"], "calls": sum(p["calls"] for p in parts),
            "exact": sum(p["exact"] for p in parts)}


def _interleaved(runs: Dict[str, object], clients, calls: int, warmup: int, fresh_each: bool,
                 r: int) -> Dict[str, Dict]:
    """runs: {name: fn(clients, calls, warmup)}. Run each in CHUNKS pieces, the pieces of
    the names interleaved (the order turned by one each round and piece). fresh_each: every
    call has its own client (new flows): each piece gets its own slice of `clients`."""
    c, w = max(1, calls // CHUNKS), warmup // CHUNKS
    names = list(runs)
    parts: Dict[str, List[Dict]] = {n: [] for n in names}
    for k in range(CHUNKS):
        sl = clients[k * (c + w):(k + 1) * (c + w)] if fresh_each else clients
        shift = (r + k) % len(names)
        for n in names[shift:] + names[:shift]:
            parts[n].append(runs[n](sl, c, w))
    return {n: _merge(p) for n, p in parts.items()}


def _one_round(sides: Sides, r: int, est, calls, warmup, new_calls, new_warmup) -> Dict:
    out: Dict[str, Dict] = {}
    floor_xdp, floor_tc = sides.floors

    def block(fam, kind, clients, c, w):
        ref = sides.bgs(fam, kind, clients[:1] if clients else None)[1]
        f = ref.frames[:1]
        floor = Case("floor", ref.prog, f, f, None, {TC_ACT_OK if kind == "reply" else XDP_TX},
                     True)
        runs = {"floor": lambda cl, c, w: run_case(
            sides.st.ns, sides.st.ifindex,
            floor_tc if kind == "reply" else floor_xdp, floor, c, w),
            "bgs": lambda cl, c, w: sides.run_bgs(fam, kind, cl, c, w)}
        if sides.kat and kind != "reply":
            runs["kat"] = lambda cl, c, w: sides.run_katran(fam, kind, cl, c, w)
        res = _interleaved(runs, clients, c, w, kind.startswith("new"), r)
        out[f"v{fam}.{kind}"] = res["bgs"]
        out[f"v{fam}.{kind}.floor"] = res["floor"]
        if "kat" in res:
            out[f"katran.v{fam}.{kind}"] = res["kat"]

    for fam in (4, 6):
        block(fam, "nonvip", None, calls, warmup)
        block(fam, "est", est[fam], calls, warmup)
        block(fam, "new", fresh(fam, new_calls + new_warmup), new_calls, new_warmup)
    if sides.kat:
        sides.kat.use_lrus("full")
    for fam in (4, 6):
        block(fam, "new_full", fresh(fam, new_calls + new_warmup), new_calls, new_warmup)
    if sides.kat:
        sides.kat.use_lrus("fresh")
    for fam in (4, 6):
        block(fam, "reply", est[fam], calls, warmup)
    return out


def _summary(rounds: List[Dict], katran: bool) -> Dict:
    s = {}
    for fam in (4, 6):
        for kind in KINDS:
            name = f"v{fam}.{kind}"
            fl = [r[f"{name}.floor"]["ns"] for r in rounds]
            b = [r[name]["ns"] - f for r, f in zip(rounds, fl)]
            v = {"ns": median([r[name]["ns"] for r in rounds]), "over_floor_ns": median(b),
                 "over_floor_runs": b, "floor_ns": median(fl),
                 "verdict": rounds[0][name]["verdict"], "katran": None}
            if katran and kind != "reply":
                k = [r[f"katran.{name}"]["ns"] - f for r, f in zip(rounds, fl)]
                ratios = [x / y for x, y in zip(b, k) if y > 0]
                v["katran"] = {"ns": median([r[f"katran.{name}"]["ns"] for r in rounds]),
                               "over_floor_ns": median(k), "over_floor_runs": k,
                               "verdict": rounds[0][f"katran.{name}"]["verdict"]}
                v["ratio"] = round(median(ratios), 3) if ratios else None
                v["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)] \
                    if ratios else None
            s[name] = v
        s[f"v{fam}.floor"] = {"ns": s[f"v{fam}.nonvip"]["floor_ns"]}
        s[f"v{fam}.floor_tc"] = {"ns": s[f"v{fam}.reply"]["floor_ns"]}
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
        # Every flow it saw a SYN of went into its LRU: none was skipped as a flood.
        kat = kinfo.pop("kat")
        keys = lib().bb_count(kat.lrus["fresh"][bench_cpu()], kat.lru_key_size)
        pieces = CHUNKS * (max(1, new_calls // CHUNKS) + new_warmup // CHUNKS)
        want = 2 * (EST_FLOWS + runs * pieces)
        if keys != want:
            raise BenchError(f"Katran's LRU holds {keys} flows, want {want}")
        kinfo["fresh_fill"] = keys / kinfo["lru_per_core"]
        out["katran"] = kinfo
    st.down()
    full.down()
    return out


# --- what makes the difference: part "factors" ----------------------------------------------

# (name, user's node state, TCP options, established flows cycled, pinned), cumulative: each
# adds one difference between the suite's runs before issue 13 and part 1 as it is now.
FACTORS = (("before: links down (no route: XDP_PASS), no TCP options, 1 flow", False, False, 1,
            True),
           ("+ fast path: route and neighbour, XDP_TX", True, False, 1, True),
           ("+ TCP options (66-byte frames)", True, True, 1, True),
           (f"+ {EST_FLOWS} established flows cycled", True, True, EST_FLOWS, True),
           ("the same, not pinned to one CPU", True, True, EST_FLOWS, False))


def _factor_cases(st: State, opts: bool, est, new) -> Dict[str, Case]:
    """IPv4 est and new cases on a state, with or without TCP options; the expected frames
    as the fast path sends them (node state) or as the stack gets them (no route)."""
    a = ADDRS[4]
    baddr, bport = a["blue"]
    kw = {"ttl": 63, "macs": (pkt.MAC_GATEWAY, pkt.MAC_NODE)} if st.ifindex else {}
    verdict = {XDP_TX} if st.ifindex else {XDP_PASS}

    def frame(kind, c, sp, dst, dport, **k):
        if opts:
            return (pkt.client_ack if kind == "est" else pkt.client_syn)(c, dst, sp, dport, **k)
        if kind == "est":
            return pkt.tcp_frame(c, dst, sp, dport, pkt.TCP_ACK, seq=1001, ack=1, **k)
        return pkt.tcp_frame(c, dst, sp, dport, pkt.TCP_SYN, **k)

    out = {}
    for kind, clients in (("est", est), ("new", new)):
        out[kind] = Case(f"factor {kind}", "xdp",
                         [frame(kind, c, sp, a["vip"], VPORT) for c, sp in clients],
                         [frame(kind, c, sp, baddr, bport, **kw) for c, sp in clients],
                         "FLOW_HIT" if kind == "est" else "FLOW_NEW", verdict, True)
    return out


def _factor_block(states: Dict[bool, State], floor_xdp: int, kind: str, est, calls: int,
                  warmup: int, r: int) -> Dict[str, Dict]:
    """One round's block of one kind ("est" or "new"): every configuration of FACTORS and its
    floor, in interleaved pieces. New flows: each configuration its own clients, the pieces
    handed out by index."""
    clients = est if kind == "est" else list(range(calls + warmup))
    own = [est if kind == "est" else fresh(4, calls + warmup) for _ in FACTORS]
    fns = {}
    for i, (name, node, opts, nflows, pin) in enumerate(FACTORS):
        st = states[node]

        def timed(cl, c, w, st=st, opts=opts, nflows=nflows, pin=pin, mine=own[i]):
            if kind == "new":
                cl = mine[cl[0]:cl[-1] + 1]
            case = _factor_cases(st, opts, cl[:nflows], cl)[kind]
            return run_case(st.ns, st.ifindex, st.ingress_fd, case, c, w, st.stats, pin=pin)

        def floor(cl, c, w, st=st, opts=opts, pin=pin, mine=own[i]):
            f = _factor_cases(st, opts, mine[:1], mine[:1])[kind].frames[:1]
            return run_case(st.ns, st.ifindex, floor_xdp, Case(
                "floor", "floor_xdp", f, f, None, {XDP_TX}, True), c, w, pin=pin)

        fns[f"{i}"], fns[f"{i}.floor"] = timed, floor
    res = _interleaved(fns, clients, calls, warmup, kind == "new", r)
    return {f"{i}.{kind}": {"over_floor_ns": round(res[f"{i}"]["ns"] - res[f"{i}.floor"]["ns"],
                                                   1),
                            "verdict": res[f"{i}"]["verdict"],
                            "floor_ns": res[f"{i}.floor"]["ns"]} for i in range(len(FACTORS))}


def _factor_summary(rounds: List[Dict]) -> List[Dict]:
    summary = []
    for i, (name, node, opts, nflows, pin) in enumerate(FACTORS):
        row = {"name": name, "node": node, "tcp_options": opts, "est_flows": nflows,
               "pinned": pin}
        for kind in ("est", "new"):
            this = [r[f"{i}.{kind}"]["over_floor_ns"] for r in rounds]
            # What this row adds to the one before: the median of the per-round differences.
            prev = [r[f"{i - 1}.{kind}"]["over_floor_ns"] for r in rounds] if i else this
            row[kind] = {"over_floor_ns": median(this),
                         "step_ns": round(median([a - b for a, b in zip(this, prev)]), 1),
                         "verdict": rounds[0][f"{i}.{kind}"]["verdict"]}
        summary.append(row)
    return summary


def part_factors(cleanup: Cleanup, prefix: str, runs: int, calls: int, warmup: int,
                 new_calls: int, new_warmup: int) -> Dict:
    """bgswitch's IPv4 established and new-flow costs under FACTORS, in the same rounds: what
    made the suite's figures before issue 13 differ from a user's node's."""
    log(f"factors: {len(FACTORS)} configurations x {runs} rounds")
    floor_xdp = lib().bb_load(FLOOR_OBJ.encode(), b"floor_xdp")
    if floor_xdp < 0:
        raise BenchError(f"cannot load {FLOOR_OBJ}: {os.strerror(-floor_xdp)}")
    cleanup.push("floor program", lambda: os.close(floor_xdp))
    states = {}
    for node in (False, True):
        st = State(cleanup, prefix, "fnode" if node else "fdown", node=node)
        a = ADDRS[4]
        st.add_service("web", a["vip"], VPORT)
        st.add_backend("web", "blue", *a["blue"])
        st.add_backend("web", "green", *a["green"])
        states[node] = st
    est = fresh(4, EST_FLOWS)
    for st in states.values():  # open the established flows with their SYNs
        run_case(st.ns, st.ifindex, st.ingress_fd, _factor_cases(st, False, est, est)["new"],
                 len(est), 0, st.stats)
    rounds = []
    for r in range(runs):
        rr = _factor_block(states, floor_xdp, "est", est, calls, warmup, r)
        rr.update(_factor_block(states, floor_xdp, "new", est, new_calls, new_warmup, r))
        rounds.append(rr)
    for st in states.values():
        st.down()
    return {"rounds": rounds, "summary": _factor_summary(rounds), "calls": calls,
            "new_calls": new_calls}
