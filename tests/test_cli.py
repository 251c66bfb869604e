"""Command-line strictness: malformed command lines, generated from a table of commands and a
table of malformations, each refused with one line on stderr, a non-zero exit, no output on
stdout, and no change to the state (status --json, configuration part, before and after). Also:
control characters of an argument are escaped in the message, a command without its
subcommand is a usage error (exit 2), a re-run of a finished `backend del` exits 0, and
status --json stays valid JSON for odd but accepted names (a pin root and an interface name
with '"' and '\\').

`make test` runs this file with the normal build and again with the ASan/UBSan build
(BGSWITCH=.output/san/bgswitch).

Run as root: /usr/bin/pytest -q tests/test_cli.py
"""

import json
import os
import re
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import netns  # noqa: E402
from lib.netns import NODE_IFACE  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

COLORS = ("blue", "green")
BLUE1 = "10.77.2.11:8081"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# -- the tables -----------------------------------------------------------------------------

# What may stand in a place of each kind, malformed. Every entry is refused wherever a value of
# that kind goes; "%" is the well-formed value it spoils.
BAD = {
    "any": ["", " %", "% ", "%\r\n", "%\n", "%\x1b[2J", "%\t"],
    "addr": ["10.77.100.9: 80", "10.77.100.9:+80", "10.77.100.9:0x50", "10.77.100.9:-80",
             "10.77.100.9:80x", "10.77.100.9:65536", "10.77.100.9::80", "[10.77.100.9]:80",
             "fd77::9:80", "[fd77::9]80", "10.77.100.9", ":80", "10.77.100:80"],
    "num": [" 3", "3 ", "+3", "-3", "3x", "0x3", "3.0", "1e3", "99999999999999999999"],
    "dur": ["5 s", " 5s", "5ss", "-5s", "+5s", "5x", "1.5s", "s", "9999999999h"],
    "share": [" 10%", "10 %", "10%%", "-10%", "+10%", "101%", "10.001%", "1e1", "%10"],
    "steps": ["5,,10", ",5,10", "5,10,", ",", "5;10", "5, 10", "10,5", "5,5"],
    "color": ["Blue", "BLUE", "purple", "greenx", "bl ue"],
    "name": ["x" * 32, "we b", "we/b", "-web", "wé"],
    "proto": ["TCP", "sctp", "tcp,udp"],
    "lb": ["Maglev", "hash", "maglev,modulo"],
    "split": ["Flow", "src", "flow,client"],
    "mode": ["Native", "xdp", "drv", "auto,native"],
    "ifaces": [",,,", "n-blue,,n-green", ",n-blue", "n-blue,", "n-blue n-green",
               "nosuchif"],
    "path": ["healthz", "/a b", "http://x/y"],
    "table": ["250", "252", "131072", "1", "0"],
}

# (command tokens, {index: kind}): each place is spoiled by every malformation of its kind and
# by the generic ones; the unspoiled line is well-formed (it would be accepted).
COMMANDS = [
    (("service", "add", "new", "10.77.100.9:80"), {2: "name", 3: "addr"}),
    (("service", "add", "new", "10.77.100.9:80", "--proto", "udp"), {5: "proto"}),
    (("service", "add", "new", "10.77.100.9:80", "--table-size", "251"), {5: "table"}),
    (("service", "add", "new", "10.77.100.9:80", "--lb", "modulo"), {5: "lb"}),
    (("service", "add", "new", "10.77.100.9:80", "--split-by", "client"), {5: "split"}),
    (("service", "set", "web", "--table-size", "251"), {4: "table"}),
    (("backend", "add", "web", "blue", "10.77.2.13:8081"), {3: "color", 4: "addr"}),
    (("backend", "add", "web", "blue", "10.77.2.13:8081", "--weight", "3"), {6: "num"}),
    (("backend", "add", "web", "blue", "10.77.2.13:8081", "--if-generation", "5"),
     {6: "num"}),
    (("backend", "del", "web", "blue", BLUE1, "--drain"), {3: "color", 4: "addr"}),
    (("flip", "web", "green"), {2: "color"}),
    (("flip", "web", "--guard", "5s"), {3: "dur"}),
    (("flip", "web", "--wait-drain", "--timeout", "5s"), {4: "dur"}),
    (("flip", "web", "--check-timeout", "1s"), {3: "dur"}),
    (("flip", "web", "--check-http", "/healthz"), {3: "path"}),
    (("shift", "web", "green", "10%"), {2: "color", 3: "share"}),
    (("shift", "web", "green", "10%", "--guard", "5s", "--max-resets", "3"), {7: "num"}),
    (("rollout", "web", "--steps", "5,10", "--interval", "1s"), {3: "steps", 5: "dur"}),
    (("rollback", "web", "--if-generation", "3"), {3: "num"}),
    (("check", "web", "green"), {2: "color"}),
    (("drain", "web", "--timeout", "5s"), {3: "dur"}),
    (("status", "web", "--interval", "100"), {3: "num"}),
    (("timeouts", "--tcp-idle", "60s"), {2: "dur"}),
    (("limits", "--new-flows", "1000"), {2: "num"}),
    (("attach", NODE_IFACE, "--mode", "native"), {3: "mode"}),
    (("attach", NODE_IFACE, "--flows", "2048"), {3: "num"}),
    (("attach", NODE_IFACE, "--xdp-egress", "n-blue"), {3: "ifaces"}),
    (("exporter", "--listen", "127.0.0.1:9465"), {2: "addr"}),
]

# Malformed as a whole: options that contradict or are ignored, arguments missing or extra.
WHOLE = [
    ("flip", "web", "--timeout", "5s"),                      # --timeout without --wait-drain
    ("flip", "web", "--max-resets", "3"),                    # a threshold without --guard
    ("flip", "web", "--no-check", "--check-http", "/x"),
    ("flip", "web", "--force=1"),
    ("flip", "web", "-s", "5"),                              # rollout's option
    ("shift", "web", "green"),
    ("shift", "web", "green", "10%", "--wait-drain"),        # a split never drains
    ("flip", "web", "--wait"),                               # the fleet form's, without --etcd
    ("shift", "web", "green", "10%", "--prefix", "/bgs"),
    ("rollback", "web", "--timeout", "5s"),                  # --wait's timeout: fleet only
    ("rollout", "web", "--steps", "5,10"),                   # no --interval
    ("backend", "add", "web", "blue"),
    ("backend", "add", "web", "blue", "10.77.2.13:8081", "extra"),
    ("backend", "add", "web", "blue", "10.77.2.13:8081", "--weight"),
    ("backend", "del", "web", "blue", BLUE1, "--drain", "--force"),
    ("backend", "frob", "web"),
    ("service", "add", "new"),
    ("service", "add", "new", "10.77.100.9:80", "extra"),
    ("service", "frob"),
    ("service", "list", "extra"),
    ("attach",),
    ("attach", NODE_IFACE, "n-blue"),
    ("attach", NODE_IFACE, "--mode"),
    ("detach",),
    ("status", "web", "echo"),
    ("gc", "extra"),
    ("exporter",),
    ("status", "--interval", "100", "--etcd", "http://127.0.0.1:1"),  # a local-only option
    ("timeouts", "extra"),
    ("local",),
    ("local", "frob"),
    ("local", "list", "--netns", "/run/netns/x"),
    ("--pin-root", "relative/dir", "status"),
    ("frobnicate",),
]


def _spoil(value, bad):
    return bad.replace("%", value) if "%" in bad else bad


def _cases():
    cases = []
    for tokens, places in COMMANDS:
        for i, kind in places.items():
            for bad in BAD[kind] + BAD["any"]:
                if kind == "ifaces" and bad == "":
                    continue  # --xdp-egress "" empties the list: well-formed
                line = list(tokens)
                line[i] = _spoil(tokens[i], bad)
                cases.append(tuple(line))
        for extra in (("--bogus",), ("-Z",), ("--bogus=1",)):
            cases.append(tokens + extra)
    cases += WHOLE
    # Unknown global options, before any command.
    cases += [("--bogus", "status"), ("-Z", "status"), ("--verbose=2", "status")]
    return list(dict.fromkeys(cases))  # each line once


CASES = _cases()


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli(topo):
    """One attached state: web (blue and green backends), half (blue only), echo (UDP)."""
    yield from netns.cli_state_fixture(topo)


def config(s):
    """The configuration as status --json shows it, without counters."""
    st = s.status()
    svcs = []
    for svc in st["services"]:
        cols = {c: [(b["address"], b["port"], b["slot"], b["state"], b["weight"])
                    for b in svc["colors"][c]["backends"]] for c in COLORS}
        svcs.append((svc["name"], svc["id"], svc["vip"], svc["port"], svc["proto"],
                     svc["active"], svc["green_share"], svc["previous"], svc["generation"],
                     svc["table_size"], svc["lb"], svc["split_by"], cols))
    return {"pin_root": st["pin_root"], "interfaces": st["interfaces"], "services": svcs,
            "flow_table": st["flow_table"]["capacity"], "timeouts": st["timeouts"]}


@pytest.fixture(scope="module")
def baseline(cli):
    return config(cli)


def one_line_refusal(p, cmd):
    """The refusal's one stderr line, after checking its form."""
    assert p.returncode != 0, f"{cmd}: exit 0\n{p.stdout}{p.stderr}"
    assert p.stdout == "", f"{cmd}: stdout {p.stdout!r}"
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), \
        f"{cmd}: stderr must be one line: {p.stderr!r}"
    assert not CONTROL.search(p.stderr), f"{cmd}: raw control characters: {p.stderr!r}"
    line = p.stderr.rstrip("\n")
    assert line.startswith("bgswitch: ") and len(line) > len("bgswitch: "), (cmd, line)
    return line


# -- tests ------------------------------------------------------------------------------------

def test_cli_table_has_a_few_hundred_lines():
    assert len(CASES) >= 300, len(CASES)


@pytest.mark.parametrize("args", CASES, ids=[repr(" ".join(c))[1:-1][:80] for c in CASES])
def test_cli_malformed_line_is_refused_in_one_line_changing_nothing(cli, baseline, args):
    cmd = "bgswitch " + " ".join(map(repr, args))
    p = cli.run(*args)
    one_line_refusal(p, cmd)
    assert config(cli) == baseline, f"{cmd} changed the state"


@pytest.mark.parametrize("args,code", [
    (("service",), 2), (("backend",), 2), (("service", "frob"), 2), (("backend", "frob"), 2),
    (("local",), 2), (("local", "frob"), 2),
    (("--bogus", "status"), 2), (("frobnicate",), 2), ((), 2),
    (("flip", "web", "--timeout", "5s"), 1), (("attach", NODE_IFACE, "--xdp-egress", ",,,"), 1),
], ids=["service", "backend", "service-frob", "backend-frob", "local", "local-frob",
        "global-option", "command",
        "nothing", "flip-timeout", "xdp-egress"])
def test_cli_usage_errors_exit_as_the_readme_says(cli, baseline, args, code):
    p = cli.run(*args)
    line = one_line_refusal(p, args)
    assert p.returncode == code, (args, p.returncode, line)
    if code == 2:
        assert "--help" in line, line  # it says where the usage is
    assert config(cli) == baseline


@pytest.mark.parametrize("args,named", [
    (("status", "--interval", "100", "--etcd", "http://127.0.0.1:1"), "--interval"),
    (("status", "--prefix", "/x", "web", "-i", "100"), "--interval"),
], ids=["etcd", "prefix"])
def test_cli_local_only_option_is_refused_in_the_fleet_form(cli, baseline, args, named):
    """An option only the fleet form takes makes the line the fleet form: a local-only option
    beside it is named in the one line, and nothing changes."""
    line = one_line_refusal(cli.run(*args), args)
    assert f"{named} is not accepted with --" in line, line
    assert config(cli) == baseline


@pytest.mark.parametrize("arg,shown", [
    ("we\r\nb", r"we\r\nb"), ("we\x1b[2Jb", r"we\x1b[2Jb"), ("we\tb", r"we\tb")],
    ids=["crlf", "escape", "tab"])
def test_cli_control_characters_are_escaped_in_messages(cli, arg, shown):
    for args in (("service", "add", arg, "10.77.100.9:80"), ("status", "--" + arg),
                 ("flip", arg)):
        line = one_line_refusal(cli.run(*args), args)
        assert shown in line, (args, line)


def test_cli_backend_del_rerun_says_already_removed_and_exits_0(cli):
    """A `backend del` cut short after its change (the state is as after a finished one) is
    re-run: it says so and exits 0. One that never existed is still an error."""
    be = "10.77.2.12:8081"
    gen = cli.service("web")["generation"]
    try:
        out = cli("backend", "del", "web", "blue", be)
        assert "removed" in out, out
        after = config(cli)
        p = cli.run("backend", "del", "web", "blue", be)
        assert p.returncode == 0 and p.stderr == "", (p.returncode, p.stderr)
        assert "already removed" in p.stdout, p.stdout
        assert config(cli) == after  # nothing more changed
        assert cli.service("web")["generation"] == gen + 1
        # The same address in the other color, or an address never added, is refused.
        for args in (("backend", "del", "web", "green", be),
                     ("backend", "del", "web", "blue", "10.77.2.99:8081")):
            assert "is not a" in one_line_refusal(cli.run(*args), args)
    finally:
        cli("backend", "add", "web", "blue", be)


LONGEST = "l" * 31  # the longest service name (BGS_NAME_LEN - 1)


@pytest.mark.parametrize("args", [
    ("service", "set", LONGEST + "x", "--table-size", "251"),
    ("service", "del", LONGEST + "x", "--force"),
    ("backend", "add", LONGEST + "x", "blue", "10.77.2.32:8081"),
    ("backend", "del", LONGEST + "x", "blue", "10.77.2.31:8081", "--force"),
], ids=["service-set", "service-del", "backend-add", "backend-del"])
def test_cli_name_longer_than_any_service_names_none(cli, args):
    """A NAME one character longer than the longest service name is no service, not the one its
    first 31 characters name: refused in one line, that service untouched."""
    cli("service", "add", LONGEST, "10.77.100.31:80")
    try:
        cli("backend", "add", LONGEST, "blue", "10.77.2.31:8081")
        before = config(cli)
        line = one_line_refusal(cli.run(*args), args)
        assert "unknown service" in line, line
        assert config(cli) == before
    finally:
        cli.run("service", "del", LONGEST, "--force")


# -- JSON for every accepted name -------------------------------------------------------------

# Names `service add` accepts (1 to 31 of A-Z a-z 0-9 . _ -, not starting with -) that a
# hand-made JSON writer could get wrong: numbers, JSON literals, dots alone, the longest.
ODD_NAMES = ["a", "_", "...", "0", "A.b_C-d", "x" * 31, "web.v2-canary_1", "9", "007", "1e5",
             "null", "true", "NaN", "..", "a-"]


@pytest.fixture
def odd(topo):
    """A state whose pin root has '"' and '\\' in its name, attached (generic XDP) to a veth
    of the node namespace whose name has them too."""
    root = f"{netns.BPFFS}/{topo.prefix}-q\"b\\s"
    ifname = 'bq"x\\y'
    topo.ip("node", "link", "add", ifname, "type", "veth", "peer", "name", "bq-peer")
    s = topo.bgswitch(pin_root=root)
    try:
        topo.ip("node", "link", "set", ifname, "up")
        s("attach", ifname, "--mode", "generic")
        yield s, root, ifname
    finally:
        s.run("detach", ifname, "--purge")
        topo.ip("node", "link", "del", ifname, check=False)
        if os.path.isdir(root):
            shutil.rmtree(root, ignore_errors=True)
        if s in topo.switches:
            topo.switches.remove(s)


def test_cli_status_json_is_valid_for_odd_accepted_names(odd):
    s, root, ifname = odd
    for i, name in enumerate(ODD_NAMES):
        s("service", "add", name, f"10.77.100.{50 + i}:80")
    out = s("status", "--json")
    st = json.loads(out)  # raises on invalid JSON
    assert st["pin_root"] == root
    assert [i["name"] for i in st["interfaces"]] == [ifname]
    assert sorted(x["name"] for x in st["services"]) == sorted(ODD_NAMES)
    for name in ODD_NAMES:
        assert json.loads(s("status", name, "--json"))["services"][0]["name"] == name
