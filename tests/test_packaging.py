"""Packaging tests: the man page, the bash completion, the systemd unit and `make install`.

None of them needs root or BPF: the completion is driven through COMP_WORDS/COMP_CWORD against
a stub `bgswitch` that prints `service list` output, and `make install` goes to a temporary
DESTDIR. Run: /usr/bin/pytest -q tests/test_packaging.py
"""

import glob
import gzip
import os
import re
import shutil
import stat
import subprocess

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(TOP, "doc", "bgswitch.8")
COMPLETION = os.path.join(TOP, "contrib", "bash-completion", "bgswitch")
UNIT = os.path.join(TOP, "contrib", "systemd", "bgswitch-exporter.service")

COMMANDS = ["attach", "detach", "service", "backend", "flip", "rollback", "status",
            "exporter", "watch"]
GLOBAL_OPTS = ["-r", "--pin-root", "-v", "--verbose", "-V", "--version", "-h", "--help"]
# Commands documented and completed ahead of their code (see doc/bgswitch.8).
PLANNED = {"exporter": ["--listen"], "watch": []}


def _list_line(*cols):
    """One line of `bgswitch service list`, in user/service.c's format."""
    return "%-20s %-24s %-5s %-6s %10s %5s %5s" % cols


LIST_OUTPUT = "\n".join([
    _list_line("NAME", "VIP", "PROTO", "ACTIVE", "GENERATION", "BLUE", "GREEN"),
    _list_line("web", "192.0.2.10:80", "tcp", "blue", 1, 2, 1),
    _list_line("dns", "192.0.2.53:53", "udp", "green", 3, 1, 1),
    _list_line("web-canary", "192.0.2.11:80", "tcp", "blue", 1, 0, 0),
]) + "\n"


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX")}
    env.update(extra)
    return env


# -- the stub command and the completion driver --------------------------------------------------

@pytest.fixture
def stub(tmp_path):
    """A `bgswitch` on a private PATH: it logs its arguments and prints `service list`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "list.txt").write_text(LIST_OUTPUT)
    script = bindir / "bgswitch"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{tmp_path}/calls"\n'
        f'[ -f "{tmp_path}/fail" ] && {{ echo "bgswitch: must be run as root" >&2; exit 1; }}\n'
        f'cat "{tmp_path}/list.txt"\n')
    script.chmod(0o755)

    class Stub:
        path = tmp_path

        def set_list(self, text):
            (tmp_path / "list.txt").write_text(text)

        def fail(self):
            (tmp_path / "fail").write_text("")

        def calls(self):
            p = tmp_path / "calls"
            return p.read_text().splitlines() if p.exists() else []

    return Stub()


DRIVER = r'''
source "$BGS_COMPLETION" || exit 97
PATH="$BGS_STUB_BIN:$PATH"
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_bgswitch bgswitch "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}" || exit 98
complete -p bgswitch >/dev/null || exit 99
printf '%s\n' "${COMPREPLY[@]}"
'''


def complete(stub, line):
    """Completions for `line`, split the way readline splits it (at blanks, '=' and ':').

    The last word is the one being completed; a line ending in a blank completes an empty word.
    """
    words = re.findall(r"[=:]+|[^\s=:]+", line)
    if line.endswith(" ") or not words:
        words.append("")
    assert words[0] == "bgswitch"
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "bash"] + words,
                       capture_output=True, text=True, timeout=30,
                       env=_clean_env(BGS_COMPLETION=COMPLETION,
                                      BGS_STUB_BIN=str(stub.path / "bin")))
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stderr == "", r.stderr
    return [w for w in r.stdout.split("\n") if w]


def _ifaces():
    return sorted(os.listdir("/sys/class/net"))


# -- bash completion -----------------------------------------------------------------------------

def test_packaging_completion_commands(stub):
    assert complete(stub, "bgswitch ") == COMMANDS
    assert complete(stub, "bgswitch s") == ["service", "status"]
    assert complete(stub, "bgswitch -v ") == COMMANDS
    assert complete(stub, "bgswitch --pin-root /sys/fs/bpf/x ro") == ["rollback"]
    assert complete(stub, "bgswitch -r /sys/fs/bpf/x ") == COMMANDS


def test_packaging_completion_global_options(stub):
    assert complete(stub, "bgswitch -") == GLOBAL_OPTS
    assert complete(stub, "bgswitch --") == [o for o in GLOBAL_OPTS if o.startswith("--")]
    assert complete(stub, "bgswitch -v --p") == ["--pin-root"]
    # after the command, global options are not the command's (getopt stops at the command)
    assert "--pin-root" not in complete(stub, "bgswitch status -")


def test_packaging_completion_pin_root_directories(stub, tmp_path):
    (tmp_path / "pins-a").mkdir()
    (tmp_path / "pins-b").mkdir()
    (tmp_path / "pins-file").write_text("")
    want = [str(tmp_path / "pins-a"), str(tmp_path / "pins-b")]
    assert sorted(complete(stub, f"bgswitch -r {tmp_path}/pins")) == want
    assert sorted(complete(stub, f"bgswitch --pin-root {tmp_path}/pins")) == want
    assert sorted(complete(stub, f"bgswitch --pin-root={tmp_path}/pins")) == want


def test_packaging_completion_subcommands(stub):
    assert complete(stub, "bgswitch service ") == ["add", "del", "list"]
    assert complete(stub, "bgswitch service d") == ["del"]
    assert complete(stub, "bgswitch backend ") == ["add", "del"]
    assert complete(stub, "bgswitch -r /sys/fs/bpf/x backend a") == ["add"]


def test_packaging_completion_interfaces(stub):
    ifaces = _ifaces()
    assert "lo" in ifaces
    assert complete(stub, "bgswitch attach ") == ifaces
    assert complete(stub, "bgswitch detach ") == ifaces
    assert complete(stub, "bgswitch attach l") == [i for i in ifaces if i.startswith("l")]
    # options before the interface, with their values, are skipped
    assert complete(stub, "bgswitch attach --mode native ") == ifaces
    assert complete(stub, "bgswitch attach -f 65536 ") == ifaces
    assert complete(stub, "bgswitch attach --mode=generic ") == ifaces
    # one interface only
    assert complete(stub, "bgswitch attach lo ") == []
    assert complete(stub, "bgswitch detach lo ") == []


@pytest.mark.parametrize("line", [
    "bgswitch service del ",
    "bgswitch backend add ",
    "bgswitch backend del ",
    "bgswitch flip ",
    "bgswitch rollback ",
    "bgswitch status ",
    "bgswitch status --json ",
    "bgswitch watch ",
    "bgswitch -v flip ",
])
def test_packaging_completion_service_names(stub, line):
    assert complete(stub, line) == ["web", "dns", "web-canary"]
    assert stub.calls()[-1] == "service list"


def test_packaging_completion_service_name_prefix(stub):
    assert complete(stub, "bgswitch flip we") == ["web", "web-canary"]
    assert complete(stub, "bgswitch status d") == ["dns"]


def test_packaging_completion_service_names_skip_header_only(stub):
    """The header is skipped on the first line only; a service may be called NAME."""
    stub.set_list(_list_line("NAME", "VIP", "PROTO", "ACTIVE", "GENERATION", "BLUE", "GREEN")
                  + "\n" + _list_line("NAME", "192.0.2.9:80", "tcp", "blue", 1, 1, 0) + "\n")
    assert complete(stub, "bgswitch flip ") == ["NAME"]


def test_packaging_completion_no_services(stub):
    stub.set_list("no services\n")
    assert complete(stub, "bgswitch flip ") == []
    assert complete(stub, "bgswitch status ") == []


def test_packaging_completion_service_list_failure_is_quiet(stub):
    stub.fail()
    assert complete(stub, "bgswitch rollback ") == []


@pytest.mark.parametrize("line,root", [
    ("bgswitch -r /sys/fs/bpf/lab flip ", "/sys/fs/bpf/lab"),
    ("bgswitch --pin-root /sys/fs/bpf/lab flip ", "/sys/fs/bpf/lab"),
    ("bgswitch --pin-root=/sys/fs/bpf/lab status ", "/sys/fs/bpf/lab"),
    ("bgswitch -r/sys/fs/bpf/lab rollback ", "/sys/fs/bpf/lab"),
    ("bgswitch -vr /sys/fs/bpf/lab watch ", "/sys/fs/bpf/lab"),
])
def test_packaging_completion_service_names_follow_pin_root(stub, line, root):
    assert complete(stub, line) == ["web", "dns", "web-canary"]
    assert stub.calls()[-1] == f"--pin-root {root} service list"


def test_packaging_completion_service_add_takes_a_new_name(stub):
    assert complete(stub, "bgswitch service add ") == []
    assert stub.calls() == []


def test_packaging_completion_colors(stub):
    assert complete(stub, "bgswitch backend add web ") == ["blue", "green"]
    assert complete(stub, "bgswitch backend del web g") == ["green"]
    assert complete(stub, "bgswitch flip web ") == ["blue", "green"]
    assert complete(stub, "bgswitch flip web b") == ["blue"]
    # nothing after the color (the address is free text), nor after flip's color
    assert complete(stub, "bgswitch backend add web blue ") == []
    assert complete(stub, "bgswitch flip web green ") == []
    assert complete(stub, "bgswitch rollback web ") == []


@pytest.mark.parametrize("line,want", [
    ("bgswitch attach -", ["-m", "--mode", "-f", "--flows", "-h", "--help"]),
    ("bgswitch attach eth0 --", ["--mode", "--flows", "--help"]),
    ("bgswitch detach eth0 -", ["-p", "--purge", "-h", "--help"]),
    ("bgswitch service add web 192.0.2.10:80 -", ["-p", "--proto", "-h", "--help"]),
    ("bgswitch service del web -", ["-f", "--force", "-h", "--help"]),
    ("bgswitch service list -", ["-h", "--help"]),
    ("bgswitch service -", ["-h", "--help"]),
    ("bgswitch backend add web blue 10.0.1.1:8080 -", ["-h", "--help"]),
    ("bgswitch backend del -", ["-h", "--help"]),
    ("bgswitch flip web -", ["-h", "--help"]),
    ("bgswitch rollback -", ["-h", "--help"]),
    ("bgswitch status -", ["-j", "--json", "-i", "--interval", "-h", "--help"]),
    ("bgswitch status web --j", ["--json"]),
    ("bgswitch exporter -", ["-l", "--listen", "-h", "--help"]),
    ("bgswitch watch web -", ["-i", "--interval", "-h", "--help"]),
])
def test_packaging_completion_command_options(stub, line, want):
    assert complete(stub, line) == want


@pytest.mark.parametrize("line,want", [
    ("bgswitch attach eth0 --mode ", ["auto", "native", "generic"]),
    ("bgswitch attach eth0 -m n", ["native"]),
    ("bgswitch attach eth0 --mode=", ["auto", "native", "generic"]),
    ("bgswitch attach eth0 --mode=g", ["generic"]),
    ("bgswitch attach eth0 --flows ", []),
    ("bgswitch service add web 192.0.2.10:80 --proto ", ["tcp", "udp"]),
    ("bgswitch service add web 192.0.2.10:80 -p u", ["udp"]),
    ("bgswitch service add --proto=", ["tcp", "udp"]),
    ("bgswitch exporter --listen ", []),
])
def test_packaging_completion_option_values(stub, line, want):
    assert complete(stub, line) == want


def test_packaging_completion_positionals_after_options(stub):
    """getopt permutes: options may come before the arguments they precede."""
    assert complete(stub, "bgswitch service add --proto udp dns 192.0.2.53:53 -") == [
        "-p", "--proto", "-h", "--help"]
    assert complete(stub, "bgswitch service del --force ") == ["web", "dns", "web-canary"]
    assert complete(stub, "bgswitch status --json web ") == []


def _getopt_long_names():
    """Every long option of the command's getopt tables in user/*.c."""
    names = set()
    for path in glob.glob(os.path.join(TOP, "user", "*.c")):
        with open(path) as f:
            src = f.read()
        names |= set(re.findall(r'\{\s*"([a-z][a-z-]*)",\s*(?:no|required|optional)_argument',
                                src))
    assert names, "no getopt tables found in user/*.c"
    return names


def test_packaging_completion_covers_every_getopt_option():
    with open(COMPLETION) as f:
        text = f.read()
    missing = sorted(n for n in _getopt_long_names() if f"--{n}" not in text)
    assert not missing, f"options of user/*.c missing from the completion: {missing}"


# -- man page ------------------------------------------------------------------------------------

def test_packaging_man_renders_without_warnings():
    if not shutil.which("man"):
        pytest.fail("man missing: scripts/install-deps.sh installs man-db and groff-base")
    for width in ("80", "120"):
        r = subprocess.run(["man", "--warnings", "-l", MAN], capture_output=True, text=True,
                           timeout=60, env=_clean_env(MANWIDTH=width, LC_ALL="C.UTF-8"))
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr
        assert "bgswitch - blue-green L4 traffic switch" in r.stdout
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "FILES",
                        "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
            assert re.search(rf"^{section}$", r.stdout, re.M), section
        for ref in ("bpftool(8)", "tc(8)", "ip(8)"):
            assert ref in r.stdout


def test_packaging_man_documents_every_command_and_option():
    with open(MAN) as f:
        roff = f.read()
    text = roff.replace("\\-", "-")
    for cmd in COMMANDS:
        assert re.search(rf"^\.B[RI]* \"?{cmd}\b", roff, re.M), f"no entry for {cmd}"
    for sub in ("service add", "service del", "service list", "backend add", "backend del"):
        assert sub in text
    missing = sorted(n for n in _getopt_long_names() | {"listen"} if f"--{n}" not in text)
    assert not missing, f"options of user/*.c missing from the man page: {missing}"
    for opt in ("-r", "-v", "-V", "-h", "-m", "-f", "-p", "-j", "-vv"):
        assert re.search(rf"(^|[\s\"]){re.escape(opt)}\b", text, re.M), opt
    for path in ("/sys/fs/bpf/bgswitch", "bgs_config", "bgs_vips", "bgs_services", "bgs_switch",
                 "bgs_sets", "bgs_backends", "bgs_backend_addrs", "bgs_flows", "bgs_reverse",
                 "bgs_ifaces", "bgs_stats", "bgs_drops", "bgs_backend_stats"):
        assert path in text, path


# -- systemd unit --------------------------------------------------------------------------------

def test_packaging_unit_is_hardened():
    with open(UNIT) as f:
        unit = f.read()
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1]
             for ln in unit.splitlines() if "=" in ln and not ln.startswith("#")}
    assert lines["ExecStart"] == "@SBINDIR@/bgswitch exporter --listen 127.0.0.1:9465"
    assert set(lines["CapabilityBoundingSet"].split()) == {"CAP_BPF", "CAP_SYS_ADMIN"}
    assert set(lines["AmbientCapabilities"].split()) == {"CAP_BPF", "CAP_SYS_ADMIN"}
    assert lines["ProtectSystem"] == "strict"
    assert "/sys/fs/bpf" in lines["ReadOnlyPaths"]
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert lines[key] == "yes", key
    assert lines["Restart"] == "on-failure"
    assert "User" not in lines and "DynamicUser" not in lines  # bgswitch requires uid 0


# -- make install --------------------------------------------------------------------------------

def _make(*args, check=True):
    r = subprocess.run(["make", "--no-print-directory", "-C", TOP] + list(args),
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    if check:
        assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def built():
    _make()
    return os.path.join(TOP, ".output", "bgswitch")


INSTALLED = {
    "usr/sbin/bgswitch": 0o755,
    "usr/share/man/man8/bgswitch.8.gz": 0o644,
    "usr/share/bash-completion/completions/bgswitch": 0o644,
    "usr/lib/systemd/system/bgswitch-exporter.service": 0o644,
}


def test_packaging_install_destdir_prefix(built, tmp_path):
    dest = tmp_path / "stage"
    _make("install", f"DESTDIR={dest}", "PREFIX=/usr")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert files == sorted(INSTALLED)
    for rel, mode in INSTALLED.items():
        assert stat.S_IMODE((dest / rel).stat().st_mode) == mode, rel

    with open(built, "rb") as a, open(dest / "usr/sbin/bgswitch", "rb") as b:
        assert a.read() == b.read()
    r = subprocess.run([str(dest / "usr/sbin/bgswitch"), "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("bgswitch "), r

    gz = (dest / "usr/share/man/man8/bgswitch.8.gz").read_bytes()
    assert gz[4:8] == b"\0\0\0\0", "gzip -n: no timestamp"
    assert gz[3] & 0x08 == 0, "gzip -n: no file name"
    with open(MAN, "rb") as f:
        assert gzip.decompress(gz) == f.read()

    with open(COMPLETION, "rb") as f:
        assert (dest / "usr/share/bash-completion/completions/bgswitch").read_bytes() == f.read()

    unit = (dest / "usr/lib/systemd/system/bgswitch-exporter.service").read_text()
    assert "@SBINDIR@" not in unit
    assert "\nExecStart=/usr/sbin/bgswitch exporter --listen 127.0.0.1:9465\n" in unit
    assert str(dest) not in unit, "DESTDIR must not leak into the installed unit"


def test_packaging_install_default_prefix_and_uninstall(built, tmp_path):
    dest = tmp_path / "stage"
    _make("install", f"DESTDIR={dest}")
    unit = dest / "usr/local/lib/systemd/system/bgswitch-exporter.service"
    assert "\nExecStart=/usr/local/sbin/bgswitch exporter" in unit.read_text()
    assert (dest / "usr/local/sbin/bgswitch").is_file()
    _make("uninstall", f"DESTDIR={dest}")
    assert [p for p in dest.rglob("*") if not p.is_dir()] == []


def test_packaging_unit_verifies(built, tmp_path):
    """systemd-analyze verify on the unit as installed, with its binary and man page."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not available")
    prefix = tmp_path / "prefix"
    _make("install", f"PREFIX={prefix}")
    unit = prefix / "lib/systemd/system/bgswitch-exporter.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path,
                       env=_clean_env(MANPATH=str(prefix / "share/man"), SYSTEMD_LOG_COLOR="0"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bgswitch-exporter.service" not in r.stderr, r.stderr
