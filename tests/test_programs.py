"""The programs manifest (scripts/programs.txt): everything it lists is installed by
scripts/install-deps.sh, and the spawn check refuses a program it does not list."""

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib import programs  # noqa: E402

TOP = programs.TOP
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin",
                        "/usr/bin", "/bin"])


def test_programs_manifest_parses():
    listed = programs.load()
    assert "tcpdump" in listed and listed["tcpdump"] == "tcpdump"
    assert all(pkg for pkg in listed.values())


@pytest.mark.parametrize("prog", sorted(p for p in programs.load() if p != "-"))
def test_programs_listed_program_is_installed(prog):
    """After scripts/install-deps.sh (make test runs it first), every listed program runs."""
    assert shutil.which(prog, path=PATH), \
        f"{prog} (package {programs.load()[prog]}) is not on PATH: run scripts/install-deps.sh"


def test_programs_listed_packages_are_installed():
    missing = []
    for pkg in programs.packages():
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                           text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    assert not missing, f"not installed: {missing}: run scripts/install-deps.sh"


def test_programs_install_deps_installs_the_manifest():
    """install-deps.sh takes its package list from the manifest, and has nothing left to do."""
    script = open(os.path.join(TOP, "scripts", "install-deps.sh")).read()
    assert "programs.txt" in script
    r = subprocess.run(["bash", os.path.join(TOP, "scripts", "install-deps.sh")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "installing" not in r.stdout


@pytest.mark.parametrize("argv, bad", [
    (["tcpdump", "-h"], None),
    (["/usr/sbin/ip", "link"], None),
    (["bgs-not-a-program", "x"], "bgs-not-a-program"),
    (["nsenter", "--net=/run/netns/x", "bgs-not-a-program"], "bgs-not-a-program"),
    (["nsenter", "-t", "1", "-n", "tcpdump", "-i", "lo"], None),
    (["ip", "netns", "exec", "x", "bgs-not-a-program"], "bgs-not-a-program"),
    (["timeout", "-s", "KILL", "5", "bgs-not-a-program"], "bgs-not-a-program"),
    (["taskset", "-c", "0", "bgs-not-a-program"], "bgs-not-a-program"),
    (["env", "A=1", "bgs-not-a-program"], "bgs-not-a-program"),
    (["sh", "-c", "A=1 exec bgs-not-a-program --x"], "bgs-not-a-program"),
    (["sh", "-c", "tcpdump -h"], None),
    ([os.path.join(TOP, ".output", "bgswitch"), "-V"], None),
])
def test_programs_spawn_check_finds_unlisted(argv, bad):
    assert programs.unlisted(argv, programs.load()) == bad


def test_programs_spawn_check_refuses_before_running(tmp_path):
    """The check is installed for the whole test session: an unlisted program fails at once,
    naming the manifest, even when it exists on this machine."""
    prog = tmp_path / "bgs-unlisted"
    marker = tmp_path / "ran"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\n")
    prog.chmod(0o755)
    with pytest.raises(programs.UnlistedProgram, match="scripts/programs.txt"):
        subprocess.run([str(prog)], check=False)
    assert not marker.exists()
    assert subprocess.run(["true"]).returncode == 0
