"""Data-plane unit tests: the flow life cycle (FIN and RST from either side, reopens,
idle and expired flows, superseded and stale replies, the reply interface, RST misses).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import time

import pytest

from lib import model
from lib.bpfsys import TC_ACT_OK, XDP_PASS
from lib.dataplane import (ACK, BLUE, BLUE6, CLIENT, CLIENT2, CLIENT6, CPORT, Case, FWD, GREEN, HIT,
                           NAT, NEW_SYN, NEW_UDP, NOSYN, REOPEN, REPIN, SEQ, UDP_PORT, UDP_VIP, VIP,
                           VIP6, VIP_PORT, age_flow, dns, icmp_error, open_flow, quoted_reply,
                           run_case, run_table, tcp, udp, v6_chain, web, web6)
from lib.model import IPPROTO_TCP, IPPROTO_UDP
from lib.unit_fixtures import monotonic_coarse_ns


# === flow life cycle ==============================================================================

def test_flow_fin_both_sides_closes(bgs):
    """Client FIN (ingress) and backend FIN (egress) set FIN_CLIENT and FIN_SERVER; the last
    ACK still follows the entry."""
    web(bgs)
    be, bport = BLUE[0]
    open_flow(bgs)
    run_table(bgs, "ingress", [
        Case("client FIN", tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "FA", ack=ACK), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT)
    run_table(bgs, "egress", [
        Case("backend FIN", tcp(be, CLIENT, bport, CPORT, "FA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "FA", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT | model.BGS_FLOW_FIN_SERVER)
    run_table(bgs, "ingress", [
        Case("last ACK after both FINs", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK + 1),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK + 1), stats=HIT)])


def test_flow_backend_fin_first(bgs):
    """The backend may close first: FIN_SERVER, then FIN_CLIENT."""
    web(bgs)
    be, bport = BLUE[0]
    open_flow(bgs)
    bgs.egress(tcp(be, CLIENT, bport, CPORT, "FA"))
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER)
    bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA"))
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER | model.BGS_FLOW_FIN_CLIENT)


def test_flow_rst_from_backend_closes_and_counts_reset(bgs):
    """A backend RST sets the RST bit, is rewritten, and counts in the backend's resets."""
    slots = web(bgs)
    be, bport = BLUE[0]
    open_flow(bgs)
    run_table(bgs, "egress", [
        Case("backend RST", tcp(be, CLIENT, bport, CPORT, "RA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "RA", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_RST | model.BGS_FLOW_RST_SERVER)
    assert bgs.backend_stats(slots["blue"][0])["resets"] == 1


def test_flow_rst_from_client_closes(bgs):
    """A client RST is forwarded on the flow and sets the RST bit."""
    web(bgs)
    be, bport = BLUE[0]
    open_flow(bgs)
    run_table(bgs, "ingress", [
        Case("client RST", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R", seq=SEQ + 1), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "R", seq=SEQ + 1), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_RST)


@pytest.mark.parametrize("close", ["fin_both", "rst_client", "rst_backend"])
def test_ingress_syn_on_closed_flow_reopens_on_active_color(bgs, close):
    """A SYN on a closed flow (both FINs, or RST from either side) starts a new flow on the
    active color, counted FLOW_REOPEN, in the same entry; a non-SYN segment still follows the
    old entry."""
    slots = web(bgs)
    be, g = BLUE[0], GREEN[0]
    open_flow(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    if close == "fin_both":
        bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "FA"))
        bgs.egress(tcp(be[0], CLIENT, be[1], CPORT, "FA"))
    elif close == "rst_client":
        bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"))
    else:
        bgs.egress(tcp(be[0], CLIENT, be[1], CPORT, "R"))
    run_table(bgs, "ingress", [
        Case("ACK on the closed flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be[0], CPORT, be[1], "A", ack=ACK), stats=HIT),
        Case("SYN on the closed flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, seq=SEQ + 99),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], seq=SEQ + 99), stats=REOPEN),
        Case("ACK on the reopened flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1], "A", ack=ACK), stats=HIT),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert (f.daddr, f.color, f.slot, f.state) == (g[0], model.BGS_GREEN, slots["green"][0],
                                                   model.BGS_FLOW_SYN)
    assert bgs.count("bgs_flows") == 1


def test_ingress_syn_on_idle_flow_reopens(bgs):
    """A SYN on a TCP flow idle past tcp_idle reopens it on the active color; a non-SYN
    segment on it still follows it (it may be a long-quiet connection)."""
    web(bgs)
    open_flow(bgs)
    bgs.cli("flip", "web", "--no-check")
    age_flow(bgs, (CLIENT, VIP, CPORT, VIP_PORT), IPPROTO_TCP, bgs.config().tcp_idle_ns)
    b, g = BLUE[0], GREEN[0]
    run_table(bgs, "ingress", [
        Case("ACK on the idle flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=HIT),
    ])
    age_flow(bgs, (CLIENT, VIP, CPORT, VIP_PORT), IPPROTO_TCP, bgs.config().tcp_idle_ns)
    run_table(bgs, "ingress", [
        Case("SYN on the idle flow", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT, g[1]), stats=REOPEN),
    ])


def test_ingress_udp_idle_flow_reopens_by_drain(bgs):
    """A UDP entry idle past udp_idle is replaced by the next datagram (FLOW_REOPEN). While
    the last change drains (a flip: DRAINING | HAS_PREV) it is re-pinned where it was, by the
    previous share (second chance, counted SECOND_CHANCE too): a QUIC connection silent for
    longer than the timeout does not move. A new client without entry goes by the current
    share; once nothing drains, an idle entry is placed by the current share too."""
    dns(bgs)
    svc = bgs.services["dns"]
    b, g = BLUE[0][0], GREEN[0][0]
    key = (CLIENT, UDP_VIP, CPORT, UDP_PORT)
    reopen_prev = {**REOPEN, "SECOND_CHANCE": 1}
    run_table(bgs, "ingress", [
        Case("first datagram", udp(*key), XDP_PASS, out=udp(CLIENT, b, CPORT, 5353),
             stats=NEW_UDP)])
    bgs.cli("flip", "dns", "--no-check")
    sw = bgs.switch(svc)
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV and sw.prev_share == 0
    # (switch flags, where the idle entry's next datagram goes and what it counts, cases after)
    phases = [
        (sw.flags, "blue draining: blue again", b, reopen_prev, model.BGS_BLUE, [
            Case("another client, no entry: green", udp(CLIENT2, UDP_VIP, CPORT, UDP_PORT),
                 XDP_PASS, out=udp(CLIENT2, g, CPORT, 5353), stats=NEW_UDP)]),
        (model.BGS_SW_HAS_PREV, "blue drained: green", g, REOPEN, model.BGS_GREEN, []),
    ]
    for flags, desc, to, stats, color, more in phases:
        bgs.put_switch(svc, sw._replace(flags=flags))
        age_flow(bgs, key, IPPROTO_UDP, bgs.config().udp_idle_ns)
        run_table(bgs, "ingress", [
            Case(f"datagram after the idle time, {desc}", udp(*key), XDP_PASS,
                 out=udp(CLIENT, to, CPORT, 5353), stats=stats),
            Case("next datagram follows it", udp(*key), XDP_PASS,
                 out=udp(CLIENT, to, CPORT, 5353), stats=HIT), *more])
        f = bgs.flow(*key, IPPROTO_UDP)
        assert (f.color, f.state) == (color, 0), desc
        assert model.flow_age_ns(f.seen, monotonic_coarse_ns()) < 2 * 10**9, desc
    ss = bgs.service_stats(svc)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "reopen": 2, "second_chance": 1}


def test_ingress_service_deleted_untouched(bgs):
    """After `service del --force` the VIP is no longer ours: SYNs and segments of its old
    flows pass untouched, counted NOT_VIP."""
    web(bgs)
    open_flow(bgs)
    bgs.cli("service", "del", "web", "--force")
    run_table(bgs, "ingress", [
        Case("ACK of a flow of the deleted service",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS, stats={"NOT_VIP": 1}),
        Case("SYN to the deleted VIP", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_PASS,
             stats={"NOT_VIP": 1}),
    ])


def test_flow_stale_reply_from_previous_backend_keeps_reopened_flow(bgs):
    """After a client reuses a 5-tuple (RST, then SYN reopening it on green), a late FIN or RST
    from the old blue backend is not the flow's (its slot's backend is green's): untouched,
    REPLY_NO_FLOW, and the new green flow is not marked closed."""
    web(bgs)
    b, g = BLUE[0], GREEN[0]
    open_flow(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    bgs.ingress(tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"))
    run_table(bgs, "ingress", [
        Case("SYN reopening the 5-tuple on green", tcp(CLIENT, VIP, CPORT, VIP_PORT),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT, g[1]), stats=REOPEN)])
    run_table(bgs, "egress", [
        Case("late FIN from blue", tcp(b[0], CLIENT, b[1], CPORT, "FA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("late RST from blue", tcp(b[0], CLIENT, b[1], CPORT, "R"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert (f.daddr, f.state) == (g[0], model.BGS_FLOW_SYN), (
        f"green flow state {f.state:#x} after stale FIN+RST from blue {b[0]}:{b[1]}")


@pytest.mark.parametrize("close", ["rst_client", "rst_backend", "fin_both"])
def test_egress_stale_reply_superseded(bgs, close):
    """The stale-reply case of issue 13: a client connects to the VIP from port p (blue
    backend B), the connection is closed (RST from either side, or both FINs), then the
    client connects from the same port p directly to B. B's SYN-ACK is not the flow's: a SYN
    from the backend on a closed flow is a new connection on the same addresses and ports, so
    it leaves untouched (counted REPLY_SUPERSEDED) and the entry is deleted; B's later packets
    find no flow and leave untouched too (REPLY_NO_FLOW). Before that, the closed flow's own
    late replies are still translated, and a retransmitted SYN-ACK on a live flow is the
    flow's; a SYN-ACK that does not come in by B's interface ends nothing (REPLY_WRONG_DEV).
    A new SYN to the VIP from p then opens a fresh flow."""
    slots = web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    open_flow(bgs)
    close_in, close_out = {
        "rst_client": ([("client RST", "R")], []),
        "rst_backend": ([], [("backend RST", "RA")]),
        "fin_both": ([("client FIN", "FA")], [("backend FIN", "FA")]),
    }[close]
    run_table(bgs, "egress", [
        Case("SYN-ACK of the live flow", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK,
                                             ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT),
        Case("SYN-ACK retransmitted: still the flow's", tcp(be, CLIENT, bport, CPORT, "SA",
                                                            seq=ACK, ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT)])
    run_table(bgs, "ingress", [
        Case(d, tcp(CLIENT, VIP, CPORT, VIP_PORT, f, ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, f, ack=ACK), stats=HIT) for d, f in close_in])
    run_table(bgs, "egress", [
        Case(d, tcp(be, CLIENT, bport, CPORT, f, seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, f, seq=ACK), stats=NAT)
        for d, f in close_out])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.state & model.BGS_FLOW_RST or (
        f.state & model.BGS_FLOW_BOTH_FIN == model.BGS_FLOW_BOTH_FIN), f
    run_table(bgs, "egress", [
        Case("late ACK of the closed flow: still the flow's", tcp(be, CLIENT, bport, CPORT,
                                                                 "A", seq=ACK + 1),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK + 1), stats=NAT)])
    run_table(bgs, "ingress", [
        Case("client SYN straight to B from the same port: not ours",
             tcp(CLIENT, be, CPORT, bport, seq=7000), XDP_PASS, stats={"NOT_VIP": 1})])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("a SYN-ACK as B's, in by another interface than B's: not B's, entry kept",
             tcp(be, CLIENT, bport, CPORT, "SA", seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_WRONG_DEV": 1}, ifindex=5)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) == f
    run_table(bgs, "egress", [
        Case("B's SYN-ACK to it: untouched, the closed flow's entry deleted",
             tcp(be, CLIENT, bport, CPORT, "SA", seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_SUPERSEDED": 1}),
        Case("B's SYN-ACK retransmitted: no flow", tcp(be, CLIENT, bport, CPORT, "SA",
                                                       seq=9000, ack=7001), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("B's data: no flow", tcp(be, CLIENT, bport, CPORT, "PA", seq=9001, ack=7001,
                                      payload=b"direct"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT) is None
    assert bgs.count("bgs_flows") == 0
    run_table(bgs, "ingress", [
        Case("client ACK straight to B: not ours", tcp(CLIENT, be, CPORT, bport, "A",
                                                       seq=7001, ack=9001), XDP_PASS,
             stats={"NOT_VIP": 1}),
        Case("a new SYN to the VIP from p: a fresh flow", tcp(CLIENT, VIP, CPORT, VIP_PORT,
                                                              seq=SEQ + 500), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, seq=SEQ + 500), stats=NEW_SYN)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == model.BGS_FLOW_SYN
    assert bgs.backend_stats(slots["blue"][0])["tx_packets"] == 3 + len(close_out)


def test_egress_expired_flow_reply_untouched(bgs):
    """Replies are translated only while their flow is not expired: a TCP flow idle past
    tcp_idle, a closed one idle past the closing timeout, a UDP flow idle past udp_idle:
    their replies leave untouched, counted REPLY_NO_FLOW, and the entry is left for gc (a
    SYN-ACK on the expired closed flow deletes nothing). A closed flow within the closing
    timeout still has its replies translated; a client segment on the idle TCP flow follows
    it and makes it live again."""
    web(bgs)
    dns(bgs)
    be, bport = BLUE[0]
    ub = BLUE[0][0]
    cfg = bgs.config()
    idle, closed, uidle = ((CLIENT, VIP, CPORT, VIP_PORT), (CLIENT, VIP, CPORT + 1, VIP_PORT),
                           (CLIENT, UDP_VIP, CPORT, UDP_PORT))
    open_flow(bgs)
    open_flow(bgs, sport=CPORT + 1)
    run_table(bgs, "ingress", [
        Case("client RST closes the second flow", tcp(*closed, "R"), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, "R"), stats=HIT),
        Case("UDP query", udp(*uidle), XDP_PASS, out=udp(CLIENT, ub, CPORT, 5353),
             stats=NEW_UDP)])
    run_table(bgs, "egress", [
        Case("reply of the closed flow, within the closing timeout",
             tcp(be, CLIENT, bport, CPORT + 1, "RA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT + 1, "RA"), stats=NAT)])
    age_flow(bgs, idle, IPPROTO_TCP, cfg.tcp_idle_ns)
    age_flow(bgs, closed, IPPROTO_TCP, cfg.closing_ns)
    age_flow(bgs, uidle, IPPROTO_UDP, cfg.udp_idle_ns)
    assert cfg.closing_ns < cfg.tcp_idle_ns
    entries = {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()}
    no_flow = {"REPLY_NO_FLOW": 1}
    run_table(bgs, "egress", [
        Case("reply of the TCP flow idle past tcp_idle", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, stats=no_flow),
        Case("reply of the closed flow past the closing timeout",
             tcp(be, CLIENT, bport, CPORT + 1, "A"), TC_ACT_OK, stats=no_flow),
        Case("SYN-ACK on the expired closed flow: not superseded, expired",
             tcp(be, CLIENT, bport, CPORT + 1, "SA"), TC_ACT_OK, stats=no_flow),
        Case("answer of the UDP flow idle past udp_idle", udp(ub, CLIENT, 5353, CPORT),
             TC_ACT_OK, stats=no_flow),
    ])
    assert {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()} == entries
    run_table(bgs, "ingress", [
        Case("client ACK on the idle TCP flow: follows it", tcp(*idle, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT)])
    run_table(bgs, "egress", [
        Case("reply of the TCP flow, live again", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A"), stats=NAT)])


def test_egress_reply_wrong_device_untouched(bgs):
    """A reply is the flow's only if it came in by the interface the flow's backend is
    reached by (bgs_flow.ifindex; 0 here, where no FIB lookup succeeds, as for a backend on
    the node itself): from anywhere else (skb->ingress_ifindex) it leaves untouched, counted
    REPLY_WRONG_DEV, and marks nothing on the flow; so do ICMP errors (ICMP_NO_FLOW). A flow
    whose backend is reached through interface 7 (the entry written so) takes replies from
    7 only. A client packet does not change the entry's interface while its next hop has
    none."""
    web(bgs)
    be, bport = BLUE[0]
    open_flow(bgs)
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.ifindex == 0
    wrong = {"REPLY_WRONG_DEV": 1}
    run_table(bgs, "egress", [
        Case("SYN-ACK, in by the flow's interface (0)", tcp(be, CLIENT, bport, CPORT, "SA"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT, ifindex=0),
        Case("SYN-ACK, in by interface 5", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             stats=wrong, ifindex=5),
        Case("FIN, in by interface 5: not marked", tcp(be, CLIENT, bport, CPORT, "FA"),
             TC_ACT_OK, stats=wrong, ifindex=5),
        Case("RST, in by interface 1", tcp(be, CLIENT, bport, CPORT, "R"), TC_ACT_OK,
             stats=wrong, ifindex=1),
        Case("ICMP error quoting the client's packet, in by interface 5",
             icmp_error(be, CLIENT, quoted_reply(CLIENT, be, CPORT, bport)), TC_ACT_OK,
             stats={"ICMP_NO_FLOW": 1}, ifindex=5),
    ])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == model.BGS_FLOW_SYN
    bgs.put_flow(CLIENT, VIP, CPORT, VIP_PORT, IPPROTO_TCP, f._replace(ifindex=7))
    run_table(bgs, "egress", [
        Case("data, in by interface 7", tcp(be, CLIENT, bport, CPORT, "PA", payload=b"d"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", payload=b"d"), stats=NAT,
             ifindex=7),
        Case("data sent by the node itself (0)", tcp(be, CLIENT, bport, CPORT, "PA",
                                                     payload=b"d"), TC_ACT_OK, stats=wrong),
        Case("ICMP error, in by interface 7",
             icmp_error(be, CLIENT, quoted_reply(CLIENT, be, CPORT, bport)), TC_ACT_OK,
             out=icmp_error(VIP, CLIENT, quoted_reply(CLIENT, VIP, CPORT, VIP_PORT)),
             stats={"ICMP_OUT": 1}, ifindex=7),
    ])
    run_table(bgs, "ingress", [
        Case("client ACK", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).ifindex == 7


def test_flow_reply_interface_from_next_hop(bgs):
    """A flow's reply interface (bgs_flow.ifindex) is its next hop's: 0 while the FIB lookup
    toward the backend fails (no route), the route's interface once there is one, even
    before its neighbour is resolved (the packet then goes to the stack: FWD_NO_NEIGH). A
    flow created before the route takes the interface from the next hop looked up again
    (after BGS_NEXTHOP_NS) by its client's next packet. Replies come in by that interface
    only."""
    web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    slot = bgs.find_slot("web", "blue", be, bport)
    open_flow(bgs, sport=CPORT)
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).ifindex == 0
    ifx = bgs.route("10.0.1.254/24")  # the blue backends' subnet
    time.sleep(model.BGS_NEXTHOP_NS / 1e9 + 0.2)  # the cached failed lookup expires
    no_neigh = {"FWD_NO_NEIGH": 1}
    run_table(bgs, "ingress", [
        Case("client ACK of the flow opened before the route",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK),
             stats={"VIP": 1, "FLOW_HIT": 1, **no_neigh}),
        Case("new SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport),
             stats={"VIP": 1, "SYN_MISS": 1, "FLOW_NEW": 1, **no_neigh}),
    ])
    nh = bgs.nexthop(slot)
    assert (nh.ifindex, nh.rc, nh.expires) == (ifx, model.BPF_FIB_LKUP_RET_NO_NEIGH, 0), nh
    for port in (CPORT, CPORT + 1):
        assert bgs.flow(CLIENT, VIP, port, VIP_PORT).ifindex == ifx, port
    run_table(bgs, "egress", [
        *[Case(f"reply to port {p}, in by the route's interface",
               tcp(be, CLIENT, bport, p, "A"), TC_ACT_OK,
               out=tcp(VIP, CLIENT, VIP_PORT, p, "A"), stats=NAT, ifindex=ifx)
          for p in (CPORT, CPORT + 1)],
        Case("reply sent by the node itself (0)", tcp(be, CLIENT, bport, CPORT, "A"),
             TC_ACT_OK, stats={"REPLY_WRONG_DEV": 1}),
    ])


def test_ingress_rst_miss_forwarded_without_entry(bgs):
    """An RST that misses the table opens nothing: it goes where its flow would be (the
    active color, or while a change drains the previous share's for a segment without SYN)
    and is counted RST_MISS, but no entry is written; the next segment of that tuple is a
    miss again. A SYN|RST counts as a first packet (SYN_MISS) and also writes nothing."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    rst = {"RST_MISS": 1, **FWD}
    run_table(bgs, "ingress", [
        Case("RST, no entry: to blue", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats={**NOSYN, **rst}),
        Case("RST again: a miss again", tcp(CLIENT, VIP, CPORT, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "R"), stats={**NOSYN, **rst}),
        Case("RST|ACK, no entry", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "RA", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT + 1, b[1], "RA", ack=ACK),
             stats={**NOSYN, **rst}),
        Case("SYN|RST, no entry", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "SR"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1], "SR"),
             stats={"VIP": 1, "SYN_MISS": 1, **rst}),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    run_table(bgs, "ingress", [
        Case("RST while blue drains: blue (second chance)",
             tcp(CLIENT, VIP, CPORT + 3, VIP_PORT, "R"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 3, b[1], "R"), stats={**NOSYN, **rst}),
        Case("SYN|RST while blue drains: green", tcp(CLIENT, VIP, CPORT + 4, VIP_PORT, "SR"),
             XDP_PASS, out=tcp(CLIENT, g[0], CPORT + 4, g[1], "SR"),
             stats={"VIP": 1, "SYN_MISS": 1, **rst}),
        Case("ACK of the first tuple: re-pinned and recorded now", tcp(
            CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=REPIN),
    ])
    assert bgs.count("bgs_flows") == 1
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == 0


def test_ingress_creating_fin_recorded(bgs):
    """The packet that creates an entry records its own FIN: a SYN|FIN opens it with SYN and
    FIN_CLIENT, a FIN that misses is re-pinned with FIN_CLIENT; the backend's FIN then makes
    the flow closed, and the next SYN reopens it on the active color."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    run_table(bgs, "ingress", [
        Case("SYN|FIN, no entry", tcp(CLIENT, VIP, CPORT, VIP_PORT, "SF"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "SF"), stats=NEW_SYN),
        Case("FIN|ACK, no entry", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "FA", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, b[0], CPORT + 1, b[1], "FA", ack=ACK), stats=REPIN),
        Case("bare FIN, no entry", tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, "F"), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1], "F"), stats=REPIN),
    ])
    fin = model.BGS_FLOW_FIN_CLIENT
    assert [bgs.flow(CLIENT, VIP, CPORT + i, VIP_PORT).state for i in range(3)] == [
        model.BGS_FLOW_SYN | fin, fin, fin]
    bgs.cli("flip", "web", "green", "--no-check")
    run_table(bgs, "egress", [
        Case("backend FIN", tcp(b[0], CLIENT, b[1], CPORT + 1, "FA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT + 1, "FA"), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT + 1, VIP_PORT).state == model.BGS_FLOW_BOTH_FIN
    run_table(bgs, "ingress", [
        Case("SYN on the closed flow: reopened on green", tcp(CLIENT, VIP, CPORT + 1,
                                                              VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], CPORT + 1, g[1]), stats=REOPEN),
        Case("SYN on the half-closed flow: follows it (still live)",
             tcp(CLIENT, VIP, CPORT + 2, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT + 2, b[1]), stats=HIT),
    ])


def test_flow_rst_then_both_sides_live_again(bgs):
    """An RST stops a flow being live, but only until both sides send a segment without RST
    after it (an RST the other end ignored: spoofed, or out of window, RFC 5961): each side's
    segment sets its ON bit, and with both the RST and ON bits are cleared. A closed flow is
    reopened on the active color by the next SYN; a live one is followed by it and its
    backend's SYN-ACK is the flow's. An RST while an ON bit is set clears the ON bits."""
    web(bgs, blue=1, green=1)
    b, g = BLUE[0], GREEN[0]
    open_flow(bgs)
    bgs.cli("flip", "web", "green", "--no-check")
    SYN, RST = model.BGS_FLOW_SYN, model.BGS_FLOW_RST
    CON, SON = model.BGS_FLOW_CLIENT_ON, model.BGS_FLOW_SERVER_ON
    RSV = model.BGS_FLOW_RST_SERVER  # the backend's RST: the entry keeps the closing timeout

    def cin(desc, flags, stats=HIT, to=b):
        return ("ingress", Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT, flags, ack=ACK),
                                XDP_PASS, out=tcp(CLIENT, to[0], CPORT, to[1], flags, ack=ACK),
                                stats=stats))

    def bout(desc, flags):
        return ("egress", Case(desc, tcp(b[0], CLIENT, b[1], CPORT, flags, seq=ACK),
                               TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, flags, seq=ACK),
                               stats=NAT))

    steps = [
        (cin("client RST", "RA"), SYN | RST),
        (cin("client RST again: nothing changes", "R"), SYN | RST),
        (cin("client ACK after it", "A"), SYN | RST | CON),
        (cin("client data", "PA"), SYN | RST | CON),
        (bout("backend ACK: both sides went on", "A"), SYN),
        (cin("SYN on the live flow: follows it, blue", "S"), SYN),
        (bout("backend SYN-ACK on the live flow: the flow's", "SA"), SYN),
        (bout("backend RST", "RA"), SYN | RST | RSV),
        (bout("backend ACK after it", "A"), SYN | RST | RSV | SON),
        (cin("client RST: the ON bits go", "R"), SYN | RST | RSV),
        (bout("backend ACK", "A"), SYN | RST | RSV | SON),
        (cin("SYN on the closed flow: reopened on green", "S", stats=REOPEN, to=g), SYN),
    ]
    fails = []
    for (hook, case), state in steps:
        fails += run_case(bgs, hook, case)
        got = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state
        if got != state:
            fails.append(f"[{hook}] {case.desc}: state {got:#x}, want {state:#x}")
    assert not fails, "\n\n".join(fails)
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).color == model.BGS_GREEN


def test_ingress_l4_header_beyond_packet_untouched(bgs):
    """A TCP header whose options run past the frame is truncated (PARSE_L4); one that lies,
    whole or in part, beyond the IP length (in Ethernet padding) is not covered by it
    (PARSE_IP_LEN): nothing is read from padding. Both pass untouched."""
    web(bgs)
    web6(bgs)
    opts = {"options": [("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("NOP", None)]}
    run_table(bgs, "ingress", [
        Case("TCP doff=15, no options present",
             tcp(CLIENT, VIP, CPORT, VIP_PORT, tcp_fields={"dataofs": 15}), XDP_PASS,
             stats={"PARSE_L4": 1}),
        Case("IP total length 20: the TCP header is padding",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, len=20), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
        Case("IP length 40 covers the TCP header but not its options (doff 8)",
             tcp(CLIENT, VIP, CPORT + 2, VIP_PORT, tcp_fields=opts, len=40), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
        Case("IPv6 payload length 20 covers the TCP header but not its options",
             tcp(CLIENT6, VIP6, CPORT, VIP_PORT, tcp_fields=opts, plen=20), XDP_PASS,
             stats={"PARSE_IP_LEN": 1}),
    ])
    assert bgs.count("bgs_flows") == 0


def test_egress_parse_failures_untouched_uncounted(bgs):
    """Egress passes what it cannot parse untouched; the parse reasons are ingress counters,
    so only TX moves, even for replies of a live flow."""
    web(bgs)
    web6(bgs)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    open_flow(bgs)
    run_table(bgs, "ingress", [
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN)])
    reply = tcp(be, CLIENT, bport, CPORT, "A", vlan=5)
    run_table(bgs, "egress", [
        Case("tag cut", reply[:16], TC_ACT_OK),
        Case("tagged, IPv4 header cut", reply[:18 + 12], TC_ACT_OK),
        Case("IP length past the frame", tcp(be, CLIENT, bport, CPORT, "A", len=200),
             TC_ACT_OK),
        Case("TCP header in padding", tcp(be, CLIENT, bport, CPORT, "A", len=20), TC_ACT_OK),
        Case("TCP doff 4", tcp(be, CLIENT, bport, CPORT, "A", tcp_fields={"dataofs": 4}),
             TC_ACT_OK),
        Case("reply to port 0", tcp(be, CLIENT, bport, 0, "A"), TC_ACT_OK),
        Case("IPv6 payload length 0", tcp(b6, CLIENT6, bp6, CPORT, "A", plen=0), TC_ACT_OK),
        Case("IPv6 behind 7 extension headers", tcp(b6, CLIENT6, bp6, CPORT, "A",
                                                    ext=v6_chain(7)), TC_ACT_OK),
    ])
