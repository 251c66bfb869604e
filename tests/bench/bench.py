#!/usr/bin/python3
"""bgswitch's benchmark suite (`make bench`): prints one table, and writes results.json, the
table (table.txt, table.md) and PNG figures into the results folder.

    sudo make bench [KATRAN_OBJ=path]            # builds, then runs this with --out bench-results
    sudo /usr/bin/python3 tests/bench/bench.py --out DIR [--smoke] [--parts pkt,scale,...]
                                               [--katran-obj path] [--ref-bgswitch path]

Parts (all by default):
  pkt    per-packet cost with BPF_PROG_TEST_RUN against a floor program, the
         state a user's node gets (fast path on), and Katran's balancer.bpf.o
         on the same frames in the same rounds when --katran-obj is given
         (built by the user from Katran's source; else "not measured")    (pktbench.py,
                                                                            katran.py)
  scale  established / new-flow / flip cost with 1k-1M flows, 1-1000 services,
         1-256 backends per color; the new-flow cost with Maglev tables of
         16381 and 65537 positions against --lb modulo, side by side, and
         what a table rebuild costs the command                            (microbench.py)
  flip   the flip write (1M flips in process), the shift write (a green share), the
         `bgswitch flip` and `bgswitch shift` commands' wall time, and the
         cutover seen by new connections under load                        (microbench.py,
                                                                            netbench.py)
  net    wrk through namespaces: direct, bgswitch native and generic XDP, nftables DNAT;
         failed requests while flipping                                    (netbench.py)
  factors (only when asked for) what made part 1's figures before issue 13 differ
         from a user's node's: the fast path's route, TCP options, flows
         cycled, CPU pinning, added one at a time                         (pktbench.py)
  mem    map memory at default sizes (bpftool bytes_memlock), and per
         tracked flow (memlock growth over flow growth; Katran's too)     (microbench.py)
  local  connect() to a VIP through the cgroup socket hooks against connect()
         straight to the backend, UDP and TCP, as a ratio in one run       (localbench.py)
  cmd    `bgswitch flip`, `shift`, `rollback` (probes off) of the last of 1,000
         services, spawn to exit, beside
         /bin/true, `bgswitch -V`, socat to a unix echo server and HAProxy's
         runtime API (socat, `set weight`), idle and under load; a flip's
         system calls (strace) and shared libraries (ldd); with --ref-bgswitch,
         another build's flip, rollback and shift in the same rounds         (cmdbench.py)

Every figure is the median of several runs, and every ratio is taken within one run, then
its median over the runs is reported. Needs root; runs 7-13 minutes on 2 cores (--smoke:
seconds, minimal counts, for tests/test_bench_smoke.py). Everything it creates is named
bgsb<4 hex digits>-* and removed on exit, on errors and on SIGINT/SIGTERM too.
"""

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (BGSWITCH, BPFFS, CONNLOAD, FLIPBENCH, FLOOR_OBJ, HTTPD, LIBBENCH,  # noqa
                    BenchError, Cleanup, log, machine, new_run_prefix, run)
import cmdbench  # noqa: E402
import localbench  # noqa: E402
import microbench  # noqa: E402
import netbench  # noqa: E402
import pktbench  # noqa: E402

PARTS = ("pkt", "scale", "flip", "net", "mem", "local", "cmd")
EXTRA_PARTS = ("factors",)  # run only when asked for (--parts)
TIME_LIMIT_S = 1800  # a hard stop, far above the expected 7-13 minutes

PROFILES = {
    "full": dict(pkt_runs=7, pkt_calls=20000, pkt_warmup=2000, pkt_new_calls=10000,
                 pkt_new_warmup=1000, pkt_chunks=4,
                 scale_runs=5, scale_calls=10000, scale_warmup=1000, scale_flips=200000,
                 scale_cli=21, flows_levels=[1000, 100000, 1000000],
                 svc_levels=[1, 100, 1000], be_levels=[1, 16, 256], ncycle=1024,
                 lb_levels=[16, 256],
                 flip_runs=5, flips=1000000, flip_cli=31,
                 cut_rounds=5, cut_rate=20000, cut_ms=1200,
                 net_rounds=9, net_seconds=1, net_conns=32, net_flips=3, net_flip_seconds=1,
                 net_cases=list(netbench.CASES), state_flows=None, mem_flows=131072,
                 local_rounds=7, local_iters=20000, cmd_rounds=200, cmd_services=1000),
    "smoke": dict(pkt_runs=2, pkt_calls=300, pkt_warmup=50, pkt_new_calls=300,
                  pkt_new_warmup=50, pkt_chunks=1,
                  scale_runs=2, scale_calls=300, scale_warmup=50, scale_flips=10000,
                  scale_cli=3, flows_levels=[1000, 5000], svc_levels=[1, 10],
                  be_levels=[1, 4], ncycle=256, lb_levels=[4],
                  flip_runs=2, flips=100000, flip_cli=3,
                  cut_rounds=1, cut_rate=10000, cut_ms=600,
                  net_rounds=1, net_seconds=1, net_conns=16, net_flips=2, net_flip_seconds=1,
                  net_cases=["direct", "native", "nft"], state_flows=65536, mem_flows=16384,
                  local_rounds=2, local_iters=500, cmd_rounds=5, cmd_services=10),
}


# --- the table --------------------------------------------------------------------------------

def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 10000 else f"{x:.0f}"


def _level(x: int) -> str:
    """1, 16, 1k, 100k, 1M."""
    for div, suffix in ((1000000, "M"), (1000, "k")):
        if x >= div and x % div == 0:
            return f"{x // div}{suffix}"
    return str(x)


def _ns(x) -> str:
    return "-" if x is None else f"{x:.0f} ns"


NOT_MEASURED = "not measured (make bench KATRAN_OBJ=path)"
PKT_KINDS = {"nonvip": "non-VIP", "est": "VIP established ({est} flows cycled)",
             "new": "VIP new flow, tables under 25 % full",
             "new_full": "VIP new flow, tables full (every insert evicts)",
             "reply": "reply, source back to the VIP (TC egress)"}


def _pkt_rows(p: dict):
    """Part 1's rows: bgswitch, and Katran from the same rounds when it was measured."""
    s, kat, sec = p["summary"], p.get("katran"), "1 per packet"
    rows = [(sec, "floor: XDP, Ethernet check, XDP_TX (IPv4 66 B / IPv6 86 B)",
             f"{s['v4.floor']['ns']:.0f} / {s['v6.floor']['ns']:.0f} ns", "1.00x floor",
             "the same floor" if kat else ""),
            (sec, "floor: TC, Ethernet check, TC_ACT_OK",
             f"{s['v4.floor_tc']['ns']:.0f} / {s['v6.floor_tc']['ns']:.0f} ns",
             "1.00x tc floor", "")]
    losses = []
    for fam in (4, 6):
        for kind, what in PKT_KINDS.items():
            v = s[f"v{fam}.{kind}"]
            floor = s[f"v{fam}.floor_tc" if kind == "reply" else f"v{fam}.floor"]["ns"]
            kv = v.get("katran")
            if kv:
                lo, hi = v["ratio_range"]
                vs = f"{v['ratio']:.2f}x Katran ({lo:.2f}-{hi:.2f})"
                kcol = f"{kv['ns']:.0f} ns ({kv['over_floor_ns']:+.0f}) {kv['verdict']}"
                if v["ratio"] > 1:
                    losses.append(f"IPv{fam} {kind} {v['ratio']:.2f}x")
            else:
                vs = f"{v['ns'] / floor:.2f}x {'tc ' if kind == 'reply' else ''}floor"
                kcol = "n/a: replies bypass it (DSR)" if kind == "reply" else NOT_MEASURED
            rows.append((sec, f"IPv{fam} {what.format(est=p['est_flows'])}",
                         f"{v['ns']:.0f} ns ({v['over_floor_ns']:+.0f}) {v['verdict']}", vs,
                         kcol))
    if kat:
        rows.append((sec, "cases where bgswitch costs more than Katran (median ratio > 1)",
                     f"{len(losses)} of 8", "", ", ".join(losses) or "none"))
    for prog, n in p["verified_insns"].items():
        rows.append((sec, f"verified_insns: {prog}", f"{n:,}", f"{n / 1e6:.0%} of 1,000,000",
                     f"balancer_ingress {kat['verified_insns']:,}"
                     if kat and prog == "bgs_ingress" else ""))
    return rows


CMD_NAMES = {"true": "/bin/true", "version": "`bgswitch -V` (its start alone)",
             "echo": "socat to a unix echo server", "flip": "`bgswitch flip far green`",
             "rollback": "`bgswitch rollback far`", "shift": "`bgswitch shift far green 10%`",
             "haproxy_flip": "HAProxy runtime API: 2 x set weight (a flip), socat",
             "haproxy_shift": "HAProxy runtime API: 2 x set weight (10 %), socat",
             "ref_flip": "reference build (--ref-bgswitch): flip",
             "ref_rollback": "reference build: rollback",
             "ref_shift": "reference build: shift 10%"}


def _cmd_rows(c: dict):
    """Part cmd's rows: every command idle and loaded; what the bgswitch ones cost against
    /bin/true, the echo server and HAProxy's runtime API; where they lose."""
    sec, losses = "7 commands, spawn to exit", []
    yield (sec, "the service the bgswitch commands change", f"far, id {c['service_id']}",
           f"the last of {c['services']} services", "")
    for cond, what in (("idle", "idle"), ("load", f"under {_k(c['rate'])} new conn/s")):
        for name, label in CMD_NAMES.items():
            if name not in c[cond]:
                continue  # no reference build
            v = c[cond][name]
            vs = ""
            if name.startswith("ref_"):
                vs = f"{v['vs_true']:.2f}x true, {v['vs_haproxy']:.2f}x HAProxy"
            elif "vs_haproxy" in v:
                vs = (f"{v['vs_true']:.2f}x true, {v['vs_echo']:.2f}x echo, "
                      f"{v['vs_haproxy']:.2f}x HAProxy"
                      + (f", {v['vs_ref']:.2f}x reference" if "vs_ref" in v else ""))
                if v["vs_haproxy"] > 1:
                    losses.append(f"{name} {cond} {v['vs_haproxy']:.2f}x")
            elif "vs_true" in v:
                vs = f"{v['vs_true']:.2f}x true"
            elif "vs_echo" in v:
                vs = f"{v['vs_echo']:.2f}x echo"
            rows_ms = f"{v['median_ms']:.2f} / {v['p99_ms']:.2f} ms"
            yield (sec, f"{what}: {label}, median / p99", rows_ms, vs,
                   "--no-check" if name in ("flip", "rollback", "shift") else "")
        yield (sec, f"{what}: HAProxy runtime API from a running process (a flip), median",
               f"{c[cond]['haproxy_api_ms']:.2f} ms", "no process start", "")
    yield (sec, "cases where a bgswitch command costs more than HAProxy's API",
           f"{len(losses)} of 6", "", ", ".join(losses) or "none")
    yield (sec, "a flip: system calls (strace -f -c), bpf() among them, shared libraries",
           f"{c['syscalls']} / {c['bpf_calls']} / {c['shared_libs']}", "",
           ", ".join(os.path.basename(x) for x in c["libs"]))


def table_rows(res: dict):
    """[(section, measure, value, vs baseline, Katran or notes)]."""
    rows = []
    if res.get("per_packet"):
        rows += _pkt_rows(res["per_packet"])
    if res.get("factors"):
        sec = "1b what part 1 measures, and what it measured before (IPv4)"
        for i, f in enumerate(res["factors"]["summary"]):
            rows.append((sec, f["name"], f"est +{f['est']['over_floor_ns']:.0f} / new "
                         f"+{f['new']['over_floor_ns']:.0f} ns",
                         f"{f['est']['step_ns']:+.0f} / {f['new']['step_ns']:+.0f} ns on the "
                         "row above" if i else "", f"{f['est']['verdict']}"))
    if res.get("scale"):
        sc = res["scale"]
        sec = "2 as things grow"
        for key, unit in (("flows", "live flows"), ("services", "services"),
                          ("backends", "backends/color")):
            base = sc[key][0]
            for p in sc[key]:
                rows.append((sec, f"{_level(p['level'])} {unit}: est / est 1 flow / new",
                             f"{p['est_ns']:.0f} / {p['est_hot_ns']:.0f} / {p['new_ns']:.0f} ns",
                             f"{p['est_ns'] / base['est_ns']:.2f}x / "
                             f"{p['new_ns'] / base['new_ns']:.2f}x first", ""))
            for p in sc[key]:
                own = p["cli_own_ms"]
                rows.append((sec, f"{_level(p['level'])} {unit}: flip write / command (own)",
                             f"{p['flip_ns']:.1f} ns / {p['cli_flip_ms']:.2f} "
                             f"({'<0.05' if own < 0.05 else f'{own:.2f}'}) ms",
                             f"write {p['flip_ns'] / base['flip_ns']:.2f}x first", ""))
        for p in sc.get("lb", []):
            for name, c in p["configs"].items():
                what = "--lb modulo (set[h % count])" if name == "modulo" else name
                rows.append((sec, f"{p['level']} backends, {what}: est / new",
                             f"{c['est_ns']:.0f} / {c['new_ns']:.0f} ns",
                             f"new {c['new_ratio_modulo']:.2f}x modulo", ""))
            for name, c in p["configs"].items():
                if not c["table_entries"]:
                    continue
                own = c["rebuild_own_ms"]
                rows.append((sec, f"{p['level']} backends, {name}: table rebuild, "
                             "command (own) / table",
                             f"{'<0.05' if own < 0.05 else f'{own:.2f}'} ms / "
                             f"{c['table_bytes_memlock'] / 1024:.0f} KiB",
                             "a weight change, less `bgswitch -V`", ""))
    if res.get("flip"):
        f = res["flip"]
        sec = "3 the flip"
        rows.append((sec, f"flip write, in process (mean of {f['flips']:,} flips)",
                     f"{f['ns_per_flip']:.1f} ns", "", ""))
        rows.append((sec, f"`bgswitch flip` command, wall (median of {f['cli_n']})",
                     f"{f['cli_ms']:.2f} ms",
                     f"/bin/true {f['spawn_true_ms']:.2f} ms, `bgswitch -V` "
                     f"{f['bgswitch_version_ms']:.2f} ms", ""))
        if "ns_per_shift" in f:
            rows.append((sec, f"shift write (green share), in process (mean of {f['flips']:,})",
                         f"{f['ns_per_shift']:.1f} ns",
                         f"{f['ns_per_shift'] / f['ns_per_flip']:.2f}x flip write", ""))
            rows.append((sec, f"`bgswitch shift web green 10%` command, wall (median of "
                         f"{f['cli_n']})", f"{f['cli_shift_ms']:.2f} ms",
                         f"{f['cli_shift_ms'] / f['cli_ms']:.2f}x flip command", ""))
    if res.get("cutover"):
        c = res["cutover"]["summary"]
        sec = "3 the flip"
        rounds = len(res["cutover"]["rounds"])
        rows.append((sec, "cutover, in-process write: first new conn on green / last on blue",
                     f"{c['write.to_first_new_us']:+.0f} / {c['write.to_last_old_us']:+.0f} us",
                     f"{_k(c['conn_per_s'])} conn/s, 1 start per "
                     f"{1e6 / res['cutover']['rate']:.0f} us",
                     f"contradicting it: {c['write.old_after'] + c['write.new_before']}"))
        rows.append((sec, "cutover, `bgswitch flip` from launch: first new / last old",
                     f"{c['command.to_first_new_us'] / 1000:+.2f} / "
                     f"{c['command.to_last_old_us'] / 1000:+.2f} ms",
                     f"command runs {c['command_wall_us'] / 1000:.2f} ms",
                     f"contradicting it: {c['command.old_after'] + c['command.new_before']}"))
        rows.append((sec, f"cutover: failed connections ({rounds} rounds, 2 flips each)",
                     str(c["failed"]), "", ""))
    if res.get("network"):
        n = res["network"]["summary"]
        sec = "4 network path"
        names = {"direct": "direct to backend", "native": "bgswitch native XDP",
                 "generic": "bgswitch generic XDP", "nft": "nftables DNAT + conntrack"}
        for mode, mname in (("keepalive", "keep-alive"), ("close", "conn/request")):
            for case in res["network"]["cases"]:
                v = n[f"{case}.{mode}"]
                rows.append((sec, f"{mname}: {names[case]}",
                             f"{_k(v['rps'])} req/s, p50 {v['p50_us']:.0f} "
                             f"p99 {v['p99_us']:.0f} us"
                             + (f", {v['failed']} failed" if v["failed"] else ""),
                             f"{v['rps_ratio']:.2f}x rps ({v['rps_ratio_range'][0]:.2f}-"
                             f"{v['rps_ratio_range'][1]:.2f}), {v['p99_ratio']:.2f}x p99",
                             "" if case != "direct" else "= 1.00x"))
        for key, what in (("flip.bgswitch", "bgswitch flip"),
                          ("flip.nft", "nft rule swapped (one transaction)")):
            v = n[key]
            rows.append((sec, f"failed requests during {v['flips']} x {what}",
                         f"{v['failed']} of {_k(v['requests'])}",
                         f"served blue {_k(v['served']['blue'])} green "
                         f"{_k(v['served']['green'])}",
                         f"{v['flip_ms']:.1f} ms per change, loaded"))
    if res.get("local"):
        lo = res["local"]
        sec = "6 local clients"
        for proto in ("udp", "tcp"):
            v = lo[proto]
            what = "socket+connect+close" + (" (+accept)" if proto == "tcp" else "")
            rows.append((sec, f"{proto.upper()} {what}: to the VIP through the hooks",
                         f"{v['vip_ns']:.0f} ns",
                         f"{v['vip_over_direct']:.2f}x direct ({v['vip_over_direct_range'][0]:.2f}"
                         f"-{v['vip_over_direct_range'][1]:.2f})", ""))
            rows.append((sec, f"{proto.upper()} {what}: to the backend, hooks attached / none",
                         f"{v['direct_ns']:.0f} / {v['bare_ns']:.0f} ns",
                         f"{v['direct_over_bare']:.2f}x no hooks", ""))
    if res.get("command"):
        rows += _cmd_rows(res["command"])
    if res.get("memory"):
        m = res["memory"]
        sec = "5 memory"
        k = m.get("katran")
        parts = " + ".join(f"{n} {v:.0f}" for n, v in m["bytes_per_flow_by_map"].items())
        rows.append((sec, "bytes per tracked flow (memlock growth over flow growth)",
                     f"{m['bytes_per_flow']:.0f} B ({parts})",
                     f"{m['bytes_per_flow'] / k['bytes_per_flow']:.2f}x Katran" if k else "",
                     f"{k['bytes_per_flow']:.0f} B (its per-core LRU)" if k else NOT_MEASURED))
        rows.append((sec, f"all maps at default sizes ({m['flow_entries']:,} flows)",
                     f"{m['total_bytes'] / 2**20:.1f} MiB", "", ""))
    return rows


def format_table(rows, mach, load=("?", "?")) -> str:
    head = ("measure", "bgswitch", "vs baseline", "Katran, same run / notes")
    w = [max(len(head[i]), *(len(r[i + 1]) for r in rows)) for i in range(4)]
    lines = [f"bgswitch benchmark: {mach['nproc']} CPUs, {mach['cpu']}, kernel {mach['kernel']}"
             f", load average {load[0]} at start, {load[1]} at end",
             "  ".join(h.ljust(w[i]) for i, h in enumerate(head)).rstrip(),
             "  ".join("-" * x for x in w)]
    section = None
    for r in rows:
        if r[0] != section:
            section = r[0]
            lines.append(f"[{section}]")
        lines.append("  ".join(r[i + 1].ljust(w[i]) for i in range(4)).rstrip())
    return "\n".join(lines)


def format_markdown(rows) -> str:
    out = ["| part | measure | bgswitch | vs baseline | Katran, same run / notes |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------

def _check_environment(parts, katran_obj) -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (BPF, network namespaces)")
    need = [BGSWITCH]
    if {"pkt", "scale", "flip", "mem"} & set(parts):
        need += [LIBBENCH, FLOOR_OBJ, FLIPBENCH]
    if "local" in parts:
        need.append(localbench.SOCKBENCH)
    if {"net", "flip", "cmd"} & set(parts):
        need += [HTTPD, CONNLOAD]
    if "cmd" in parts:
        need.append(cmdbench.CMDTIME)
    missing = [p for p in need if not os.path.exists(p)]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: run 'make bench-build'")
    tools = ({"wrk", "nft", "taskset"} if "net" in parts else set()) | (
        {"socat", "haproxy", "strace", "ldd"} if "cmd" in parts else set())
    for tool in sorted(tools):
        if run(["sh", "-c", f"command -v {tool}"], check=False).returncode:
            raise BenchError(f"{tool} not found: run scripts/install-deps.sh")
    if katran_obj and not os.path.isfile(katran_obj):
        raise BenchError(f"KATRAN_OBJ {katran_obj}: no such file")
    if not os.path.ismount(BPFFS):
        run(["mount", "-t", "bpf", "bpf", BPFFS])


def _loadavg() -> str:
    """The 1-minute load average: other work on the machine shows in the figures."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def _raise_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def _time_limit(_signum, _frame):
    raise BenchError(f"time limit of {TIME_LIMIT_S} s reached")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bgswitch benchmark suite (make bench)")
    ap.add_argument("--out", default="bench-results", help="results folder")
    ap.add_argument("--smoke", action="store_true", help="minimal counts (seconds)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)}, or "
                    f"{','.join(EXTRA_PARTS)} (not run by default)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--ref-bgswitch", metavar="PATH",
                    help="another bgswitch build (the one before a change, say): part cmd "
                    "times its flip, rollback and shift in the same rounds")
    ap.add_argument("--katran-obj", metavar="PATH",
                    help="Katran's balancer.bpf.o, built from its own source with its own "
                    "pipeline: measured side by side in parts pkt and mem")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS + EXTRA_PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}")
    cfg = PROFILES["smoke" if args.smoke else "full"]

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    signal.signal(signal.SIGALRM, _time_limit)
    signal.alarm(TIME_LIMIT_S)

    microbench.STATE_FLOWS = netbench.ATTACH_FLOWS = cfg["state_flows"]
    microbench.MEM_FLOWS = cfg["mem_flows"]
    pktbench.CHUNKS = cfg["pkt_chunks"]
    cleanup = Cleanup()
    prefix = new_run_prefix()
    mach = machine()
    results = {"machine": mach, "profile": "smoke" if args.smoke else "full", "config": cfg,
               "katran_obj": args.katran_obj,
               "prefix": prefix, "command": "make bench" if not args.smoke else
               "tests/bench/bench.py --smoke"}
    t_start = time.monotonic()
    results["loadavg_start"] = _loadavg()
    try:
        _check_environment(parts, args.katran_obj)
        os.makedirs(args.out, exist_ok=True)
        timing = results["part_seconds"] = {}

        def timed(name, fn, *a):
            t0 = time.monotonic()
            r = fn(*a)
            timing[name] = round(time.monotonic() - t0, 1)
            return r

        if "pkt" in parts:
            results["per_packet"] = timed("pkt", pktbench.part_pkt, cleanup, prefix,
                                          cfg["pkt_runs"], cfg["pkt_calls"], cfg["pkt_warmup"],
                                          cfg["pkt_new_calls"], cfg["pkt_new_warmup"],
                                          args.katran_obj)
        if "factors" in parts:
            results["factors"] = timed("factors", pktbench.part_factors, cleanup, prefix,
                                       cfg["pkt_runs"], cfg["pkt_calls"], cfg["pkt_warmup"],
                                       cfg["pkt_new_calls"], cfg["pkt_new_warmup"])
        if "scale" in parts:
            results["scale"] = timed(
                "scale", microbench.part_scale, cleanup, prefix, cfg["scale_runs"],
                cfg["scale_calls"], cfg["scale_warmup"], cfg["scale_flips"], cfg["scale_cli"],
                cfg["flows_levels"], cfg["svc_levels"], cfg["be_levels"], cfg["ncycle"],
                cfg["lb_levels"])
        if "flip" in parts:
            results["flip"] = timed("flip", microbench.part_flip, cleanup, prefix,
                                    cfg["flip_runs"], cfg["flips"], cfg["flip_cli"])
        if "mem" in parts:
            results["memory"] = timed("mem", microbench.part_memory, cleanup, prefix,
                                      args.katran_obj)
        if "local" in parts:
            results["local"] = timed("local", localbench.part_local, cleanup, prefix,
                                     cfg["local_rounds"], cfg["local_iters"])
        if {"flip", "net", "cmd"} & set(parts):
            topo = timed("topology", netbench.Topology, cleanup, prefix)
            if "cmd" in parts:
                results["command"] = timed("cmd", cmdbench.part_cmd, cleanup, topo,
                                           cfg["cmd_rounds"], cfg["cut_rate"],
                                           cfg["cmd_services"], args.ref_bgswitch)
            if "flip" in parts:
                results["cutover"] = timed("cutover", netbench.part_cutover, topo,
                                           cfg["cut_rounds"], cfg["cut_rate"], cfg["cut_ms"])
            if "net" in parts:
                results["network"] = timed("net", netbench.part_net, topo, cfg["net_rounds"],
                                           cfg["net_seconds"], cfg["net_conns"],
                                           cfg["net_flips"], cfg["net_flip_seconds"],
                                           cfg["net_cases"])
    finally:
        signal.alarm(0)
        cleanup.run_all()
        for e in cleanup.errors:
            log(f"cleanup: {e}")
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    results["loadavg_end"] = _loadavg()
    log(f"seconds per part: {results.get('part_seconds')}")

    rows = table_rows(results)
    table = format_table(rows, mach, (results["loadavg_start"], results["loadavg_end"]))
    results["table"] = [list(r) for r in rows]
    written = []
    if not args.no_plots:
        import plots
        written = plots.write_all(results, args.out)
    results["figures"] = [os.path.basename(p) for p in written]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(format_markdown(rows) + "\n")
    print(table)
    log(f"done in {results['elapsed_s']} s; results in {args.out}/ (results.json, table.txt, "
        f"table.md, {', '.join(results['figures'])})")
    return 1 if cleanup.errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
