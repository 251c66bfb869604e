"""Verifier headroom: every program of the data plane verifies within half the kernel's limit.

The kernel accepts a program only if its verifier processes at most 1,000,000 instructions
(BPF_COMPLEXITY_LIMIT_INSNS); bgswitch keeps to VERIFIER_BUDGET, half of it, so that a larger
bound or a kernel whose verifier explores more still loads. The kernel reports the count as
``verified_insns`` (BPF_OBJ_GET_INFO_BY_FD, ``bpftool prog show``).

* The programs of an attached, pinned state (the build the command embeds), read through
  their pins.
* Builds at the largest documented bounds (README, "Layout": BGS_MAX_EXTHDRS up to 8), compiled
  by the Makefile into a private output directory and loaded with libbpf without pinning
  anything (tests/lib/bpfobj.py); a bound beyond the documented range is a build error.
"""

import errno
import os
import shutil
import subprocess
import tempfile
from typing import List

import pytest

from lib import bpfobj
from lib import bpfsys
from lib.unit_fixtures import BgsState

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERIFIER_BUDGET = 500_000  # processed instructions per program: half the kernel's limit
PROGRAMS = ["bgs_ingress", "bgs_egress"]
# The cgroup socket hooks for local clients (bpf/sock.bpf.h), loaded with them.
SOCK_PROGRAMS = ["bgs_connect4", "bgs_connect6", "bgs_sendmsg4", "bgs_sendmsg6", "bgs_recvmsg4",
                 "bgs_recvmsg6", "bgs_peername4", "bgs_peername6", "bgs_release"]
# Map sizes do not change what the verifier explores; a small flow table keeps the load cheap.
SMALL_MAPS = ["-DBGS_DEFAULT_FLOWS=4096"]


@pytest.fixture
def outdir():
    """A private output directory for a build, always removed."""
    d = tempfile.mkdtemp(prefix="bgsv")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def build_object(outdir: str, defines: List[str]) -> subprocess.CompletedProcess:
    """The data plane's object built by the Makefile, with its flags plus defines, in outdir."""
    flags = " ".join(defines + SMALL_MAPS)
    return subprocess.run(["make", "-s", "--no-print-directory", "-C", TOP, f"OUTPUT={outdir}",
                           f"BPF_EXTRA_CFLAGS={flags}", f"{outdir}/bgswitch.bpf.o"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("prog", PROGRAMS + SOCK_PROGRAMS)
def test_verifier_pinned_program_within_budget(bgs: BgsState, prog: str):
    fd = bpfsys.obj_get(f"{bgs.pin_root}/progs/{prog}")
    try:
        info = bpfsys.prog_info(fd)
    finally:
        os.close(fd)
    assert info.name == prog
    assert 0 < info.verified_insns <= VERIFIER_BUDGET, (
        f"{prog}: the verifier processed {info.verified_insns} instructions, over the budget "
        f"of {VERIFIER_BUDGET}")


BOUND_BUILDS = [
    # (what, defines): the largest documented value of each bound the verifier's work grows with
    ("ipv6 extension headers 8", ["-DBGS_MAX_EXTHDRS=8"]),
]


@pytest.mark.parametrize("what,defines", BOUND_BUILDS, ids=[b[0] for b in BOUND_BUILDS])
def test_verifier_largest_bounds_within_budget(outdir: str, what: str, defines: List[str]):
    b = build_object(outdir, defines)
    assert b.returncode == 0, f"build with {defines} failed:\n{b.stdout}{b.stderr}"
    with bpfobj.Object(f"{outdir}/bgswitch.bpf.o") as obj:
        err = obj.load()
        assert err == 0, (f"{what}: the object does not load: {os.strerror(-err)}"
                          + (" (E2BIG: the verifier gave up at its limit)"
                             if err == -errno.E2BIG else ""))
        got = {i.name: i.verified_insns for i in obj.prog_infos()}
    assert sorted(got) == sorted(PROGRAMS + SOCK_PROGRAMS)
    over = {p: n for p, n in got.items() if not 0 < n <= VERIFIER_BUDGET}
    assert not over, f"{what}: over the budget of {VERIFIER_BUDGET} instructions: {over}"


@pytest.mark.parametrize("value", ["0", "9"])
def test_verifier_exthdrs_outside_range_refused(outdir: str, value: str):
    b = build_object(outdir, [f"-DBGS_MAX_EXTHDRS={value}"])
    assert b.returncode != 0
    assert "BGS_MAX_EXTHDRS must be from 1 to 8" in b.stderr
    assert not os.path.exists(f"{outdir}/bgswitch.bpf.o")
