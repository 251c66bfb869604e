"""Property tests of the Maglev table builder (user/maglev.c), through the real command.

Every table here is built by bgswitch itself: services and backends are made with the CLI on a
private attached state (the ``bgs`` fixture of tests/lib/unit_fixtures.py, as the data-plane unit
tests use it), and the tables are read back from the pinned map bgs_tables (the outer entry of a
color's current buffer gives the inner map's id, opened with BPF_MAP_GET_FD_BY_ID). A table is
compared as the backend (address:port) at each of its M positions, so that two services, or two
nodes, with different local slots can be compared.

What is checked, with the figures printed (``pytest -s`` shows them, and a summary table at the
end of the module):

* share: each backend's part of the M positions against weight / sum(weights);
* disruption: the part of the positions whose backend changes when one backend is added to N,
  removed from N, or has its weight changed, against the least that must change;
* the table depends on the set of backends and their weights only: not on the order they were
  added in, nor on the history (added then removed), nor on the service;
* it is the table model.maglev_table (a Python mirror of user/maglev.c) builds;
* table sizes must be primes from 251 to BGS_TABLE_MAX.
"""

import random
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from lib import model
from lib.unit_fixtures import BgsState

M = model.BGS_TABLE_SIZE
BLUE = model.BGS_BLUE

SUMMARY: List[Tuple[str, str, str]] = []  # (what, measured, bound), printed at the end


@pytest.fixture(scope="module", autouse=True)
def _summary():
    """Print the figures the tests of this module measured, as one table, at the end."""
    yield
    if SUMMARY:
        w = max(len(r[0]) for r in SUMMARY)
        m = max(len(r[1]) for r in SUMMARY)
        print("\n\nMaglev table builder, measured (M = table size):")
        print(f"  {'case':<{w}}  {'measured':<{m}}  bound")
        for what, measured, bound in SUMMARY:
            print(f"  {what:<{w}}  {measured:<{m}}  {bound}")


def backend_addr(i: int) -> Tuple[str, int]:
    """The i-th backend of this module's address plan."""
    return f"10.1.{i // 250}.{i % 250 + 1}", 8080


class Svc:
    """A service made with the command, its backends and its blue table."""

    def __init__(self, bgs: BgsState, name: str, k: int, *options: str):
        self.bgs, self.name = bgs, name
        self.svc = bgs.add_service(name, f"10.0.{k // 200}.{k % 200 + 1}", 80, "tcp", *options)

    def add(self, i: int, weight: Optional[int] = None) -> int:
        a, p = backend_addr(i)
        return self.bgs.add_backend(self.name, "blue", a, p, weight)

    def reweigh(self, i: int, weight: int) -> None:
        self.bgs.cli("backend", "add", self.name, "blue", model.endpoint(*backend_addr(i)),
                     "--weight", str(weight))

    def remove(self, i: int) -> None:
        self.bgs.cli("backend", "del", self.name, "blue", model.endpoint(*backend_addr(i)))

    def table(self) -> List[str]:
        """Blue's current table as "addr:port" per position."""
        slots = self.bgs.table(self.svc, BLUE)
        assert slots is not None, f"{self.name}: no table"
        names = {s: "%s:%d" % self.bgs.backend(s)[:2] for s in set(slots)}
        return [names[s] for s in slots]


def shares(table: Sequence[str]) -> Dict[str, int]:
    """Positions per backend."""
    out: Dict[str, int] = {}
    for b in table:
        out[b] = out.get(b, 0) + 1
    return out


def changed(a: Sequence[str], b: Sequence[str]) -> float:
    """The part of the positions whose backend differs."""
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b)) / len(a)


def ep(i: int) -> str:
    return "%s:%d" % backend_addr(i)


# --- share per backend --------------------------------------------------------------------------

SHARE_CASES = [
    # (name, weights, table size)
    ("10 equal", [1] * 10, M),
    ("weights 1,2,3,4", [1, 2, 3, 4], M),
    ("weight 0 among 1,0,2,1", [1, 0, 2, 1], M),
    ("weights 1000,1,500", [1000, 1, 500], M),
    ("5 equal, M 251", [1] * 5, 251),
]


@pytest.mark.parametrize("name,weights,m", SHARE_CASES, ids=[c[0] for c in SHARE_CASES])
def test_maglev_share_follows_weight(bgs, name, weights, m):
    """Each backend holds M * w / sum(w) positions within 2 (the builder gives backends turns
    in rounds, w / w_max of a position per round with the remainder carried as credit: when
    the table fills, a backend is at most one round's claim, at most one position, ahead or
    behind, plus the rounding of its credit, at most one more), and strictly within 1
    position when all weights are equal (then every backend has claimed K or K + 1
    positions, and the ideal lies between). A backend of weight 0 holds none. The table has
    exactly M positions (entry 0 of the inner map), every one a backend of the color."""
    s = Svc(bgs, "web", 0, *(["--table-size", str(m)] if m != M else []))
    for i, w in enumerate(weights):
        s.add(i, w)
    table = s.table()
    assert len(table) == m
    count = shares(table)
    total = sum(weights)
    devs, rels = [], []
    for i, w in enumerate(weights):
        ideal = m * w / total
        got = count.get(ep(i), 0)
        if w == 0:
            assert got == 0, f"{ep(i)} of weight 0 holds {got} positions"
            continue
        devs.append(got - ideal)
        rels.append(abs(got - ideal) / ideal)
        assert abs(got - ideal) <= 2, f"{ep(i)} weight {w}: {got} positions, ideal {ideal:.2f}"
        if len(set(weights)) == 1:
            assert abs(got - ideal) < 1, f"{ep(i)}: {got} positions, ideal {ideal:.2f}"
    assert set(count) == {ep(i) for i, w in enumerate(weights) if w}
    print(f"\n{name} (M {m}): positions - ideal per backend "
          + ", ".join(f"{d:+.2f}" for d in devs)
          + f"; relative error max {max(rels):.4%}, min {min(rels):.4%}")
    SUMMARY.append((f"share, {name} (M {m})",
                    f"|dev| max {max(abs(d) for d in devs):.2f} pos, rel. error max "
                    f"{max(rels):.4%}", "2 pos (< 1 pos for equal weights)"))


def test_maglev_share_within_one_percent_at_sizing_limit(bgs):
    """The default table size is sized for 163 backends (16381 > 100 x 163): there, with equal
    weights, each backend is within 1 % of its share, as `service add --help` says (each
    backend within one position of ~100.5, by the equal-weight bound above)."""
    s = Svc(bgs, "big", 0)
    n = 163
    for i in range(n):
        s.add(i)
    count = shares(s.table())
    ideal = M / n
    rels = [abs(count.get(ep(i), 0) - ideal) / ideal for i in range(n)]
    print(f"\n163 equal backends (M {M}): positions {min(count.values())} to "
          f"{max(count.values())}, ideal {ideal:.2f}; relative error max {max(rels):.4%}")
    assert max(rels) < 0.01
    SUMMARY.append(("share, 163 equal (M 16381)", f"rel. error max {max(rels):.4%}", "1 %"))


# --- disruption ---------------------------------------------------------------------------------

# The part of the positions that changes must be at least what has to move (the new backend's
# positions, the removed backend's, the share a weight change moves) and is at most DISRUPTION
# times that. Measured on this address plan: 1.01 to 1.06 for N = 5 and 10, 1.13 to 1.18 for
# N = 20, 1.04 to 1.05 for a weight 1 -> 2 among 10 (Maglev is near-minimal, not minimal: a
# backend whose preferred position is taken by the newcomer takes its next one, which may
# belong to another); 1.3 leaves room for other addresses.
DISRUPTION = 1.3


@pytest.mark.parametrize("n", [5, 10, 20])
def test_maglev_disruption_add_and_remove_one(bgs, n):
    """Adding one backend to N equal ones changes the backend of about 1/(N+1) of the
    positions: at least the positions the new backend takes (its own M/(N+1)), at most
    DISRUPTION times 1/(N+1). Removing one of the N + 1 again gives back the original table
    exactly; removing one of the N original changes at least its positions (about 1/N) and
    at most DISRUPTION times 1/N."""
    s = Svc(bgs, "web", 0)
    for i in range(n):
        s.add(i)
    t0 = s.table()
    s.add(n)
    t1 = s.table()
    add = changed(t0, t1)
    taken = t1.count(ep(n)) / M
    assert add >= taken
    assert add <= DISRUPTION / (n + 1), f"add: {add:.4f} of positions changed"
    s.remove(n)
    assert s.table() == t0, "removing the backend just added must give the table back"
    s.remove(0)
    t2 = s.table()
    rem = changed(t0, t2)
    assert rem >= t0.count(ep(0)) / M
    assert rem <= DISRUPTION / n, f"remove: {rem:.4f} of positions changed"
    print(f"\nN={n}: add one -> {add:.4f} of positions changed (ideal {1 / (n + 1):.4f}, "
          f"x{add * (n + 1):.3f}); remove one -> {rem:.4f} (ideal {1 / n:.4f}, "
          f"x{rem * n:.3f})")
    SUMMARY.append((f"disruption, add 1 to {n}", f"{add:.4f} vs ideal {1 / (n + 1):.4f} "
                    f"(x{add * (n + 1):.3f})", f"x{DISRUPTION}"))
    SUMMARY.append((f"disruption, remove 1 of {n}", f"{rem:.4f} vs ideal {1 / n:.4f} "
                    f"(x{rem * n:.3f})", f"x{DISRUPTION}"))


def test_maglev_disruption_reweigh_one(bgs):
    """Changing one backend's weight 1 -> 2 among 10 moves about the share it should: the
    least part of the positions that must change owner is the total of the share gains,
    2/11 - 1/10 (the backend's gain, equal to the others' losses); the measured part is at
    least that (less 2 positions of rounding) and at most DISRUPTION times it. The backend
    then holds 2/11 of the positions within 2."""
    s = Svc(bgs, "web", 0)
    for i in range(10):
        s.add(i)
    t0 = s.table()
    s.reweigh(0, 2)
    t1 = s.table()
    moved = changed(t0, t1)
    ideal = 2 / 11 - 1 / 10
    assert abs(t1.count(ep(0)) - M * 2 / 11) <= 2
    assert ideal - 2 / M <= moved <= DISRUPTION * ideal, f"{moved:.4f} changed"
    print(f"\nweight 1 -> 2 among 10: {moved:.4f} of positions changed (ideal {ideal:.4f}, "
          f"x{moved / ideal:.3f})")
    SUMMARY.append(("disruption, weight 1->2 among 10",
                    f"{moved:.4f} vs ideal {ideal:.4f} (x{moved / ideal:.3f})",
                    f"x{DISRUPTION}"))


# --- what the table depends on ------------------------------------------------------------------

def test_maglev_table_independent_of_order_history_and_service(bgs):
    """The fleet builds the same table on every node from the same backends: three services
    given the same 12 backends (weights 1 to 4) in different orders, one of them after
    adding and removing others in between, so that each has other local slots, have the
    same table position by position (as addresses); and it is the table
    model.maglev_table, the Python mirror of user/maglev.c, builds."""
    rng = random.Random(0x0DE7)
    weights = {i: 1 + i % 4 for i in range(12)}
    order = list(weights)
    tables = []
    for k, name in enumerate(("a", "b", "c")):
        s = Svc(bgs, name, k)
        if name == "c":
            s.add(50)
            s.add(51, 3)
        for i in order:
            s.add(i, weights[i])
        if name == "c":
            s.remove(50)
            s.remove(51)
        tables.append(s.table())
        rng.shuffle(order)
    assert tables[0] == tables[1] == tables[2]
    ref = model.maglev_table([(*backend_addr(i), w, ep(i)) for i, w in weights.items()], M)
    assert tables[0] == ref, f"{changed(tables[0], ref):.4f} of positions differ from the mirror"


@pytest.mark.parametrize("m", [251, 257, 65537])
def test_maglev_table_matches_reference_at_other_sizes(bgs, m):
    """At other table sizes (the smallest accepted, another small prime, a large one), with
    IPv6 and IPv4 services alike, the table is model.maglev_table's, weights included."""
    for k, fam in enumerate(("v4", "v6")):
        name = f"{fam}-{m}"
        vip = f"10.0.9.{k + 1}" if fam == "v4" else f"fd00::{k + 1:x}"
        svc = bgs.add_service(name, vip, 80, "tcp", "--table-size", str(m))
        bes = []
        for i in range(7):
            a = f"10.2.0.{i + 1}" if fam == "v4" else f"fd00:2::{i + 1:x}"
            w = [1, 2, 0, 5, 1, 3, 1][i]
            slot = bgs.add_backend(name, "blue", a, 9000 + i, w)
            bes.append((a, 9000 + i, w, slot))
        table = bgs.table(svc, BLUE)
        assert len(table) == m
        assert table == model.maglev_table(bes, m), name


# --- table sizes --------------------------------------------------------------------------------

def _prime_above(n: int) -> int:
    n += 1
    while not model.is_prime(n):
        n += 1
    return n


def _prime_below(n: int) -> int:
    n -= 1
    while not model.is_prime(n):
        n -= 1
    return n


BAD_SIZES = [
    ("not a prime", "1000"),
    ("a prime below the minimum", str(_prime_below(model.BGS_TABLE_MIN))),
    ("a prime above the maximum", str(_prime_above(model.BGS_TABLE_MAX))),
    ("zero", "0"),
    ("not a number", "16381x"),
]


def test_maglev_table_size_must_be_prime_in_range(bgs):
    """`service add --table-size` takes a prime from 251 to BGS_TABLE_MAX only: each bad size
    (not a prime, a prime just below the minimum or just above the maximum, zero, not a
    number) is refused with a nonzero exit and exactly one line on stderr naming the value,
    and no service is made; `service set` refuses the same; the bounds themselves are
    accepted and give tables of that size."""
    for what, size in BAD_SIZES:
        res = bgs.cli("service", "add", "bad", "10.0.5.1:80", "--table-size", size, check=False)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0, what
        assert len(lines) == 1 and size in lines[0], (what, res.stderr)
        assert bgs.map("bgs_vips").lookup(
            model.pack_vip_key("10.0.5.1", 80, model.IPPROTO_TCP)) is None, what
    s = Svc(bgs, "web", 0)
    s.add(0)
    sw = bgs.switch(s.svc)
    for what, size in BAD_SIZES:
        res = bgs.cli("service", "set", "web", "--table-size", size, check=False)
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, what
        assert bgs.switch(s.svc) == sw and bgs.service(s.svc).table_size == M, what
    for size in (model.BGS_TABLE_MIN, model.BGS_TABLE_MAX):
        bgs.cli("service", "set", "web", "--table-size", str(size))
        assert bgs.service(s.svc).table_size == size
        assert len(s.table()) == size


def test_maglev_service_set_checks_everything_before_writing(bgs):
    """`service set` applies all of its options or none: `--split-by client --table-size 251`
    on a modulo service (which has no table) is refused with one error line and leaves the
    split as it was (record and VIP entry); on a Maglev service both apply, with one
    generation for the tables."""
    bgs.add_service("mod", "10.0.5.2", 80, "tcp", "--lb", "modulo")
    svc = bgs.services["mod"]
    res = bgs.cli("service", "set", "mod", "--split-by", "client", "--table-size", "251",
                  check=False)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert bgs.service(svc).vip_flags == 0
    raw = bgs.map("bgs_vips").lookup(model.pack_vip_key("10.0.5.2", 80, model.IPPROTO_TCP))
    assert raw[4:8] == bytes(4), raw
    s = Svc(bgs, "web", 0)
    s.add(0)
    gen = bgs.switch(s.svc).generation
    bgs.cli("service", "set", "web", "--split-by", "client", "--table-size", "251")
    rec = bgs.service(s.svc)
    assert (rec.vip_flags, rec.table_size) == (model.BGS_VIP_SPLIT_CLIENT, 251)
    assert bgs.switch(s.svc).generation == gen + 1 and len(s.table()) == 251
