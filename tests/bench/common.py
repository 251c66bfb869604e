"""Shared pieces of the benchmark suite: paths, commands, cleanup, statistics.

Everything the suite creates (network namespaces, pin roots under /sys/fs/bpf, processes) is
named with one per-run prefix ("bgsb" and 4 random hex digits) and registered with a Cleanup,
which removes it on every exit, errors and signals included. Processes are ended by PID only.
"""

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
TOP = os.path.dirname(TESTS)
OUTPUT = os.path.join(TOP, ".output")
BENCH_OUT = os.path.join(OUTPUT, "bench")
BGSWITCH = os.environ.get("BGSWITCH", os.path.join(OUTPUT, "bgswitch"))
FLOOR_OBJ = os.path.join(OUTPUT, "floor.bpf.o")
LIBBENCH = os.path.join(BENCH_OUT, "libbgsbench.so")
FLIPBENCH = os.path.join(BENCH_OUT, "flipbench")
HTTPD = os.path.join(BENCH_OUT, "bench-httpd")
CONNLOAD = os.path.join(BENCH_OUT, "connload")
HEADER = os.path.join(TOP, "include", "bgswitch.h")
BPFFS = "/sys/fs/bpf"
PREFIX = "bgsb"  # every namespace and pin root of the suite starts with it

sys.path.insert(0, TESTS)  # lib/: bpfsys, model, programs

from lib import programs  # noqa: E402

programs.install()  # every program the suite runs must be in scripts/programs.txt


class BenchError(RuntimeError):
    pass


def run(argv: Sequence[str], check: bool = True, timeout: float = 60, **kw):
    """Run a command with its output captured (text); raise BenchError when it fails."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout.strip()}\n"
                         f"{p.stderr.strip()}")
    return p


def timed_run(argv: Sequence[str]):
    """Run a command and return (returncode, stderr, wall ns from fork to exit). It waits
    without a timeout on purpose: subprocess's timeout makes it poll, and the poll interval
    (up to milliseconds) would be timed too. The suite's overall time limit bounds it."""
    t0 = time.monotonic_ns()
    p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    rc = p.wait()
    return rc, err.decode(errors="replace"), time.monotonic_ns() - t0


def log(msg: str) -> None:
    """Progress, on stderr: stdout carries only the table."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Cleanup:
    """A stack of undo actions run in reverse order, each at most once, errors collected."""

    def __init__(self):
        self.actions: List[tuple] = []
        self.errors: List[str] = []

    def push(self, what: str, fn: Callable[[], None]) -> int:
        self.actions.append((what, fn))
        return len(self.actions) - 1

    def run_one(self, index: int) -> None:
        what, fn = self.actions[index]
        self.actions[index] = (what, None)
        if fn is None:
            return
        try:
            fn()
        except Exception as e:  # keep going: the rest must still be removed
            self.errors.append(f"{what}: {e}")

    def run_all(self) -> None:
        for i in reversed(range(len(self.actions))):
            self.run_one(i)
        self.actions.clear()


def close_all(maps: Dict, fds: List[int]) -> None:
    """Close every Map of a {name: Map} dict and every fd of a list, and empty both."""
    for m in maps.values():
        m.close()
    maps.clear()
    for fd in fds:
        os.close(fd)
    fds.clear()


def new_run_prefix() -> str:
    return PREFIX + secrets.token_hex(2)


def netns_add(cleanup: Cleanup, name: str) -> Callable[[], None]:
    """Create a network namespace; returns a function that deletes it (also registered)."""
    if not re.fullmatch(PREFIX + r"[0-9a-f]{4}-[a-z0-9]+", name):
        raise BenchError(f"refusing to create namespace {name!r}: not ours by name")
    run(["ip", "netns", "add", name])
    idx = cleanup.push(f"netns {name}", lambda: run(["ip", "netns", "del", name], check=False))
    return lambda: cleanup.run_one(idx)


def remove_pin_root(path: str) -> None:
    """Remove a pin root of ours (and only ours) if it is still there."""
    if not os.path.basename(path).startswith(PREFIX) or os.path.dirname(path) != BPFFS:
        raise BenchError(f"refusing to remove {path}: not ours")
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def proc_starttime(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def end_process(p: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, one process we started, by its PID."""
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout)


def nsargv(ns: str, argv: Sequence[str]) -> List[str]:
    """argv inside a network namespace (nsenter execs, so the PID is the command's; unlike
    `ip netns exec` it keeps /sys, and so the BPF pins, as they are)."""
    return ["nsenter", f"--net=/run/netns/{ns}", "--"] + list(argv)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str):
    """Run the calling thread inside a network namespace (setns), then return to its own."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(there, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), f"setns {name}")
            try:
                yield
            finally:
                if _libc.setns(here, CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(there)
    finally:
        os.close(here)


def bench_cpu() -> int:
    """The CPU on_one_cpu() pins to."""
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def on_one_cpu():
    """Pin the calling thread to the last CPU it may use (BPF_PROG_TEST_RUN runs the program
    on the calling CPU: keep every call of a measurement on the same one), then unpin."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {bench_cpu()})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


# --- statistics -------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def trimmed_mean(xs: Sequence[int], drop_top: float = 0.01) -> float:
    """Mean after leaving out the slowest drop_top share (interrupts, preemption)."""
    s = sorted(xs)
    keep = s[:max(1, len(s) - int(len(s) * drop_top))]
    return sum(keep) / len(keep)


def percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


# --- include/bgswitch.h -----------------------------------------------------------------------

def header_define(name: str) -> int:
    with open(HEADER) as f:
        text = f.read()
    m = re.search(r"#define\s+" + name + r"\s+\(?([0-9x]+)(\s*<<\s*(\d+))?\)?", text)
    if not m:
        raise BenchError(f"#define {name} not found in {HEADER}")
    v = int(m.group(1), 0)
    return v << int(m.group(3)) if m.group(3) else v


# --- the helper library ------------------------------------------------------------------------

class BBResult(ctypes.Structure):
    _fields_ = [
        ("calls", ctypes.c_uint64),
        ("sum_ns", ctypes.c_uint64),
        ("verdict", ctypes.c_uint32),
        ("verdict_mismatch", ctypes.c_uint32),
        ("exact", ctypes.c_uint32),
        ("masked", ctypes.c_uint32),
        ("bad", ctypes.c_uint32),
        ("first_bad", ctypes.c_int32),
        ("err", ctypes.c_int32),
        ("out_len", ctypes.c_uint32),
    ]


_lib = None


def lib():
    """libbgsbench.so (tests/bench/benchlib.c), loaded once."""
    global _lib
    if _lib is None:
        if not os.path.exists(LIBBENCH):
            raise BenchError(f"{LIBBENCH} missing: run 'make bench-build'")
        _lib = ctypes.CDLL(LIBBENCH, use_errno=True)
        u32, c_int, cp = ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p
        sigs = {
            "bb_run": (c_int, [c_int, cp, u32, u32, cp, u32, u32, u32, u32,
                               ctypes.POINTER(u32), ctypes.POINTER(BBResult)]),
            "bb_prime": (c_int, [c_int, cp, u32, u32, u32, u32, u32, u32,
                                 ctypes.POINTER(ctypes.c_uint64)]),
            "bb_fill_flows": (c_int, [c_int, u32, u32, cp, cp, ctypes.POINTER(c_int)]),
            "bb_delete_flows": (ctypes.c_long, [c_int, u32, u32, cp]),
            "bb_fill_keys": (c_int, [c_int, cp, u32, cp, u32, u32, u32, u32, u32]),
            "bb_fill_u32": (c_int, [c_int, u32, u32, u32]),
            "bb_count": (ctypes.c_long, [c_int, u32]),
            "bb_load": (c_int, [cp, cp]),
            "bb_obj_open": (ctypes.c_void_p, [cp, ctypes.POINTER(c_int)]),
            "bb_obj_load": (c_int, [ctypes.c_void_p]),
            "bb_obj_prog_fd": (c_int, [ctypes.c_void_p, cp]),
            "bb_obj_map_fd": (c_int, [ctypes.c_void_p, cp]),
            "bb_obj_inner_sizes": (c_int, [ctypes.c_void_p, cp, ctypes.POINTER(u32),
                                           ctypes.POINTER(u32)]),
            "bb_obj_close": (None, [ctypes.c_void_p]),
            "bb_map_create": (c_int, [u32, cp, u32, u32, u32, u32]),
            "bb_prog_verified_insns": (ctypes.c_long, [c_int]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(_lib, name)
            fn.restype, fn.argtypes = res, args
    return _lib


def machine() -> Dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": os.uname().release,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
