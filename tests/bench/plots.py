"""PNG figures of a run's results (matplotlib from Debian, Agg backend: no display needed)."""

import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BLUE, GREEN, GREY, RED = "#1f77b4", "#2ca02c", "#7f7f7f", "#d62728"


def _save(fig, out: str, name: str, written: List[str]) -> None:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def plot_pkt(res: Dict, out: str, written: List[str]) -> None:
    s = res["summary"]
    labels = {"nonvip": "non-VIP", "est": "established", "new": "new flow",
              "new_full": "new flow, tables full", "reply": "reply (TC egress)"}
    names = [f"v{fam}.{kind}" for fam in (4, 6) for kind in labels]
    katran = res.get("katran") is not None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    y = list(range(len(names)))
    h = 0.4 if katran else 0.8
    ax.barh([i - (h / 2 if katran else 0) for i in y],
            [s[n]["over_floor_ns"] for n in names], h, color=BLUE, label="bgswitch")
    if katran:
        kx = [s[n]["katran"]["over_floor_ns"] if s[n].get("katran") else 0 for n in names]
        ax.barh([i + h / 2 for i in y], kx, h, color=GREY, label="Katran, same rounds")
    for i, n in enumerate(names):
        note = f"+{s[n]['over_floor_ns']:.0f} ns {s[n]['verdict']}"
        if s[n].get("ratio") is not None:
            note += f", {s[n]['ratio']:.2f}x Katran"
        ax.text(s[n]["over_floor_ns"] + 5, i - (h / 2 if katran else 0), note, va="center",
                fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([f"IPv{n[1]} {labels[n.split('.')[1]]}" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("ns per packet over the floor program (median of rounds)")
    ax.set_title("Per-packet cost, BPF_PROG_TEST_RUN" + ("" if katran else
                                                          " (Katran not measured)"))
    ax.legend(fontsize=8, loc="lower right")
    top = max(max(s[n]["over_floor_ns"], (s[n].get("katran") or {}).get("over_floor_ns", 0))
              for n in names)
    ax.set_xlim(0, top * 1.5)
    _save(fig, out, "per_packet.png", written)


def _levels_axis(ax, xs, xlabel: str) -> None:
    """Log x axis with a tick at each level only, labelled 1, 16, 1k, 100k, 1M."""
    def name(x):
        return f"{x // 1000000}M" if x >= 1000000 and x % 1000000 == 0 else (
            f"{x // 1000}k" if x >= 1000 and x % 1000 == 0 else str(x))
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([name(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)


def plot_scale(res: Dict, out: str, written: List[str]) -> None:
    axes_def = [("flows", "live flows in bgs_flows"), ("services", "services"),
                ("backends", "backends per color")]
    fig, axs = plt.subplots(2, 3, figsize=(13, 7))
    for col, (key, xlabel) in enumerate(axes_def):
        pts = res[key]
        xs = [p["level"] for p in pts]
        ax = axs[0][col]
        ax.plot(xs, [p["est_ns"] for p in pts], "o-", color=BLUE,
                label=f"established, {pts[-1]['est_flows_cycled']} flows cycled")
        ax.plot(xs, [p["est_hot_ns"] for p in pts], "s--", color=BLUE, alpha=0.6,
                label="established, one flow")
        ax.plot(xs, [p["new_ns"] for p in pts], "^-", color=RED, label="new flow")
        _levels_axis(ax, xs, xlabel)
        ax.set_ylim(0, max(max(p["new_ns"], p["est_ns"]) for p in pts) * 1.3)
        ax.set_ylabel("ns per packet")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax2 = axs[1][col]
        ax2.plot(xs, [p["flip_ns"] for p in pts], "o-", color=GREEN, label="flip write (ns)")
        ax2.set_ylabel("flip write, ns (green)", color=GREEN)
        ax2.set_ylim(0, max(p["flip_ns"] for p in pts) * 1.5)
        _levels_axis(ax2, xs, xlabel)
        ax3 = ax2.twinx()
        ax3.plot(xs, [p["cli_flip_ms"] for p in pts], "s--", color=GREY)
        ax3.plot(xs, [p["cli_own_ms"] for p in pts], "x:", color=GREY)
        ax3.set_ylabel("`bgswitch flip`, ms (grey: wall, x: own work)", color=GREY)
        ax3.set_ylim(0, max(p["cli_flip_ms"] for p in pts) * 1.3)
        ax2.grid(alpha=0.3)
    fig.suptitle("Cost as things grow (should be flat: O(1))")
    _save(fig, out, "scale.png", written)


def plot_cutover(res: Dict, out: str, written: List[str]) -> None:
    tl = res["rounds"][0].get("timeline") or []
    if not tl:
        return
    fig, ax = plt.subplots(figsize=(8, 3))
    for color, y, c in (("blue", 0, BLUE), ("green", 1, GREEN)):
        xs = [t for t, w in tl if w == color]
        ax.plot(xs, [y] * len(xs), "|", color=c, markersize=18)
    ax.axvline(0, color=RED, lw=1)
    ax.text(0, 1.35, " flip (in-process 64-bit store)", color=RED, fontsize=8)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["served by blue", "served by green"])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlabel("connection start, ms from the flip")
    r0 = res["rounds"][0]["write"]
    ax.set_title(f"Cutover under load: first green {r0['to_first_new_us']:+.0f} us, "
                 f"last blue {r0['to_last_old_us']:+.0f} us (round 1)", fontsize=10)
    _save(fig, out, "cutover.png", written)


def plot_net(res: Dict, out: str, written: List[str]) -> None:
    s = res["summary"]
    names = {"direct": "direct", "native": "bgswitch\nnative XDP",
             "generic": "bgswitch\ngeneric XDP", "nft": "nftables\nDNAT"}
    cases = res["cases"]
    labels = [names[c] for c in cases]
    colors = {"direct": GREY, "native": BLUE, "generic": BLUE, "nft": GREEN}
    fig, axs = plt.subplots(2, 2, figsize=(11, 7))
    for col, mode in enumerate(("keepalive", "close")):
        rps = [s[f"{c}.{mode}"]["rps"] for c in cases]
        lo = [r - s[f"{c}.{mode}"]["rps_range"][0] for r, c in zip(rps, cases)]
        hi = [s[f"{c}.{mode}"]["rps_range"][1] - r for r, c in zip(rps, cases)]
        ax = axs[0][col]
        bars = ax.bar(labels, rps, color=[colors[c] for c in cases], yerr=[lo, hi],
                      capsize=4, ecolor="black")
        for b, c in zip(bars, cases):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() * 0.08,
                    f"{s[f'{c}.{mode}']['rps_ratio']:.2f}x\ndirect", ha="center",
                    va="bottom", fontsize=8, color="white")
        ax.set_ylabel("requests/s (median, bars: min-max of rounds)")
        ax.set_title("keep-alive" if mode == "keepalive" else "new connection per request")
        ax = axs[1][col]
        x = range(len(cases))
        ax.bar([i - 0.2 for i in x], [s[f"{c}.{mode}"]["p50_us"] for c in cases], 0.4,
               label="p50", color=BLUE)
        ax.bar([i + 0.2 for i in x], [s[f"{c}.{mode}"]["p99_us"] for c in cases], 0.4,
               label="p99", color=RED)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels)
        ax.set_ylabel("latency, us")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("Through the network path (wrk in namespaces)")
    _save(fig, out, "network.png", written)


def plot_memory(res: Dict, out: str, written: List[str]) -> None:
    maps = sorted(res["maps"].items(), key=lambda kv: -kv[1]["bytes_memlock"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh([k for k, _ in maps], [v["bytes_memlock"] / 2**20 for _, v in maps], color=BLUE)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("MiB (bytes_memlock, log scale)")
    ax.set_title(f"Map memory at default sizes: {res['total_bytes'] / 2**20:.0f} MiB, "
                 f"{res['bytes_per_flow']:.0f} B per tracked flow")
    _save(fig, out, "memory.png", written)


def write_all(results: Dict, out: str) -> List[str]:
    written: List[str] = []
    for key, fn in (("per_packet", plot_pkt), ("scale", plot_scale), ("cutover", plot_cutover),
                    ("network", plot_net), ("memory", plot_memory)):
        if results.get(key):
            fn(results[key], out, written)
    return written
