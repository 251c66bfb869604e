"""Smoke test of the benchmark suite (`make bench`): the whole suite with minimal counts.

It runs tests/bench/bench.py --smoke (every part, a few hundred packets per case, one round of
one-second wrk runs; about 15 s) into a temporary folder, and checks that it printed its table,
wrote results.json and every figure, verified every packet case, saw no failed request, and
left no namespace or pin root behind, and that without a Katran object (KATRAN_OBJ) its column
says "not measured". The figures themselves are not judged here: the suite's numbers on a shared
test machine say nothing.
"""

import json
import os
import subprocess
import time

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(TOP, "tests", "bench", "bench.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_smoke(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the benchmark suite needs root (BPF, network namespaces)", pytrace=False)
    build = subprocess.run(["make", "-C", TOP, "--no-print-directory", "bench-build"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"make bench-build failed:\n{build.stdout}\n{build.stderr}"

    out = tmp_path / "results"
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/python3", BENCH, "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, f"bench --smoke failed (exit {p.returncode}):\n{p.stderr[-3000:]}"

    # One table on stdout, and only the table.
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("bgswitch benchmark:"), p.stdout[:500]
    for section in ("[1 per packet]", "[2 as things grow]", "[3 the flip]",
                    "[4 network path]", "[5 memory]", "[6 local clients]",
                    "[7 commands, spawn to exit]"):
        assert section in lines, f"{section} missing from the table:\n{p.stdout}"

    res = json.loads((out / "results.json").read_text())
    for key in ("per_packet", "scale", "flip", "cutover", "network", "memory", "local",
                "command"):
        assert res.get(key), f"results.json has no {key}"
    pkt = res["per_packet"]["summary"]
    for fam in (4, 6):
        for kind in ("nonvip", "new", "new_full", "est", "reply"):
            case = pkt[f"v{fam}.{kind}"]
            assert case["ns"] > 0 and case["verdict"] in (
                "XDP_PASS", "XDP_TX", "XDP_REDIRECT", "TC_ACT_OK", "TC_ACT_REDIRECT"), case
            # A user's node: rewritten packets leave by the fast path.
            assert kind in ("nonvip", "reply") or case["verdict"] == "XDP_TX", case
    # No Katran object given: its column says so, and nothing stands in for it.
    assert res["per_packet"]["katran"] is None and res["memory"]["katran"] is None
    assert "not measured" in p.stdout, p.stdout
    assert all(n > 0 for n in res["per_packet"]["verified_insns"].values()), res["per_packet"]
    for axis in ("flows", "services", "backends"):
        assert len(res["scale"][axis]) >= 2 and all(
            pt["est_ns"] > 0 and pt["new_ns"] > 0 and pt["flip_ns"] > 0
            for pt in res["scale"][axis]), res["scale"][axis]
    for proto in ("udp", "tcp"):
        v = res["local"][proto]
        assert v["vip_ns"] > 0 and v["direct_ns"] > 0 and v["bare_ns"] > 0, v
    assert res["local"]["local_live_after"] == 0, res["local"]  # every socket released
    cmd = res["command"]
    for cond in ("idle", "load"):
        for name in ("true", "version", "echo", "flip", "rollback", "shift", "haproxy_flip",
                     "haproxy_shift"):
            assert cmd[cond][name]["median_ms"] > 0, (cond, name, cmd[cond])
        assert cmd[cond]["haproxy_api_ms"] > 0, cmd[cond]
    assert cmd["syscalls"] > cmd["bpf_calls"] > 0 and cmd["shared_libs"] > 0, cmd
    assert cmd["service_id"] == cmd["services"] - 1, cmd  # the last id a scan would reach
    assert res["cutover"]["summary"]["failed"] == 0
    net = res["network"]["summary"]
    for key, v in net.items():
        assert key.startswith("flip.") or (v["rps"] > 0 and v["failed"] == 0), (key, v)
    assert net["flip.bgswitch"]["failed"] == 0 and net["flip.nft"]["failed"] == 0, net
    assert net["flip.bgswitch"]["served"]["green"] > 0, "no request reached green after a flip"
    assert res["memory"]["bytes_per_flow"] > 0

    assert res["figures"], "no figure written"
    for name in res["figures"] + ["table.txt", "table.md"]:
        assert (out / name).stat().st_size > 0, name
    for name in res["figures"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, f"{name} is not a PNG"

    # Nothing left behind.
    prefix = res["prefix"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in netns, f"namespaces left: {netns}"
    assert not [n for n in os.listdir("/sys/fs/bpf") if n.startswith(prefix)]
    assert elapsed < 60, f"the smoke run took {elapsed:.0f} s"
