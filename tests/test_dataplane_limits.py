"""Data-plane unit tests: the flow-table insert limit (untracked new flows, the budget's
refill).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import time

from lib import bpfsys
from lib import model
from lib.bpfsys import XDP_DROP, XDP_PASS
from lib.dataplane import (ACK, BLUE, CLIENT, CLIENT2, CPORT, Case, EMPTY_VIP, FWD, GREEN, HIT,
                           NEW_SYN, NEW_UDP, NOSYN, SEQ, UDP_PORT, UDP_VIP, VIP, VIP_PORT, age_flow,
                           dns, open_flow, run_table, tcp, udp, web)
from lib.model import IPPROTO_UDP
from lib.unit_fixtures import BgsState, monotonic_coarse_ns


# === flow-table insert limit ======================================================================

def _limits(bgs: BgsState, rate: int, burst: int) -> model.Config:
    """`bgswitch limits --new-flows RATE --burst BURST` (the node's), checked in bgs_config:
    the node's values, and each CPU's part of them, rounded up."""
    bgs.cli("limits", "--new-flows", str(rate), "--burst", str(burst))
    cfg = bgs.config()
    n = bpfsys.possible_cpus()
    assert (cfg.node_flow_rate, cfg.node_flow_burst) == (rate, burst)
    assert (cfg.new_flow_rate, cfg.new_flow_burst) == (model.cpu_part(rate, n),
                                                       model.cpu_part(burst, n))
    return cfg


INSERT = 1000000  # one insert in bgs_insert_budget's tokens (millionths)
# A new flow over the insert budget: forwarded where it belongs, counted, no entry written.
UNTRACKED = {"UNTRACKED": 1, **FWD}


def test_ingress_insert_limit_forwards_untracked(bgs):
    """Each miss that would write an entry first takes one insert from the CPU's budget (here 5
    inserts, its last refill set in the future so that it cannot refill during the test),
    before its backend is chosen: a creation that then fails (NO_BACKEND) has taken one. With
    none left the packet is still forwarded, placed by the current share or, for a non-SYN
    miss while the last change drains, by the previous one (second chance), counted
    UNTRACKED, and no entry is written; a TCP reopen's dead entry is deleted
    (test_ingress_untracked_reopen_keeps_connection_together). An RST that misses (RST_MISS)
    takes no insert;
    packets of existing flows need none. `--new-flows 0` lifts the limit. (The programs run
    on one CPU: unit_fixtures.)"""
    slots = web(bgs, blue=1, green=1)
    dns(bgs, blue=1, green=0)
    bgs.add_service("empty", EMPTY_VIP, VIP_PORT, "tcp")
    _limits(bgs, 1, 3)
    bgs.put_bucket(model.Bucket(monotonic_coarse_ns() + 3600 * 10**9, 5 * INSERT))
    be, bport = BLUE[0]
    g, gport = GREEN[0]
    svc = bgs.services

    def syn(i, over=False, client=CLIENT, to=BLUE[0], reopen=False):
        stats = {"VIP": 1, **({"FLOW_REOPEN": 1} if reopen else {"SYN_MISS": 1}),
                 **(UNTRACKED if over else {"FLOW_NEW": 1, **FWD})}
        return Case(f"SYN {i}" + (": over the limit" if over else ""),
                    tcp(client, VIP, CPORT + i, VIP_PORT), XDP_PASS,
                    out=tcp(client, to[0], CPORT + i, to[1]), stats=stats)

    run_table(bgs, "ingress", [
        Case("SYN to a service without backend: NO_BACKEND, an insert taken",
             tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
        syn(0), syn(1), syn(2),
        Case("RST that misses: forwarded, no entry, no insert taken",
             tcp(CLIENT, VIP, CPORT + 5, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 5, bport, "R"), stats={**NOSYN, "RST_MISS": 1,
                                                                  **FWD}),
        syn(3),
        syn(6, over=True),
        Case("UDP new flow over the limit", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats={"VIP": 1, **UNTRACKED}),
        Case("non-SYN miss over the limit: re-pinned to the active color, no entry",
             tcp(CLIENT, VIP, CPORT + 7, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 7, bport, "A", ack=ACK), stats={**NOSYN, **UNTRACKED}),
        Case("ACK of an existing flow: no insert needed",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT),
        Case("client RST closes flow 1", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, "R"), stats=HIT),
        syn(1, over=True, reopen=True),
        syn(6, over=True),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    sw = bgs.switch(svc["web"])
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    run_table(bgs, "ingress", [
        # Untracked while blue drains, its next segments will be re-pinned to blue: so is it.
        syn(8, over=True, to=BLUE[0]),
        Case("non-SYN miss over the limit while blue drains: second chance, blue",
             tcp(CLIENT, VIP, CPORT + 9, VIP_PORT, "PA", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 9, bport, "PA", ack=ACK),
             stats={**NOSYN, **UNTRACKED}),
    ])
    assert bgs.bucket().tokens == 0
    assert bgs.count("bgs_flows") == 3
    for c in (1, 5, 6, 7, 8, 9):
        assert bgs.flow(CLIENT, VIP, CPORT + c, VIP_PORT) is None, c
    assert bgs.flow(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP) is None
    zero = dict.fromkeys(model.SERVICE_STATS, 0)
    assert bgs.service_stats(svc["web"]) == {**zero, "syn_miss": 7, "nosyn_miss": 3,
                                             "second_chance": 3, "reopen": 1}
    assert bgs.service_stats(svc["dns"]) == zero
    assert bgs.service_stats(svc["empty"]) == {**zero, "syn_miss": 1, "drop_NO_BACKEND": 1}
    # new_flows counts the entries written, and the first packets (SYN) placed without one.
    assert bgs.backend_stats(slots["blue"][0])["new_flows"] == 8
    assert bgs.backend_stats(slots["green"][0])["new_flows"] == 0

    _limits(bgs, 0, 3)
    run_table(bgs, "ingress", [
        *[syn(20 + i, client=CLIENT2, to=GREEN[0]) for i in range(8)],
        Case("no limit: UDP", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=NEW_UDP),
        syn(1, to=GREEN[0]),
    ])
    assert bgs.count("bgs_flows") == 3 + 8 + 2
    assert bgs.flow(CLIENT, VIP, CPORT + 1, VIP_PORT).color == model.BGS_GREEN


# === insert budget and backend references (regressions found while testing them) ============

def test_ingress_untracked_reopen_keeps_connection_together(bgs):
    """Over the insert budget, a reopen is forwarded without an entry, and the connection's
    next packets go where its first one went: a TCP SYN on a closed blue flow goes to green
    (the share now, nothing draining) and the closed entry is deleted, so that the client's
    ACK is a miss placed by the same share, not sent after the old entry to blue. A UDP
    datagram on an idle entry keeps that entry: each next datagram is a reopen again, placed
    the same way (by the previous share while the change drains, else by the share now)."""
    web(bgs, blue=1, green=1)
    dns(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    ub, ug = BLUE[0][0], GREEN[0][0]
    open_flow(bgs)
    ukey = (CLIENT, UDP_VIP, CPORT, UDP_PORT)
    run_table(bgs, "ingress", [
        Case("client RST closes the blue flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats=HIT),
        Case("UDP query", udp(*ukey), XDP_PASS, out=udp(CLIENT, ub, CPORT, 5353),
             stats=NEW_UDP)])
    for name in ("web", "dns"):
        bgs.cli("flip", name, "green", "--no-check")
    web_sw = bgs.switch(bgs.services["web"])
    bgs.put_switch(bgs.services["web"], web_sw._replace(flags=model.BGS_SW_HAS_PREV))
    bgs.put_bucket(model.Bucket(monotonic_coarse_ns() + 3600 * 10**9, 0))
    age_flow(bgs, ukey, IPPROTO_UDP, bgs.config().udp_idle_ns)
    uprev = {"VIP": 1, "FLOW_REOPEN": 1, "SECOND_CHANCE": 1, **UNTRACKED}
    run_table(bgs, "ingress", [
        Case("SYN reopening the closed flow, over the budget: green",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, seq=SEQ + 9), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT, g[1], seq=SEQ + 9),
             stats={"VIP": 1, "FLOW_REOPEN": 1, **UNTRACKED}),
        Case("its ACK: a miss, green too", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], "A", ack=ACK),
             stats={**NOSYN, **UNTRACKED}),
        Case("UDP on the idle entry while blue drains: blue", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=uprev),
        Case("next datagram: blue again", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=uprev),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) is None
    assert bgs.flow(*ukey, IPPROTO_UDP).color == model.BGS_BLUE
    dns_sw = bgs.switch(bgs.services["dns"])
    bgs.put_switch(bgs.services["dns"], dns_sw._replace(flags=model.BGS_SW_HAS_PREV))
    run_table(bgs, "ingress", [
        Case(f"UDP on the idle entry, blue drained: green ({i})", udp(*ukey), XDP_PASS,
             out=udp(CLIENT, ug, CPORT, 5353), stats={"VIP": 1, "FLOW_REOPEN": 1, **UNTRACKED})
        for i in range(2)])


def test_flow_insert_budget_refill_rate(bgs):
    """Each CPU's budget refills at its part of the node's rate, up to its part of the burst
    + 1: with a node limit of 4 per second per CPU and a burst of 2 per CPU and an empty
    budget, a SYN at once goes untracked; 1 s later (4 inserts' worth) exactly 3 new flows
    get an entry, the fourth goes untracked."""
    web(bgs, blue=1, green=0)
    n = bpfsys.possible_cpus()
    cfg = _limits(bgs, 4 * n, 2 * n)
    assert (cfg.new_flow_rate, cfg.new_flow_burst) == (4, 2)
    be, bport = BLUE[0]

    def syn(i, ok):
        if ok:
            return Case(f"SYN {i}", tcp(CLIENT, VIP, CPORT + i, VIP_PORT), XDP_PASS,
                        out=tcp(CLIENT, be, CPORT + i, bport), stats=NEW_SYN)
        return Case(f"SYN {i}: over the limit", tcp(CLIENT, VIP, CPORT + i, VIP_PORT),
                    XDP_PASS, out=tcp(CLIENT, be, CPORT + i, bport),
                    stats={"VIP": 1, "SYN_MISS": 1, **UNTRACKED})

    bgs.put_bucket(model.Bucket(monotonic_coarse_ns(), 0))
    run_table(bgs, "ingress", [syn(0, False)])
    time.sleep(1.0)
    t0 = time.monotonic()
    run_table(bgs, "ingress", [syn(0, True), syn(1, True), syn(2, True), syn(3, False)])
    assert time.monotonic() - t0 < 0.2, "too slow to tell a refill from none"
