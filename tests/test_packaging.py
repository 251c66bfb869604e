"""Packaging tests: the generated man page and bash completion, the systemd units and
`make install`.

The command's option tables (user/*.c, read through `bgswitch __gen table`) are the one source
of its options: every option of a table must show in the command's --help, complete in bash
(driven through COMP_WORDS/COMP_CWORD against a stub `bgswitch` that prints `service list`
output) and be listed in the man page, each as generated from the same table by `make`
(.output/bgswitch.bash-completion, .output/bgswitch.8). The hand-written parts (the completion's
driver, the man page's prose) are checked where they say something the code decides. None of
them needs root or BPF; `make install` goes to a temporary DESTDIR.
Run: /usr/bin/pytest -q tests/test_packaging.py
"""

import glob
import gzip
import os
import re
import shutil
import stat
import subprocess
from collections import namedtuple

import pytest

from lib import model

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BGSWITCH = os.path.join(TOP, ".output", "bgswitch")
MAN = os.path.join(TOP, ".output", "bgswitch.8")
MAN_TEMPLATE = os.path.join(TOP, "doc", "bgswitch.8.in")
COMPLETION = os.path.join(TOP, ".output", "bgswitch.bash-completion")
COMPLETION_TEMPLATE = os.path.join(TOP, "contrib", "bash-completion", "bgswitch.in")
UNIT = os.path.join(TOP, "contrib", "systemd", "bgswitch-exporter.service")
AGENT_UNIT = os.path.join(TOP, "contrib", "systemd", "bgswitch-agent.service")

LOCAL, FLEET = 1, 2  # struct bgs_opt.where (user/params.h)


# The commands (the first word of every listed table): bgswitch --help lists them.
COMMANDS = ["attach", "detach", "service", "backend", "flip", "shift", "rollout", "rollback",
            "check", "drain", "status", "timeouts", "gc", "limits", "watch", "exporter", "agent",
            "local"]
GLOBAL_OPTS = ["-r", "--pin-root", "-a", "--audit-log", "-v", "--verbose", "-V", "--version",
               "-h", "--help"]


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


def complete(stub, line, ifaces=None):
    """Completions for `line`, split the way readline splits it (at blanks, '=' and ':').

    The last word is the one being completed; a line ending in a blank completes an empty word.
    With ifaces, the completion sees those interfaces instead of /sys/class/net's.
    """
    words = re.findall(r"[=:]+|[^\s=:]+", line)
    if line.endswith(" ") or not words:
        words.append("")
    assert words[0] == "bgswitch"
    driver = DRIVER
    if ifaces is not None:
        fake = "_bgswitch_ifaces() { printf '%s\\n' " + " ".join(ifaces) + "; }\n"
        driver = driver.replace("PATH=", fake + "PATH=", 1)
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver, "bash"] + words,
                       capture_output=True, text=True, timeout=30,
                       env=_clean_env(BGS_COMPLETION=COMPLETION,
                                      BGS_STUB_BIN=str(stub.path / "bin")))
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stderr == "", r.stderr
    return [w for w in r.stdout.split("\n") if w]


def _ifaces():
    return sorted(os.listdir("/sys/class/net"))


def _make(*args, check=True):
    r = subprocess.run(["make", "--no-print-directory", "-C", TOP] + list(args),
                       capture_output=True, text=True, timeout=600, env=_clean_env())
    if check:
        assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module", autouse=True)
def built():
    """The command, its completion and its man page, as make builds them."""
    _make()
    return BGSWITCH


# -- the option tables ---------------------------------------------------------------------------

Opt = namedtuple("Opt", "long short arg where values complete")
Pos = namedtuple("Pos", "name optional values complete")


class Spec:
    def __init__(self, name, listed, summary):
        self.name, self.listed, self.summary = name, listed, summary
        self.opts, self.pos = [], []

    def words(self, where, args_only=False):
        """The option words the completion offers in a form, in table order."""
        out = []
        for o in self.opts:
            if o.where & where and (o.arg or not args_only):
                out += ([f"-{o.short}"] if o.short else []) + [f"--{o.long}"]
        return out + ([] if args_only else ["-h", "--help"])

    def fleet_form(self):
        return any(o.where == FLEET for o in self.opts)


def _table():
    r = subprocess.run([BGSWITCH, "__gen", "table"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    specs = {}
    for line in r.stdout.splitlines():
        kind, name, *f = line.split("\t")
        if kind == "spec":
            specs[name] = Spec(name, f[0] == "1", f[1])
        elif kind == "opt":
            specs[name].opts.append(Opt(f[0], "" if f[1] == "-" else f[1], f[2] == "1",
                                        int(f[3]), f[4].split(), f[5]))
        else:
            specs[name].pos.append(Pos(f[1], f[2] == "1", f[3].split(), f[4]))
    return specs


@pytest.fixture(scope="module")
def specs(built):
    return _table()


def _spec_names():
    """The listed commands, for parametrize (at collection: builds the command if need be)."""
    if not os.path.exists(BGSWITCH):
        _make()
    return [n for n, s in _table().items() if s.listed]


def _run(*args):
    return subprocess.run([BGSWITCH] + list(args), capture_output=True, text=True, timeout=30,
                          env=_clean_env())


def test_packaging_tables_are_well_formed(specs):
    """Names and letters are unique in a table; what a value takes is known to the completion."""
    assert "" in specs and len(specs) >= 20
    for s in specs.values():
        longs = [o.long for o in s.opts] + ["help"]
        shorts = [o.short for o in s.opts if o.short] + ["h"]
        assert len(set(longs)) == len(longs), s.name
        assert len(set(shorts)) == len(shorts), s.name
        for o in s.opts:
            assert re.fullmatch(r"[a-z][a-z-]*", o.long), (s.name, o.long)
            assert o.where in (LOCAL, FLEET, LOCAL | FLEET), (s.name, o.long)
            assert o.complete in ("", "file", "dir", "iface", "iface-list", "service"), o
            assert not (o.values or o.complete) or o.arg, (s.name, o.long)
        for i, p in enumerate(s.pos):
            assert p.complete in ("", "file", "iface", "service"), p
            assert not p.optional or all(q.optional for q in s.pos[i:]), (s.name, p.name)
    assert {n.split()[0] for n, s in specs.items() if s.listed} == set(COMMANDS)


def test_packaging_help_lists_every_command(specs):
    p = _run("--help")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    listed = re.findall(r"^  ([a-z]+(?: [a-z]+)?) +(.+)$", p.stdout, re.M)
    assert listed == [(s.name, s.summary) for s in specs.values() if s.listed]


@pytest.mark.parametrize("name", [""] + _spec_names())
def test_packaging_help_shows_every_option(specs, name):
    """`CMD --help` shows every option of CMD's table, "-s, --long" (the fleet form's own
    options in `CMD --etcd URL --help`)."""
    spec = specs[name]
    local = _run(*name.split(), "--help")
    assert local.returncode == 0 and local.stderr == "", (name, local.stderr)
    fleet = _run(*name.split(), "--etcd", "http://127.0.0.1:1", "--help") \
        if spec.fleet_form() else local
    assert fleet.returncode == 0 and fleet.stderr == "", (name, fleet.stderr)
    for o in spec.opts:
        text = (fleet if o.where == FLEET else local).stdout
        tag = f"-{o.short}, --{o.long}" if o.short else f"--{o.long}"
        assert re.search(rf"(^|\s){re.escape(tag)}(\s|=|$)", text, re.M), (name, tag)


# -- bash completion -----------------------------------------------------------------------------

def test_packaging_completion_commands(stub):
    assert complete(stub, "bgswitch ") == COMMANDS
    assert complete(stub, "bgswitch s") == ["service", "shift", "status"]
    assert complete(stub, "bgswitch r") == ["rollout", "rollback"]
    assert complete(stub, "bgswitch t") == ["timeouts"]
    assert complete(stub, "bgswitch g") == ["gc"]
    assert complete(stub, "bgswitch l") == ["limits", "local"]
    assert complete(stub, "bgswitch e") == ["exporter"]
    assert complete(stub, "bgswitch c") == ["check"]
    assert complete(stub, "bgswitch d") == ["detach", "drain"]
    assert complete(stub, "bgswitch -v ") == COMMANDS
    assert complete(stub, "bgswitch --pin-root /sys/fs/bpf/x ro") == ["rollout", "rollback"]
    assert complete(stub, "bgswitch --pin-root /sys/fs/bpf/x rollb") == ["rollback"]
    assert complete(stub, "bgswitch -r /sys/fs/bpf/x ") == COMMANDS
    assert complete(stub, "bgswitch --audit-log /tmp/a.log ") == COMMANDS
    assert complete(stub, "bgswitch -a /tmp/a.log -r /sys/fs/bpf/x fl") == ["flip"]
    assert complete(stub, "bgswitch -va /tmp/a.log ") == COMMANDS


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


def test_packaging_completion_global_option_values(stub, specs, tmp_path):
    """A global option's value completes as its table says: directories or files."""
    (tmp_path / "pins-a").mkdir()
    (tmp_path / "pins-file").write_text("")
    kinds = {"dir": [str(tmp_path / "pins-a")],
             "file": [str(tmp_path / "pins-a"), str(tmp_path / "pins-file")]}
    checked = 0
    for o in specs[""].opts:
        if not o.complete:
            continue
        for line in (f"bgswitch --{o.long} {tmp_path}/pins", f"bgswitch -{o.short} {tmp_path}/pins",
                     f"bgswitch -v --{o.long}={tmp_path}/pins"):
            assert sorted(complete(stub, line)) == kinds[o.complete], (o.long, line)
        checked += 1
    assert checked == 2


def test_packaging_completion_subcommands(stub):
    assert complete(stub, "bgswitch service ") == ["add", "set", "del", "list"]
    assert complete(stub, "bgswitch service d") == ["del"]
    assert complete(stub, "bgswitch service s") == ["set"]
    assert complete(stub, "bgswitch backend ") == ["add", "del"]
    assert complete(stub, "bgswitch -r /sys/fs/bpf/x backend a") == ["add"]
    assert complete(stub, "bgswitch local ") == ["add", "del", "list"]


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
    assert complete(stub, "bgswitch attach --force ") == ifaces
    assert complete(stub, "bgswitch attach -F ") == ifaces
    assert complete(stub, "bgswitch attach --xdp-egress lo ") == ifaces
    assert complete(stub, "bgswitch attach -e lo,lo -F ") == ifaces
    assert complete(stub, "bgswitch attach --xdp-egress=lo ") == ifaces
    # one interface only
    assert complete(stub, "bgswitch attach lo ") == []
    assert complete(stub, "bgswitch attach -e lo lo ") == []
    assert complete(stub, "bgswitch attach --xdp-egress lo lo ") == []
    assert complete(stub, "bgswitch detach lo ") == []


def test_packaging_completion_xdp_egress_interfaces(stub):
    """--xdp-egress takes IF[,IF...]: every name of the list completes, from /sys/class/net."""
    ifaces = _ifaces()
    for line in ("bgswitch attach eth0 --xdp-egress ", "bgswitch attach -e ",
                 "bgswitch attach eth0 --xdp-egress=", "bgswitch attach --force -e "):
        assert complete(stub, line) == ifaces, line
    assert complete(stub, "bgswitch attach eth0 -e l") == [i for i in ifaces if i.startswith("l")]
    # after '=', readline replaces only the value; after a comma, the names before it stay
    assert complete(stub, "bgswitch attach eth0 --xdp-egress=l") == [
        i for i in ifaces if i.startswith("l")]
    assert complete(stub, "bgswitch attach eth0 -e lo,") == [f"lo,{i}" for i in ifaces
                                                              if i != "lo"]
    # the option is attach's only
    assert complete(stub, "bgswitch detach --xdp-egress=") == []
    assert complete(stub, "bgswitch detach -e ") == ifaces  # not an option of detach: IFACE


@pytest.mark.parametrize("line,want", [
    ("bgswitch attach eth0 -e ", ["eth0", "eth1", "veth-b0"]),
    ("bgswitch attach eth0 --xdp-egress e", ["eth0", "eth1"]),
    ("bgswitch attach eth0 --xdp-egress eth1,", ["eth1,eth0", "eth1,veth-b0"]),
    ("bgswitch attach eth0 --xdp-egress eth1,e", ["eth1,eth0"]),
    ("bgswitch attach eth0 -e eth0,eth1,", ["eth0,eth1,veth-b0"]),
    ("bgswitch attach eth0 -e eth0,eth1,veth-b0,", []),
    ("bgswitch attach eth0 -e eth0,v", ["eth0,veth-b0"]),
    ("bgswitch attach eth0 -e eth0,x", []),
    ("bgswitch attach eth0 --xdp-egress=eth0,", ["eth0,eth1", "eth0,veth-b0"]),
    ("bgswitch attach eth0 --xdp-egress=eth1,e", ["eth1,eth0"]),
    ("bgswitch attach --xdp-egress=eth1 ", ["eth0", "eth1", "veth-b0"]),
])
def test_packaging_completion_xdp_egress_lists(stub, line, want):
    """Comma lists complete their last name and leave out the names already listed."""
    assert complete(stub, line, ifaces=["eth0", "eth1", "veth-b0"]) == want


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
    "bgswitch check ",
    "bgswitch drain ",
    "bgswitch drain --timeout 30s ",
    "bgswitch flip --guard 30s --check-http /healthz ",
    "bgswitch backend del --force ",
    "bgswitch -a /tmp/audit.log rollback ",
    "bgswitch service set ",
    "bgswitch service set --table-size 65537 ",
    "bgswitch shift ",
    "bgswitch shift --guard 30s ",
    "bgswitch rollout ",
    "bgswitch rollout --guard ",
    "bgswitch rollout --steps 5,25,100 --interval 30s ",
    "bgswitch rollout -g -s 10,100 -i 1m ",
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
    assert complete(stub, "bgswitch check web ") == ["blue", "green"]
    assert complete(stub, "bgswitch flip --reason deploy web g") == ["green"]
    assert complete(stub, "bgswitch shift web ") == ["blue", "green"]
    assert complete(stub, "bgswitch shift --guard 30s web g") == ["green"]
    assert complete(stub, "bgswitch rollout web ") == ["blue", "green"]
    assert complete(stub, "bgswitch rollout --guard web ") == ["blue", "green"]
    assert complete(stub, "bgswitch rollout --steps 5,100 --interval 1m web b") == ["blue"]
    # nothing after the color (the address is free text), nor after flip's color
    assert complete(stub, "bgswitch backend add web blue ") == []
    assert complete(stub, "bgswitch flip web green ") == []
    assert complete(stub, "bgswitch rollback web ") == []
    assert complete(stub, "bgswitch check web green ") == []
    assert complete(stub, "bgswitch drain web ") == []
    # the percentage is free text; nothing after it, nor after rollout's color
    assert complete(stub, "bgswitch shift web green ") == []
    assert complete(stub, "bgswitch shift web green 10% ") == []
    assert complete(stub, "bgswitch rollout web green ") == []
    assert complete(stub, "bgswitch service set web ") == []


@pytest.mark.parametrize("name", [""] + _spec_names())
def test_packaging_completion_offers_every_option(stub, specs, name):
    """Each command completes its table's options, in the table's order, the fleet form its
    own; an option that takes a value has it skipped when arguments are counted."""
    spec = specs[name]
    line = " ".join(["bgswitch"] + name.split() + ["-"])
    assert complete(stub, line) == spec.words(LOCAL), name
    if spec.fleet_form():
        line = " ".join(["bgswitch"] + name.split() + ["--etcd", "http://127.0.0.1:1", "-"])
        assert complete(stub, line) == spec.words(FLEET), name
    for o in spec.opts:
        if not o.values:
            continue
        for flag in [f"--{o.long}"] + ([f"-{o.short}"] if o.short else []):
            line = " ".join(["bgswitch"] + name.split() + [flag, ""])
            assert complete(stub, line) == o.values, (name, flag)
        line = " ".join(["bgswitch"] + name.split() + [f"--{o.long}="])
        assert complete(stub, line) == o.values, (name, o.long)


@pytest.mark.parametrize("name", _spec_names())
def test_packaging_completion_positionals_follow_the_table(stub, specs, name):
    """Each positional argument completes as its table says, after an option with its value."""
    spec = specs[name]
    before = []
    valued = next((o for o in spec.opts if o.arg and o.where & LOCAL and not o.values), None)
    for p in spec.pos:
        words = ["bgswitch"] + name.split()
        if valued:
            words += [f"--{valued.long}", "x"]
        line = " ".join(words + before + [""])
        got = complete(stub, line)
        if p.values:
            assert got == p.values, (name, p.name)
        elif p.complete == "service":
            assert got == ["web", "dns", "web-canary"], (name, p.name)
        elif p.complete == "iface":
            assert got == _ifaces(), (name, p.name)
        else:
            assert got == [], (name, p.name)
        before.append(p.values[0] if p.values else "web")


def test_packaging_completion_is_generated_from_its_template():
    """The installed completion is the template with the tables in place of @SPECS@, and the
    template holds no option list of its own."""
    with open(COMPLETION_TEMPLATE) as f:
        template = f.read()
    assert template.split("\n").count("@SPECS@") == 1
    assert "--check-http" not in template and "--table-size" not in template
    with open(COMPLETION) as f:
        generated = f.read()
    head, tail = template.split("\n@SPECS@\n")
    assert generated.startswith(head) and generated.endswith(tail)
    r = subprocess.run(["bash", "-n", COMPLETION], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("line,want", [
    ("bgswitch attach eth0 --mode ", ["auto", "native", "generic"]),
    ("bgswitch attach eth0 -m n", ["native"]),
    ("bgswitch attach eth0 --mode=", ["auto", "native", "generic"]),
    ("bgswitch attach eth0 --mode=g", ["generic"]),
    ("bgswitch attach eth0 --flows ", []),
    ("bgswitch service add web 192.0.2.10:80 --proto ", ["tcp", "udp"]),
    ("bgswitch service add web 192.0.2.10:80 -p u", ["udp"]),
    ("bgswitch service add --proto=", ["tcp", "udp"]),
    ("bgswitch service add web 192.0.2.10:80 --lb ", ["maglev", "modulo"]),
    ("bgswitch service add web 192.0.2.10:80 -l mo", ["modulo"]),
    ("bgswitch service add --lb=", ["maglev", "modulo"]),
    ("bgswitch service add --lb=ma", ["maglev"]),
    ("bgswitch service add web 192.0.2.10:80 --table-size ", []),
    ("bgswitch service add web 192.0.2.10:80 --split-by ", ["flow", "client"]),
    ("bgswitch service set web -s c", ["client"]),
    ("bgswitch service set web --split-by=", ["flow", "client"]),
    ("bgswitch service add web 192.0.2.10:80 -m ", []),  # -m is --reason here, not --mode
    ("bgswitch service set web -M ", []),
    ("bgswitch backend add web blue 10.0.1.1:8080 --weight ", []),
    ("bgswitch backend add web blue 10.0.1.1:8080 -w ", []),
    ("bgswitch shift web green 10% --guard ", []),
    ("bgswitch rollout web --steps ", []),
    ("bgswitch rollout web --interval=", []),
    ("bgswitch exporter --listen ", []),
    ("bgswitch exporter --listen 127.0.0.1:9465 --gc-interval ", []),
    ("bgswitch exporter -g ", []),
    ("bgswitch timeouts --tcp-idle ", []),
    ("bgswitch timeouts -u ", []),
    ("bgswitch timeouts --closing=", []),
    ("bgswitch limits --new-flows ", []),
    ("bgswitch limits -b ", []),
    ("bgswitch limits --burst=", []),
    ("bgswitch status --interval ", []),
    ("bgswitch watch -i ", []),
    ("bgswitch flip web --guard ", []),
    ("bgswitch flip web --check-http ", []),
    ("bgswitch flip web -G ", []),
    ("bgswitch rollback web --reason ", []),
    ("bgswitch drain web --timeout ", []),
    ("bgswitch backend del web blue 10.0.1.1:8080 --if-generation ", []),
])
def test_packaging_completion_option_values(stub, line, want):
    assert complete(stub, line) == want
    assert stub.calls() == []


@pytest.mark.parametrize("line", [
    "bgswitch timeouts ",
    "bgswitch timeouts --tcp-idle 15m ",
    "bgswitch timeouts -c 2s ",
    "bgswitch gc ",
    "bgswitch limits ",
    "bgswitch limits --new-flows 50000 ",
    "bgswitch limits -n 0 -b 100 ",
    "bgswitch exporter --listen 127.0.0.1:9465 ",
    "bgswitch exporter -g 30s ",
])
def test_packaging_completion_no_arguments(stub, line):
    """timeouts, gc, limits and exporter take no arguments: nothing to complete, no service list."""
    assert complete(stub, line) == []
    assert stub.calls() == []


def test_packaging_completion_positionals_after_options(stub):
    """getopt permutes: options may come before the arguments they precede."""
    assert complete(stub, "bgswitch service add --proto udp dns 192.0.2.53:53 -") == [
        "-p", "--proto", "-l", "--lb", "-M", "--table-size", "-s", "--split-by", "-m", "--reason",
        "-h", "--help"]
    assert complete(stub, "bgswitch service add --lb modulo web 192.0.2.10:80 --p") == [
        "--proto"]
    assert complete(stub, "bgswitch flip --guard 30s web ") == ["blue", "green"]
    assert complete(stub, "bgswitch flip -w -t 5m web green ") == []
    assert complete(stub, "bgswitch shift -g 30s -R 5 web ") == ["blue", "green"]
    # rollout's --guard takes no value: the word after it is the service
    assert complete(stub, "bgswitch rollout -g web ") == ["blue", "green"]
    assert complete(stub, "bgswitch rollout --steps 5,100 web --s") == ["--steps"]
    assert complete(stub, "bgswitch check -H /healthz ") == ["web", "dns", "web-canary"]
    assert complete(stub, "bgswitch service del --force ") == ["web", "dns", "web-canary"]
    assert complete(stub, "bgswitch status --json web ") == []
    assert complete(stub, "bgswitch status -i 100 ") == ["web", "dns", "web-canary"]
    assert complete(stub, "bgswitch watch --interval 500 ") == ["web", "dns", "web-canary"]
    assert complete(stub, "bgswitch watch --interval=500 web ") == []


# -- man page ------------------------------------------------------------------------------------

def _roff():
    with open(MAN) as f:
        return f.read()


def _tag(o):
    return (f"\\fB\\-{o.short}\\fP, " if o.short else "") + "\\fB\\-\\-" + \
        o.long.replace("-", "\\-") + "\\fP"


def _command_block(roff, name):
    """A command's paragraph in COMMANDS: from its tag (or the first of the tags it shares, as
    "local add", "local del" and "local list" do) to the end of its option list."""
    tag = "\\fB" + name.replace("-", "\\-") + "\\fP"
    m = re.search(rf"^\.TP\n(?:\\fB[a-z ]+\\fP.*\n\.TQ\n)*{re.escape(tag)}[ \n].*?"
                  r"(?=^\.TP\n\\fB[a-z]|^\.SS |\Z)", roff, re.M | re.S)
    assert m, f"no entry for {name}"
    return m.group(0)


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
        assert "@" not in r.stdout.replace("user@", ""), "a template line left unexpanded"


@pytest.mark.parametrize("name", _spec_names())
def test_packaging_man_lists_every_option(specs, name):
    """Each command's entry lists every option of its table, once, in the table's order (the
    fleet form's own ones last), each with a paragraph."""
    spec = specs[name]
    block = _command_block(_roff(), name)
    tags = re.findall(r"^\.TP\n(\\fB\\-.*?\\fP)(?: .*)?\n(.+)", block, re.M)
    order = [o for o in spec.opts if o.where != FLEET] + [o for o in spec.opts if o.where == FLEET]
    assert all(text.strip() for _, text in tags), name
    if "\n.TQ\n" in block:  # an entry shared with other commands: their options, if any
        assert {_tag(o) for o in order} <= {t for t, _ in tags}, name
        return
    assert [t for t, _ in tags] == [_tag(o) for o in order], name


def test_packaging_man_global_options(specs):
    section = re.search(r"^\.SH OPTIONS\n(.*?)^\.SH ", _roff(), re.M | re.S).group(1)
    tags = re.findall(r"^\.TP\n(\\fB\\-.*?\\fP)(?: .*)?$", section, re.M)
    assert tags == [_tag(o) for o in specs[""].opts]


def test_packaging_man_synopsis_has_every_command_and_option(specs):
    roff = _roff()
    synopsis = re.search(r"^\.SH SYNOPSIS\n(.*?)^\.SH ", roff, re.M | re.S).group(1)
    lines = synopsis.replace("\\-", "-").split("\n.br\n")
    for spec in specs.values():
        if not spec.listed and spec.name:
            continue
        head = f"\\fBbgswitch{' ' if spec.name else ''}{spec.name}\\fP"
        mine = [ln for ln in lines if (ln.startswith(head + " ") or ln == head)
                and not ln.endswith("\\fB--help\\fP")]
        assert len(mine) == (2 if spec.fleet_form() else 1), spec.name
        for o in spec.opts:
            line = mine[-1] if o.where == FLEET else mine[0]
            assert f"--{o.long}" in line, (spec.name, o.long)


def test_packaging_man_keeps_the_hand_written_paragraphs():
    """Every "@@name" paragraph of the template stands in the generated page, and a paragraph
    for an option the table lacks stops the generation with one line."""
    with open(MAN_TEMPLATE) as f:
        template = f.read()
    roff = _roff()
    paragraphs = re.findall(r"^@@[a-z-]+\n(.*?)(?=^@)", template, re.M | re.S)
    assert len(paragraphs) > 60
    for text in paragraphs:
        assert text in roff, text[:60]
    bad = "@OPTIONS flip@\n@@no-such-option\nText.\n@END@\n"
    r = subprocess.run([BGSWITCH, "__gen", "man"], input=bad, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "no-such-option" in r.stderr


def test_packaging_man_documents_every_command_and_option(specs):
    roff = _roff()
    text = roff.replace("\\-", "-")
    for sub in ("service add", "service set", "service del", "service list", "backend add",
                "backend del", "local add", "local del", "local list"):
        assert f"\\fB{sub}\\fP" in roff, sub
    # the environment, the test hook and its fault points, the exit statuses
    for word in ("BGSWITCH_AUDIT_LOG", "BGSWITCH_FAULT", "/var/lib/bgswitch/audit.log"):
        assert word in text, word
    for point in _fault_points():
        assert point in text, point
    for path in ("/sys/fs/bpf/bgswitch", "bgs_config", "bgs_vips", "bgs_services", "bgs_switch",
                 "bgs_sets", "bgs_backends", "bgs_backend_addrs", "bgs_flows", "bgs_nexthops",
                 "bgs_ifaces", "bgs_stats", "bgs_drops", "bgs_backend_stats",
                 "bgs_service_stats", "bgs_vip_addrs", "bgs_frags", "bgs_tx_ports",
                 "bgs_insert_budget", "bgs_tables"):
        assert path in text, path
    # every pinned map of user/state.c has an entry under FILES
    with open(os.path.join(TOP, "user", "state.c")) as f:
        maps = re.findall(r'\[BGS_M_\w+\] = "(bgs_\w+)"', f.read())
    assert len(maps) >= 18, maps
    files = re.search(r"^\.SH FILES\n(.*?)^\.SH ", roff, re.M | re.S).group(1)
    for name in maps:
        assert re.search(rf"^\.B {name}$", files, re.M), name


def _fault_points():
    """The names of the fault points (BGSWITCH_FAULT) in user/*.c."""
    points = set()
    for path in glob.glob(os.path.join(TOP, "user", "*.c")):
        with open(path) as f:
            points |= set(re.findall(r'fault_point\("([a-z-]+)"\)', f.read()))
    assert points, "no fault points found in user/*.c"
    return points


def test_packaging_man_lists_every_counter():
    """The Counters subsection has an entry for every node counter and drop reason, in the
    order of include/bgswitch.h's lists (status prints them in that order)."""
    with open(MAN) as f:
        roff = f.read()
    section = re.search(r"^\.SS Counters\n(.*?)^\.S[SH] ", roff, re.M | re.S).group(1)
    stats, drops = section.split("\n.PP\n")
    stat_names = [e.name for e in model.STAT_LIST]
    drop_names = [e.name for e in model.DROP_LIST]
    assert re.findall(r"^\.TP\n\.B (\w+)$", stats, re.M) == stat_names
    assert re.findall(r"^\.TP\n\.B (\w+)$", drops, re.M) == drop_names


def test_packaging_man_lists_every_metric():
    with open(os.path.join(TOP, "user", "exporter.c")) as f:
        src = f.read()
    metrics = re.findall(r'(?:metric_head|node_counter)\(f, "(bgswitch_[a-z_]+)"', src)
    assert len(metrics) == src.count("metric_head(f,") + src.count("node_counter(f,"), \
        "a metric name the test cannot read"
    with open(MAN) as f:
        roff = f.read()
    section = re.search(r"^\.SS Metrics\n(.*?)^\.S[SH] ", roff, re.M | re.S).group(1)
    documented = re.findall(r"^\.BR? (bgswitch_[a-z_]+)(?: \", \" (bgswitch_[a-z_]+))?$", section,
                            re.M)
    assert [m for pair in documented for m in pair if m] == metrics
    # the label values the exporter writes
    passed = [e.name for e in model.STAT_LIST if e.args == ("1",)]
    assert "bgs_stat_passed[i]" in src and passed, "the passed reasons are not the header's"
    for reason in passed:
        assert f".BR {reason} " in section or f".B {reason}\n" in section, reason
    values = set(re.findall(r'(?:action|kind|direction)=\\"([a-z_]+)\\"', src))
    assert {"xdp_tx", "redirect", "syn", "nosyn", "in", "out"} <= values
    for value in values:
        assert re.search(rf"^\.BR? {value}( |$)", section, re.M), value


def test_packaging_man_names_only_real_drop_reasons():
    """Wherever the man page says "drop reason X", X is a drop reason of include/bgswitch.h."""
    drop_names = [e.name for e in model.DROP_LIST]
    with open(MAN) as f:
        roff = f.read()
    named = re.findall(r"drop reason\s*\n\.BR? (\w+)", roff)
    assert named, "no drop reason named in the text"
    assert not [n for n in named if n not in drop_names], named


def test_packaging_man_documents_status_json_keys():
    """status --json: every key user/status.c writes is in the man page's entry for status."""
    with open(os.path.join(TOP, "user", "status.c")) as f:
        keys = set(re.findall(r'\bput\w*\(\w+, "([a-z_]+)"', f.read()))
    assert {"flow_table", "evicted", "draining", "second_chance", "new_flows_per_s"} <= keys
    with open(MAN) as f:
        roff = f.read()
    entry = _command_block(roff, "status")
    missing = sorted(k for k in keys
                     if not re.search(rf"^\.BR? {k}( |$)", entry.replace("\\-", "-"), re.M))
    assert not missing, f"status --json keys missing from the man page: {missing}"


def test_packaging_man_documents_audit_actions():
    """Every action the audit trail writes (audit_open()'s literal actions, ops_service.c's
    op_begin() actions, and cutover.c's cut_actions[] for flip, shift and rollback) is named in
    the man page's Audit trail."""
    actions = set()
    for path in glob.glob(os.path.join(TOP, "user", "*.c")):
        with open(path) as f:
            src = f.read()
        actions |= set(re.findall(r'audit_open\(&?\w+, "([a-z-]+)"', src))
        actions |= set(re.findall(r'op_begin\(\w+, &?\w+, "([a-z-]+)"', src))
        table = re.search(r"\bcut_actions\[\] = \{(.*?)\};", src, re.S)
        actions |= set(re.findall(r'\] = "([a-z-]+)"', table.group(1) if table else ""))
    assert {"flip", "shift", "rollout", "rollback", "service-add", "service-set", "service-del",
            "backend-add", "backend-del"} <= actions, actions
    with open(MAN) as f:
        roff = f.read()
    section = re.search(r"^\.SS Audit trail\n(.*?)^\.S[SH] ", roff, re.M | re.S).group(1)
    section = section.replace("\\-", "-")
    missing = sorted(a for a in actions if not re.search(rf"^\.BR? {a}( |,|$)", section, re.M))
    assert not missing, f"audit actions missing from the man page: {missing}"


def test_packaging_man_exit_statuses_name_the_new_commands():
    """The EXIT STATUS section covers shift and rollout where they have their own meanings."""
    with open(MAN) as f:
        roff = f.read()
    section = re.search(r"^\.SH EXIT STATUS\n(.*?)^\.SH ", roff, re.M | re.S).group(1)
    entries = dict(re.findall(r"^\.TP\n\.B (\d)\n(.*?)(?=^\.TP|\Z)", section, re.M | re.S))
    assert sorted(entries) == ["0", "1", "2", "3", "4", "5", "6"], sorted(entries)
    for status, words in (("3", ("shift", "rollout")), ("4", ("shift", "rollout")),
                          ("5", ("shift",)), ("6", ("rollout",))):
        for w in words:
            assert re.search(rf"\b{w}\b", entries[status]), (status, w)


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


def test_packaging_agent_unit_is_hardened():
    with open(AGENT_UNIT) as f:
        unit = f.read()
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1]
             for ln in unit.splitlines() if "=" in ln and not ln.startswith("#")}
    assert lines["ExecStart"] == "@SBINDIR@/bgswitch agent $BGSWITCH_AGENT_ARGS"
    assert set(lines["CapabilityBoundingSet"].split()) == {"CAP_BPF", "CAP_SYS_ADMIN"}
    assert lines["ProtectSystem"] == "strict"
    assert "/sys/fs/bpf" in lines["ReadWritePaths"]
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert lines[key] == "yes", key
    assert lines["Restart"] == "always"


def test_packaging_daemonset_manifest():
    with open(os.path.join(TOP, "deploy", "bgswitch-agent.yaml")) as f:
        text = f.read()
    for word in ("kind: DaemonSet", "hostNetwork: true", '"BPF"', '"NET_ADMIN"', '"PERFMON"',
                 "path: /sys/fs/bpf", "- agent", "--cacert", "spec.nodeName"):
        assert word in text, word


# -- make install --------------------------------------------------------------------------------

INSTALLED = {
    "usr/sbin/bgswitch": 0o755,
    "usr/share/man/man8/bgswitch.8.gz": 0o644,
    "usr/share/bash-completion/completions/bgswitch": 0o644,
    "usr/lib/systemd/system/bgswitch-exporter.service": 0o644,
    "usr/lib/systemd/system/bgswitch-agent.service": 0o644,
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
    agent = (dest / "usr/lib/systemd/system/bgswitch-agent.service").read_text()
    assert "\nExecStart=/usr/sbin/bgswitch agent $BGSWITCH_AGENT_ARGS\n" in agent


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
