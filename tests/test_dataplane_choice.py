"""Data-plane unit tests: backend choice (the flow hash, Maglev tables, weights, the
green share, the split by client, --lb modulo, reweighs and resizes).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import random
from typing import Dict, List, Optional

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lib import model
from lib.bpfsys import XDP_DROP, XDP_PASS
from lib.dataplane import (ACK, BLUE, CLIENT, CPORT, Case, Chooser, GREEN, HIT, NEW_SYN, NEW_UDP,
                           NOSYN, REPIN, UDP_PORT, UDP_VIP, VIP, VIP_PORT, dns, flow_h, open_flow,
                           run_table, tcp, udp, web)
from lib.model import IPPROTO_TCP, IPPROTO_UDP
from lib.unit_fixtures import BgsState


# === backend choice ============================================================================

def _random_tuples(rng: random.Random, n: int) -> List[tuple]:
    seen, out = set(), []
    while len(out) < n:
        t = (f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
             f"{rng.randrange(1, 255)}", rng.randrange(1, 65536))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def test_ingress_backend_choice_matches_model(bgs):
    """For many client 5-tuples the backend chosen equals the model's choice (flow_hash mirror,
    then position hash % M of the color's table read from bgs_tables), on a 5-backend blue
    table, then on a 3-backend green table after a flip, and for UDP; every backend gets
    some flows."""
    web(bgs, blue=5, green=3)
    dns(bgs, blue=5, green=0)
    rng = random.Random(0xB65)
    by_slot = {}
    addr_of = {}
    for color, backends in (("blue", BLUE), ("green", GREEN)):
        for a, p in backends:
            addr_of[bgs.find_slot("web", color, a, p)] = (a, p)
    for a, _ in BLUE:
        addr_of[bgs.find_slot("dns", "blue", a, 5353)] = (a, 5353)

    cases = []

    def check(svc: int, vip: str, vport: int, proto: int, tuples: List[tuple]) -> None:
        color = bgs.switch(svc).active
        table = bgs.table(svc, color)
        assert len(table) == model.BGS_TABLE_SIZE
        for caddr, cport in tuples:
            slot = table[flow_h(caddr, vip, cport, vport, proto) % len(table)]
            by_slot[slot] = by_slot.get(slot, 0) + 1
            a, p = addr_of[slot]
            if proto == IPPROTO_TCP:
                inp, out = tcp(caddr, vip, cport, vport), tcp(caddr, a, cport, p)
                stats = NEW_SYN
            else:
                inp, out = udp(caddr, vip, cport, vport), udp(caddr, a, cport, p)
                stats = NEW_UDP
            cases.append(Case(f"{caddr}:{cport} -> {vip}:{vport}/{proto}: model says slot "
                              f"{slot} ({a}:{p})", inp, XDP_PASS, out=out, stats=stats))

    check(0, VIP, VIP_PORT, IPPROTO_TCP, _random_tuples(rng, 150))
    check(1, UDP_VIP, UDP_PORT, IPPROTO_UDP, _random_tuples(rng, 60))
    run_table(bgs, "ingress", cases)
    bgs.cli("flip", "web", "green", "--no-check")
    cases = []
    check(0, VIP, VIP_PORT, IPPROTO_TCP, _random_tuples(rng, 90))
    run_table(bgs, "ingress", cases)
    assert sorted(by_slot) == sorted(addr_of), f"some backend never chosen: {by_slot}"


def test_model_flow_hash_known_values():
    """model.flow_hash is deterministic and sensitive to every field (no state needed)."""
    base = ("192.168.7.1", "10.0.0.100", 40000, 80, IPPROTO_TCP)
    h = model.flow_hash(*base)
    assert h == model.flow_hash(*base)
    for i, alt in enumerate(["192.168.7.2", "10.0.0.101", 40001, 81, IPPROTO_UDP]):
        t = list(base)
        t[i] = alt
        assert model.flow_hash(*t) != h, f"field {i} does not change the hash"
    assert 0 <= h < 1 << 32


# === backend selection: Maglev tables, weights, the green share ===================================

def _table_words(bgs: BgsState, svc: int, color: int) -> List[int]:
    """Every word of the lookup table ``color`` of a service uses now (entry 0 is M), read
    from bgs_tables: the outer entry gives the inner map's id, opened by id."""
    with bgs.table_map(bgs.switch(svc).set_index(svc, color)) as inner:
        return model.table_words(inner.array_raw())


def _to_slot(bgs: BgsState, desc: str, client: str, cport: int, slot: int, flags: str = "S",
             stats: Optional[Dict[str, int]] = None, vip: str = VIP,
             vport: int = VIP_PORT) -> Case:
    """A TCP segment client:cport -> vip:vport that must leave toward the backend of ``slot``
    (counted as a new SYN unless ``stats`` says otherwise)."""
    b = bgs.backend(slot)
    kw = {} if flags == "S" else {"ack": ACK}
    return Case(f"{desc}: slot {slot} ({b.addr}:{b.port})",
                tcp(client, vip, cport, vport, flags, **kw), XDP_PASS,
                out=tcp(client, b.addr, cport, b.port, flags, **kw),
                stats=NEW_SYN if stats is None else stats)


def _color_of(out: bytes) -> int:
    """The color of the backend a rewritten frame goes to (by this file's address plan)."""
    dst = Ether(out)[IP].dst
    if dst in {a for a, _ in BLUE}:
        return model.BGS_BLUE
    assert dst in {a for a, _ in GREEN}, dst
    return model.BGS_GREEN


def _web_weighted(bgs: BgsState, blue_w: List[int], green_w: List[int]) -> Dict[str, List[int]]:
    """Service "web" with the first len(blue_w) / len(green_w) backends of each color, of
    those weights; their slots by color."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    return {"blue": [bgs.add_backend("web", "blue", a, p, w)
                     for (a, p), w in zip(BLUE, blue_w)],
            "green": [bgs.add_backend("web", "green", a, p, w)
                      for (a, p), w in zip(GREEN, green_w)]}


def test_ingress_choice_is_user_space_table_entry(bgs):
    """The data plane's choice is the table user space built: for a service with weighted
    backends (blue 1..5, green 3, 1, 2), SYNs from 300 source ports go, at share 0, to the
    slot at entry 1 + flow_hash % M of blue's current table (M read from entry 0 of that
    inner map); after `shift web green 40%`, 300 more go to the color
    model.share_color(hash, 4000) gives them and that color's table entry 1 + hash % M. The
    flow entries record that color and slot; every backend of weight above 0 gets flows."""
    slots = _web_weighted(bgs, [1, 2, 3, 4, 5], [3, 1, 2])
    svc = bgs.services["web"]
    chosen = {}

    def cases_for(ports) -> List[Case]:
        share = bgs.switch(svc).share
        words = {c: _table_words(bgs, svc, c) for c in (model.BGS_BLUE, model.BGS_GREEN)}
        out = []
        for port in ports:
            h = flow_h(CLIENT, VIP, port, VIP_PORT)
            color = model.share_color(h, share)
            t = words[color]
            assert t[0] == model.BGS_TABLE_SIZE and len(t) == t[0] + 1
            slot = t[1 + h % t[0]]
            chosen[port] = (color, slot)
            out.append(_to_slot(bgs, f"SYN from port {port}, share {share}, color {color}",
                                CLIENT, port, slot))
        return out

    run_table(bgs, "ingress", cases_for(range(CPORT, CPORT + 300)))
    bgs.cli("shift", "web", "green", "40%", "--no-check")
    assert bgs.switch(svc).share == model.parse_share("40%")
    run_table(bgs, "ingress", cases_for(range(CPORT + 300, CPORT + 600)))
    for port, (color, slot) in chosen.items():
        f = bgs.flow(CLIENT, VIP, port, VIP_PORT)
        assert (f.color, f.slot) == (color, slot), port
    used, every = {slot for _, slot in chosen.values()}, set(slots["blue"] + slots["green"])
    assert used == every, f"never chosen: {every - used}"
    greens = sum(1 for p in range(CPORT + 300, CPORT + 600) if chosen[p][0] == model.BGS_GREEN)
    print(f"\n40% split: {greens} of 300 new flows green")


def test_ingress_split_green_exactly_below_share_and_monotonic(bgs):
    """`shift web green 25%` (share 2500): a new flow goes green exactly when
    model.share_bucket(flow hash) < 2500, to its color's table entry. Raising the share to
    50% never turns a green flow blue: (1) on the bucket function, for 20000 hashes and the
    steps 0, 0.01%, 5%, 25%, 50%, 99.99%, 100% in turn, green stays green; (2) on verdicts:
    the 400 flows opened at 25% keep their entries at 50% (ACKs hit their backends), and
    once their entries are gone, SYNs of the same 400 tuples go green when their bucket is
    below 5000: every one green at 25% is green again, and some blue ones turn green.
    The green part of 400 flows at 25% is checked against the binomial spread (within 4
    standard deviations, sqrt(400 * .25 * .75) = 8.7 flows): a bucket that is not spread
    uniformly would show there."""
    web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    G = model.BGS_GREEN
    rng = random.Random(0x5A17E)
    steps = [0, 1, 500, 2500, 5000, 9999, model.BGS_SHARE_ALL]
    for _ in range(20000):
        h = rng.getrandbits(32)
        colors = [model.share_color(h, s) for s in steps]
        first = colors.index(G) if G in colors else len(colors)
        assert colors == [model.BGS_BLUE] * first + [G] * (len(colors) - first), (h, colors)
        assert (model.share_bucket(h) < 2500) == (colors[steps.index(2500)] == G)

    ports = range(CPORT, CPORT + 400)

    def syns(share: int) -> List[Case]:
        out, now = [], Chooser(bgs, svc)
        for port in ports:
            h = flow_h(CLIENT, VIP, port, VIP_PORT)
            color = G if model.share_bucket(h) < share else model.BGS_BLUE
            _, slot = now.slot(CLIENT, VIP, port, VIP_PORT, color=color)
            out.append(_to_slot(bgs, f"SYN from {port}, bucket {model.share_bucket(h)}",
                                CLIENT, port, slot))
        return out

    bgs.cli("shift", "web", "green", "25%", "--no-check")
    assert bgs.switch(svc).share == 2500
    at25 = syns(2500)
    run_table(bgs, "ingress", at25)
    green25 = {c.pkt for c in at25 if _color_of(c.out) == G}
    assert abs(len(green25) - 100) <= 4 * 8.7, f"{len(green25)} of 400 green at 25%"

    bgs.cli("shift", "web", "green", "50%", "--no-check")
    assert (bgs.switch(svc).share, bgs.switch(svc).prev_share) == (5000, 2500)
    run_table(bgs, "ingress", [
        Case(f"ACK of a flow opened at 25%: {c.desc}", tcp(CLIENT, VIP, Ether(c.pkt)[TCP].sport,
                                                           VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, Ether(c.out)[IP].dst, Ether(c.pkt)[TCP].sport,
                               Ether(c.out)[TCP].dport, "A", ack=ACK), stats=HIT)
        for c in at25])
    for port in ports:
        assert bgs.delete_flow(CLIENT, VIP, port, VIP_PORT)
    at50 = syns(5000)
    run_table(bgs, "ingress", at50)
    green50 = {c.pkt for c in at50 if _color_of(c.out) == G}
    assert green25 <= green50, f"{len(green25 - green50)} flows green at 25% went blue at 50%"
    assert len(green50) > len(green25)
    print(f"\nsplit: {len(green25)} of 400 new flows green at 25%, {len(green50)} at 50%, "
          f"none back to blue")


def test_ingress_split_by_client_one_color_per_client(bgs):
    """A service added with `--split-by client` at 30% green: every new flow of one client
    address goes to the same color, green exactly when model.share_bucket(client hash) < 3000,
    whatever its source port (checked for 60 clients x 5 ports against the verdicts). The
    flows' tables still spread one client's flows over the color's backends by the flow hash.
    `service set --split-by flow` puts the split back on the flow hash with one VIP write: a
    client's new flows then take both colors."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp", "--split-by", "client")
    for a, p in BLUE[:3]:
        bgs.add_backend("web", "blue", a, p)
    for a, p in GREEN[:2]:
        bgs.add_backend("web", "green", a, p)
    svc = bgs.services["web"]
    assert bgs.service(svc).vip_flags == model.BGS_VIP_SPLIT_CLIENT
    bgs.cli("shift", "web", "green", "30%", "--no-check")
    G = model.BGS_GREEN
    clients = [f"10.0.{60 + i // 200}.{1 + i % 200}" for i in range(60)]
    cases, want = [], {}
    now = Chooser(bgs, svc)
    for c in clients:
        want[c] = G if model.share_bucket(model.client_hash(c)) < 3000 else model.BGS_BLUE
        for port in range(CPORT, CPORT + 5):
            _, slot = now.slot(c, VIP, port, VIP_PORT, color=want[c])
            cases.append(_to_slot(bgs, f"SYN {c}:{port}", c, port, slot))
    run_table(bgs, "ingress", cases)
    seen = {}
    for case in cases:
        seen.setdefault(Ether(case.pkt)[IP].src, set()).add(_color_of(case.out))
    assert all(len(v) == 1 for v in seen.values()), "a client's flows took both colors"
    ngreen = sum(1 for c in clients if want[c] == G)
    assert 0 < ngreen < len(clients), ngreen
    print(f"\nsplit by client at 30%: {ngreen} of {len(clients)} clients green, one color each")

    bgs.cli("service", "set", "web", "--split-by", "flow")
    assert bgs.service(svc).vip_flags == 0
    mixed = 0
    now = Chooser(bgs, svc)
    for c in clients[:20]:
        colors = {model.share_color(flow_h(c, VIP, p, VIP_PORT), 3000)
                  for p in range(CPORT + 100, CPORT + 120)}
        mixed += len(colors) == 2
        for p in range(CPORT + 100, CPORT + 120):
            color, slot = now.slot(c, VIP, p, VIP_PORT)
            res = bgs.ingress(_to_slot(bgs, "", c, p, slot).pkt)
            assert _color_of(res.data) == color
    assert mixed > 0, "no client had flows of both colors under the flow split"


def test_ingress_second_chance_split_follows_prev_share(bgs):
    """Under a split while the last change drains, a non-SYN miss is re-pinned where the
    previous share put it: after `shift web green 25%` then `shift web green 50%` (prev_share
    2500, DRAINING | HAS_PREV) an ACK without entry goes green exactly when its bucket is
    below 2500, while a SYN of the same kind of tuple goes green below 5000 (tuples from all
    three bucket ranges: both, one, neither). `gc` keeps DRAINING while split. Without
    DRAINING (poked) the ACK follows the current share; after `rollback` (share 2500,
    prev_share 5000) it follows 5000 again, and new SYNs 2500."""
    web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    bgs.cli("shift", "web", "green", "25%", "--no-check")
    bgs.cli("shift", "web", "green", "50%", "--no-check")
    sw = bgs.switch(svc)
    assert (sw.share, sw.prev_share, sw.flags) == (5000, 2500, both)
    bgs.cli("gc")
    assert bgs.switch(svc) == sw, "gc must keep the second chance of a split service"

    # Client ports by bucket range: below 2500 (green either way), 2500-4999 (green now, blue
    # before), 5000 and up (blue either way); four of each, for ACKs and SYNs alike.
    ranges = {"<2500": [], "2500-4999": [], ">=5000": []}
    for port in range(CPORT, CPORT + 2000):
        b = model.share_bucket(flow_h(CLIENT, VIP, port, VIP_PORT))
        ranges["<2500" if b < 2500 else "2500-4999" if b < 5000 else ">=5000"].append(port)
    assert all(len(v) >= 12 for v in ranges.values()), {k: len(v) for k, v in ranges.items()}
    pick = {k: iter(v) for k, v in ranges.items()}
    now = Chooser(bgs, svc)  # the tables stay: only the switch word changes below

    def case(kind: str, flags: str, rng_name: str, by_share: int) -> Case:
        port = next(pick[rng_name])
        h = flow_h(CLIENT, VIP, port, VIP_PORT)
        color = model.BGS_GREEN if model.share_bucket(h) < by_share else model.BGS_BLUE
        _, slot = now.slot(CLIENT, VIP, port, VIP_PORT, color=color)
        return _to_slot(bgs, f"{kind} bucket {rng_name}, by share {by_share}", CLIENT, port,
                        slot, flags, REPIN if flags != "S" else NEW_SYN)

    cases = []
    for r in ranges:
        cases += [case("ACK, draining", "A", r, 2500), case("SYN, draining", "S", r, 5000)]
    run_table(bgs, "ingress", cases)
    assert sum(_color_of(c.out) == model.BGS_GREEN for c in cases if c.stats is REPIN) < sum(
        _color_of(c.out) == model.BGS_GREEN for c in cases if c.stats is NEW_SYN)

    bgs.put_switch(svc, sw._replace(flags=model.BGS_SW_HAS_PREV))
    run_table(bgs, "ingress", [case("ACK, not draining", "A", r, 5000) for r in ranges])

    bgs.put_switch(svc, sw)
    bgs.cli("rollback", "web", "--no-check")
    sw = bgs.switch(svc)
    assert (sw.share, sw.prev_share, sw.flags) == (2500, 5000, both)
    cases = []
    for r in ranges:
        cases += [case("ACK after rollback", "A", r, 5000),
                  case("SYN after rollback", "S", r, 2500)]
    run_table(bgs, "ingress", cases)


def test_ingress_color_of_weight_zero_backends_drops_no_backend(bgs):
    """A color whose backends all have weight 0 has a table of size 0 (entry 0 is 0) while
    its set still holds them: new flows toward it are dropped NO_BACKEND (node and
    service), SYNs and re-pins (once nothing drains) alike, while an existing flow keeps its
    backend; a split sends
    only the flows whose color has positions to a backend; a flip toward that color is
    refused and changes nothing."""
    slots = web(bgs, blue=2, green=1)
    svc = bgs.services["web"]
    g, gp = GREEN[0]
    bgs.cli("flip", "web", "green", "--no-check")
    open_flow(bgs, be=(g, gp))
    bgs.cli("backend", "add", "web", "green", model.endpoint(g, gp), "--weight", "0")
    assert bgs.backend(slots["green"][0]).weight == 0
    assert bgs.table(svc, model.BGS_GREEN) == [] and _table_words(bgs, svc, model.BGS_GREEN) == [0]
    assert bgs.current_set(svc, model.BGS_GREEN) == slots["green"]
    bgs.cli("gc")  # blue has no flow: the second chance (toward blue) ends
    assert bgs.switch(svc).flags == model.BGS_SW_HAS_PREV
    new = {"VIP": 1, "SYN_MISS": 1}
    run_table(bgs, "ingress", [
        Case("ACK of the green flow opened before", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                        ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g, CPORT, gp, "A", ack=ACK), stats=HIT),
        Case("new SYN toward green", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_DROP,
             stats=new, drops={"NO_BACKEND": 1}),
        Case("ACK without entry toward green", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "A",
                                                   ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    ss = bgs.service_stats(svc)
    assert (ss["drop_NO_BACKEND"], ss["syn_miss"], ss["nosyn_miss"]) == (2, 2, 1)

    bgs.cli("shift", "web", "blue", "50%", "--no-check")  # blue gains: allowed
    cases, now = [], Chooser(bgs, svc)
    for port in range(CPORT + 10, CPORT + 60):
        h = flow_h(CLIENT, VIP, port, VIP_PORT)
        if model.share_color(h, 5000) == model.BGS_GREEN:
            cases.append(Case(f"SYN from {port}, green under the split",
                              tcp(CLIENT, VIP, port, VIP_PORT), XDP_DROP, stats=new,
                              drops={"NO_BACKEND": 1}))
        else:
            _, slot = now.slot(CLIENT, VIP, port, VIP_PORT)
            cases.append(_to_slot(bgs, f"SYN from {port}, blue under the split", CLIENT, port,
                                  slot))
    assert {c.verdict for c in cases} == {XDP_DROP, XDP_PASS}
    run_table(bgs, "ingress", cases)

    bgs.cli("flip", "web", "blue", "--no-check")
    before = bgs.switch(svc)
    res = bgs.cli("flip", "web", "green", "--no-check", check=False)
    assert res.returncode != 0 and "weight" in res.stderr, res
    assert bgs.switch(svc) == before


def test_ingress_modulo_service_uses_set_modulo(bgs):
    """A service added with `--lb modulo` has no lookup table (no bgs_tables entry under any
    of its four keys, table_size 0 in its record): its new flows take set[hash % count]
    (model.choose_slot), for 200 tuples over 5 backends, every backend used; a --weight
    other than 1 is refused there."""
    svc = bgs.add_service("mod", VIP, VIP_PORT, "tcp", "--lb", "modulo")
    slots = [bgs.add_backend("mod", "blue", a, p) for a, p in BLUE]
    bgs.add_backend("mod", "green", *GREEN[0])
    rec = bgs.service(svc)
    assert (rec.lb, rec.table_size) == (model.BGS_LB_MODULO, 0)
    assert [bgs.table_id((svc << 2) | i) for i in range(4)] == [None] * 4
    current = bgs.current_set(svc, model.BGS_BLUE)
    assert current == slots
    rng = random.Random(0x30D)
    cases, used = [], set()
    for caddr, cport in _random_tuples(rng, 200):
        slot = model.choose_slot(current, caddr, VIP, cport, VIP_PORT, IPPROTO_TCP)
        used.add(slot)
        cases.append(_to_slot(bgs, f"SYN {caddr}:{cport}", caddr, cport, slot))
    run_table(bgs, "ingress", cases)
    assert used == set(slots)
    res = bgs.cli("backend", "add", "mod", "blue", model.endpoint(*BLUE[0]), "--weight", "2",
                  check=False)
    assert res.returncode != 0 and bgs.backend(slots[0]).weight == 1


def test_ingress_reweigh_rebuilds_table_old_flows_stay(bgs):
    """`backend add` of an existing backend with another --weight changes its weight and
    builds a new table for its color (a new inner map, the other buffer, one generation
    more): the backend's share of positions grows with its weight (1 -> 3 of 1 + 1 + 3), new
    flows follow the new table, and flows opened before keep their backend, also those whose
    position the new table gives to another backend. The same weight again is refused as
    "already" and changes nothing."""
    slots = web(bgs, blue=3, green=0)
    svc = bgs.services["web"]
    B = model.BGS_BLUE
    sw0, t0 = bgs.switch(svc), bgs.table(svc, B)
    id0 = bgs.table_id(sw0.set_index(svc, B))
    old_ports = range(CPORT, CPORT + 200)
    now = Chooser(bgs, svc)
    opened = [_to_slot(bgs, f"SYN {p}", CLIENT, p, now.slot(CLIENT, VIP, p, VIP_PORT)[1])
              for p in old_ports]
    run_table(bgs, "ingress", opened)

    bgs.cli("backend", "add", "web", "blue", model.endpoint(*BLUE[0]), "--weight", "3")
    sw1, t1 = bgs.switch(svc), bgs.table(svc, B)
    assert sw1.generation == sw0.generation + 1 and sw1.set_sel == sw0.set_sel ^ 1
    id1 = bgs.table_id(sw1.set_index(svc, B))
    assert id1 not in (None, id0)
    assert bgs.backend(slots["blue"][0]).weight == 3
    m = len(t1)
    share0, share1 = t0.count(slots["blue"][0]) / m, t1.count(slots["blue"][0]) / m
    assert abs(share1 - 3 / 5) < 0.01 and abs(share0 - 1 / 3) < 0.01, (share0, share1)
    moved = [p for p in old_ports
             if t1[flow_h(CLIENT, VIP, p, VIP_PORT) % m] != t0[flow_h(CLIENT, VIP, p,
                                                                     VIP_PORT) % m]]
    assert moved, "test set-up: no old flow whose position changed owner"
    run_table(bgs, "ingress", [
        Case(f"ACK of a flow opened before: {c.desc}",
             tcp(CLIENT, VIP, Ether(c.pkt)[TCP].sport, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, Ether(c.out)[IP].dst, Ether(c.pkt)[TCP].sport,
                     Ether(c.out)[TCP].dport, "A", ack=ACK), stats=HIT) for c in opened])
    new_ports = range(CPORT + 1000, CPORT + 1200)
    run_table(bgs, "ingress", [
        _to_slot(bgs, f"new SYN {p}", CLIENT, p, t1[flow_h(CLIENT, VIP, p, VIP_PORT) % m])
        for p in new_ports])
    print(f"\nreweigh 1 -> 3: share of positions {share0:.4f} -> {share1:.4f}; "
          f"{len(moved)} of {len(old_ports)} open flows' positions changed owner, "
          f"none of them moved")

    res = bgs.cli("backend", "add", "web", "blue", model.endpoint(*BLUE[0]), "--weight", "3",
                  check=False)
    assert res.returncode != 0 and "already" in res.stderr, res
    assert bgs.switch(svc) == sw1 and bgs.table_id(sw1.set_index(svc, B)) == id1


def test_service_set_table_size_rebuilds_both_colors_at_once(bgs):
    """`service set web --table-size 251` makes both colors' current tables 251 positions
    (entry 0 and the inner map's size) with one switch store: the generation goes up by
    exactly one and both set_sel bits flip; the buffers left behind still hold the old
    size. The record says 251. New flows of either color follow the 251-position table. A
    size that is not a prime is refused and changes nothing."""
    slots = web(bgs, blue=3, green=2)
    svc = bgs.services["web"]
    sw0 = bgs.switch(svc)
    res = bgs.cli("service", "set", "web", "--table-size", "250", check=False)
    assert res.returncode != 0 and bgs.switch(svc) == sw0
    bgs.cli("service", "set", "web", "--table-size", "251")
    sw1 = bgs.switch(svc)
    assert sw1.generation == sw0.generation + 1 and sw1.set_sel == sw0.set_sel ^ 3
    assert bgs.service(svc).table_size == 251
    for color, name in ((model.BGS_BLUE, "blue"), (model.BGS_GREEN, "green")):
        words = _table_words(bgs, svc, color)
        assert words[0] == 251 and len(words) == 252, name
        assert set(words[1:]) == set(slots[name]), name
        idle = bgs.table_at(sw1.set_index(svc, color) ^ 1)
        assert len(idle) == model.BGS_TABLE_SIZE, name
    for color in ("blue", "green"):
        if color == "green":
            bgs.cli("flip", "web", "green", "--no-check")
        c = model.COLORS[color]
        t = bgs.table(svc, c)
        run_table(bgs, "ingress", [
            _to_slot(bgs, f"SYN {p} ({color})", CLIENT, p,
                     t[flow_h(CLIENT, VIP, p, VIP_PORT) % 251])
            for p in range(CPORT + 100 * c, CPORT + 100 * c + 60)])
