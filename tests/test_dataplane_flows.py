"""Data-plane unit tests: new flows (SYN variants, IP options, VLAN tags, UDP checksums)
and existing ones (flow hits across flips, second chance, re-pinning, no backend).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.l2 import Dot1AD, Ether

from lib import model
from lib.bpfsys import XDP_DROP, XDP_PASS
from lib.dataplane import (ACK, BLUE, CLIENT, CLIENT2, CPORT, Case, Chooser, EMPTY_VIP, GREEN, HIT,
                           NEW_SYN, NEW_UDP, NOSYN, OTHER_IP, REPIN, REPIN_RST, SEQ, UDP_PORT,
                           UDP_VIP, VIP, VIP_PORT, dns, flow_h, new_flow_slot, ones_add, run_table,
                           tcp, udp, udp_payload_for_ffff, web)
from lib.model import IPPROTO_TCP, IPPROTO_UDP
from lib.unit_fixtures import BgsState, monotonic_coarse_ns


# === ingress: new flows ===========================================================================

def test_ingress_vip_syn_creates_flow(bgs):
    """A SYN to the VIP is rewritten to the blue backend, and leaves one flow entry, keyed by
    the client's address and port and the service, and the backend's counters behind. The
    entry's reply interface is its next hop's: 0 here, where the FIB lookup finds no route
    (the slot's cached next hop says so)."""
    slots = web(bgs)
    be, bport = BLUE[0]
    syn = tcp(CLIENT, VIP, CPORT, VIP_PORT, "S", payload=b"hello")
    run_table(bgs, "ingress", [
        Case("SYN to the VIP", syn, XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "S", payload=b"hello"), stats=NEW_SYN),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f is not None, "no bgs_flows entry after the SYN"
    assert (f.daddr, f.dport, f.color, f.slot, f.state, f.ifindex) == (
        be, bport, model.BGS_BLUE, slots["blue"][0], model.BGS_FLOW_SYN, 0)
    assert model.flow_age_ns(f.seen, monotonic_coarse_ns()) < 2 * 10**9
    assert list(bgs.map("bgs_flows").keys()) == [
        model.pack_conn_key(CLIENT, CPORT, bgs.services["web"], IPPROTO_TCP)]
    nh = bgs.nexthop(slots["blue"][0])
    assert nh.ifindex == 0 and nh.rc != 0 and nh.expires > 0, nh
    iplen = len(syn) - 14
    assert bgs.backend_stats(slots["blue"][0]) == {
        "rx_packets": 1, "rx_bytes": iplen, "tx_packets": 0, "tx_bytes": 0, "new_flows": 1,
        "resets": 0}


def test_ingress_syn_variants_create_flows(bgs):
    """Any segment with SYN and without ACK starts a flow (ECE/CWR/PSH/URG too); checksums of
    TCP options and payload are kept right."""
    web(bgs)
    be, bport = BLUE[0]
    opts = {"options": [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                        ("WScale", 7)]}
    cases = []
    for i, (desc, flags, kw) in enumerate([
        ("SYN", "S", {}),
        ("SYN with ECE|CWR", "SEC", {}),
        ("SYN with PSH and payload", "SP", {"payload": b"GET / HTTP/1.0\r\n\r\n"}),
        ("SYN with options (doff 10)", "S", {"tcp_fields": opts}),
        ("SYN with options and odd-length payload", "S", {"tcp_fields": opts,
                                                          "payload": b"abc"}),
        ("SYN|FIN (no ACK)", "SF", {}),
    ]):
        sport = CPORT + i
        cases.append(Case(desc, tcp(CLIENT, VIP, sport, VIP_PORT, flags, **kw), XDP_PASS,
                          out=tcp(CLIENT, be, sport, bport, flags, **kw), stats=NEW_SYN))
    pad = b"\0" * 6  # a 54-byte SYN padded to the 60-byte Ethernet minimum
    sport = CPORT + 100
    cases.append(Case("SYN with Ethernet padding", tcp(CLIENT, VIP, sport, VIP_PORT) + pad,
                      XDP_PASS, out=tcp(CLIENT, be, sport, bport) + pad, stats=NEW_SYN))
    run_table(bgs, "ingress", cases)
    assert bgs.count("bgs_flows") == len(cases)
    # rx_bytes counts IP total lengths, not frame lengths (padding excluded)
    assert bgs.backend_stats(0)["rx_bytes"] == sum(Ether(c.pkt)[IP].len for c in cases)


def test_ingress_ip_options_rewritten(bgs):
    """With IPv4 options (ihl 6 and 15) a VIP packet is still found and rewritten right."""
    web(bgs)
    be, bport = BLUE[0]
    ra = [IPOption_Router_Alert()]
    rr = [IPOption_RR(routers=["0.0.0.0"] * 9)]  # 39 bytes + 1 pad: ihl 15
    run_table(bgs, "ingress", [
        Case("router alert (ihl 6)", tcp(CLIENT, VIP, CPORT, VIP_PORT, options=ra), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, options=ra), stats=NEW_SYN),
        Case("record route (ihl 15) + payload",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, payload=b"data", options=rr), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport, payload=b"data", options=rr),
             stats=NEW_SYN),
        Case("record route, tagged, ACK on the flow",
             tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, "A", ack=ACK, options=rr, vlan=9),
             XDP_PASS, out=tcp(CLIENT, be, CPORT + 1, bport, "A", ack=ACK, options=rr, vlan=9),
             stats=HIT),
    ])


def test_ingress_vlan_tagged_rewrite(bgs):
    """One 802.1Q or 802.1ad tag: the packet is rewritten behind it, the tag kept."""
    web(bgs)
    dns(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("802.1Q SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT, vlan=100), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, vlan=100), stats=NEW_SYN),
        Case("802.1Q ACK on that flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK,
                                            payload=b"x", vlan=100), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK, payload=b"x", vlan=100),
             stats=HIT),
        Case("802.1ad SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT, vlan=200, outer=Dot1AD),
             XDP_PASS, out=tcp(CLIENT, be, CPORT + 1, bport, vlan=200, outer=Dot1AD),
             stats=NEW_SYN),
        Case("802.1Q UDP", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, vlan=4094), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353, vlan=4094), stats=NEW_UDP),
        Case("802.1Q non-VIP", tcp(CLIENT, OTHER_IP, CPORT, VIP_PORT, vlan=100), XDP_PASS,
             stats={"NOT_VIP": 1}),
    ])


def test_ingress_udp_new_flow(bgs):
    """A UDP datagram to a UDP VIP starts a flow (state 0) and later ones follow it."""
    slots = dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("first datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"query1"), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b"query1"), stats=NEW_UDP),
        Case("second datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"query2!"), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b"query2!"), stats=HIT),
        Case("empty datagram", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b""), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353, b""), stats=HIT),
    ])
    f = bgs.flow(CLIENT, UDP_VIP, CPORT, UDP_PORT, IPPROTO_UDP)
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (be, 5353, model.BGS_BLUE,
                                                            slots["blue"][0], 0)
    assert bgs.count("bgs_flows") == 1
    assert bgs.backend_stats(slots["blue"][0])["rx_packets"] == 3


def test_ingress_udp_zero_checksum_stays_zero(bgs):
    """A UDP datagram without checksum (0) keeps 0: it is not "updated" into a wrong one."""
    dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("zero checksum, new flow", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"q", chksum=0),
             XDP_PASS, out=udp(CLIENT, be, CPORT, 5353, b"q", chksum=0), stats=NEW_UDP),
        Case("zero checksum, flow hit", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, b"q2", chksum=0),
             XDP_PASS, out=udp(CLIENT, be, CPORT, 5353, b"q2", chksum=0), stats=HIT),
    ])


def test_ingress_udp_checksum_never_becomes_zero(bgs):
    """When the rewritten datagram's checksum computes to 0 it must be sent as 0xffff (0 would
    mean "no checksum")."""
    dns(bgs)
    be = BLUE[0][0]
    payload = udp_payload_for_ffff(CLIENT, be, CPORT, 5353)
    want = udp(CLIENT, be, CPORT, 5353, payload)
    assert UDP(want[34:]).chksum == 0xFFFF
    run_table(bgs, "ingress", [
        Case("rewrite makes the sum 0xffff", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT, payload),
             XDP_PASS, out=want, stats=NEW_UDP),
    ])


def test_ingress_bad_checksum_not_repaired(bgs):
    """The rewrite updates checksums by difference: a wrong TCP checksum stays wrong by the
    same amount (the program never recomputes, so it cannot launder corruption)."""
    web(bgs)
    be, bport = BLUE[0]
    good_in = TCP(tcp(CLIENT, VIP, CPORT, VIP_PORT)[34:]).chksum
    good_out = TCP(tcp(CLIENT, be, CPORT, bport)[34:]).chksum
    run_table(bgs, "ingress", [
        Case("TCP checksum off by one", tcp(CLIENT, VIP, CPORT, VIP_PORT,
                                            tcp_fields={"chksum": ones_add(good_in, 1)}),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport,
                               tcp_fields={"chksum": ones_add(good_out, 1)}),
             stats=NEW_SYN),
    ])


# === ingress: existing flows ======================================================================

def test_ingress_flow_hit_follows_entry(bgs):
    """A whole connection from the client: SYN creates, every later segment hits and follows
    the entry; a SYN retransmit hits the same entry."""
    web(bgs, blue=2)
    _, slot = new_flow_slot(bgs, 0, CLIENT, VIP, CPORT, VIP_PORT)
    be, bport = BLUE[slot]

    def pair(desc, flags, stats, **kw):
        return Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT, flags, **kw), XDP_PASS,
                    out=tcp(CLIENT, be, CPORT, bport, flags, **kw), stats=stats)

    run_table(bgs, "ingress", [
        pair("SYN", "S", NEW_SYN),
        pair("SYN retransmit", "S", HIT),
        pair("ACK", "A", HIT, seq=SEQ + 1, ack=ACK),
        pair("PSH|ACK with data", "PA", HIT, seq=SEQ + 1, ack=ACK, payload=b"GET / HTTP/1.1"),
        pair("URG|ACK", "UA", HIT, seq=SEQ + 15, ack=ACK, tcp_fields={"urgptr": 1}),
        pair("FIN|ACK", "FA", HIT, seq=SEQ + 16, ack=ACK + 1),
    ])
    f = bgs.flow(CLIENT, VIP, CPORT, VIP_PORT)
    assert f.state == model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_CLIENT
    assert bgs.backend_stats(slot)["rx_packets"] == 6
    assert bgs.backend_stats(slot)["new_flows"] == 1


def test_ingress_flow_hit_follows_entry_after_flip(bgs):
    """After a flip, established flows stay on the color they began on; new flows go to the
    new active color; after a rollback new flows go back."""
    web(bgs)
    b, g = BLUE[0], GREEN[0]
    c2 = CPORT + 1
    c3 = CPORT + 2
    run_table(bgs, "ingress", [
        Case("SYN before the flip", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1]), stats=NEW_SYN),
    ])
    bgs.cli("flip", "web", "green", "--no-check")
    assert bgs.switch(0).active == model.BGS_GREEN
    run_table(bgs, "ingress", [
        Case("ACK of the old flow after the flip", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                       ack=ACK), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1], "A", ack=ACK), stats=HIT),
        Case("SYN retransmit of the old flow", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], CPORT, b[1]), stats=HIT),
        Case("new SYN after the flip", tcp(CLIENT, VIP, c2, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, g[0], c2, g[1]), stats=NEW_SYN),
    ])
    assert bgs.flow(CLIENT, VIP, c2, VIP_PORT).color == model.BGS_GREEN
    bgs.cli("rollback", "web", "--no-check")
    assert bgs.switch(0).active == model.BGS_BLUE
    run_table(bgs, "ingress", [
        Case("green flow after the rollback", tcp(CLIENT, VIP, c2, VIP_PORT, "PA", ack=ACK,
                                                  payload=b"x"), XDP_PASS,
             out=tcp(CLIENT, g[0], c2, g[1], "PA", ack=ACK, payload=b"x"), stats=HIT),
        Case("new SYN after the rollback", tcp(CLIENT, VIP, c3, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, b[0], c3, b[1]), stats=NEW_SYN),
    ])


def test_ingress_udp_live_flow_survives_flip(bgs):
    """A live UDP flow stays on its color across a flip; a new one takes the new color."""
    dns(bgs)
    run_table(bgs, "ingress", [
        Case("datagram before the flip", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=NEW_UDP),
    ])
    bgs.cli("flip", "dns", "--no-check")
    run_table(bgs, "ingress", [
        Case("same flow after the flip", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, BLUE[0][0], CPORT, 5353), stats=HIT),
        Case("new flow after the flip", udp(CLIENT2, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT2, GREEN[0][0], CPORT, 5353), stats=NEW_UDP),
    ])


NOSYN_FLAGS = [("ACK", "A"), ("PSH|ACK", "PA"), ("SYN|ACK", "SA"), ("FIN|ACK", "FA"),
               ("RST", "R"), ("RST|ACK", "RA"), ("FIN", "F"), ("no flags", "")]


def _repin(bgs: BgsState, desc: str, cport: int, color: int, flags: str = "A",
           client: str = CLIENT) -> Case:
    """A non-SYN segment of a tuple without entry, and where it must be re-pinned: to the
    backend of ``color``'s current table (or set) that a new flow of that color would get.
    A segment with RST goes there too, but opens no entry (RST_MISS)."""
    svc = bgs.services["web"]
    _, slot = new_flow_slot(bgs, svc, client, VIP, cport, VIP_PORT, color=color)
    b = bgs.backend(slot)
    assert b.color == color
    return Case(f"{desc}: re-pinned to {'blue' if color == model.BGS_BLUE else 'green'} slot "
                f"{slot} ({b.addr}:{b.port})",
                tcp(client, VIP, cport, VIP_PORT, flags, ack=ACK, payload=b"p"), XDP_PASS,
                out=tcp(client, b.addr, cport, b.port, flags, ack=ACK, payload=b"p"),
                stats=REPIN_RST if "R" in flags else REPIN)


def _pinned(bgs: BgsState, cport: int, color: int, client: str = CLIENT,
            flags: str = "A") -> None:
    """The entry a re-pin of a segment with ``flags`` left: a flow of ``color`` to the chosen
    backend, in state 0 (not opened by a SYN), FIN_CLIENT for a FIN; none for an RST."""
    svc = bgs.services["web"]
    _, slot = new_flow_slot(bgs, svc, client, VIP, cport, VIP_PORT, color=color)
    b = bgs.backend(slot)
    f = bgs.flow(client, VIP, cport, VIP_PORT)
    if "R" in flags:
        assert f is None, f"{client}:{cport}: an RST opened {f}"
        return
    assert f is not None, f"no flow entry for {client}:{cport}"
    state = model.BGS_FLOW_FIN_CLIENT if "F" in flags else 0
    assert (f.daddr, f.dport, f.color, f.slot, f.state) == (b.addr, b.port, color, slot,
                                                            state), f"{client}:{cport}: {f}"


def test_ingress_nosyn_miss_repinned_to_active(bgs):
    """Nothing draining (no flip yet): a TCP segment without SYN (or with SYN|ACK) that misses
    the table is counted NOSYN_MISS and SECOND_CHANCE (node and service) and re-pinned to the
    active color by the hash choice of a new flow: flow entry of state 0 (FIN_CLIENT for a
    FIN) written, FLOW_NEW, backend new_flows; later segments follow it. With RST it goes to
    the same backend but writes no entry (RST_MISS)."""
    slots = web(bgs, blue=3, green=2)
    sw = bgs.switch(0)
    assert (sw.active, sw.previous, sw.flags) == (model.BGS_BLUE, model.BGS_COLOR_NONE, 0)
    cases = [_repin(bgs, f"{desc} without a flow", CPORT + i, model.BGS_BLUE, flags)
             for i, (desc, flags) in enumerate(NOSYN_FLAGS)]
    follow = cases[0]
    cases.append(Case("ACK again: follows the re-pinned entry", follow.pkt, XDP_PASS,
                      out=follow.out, stats=HIT))
    cases.append(Case("SYN on the re-pinned (live) entry: follows it",
                      tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
                      out=tcp(CLIENT, Ether(follow.out)[IP].dst, CPORT,
                              Ether(follow.out)[TCP].dport), stats=HIT))
    run_table(bgs, "ingress", cases)
    for i, (_, flags) in enumerate(NOSYN_FLAGS):
        _pinned(bgs, CPORT + i, model.BGS_BLUE, flags=flags)
    assert bgs.count("bgs_flows") == sum("R" not in f for _, f in NOSYN_FLAGS)
    ss = bgs.service_stats(0)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "nosyn_miss": len(NOSYN_FLAGS),
                  "second_chance": len(NOSYN_FLAGS)}
    # An entry written is a new flow; an RST that writes none is not.
    assert sum(bgs.backend_stats(s)["new_flows"] for s in slots["blue"]) == \
        sum("R" not in f for _, f in NOSYN_FLAGS)
    assert sum(bgs.backend_stats(s)["new_flows"] for s in slots["green"]) == 0


def test_ingress_nosyn_miss_second_chance_follows_drain(bgs):
    """Where a non-SYN miss is re-pinned follows the switch word: the active color before any
    flip; after `flip` (share 0 -> 100 %, prev_share 0, flags DRAINING | HAS_PREV) the color
    of the previous share, while new SYNs go to the active one; `gc` clears DRAINING only
    once the previous color has no live flow (HAS_PREV stays: a rollback is still possible),
    and from then on the active color again. A rollback drains the other way; the switch
    word poked: DRAINING without HAS_PREV, HAS_PREV without DRAINING, or neither, all mean
    the color of the current share."""
    web(bgs, blue=2, green=2)
    B, G = model.BGS_BLUE, model.BGS_GREEN
    both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
    p = iter(range(CPORT, CPORT + 100))
    before = next(p)
    repins = [_repin(bgs, "ACK before any flip", before, B)]
    run_table(bgs, "ingress", repins)

    bgs.cli("flip", "web", "green", "--no-check")
    sw = bgs.switch(0)
    assert (sw.share, sw.prev_share, sw.flags) == (model.BGS_SHARE_ALL, 0, both)
    assert (sw.active, sw.previous) == (G, B)
    syn = next(p)
    _, gslot = new_flow_slot(bgs, 0, CLIENT, VIP, syn, VIP_PORT)
    ga = bgs.backend(gslot)
    assert ga.color == G
    draining = [next(p) for _ in range(3)]
    cases = [
        _repin(bgs, "ACK while blue drains", draining[0], B),
        _repin(bgs, "FIN|ACK while blue drains", draining[1], B, "FA"),
        Case("new SYN while blue drains: green", tcp(CLIENT, VIP, syn, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, ga.addr, syn, ga.port), stats=NEW_SYN),
        _repin(bgs, "IPv4 ACK from another client while blue drains", draining[2], B,
               client=CLIENT2),
    ]
    repins += [c for c in cases if c.stats is REPIN]
    run_table(bgs, "ingress", cases)
    _pinned(bgs, draining[0], B)
    _pinned(bgs, draining[1], B, flags="FA")
    _pinned(bgs, draining[2], B, client=CLIENT2)

    # Live blue flows left: gc keeps the flag (and the generation: not a change).
    gen = bgs.switch(0).generation
    bgs.cli("gc")
    assert bgs.switch(0) == sw._replace(generation=gen)
    still = next(p)
    repins.append(_repin(bgs, "ACK after a gc with live blue flows", still, B))
    run_table(bgs, "ingress", repins[-1:])

    # Close every blue flow (client RST), then gc: the flag goes, nothing else changes.
    blue = [(CLIENT, c) for c in [before] + draining[:2] + [still]] + [(CLIENT2, draining[2])]
    for client, c in blue:
        f = bgs.flow(client, VIP, c, VIP_PORT)
        assert f.color == B
        run_table(bgs, "ingress", [Case(f"client RST closes blue flow {client}:{c}",
                                        tcp(client, VIP, c, VIP_PORT, "R", seq=SEQ),
                                        XDP_PASS, out=tcp(client, f.daddr, c, f.dport, "R",
                                                          seq=SEQ), stats=HIT)])
    bgs.cli("gc")
    assert bgs.switch(0) == sw._replace(generation=gen, flags=model.BGS_SW_HAS_PREV)
    cases = [
        _repin(bgs, "ACK once blue has drained", next(p), G),
        _repin(bgs, "PSH|ACK once blue has drained", next(p), G, "PA"),
    ]
    repins += cases
    run_table(bgs, "ingress", cases)

    # rollback: back to blue, green drains.
    bgs.cli("rollback", "web", "--no-check")
    sw = bgs.switch(0)
    assert (sw.share, sw.prev_share, sw.flags) == (0, model.BGS_SHARE_ALL, both)
    assert (sw.active, sw.previous) == (B, G)
    repins.append(_repin(bgs, "ACK while green drains (rollback)", next(p), G))
    run_table(bgs, "ingress", repins[-1:])

    # The switch word poked: the second chance needs both flags.
    for desc, flags, color in [
            ("ACK, DRAINING without HAS_PREV", model.BGS_SW_DRAINING, B),
            ("ACK, HAS_PREV without DRAINING", model.BGS_SW_HAS_PREV, B),
            ("ACK, both flags cleared by hand", 0, B),
            ("ACK, both flags set again", both, G)]:
        bgs.put_switch(0, sw._replace(flags=flags))
        repins.append(_repin(bgs, desc, next(p), color))
        run_table(bgs, "ingress", repins[-1:])
    ss = bgs.service_stats(0)
    assert ss["nosyn_miss"] == ss["second_chance"] == len(repins) and ss["syn_miss"] == 1


def test_ingress_nosyn_miss_repin_drops(bgs):
    """A re-pin is a flow creation: toward an empty color it is dropped NO_BACKEND (node and
    service), toward a table position naming a free slot BAD_BACKEND, after NOSYN_MISS and
    SECOND_CHANCE are counted; nothing is recorded."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    bgs.add_backend("web", "green", *GREEN[0])  # blue (active) is empty
    run_table(bgs, "ingress", [
        Case("ACK, active color empty", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    bgs.add_backend("web", "blue", *BLUE[0])
    bgs.cli("flip", "web", "green", "--no-check")
    bgs.cli("backend", "del", "web", "blue", "%s:%d" % BLUE[0])
    sw = bgs.switch(0)
    assert sw.flags == model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV and sw.prev_share == 0
    assert bgs.active_set(0, model.BGS_BLUE) == []
    run_table(bgs, "ingress", [
        Case("ACK while blue drains, blue set empty", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                          ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"NO_BACKEND": 1}),
    ])
    bgs.put_switch(0, sw._replace(flags=0))
    pos = model.BGS_TABLE_HDR + flow_h(CLIENT, VIP, CPORT, VIP_PORT) % model.BGS_TABLE_SIZE
    with bgs.table_map(sw.set_index(0, model.BGS_GREEN)) as inner:
        inner.update(model.u32(pos), model.u32(77))  # a free slot, where this flow lands
    run_table(bgs, "ingress", [
        Case("ACK, active table names a free slot", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A",
                                                        ack=ACK),
             XDP_DROP, stats=NOSYN, drops={"BAD_BACKEND": 1}),
    ])
    assert bgs.count("bgs_flows") == 0
    ss = bgs.service_stats(0)
    assert ss == {**dict.fromkeys(model.SERVICE_STATS, 0), "nosyn_miss": 3,
                  "second_chance": 3, "drop_NO_BACKEND": 2, "drop_BAD_BACKEND": 1}


def test_ingress_no_backend_dropped(bgs):
    """A new flow of a service whose active color has no backend is dropped, counted
    NO_BACKEND, for TCP and UDP; nothing is created."""
    bgs.add_service("web", VIP, VIP_PORT, "tcp")
    bgs.add_service("dns", UDP_VIP, UDP_PORT, "udp")
    bgs.add_backend("web", "green", *GREEN[0])  # green only: blue (active) is empty
    run_table(bgs, "ingress", [
        Case("SYN, active color empty", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
        Case("UDP, no backend at all", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_DROP,
             stats={"VIP": 1}, drops={"NO_BACKEND": 1}),
    ])
    assert bgs.count("bgs_flows") == 0


def test_ingress_last_backend_removed_drops_new_flows(bgs):
    """After `backend del` of the only active backend, new flows are dropped (NO_BACKEND)
    while the existing flow keeps going to the draining backend."""
    slots = web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
    ])
    bgs.cli("backend", "del", "web", "blue", f"{be}:{bport}", "--drain")
    assert bgs.active_set(0) == []
    run_table(bgs, "ingress", [
        Case("ACK of the existing flow", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, be, CPORT, bport, "A", ack=ACK), stats=HIT),
        Case("new SYN", tcp(CLIENT, VIP, CPORT + 1, VIP_PORT), XDP_DROP,
             stats={"VIP": 1, "SYN_MISS": 1}, drops={"NO_BACKEND": 1}),
    ])
    b = model.unpack_backend(bgs.map("bgs_backends").lookup(model.u32(slots["blue"][0])))
    assert b.state == model.BGS_BACKEND_DRAINING


def test_ingress_draining_backend_keeps_flows(bgs):
    """A removed (draining) backend keeps its flows; new flows only go to the rest."""
    web(bgs, blue=2, green=0)
    # Find a client port whose flow lands on slot 0, then remove slot 0's backend.
    now = Chooser(bgs, 0)
    port0 = next(p for p in range(CPORT, CPORT + 1000)
                 if now.slot(CLIENT, VIP, p, VIP_PORT)[1] == 0)
    run_table(bgs, "ingress", [
        Case("SYN to slot 0", tcp(CLIENT, VIP, port0, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[0][0], port0, BLUE[0][1]), stats=NEW_SYN),
    ])
    bgs.cli("backend", "del", "web", "blue", "%s:%d" % BLUE[0], "--drain")
    assert bgs.active_set(0) == [1]
    cases = [Case("data to the draining backend", tcp(CLIENT, VIP, port0, VIP_PORT, "PA",
                                                      ack=ACK, payload=b"d"), XDP_PASS,
                  out=tcp(CLIENT, BLUE[0][0], port0, BLUE[0][1], "PA", ack=ACK,
                          payload=b"d"), stats=HIT)]
    for p in range(port0 + 1, port0 + 21):
        cases.append(Case(f"new SYN from port {p}", tcp(CLIENT, VIP, p, VIP_PORT), XDP_PASS,
                          out=tcp(CLIENT, BLUE[1][0], p, BLUE[1][1]), stats=NEW_SYN))
    run_table(bgs, "ingress", cases)


def test_ingress_bad_backend_dropped(bgs):
    """Where a new flow's backend comes from a lookup table (Maglev), the entry at position
    1 + hash % M decides: naming a free slot, or a slot beyond bgs_backends, drops it as
    BAD_BACKEND; a size entry M of 0 as NO_BACKEND; a size entry larger than the table, so
    that the position lies past its end, as BAD_BACKEND. Where it comes from a set (a
    service with --lb modulo), a set naming a free slot or with a count beyond
    BGS_MAX_BACKENDS drops it as BAD_BACKEND. The tables and sets are poked directly, then
    restored."""
    web(bgs, blue=1, green=0)
    bgs.add_service("mod", EMPTY_VIP, VIP_PORT, "tcp", "--lb", "modulo")
    bgs.add_backend("mod", "blue", *BLUE[1])
    new = {"VIP": 1, "SYN_MISS": 1}
    h = flow_h(CLIENT, VIP, CPORT, VIP_PORT)
    m = model.BGS_TABLE_SIZE
    pos = model.BGS_TABLE_HDR + h % m
    assert m <= h < (1 << 32) - m - 1, "test set-up: a hash to put past the table's end"
    inner = bgs.table_map(bgs.switch(0).set_index(0, model.BGS_BLUE))
    with inner:
        good = {k: inner.lookup(model.u32(k)) for k in (0, pos)}
        for desc, key, value, drop in [
                ("table position names a free slot", pos, 77, "BAD_BACKEND"),
                ("table position beyond bgs_backends", pos, model.BGS_MAX_SLOTS * 1000,
                 "BAD_BACKEND"),
                ("table size entry 0", 0, 0, "NO_BACKEND"),
                # h % (M + h + 1) is h itself: past the M + 1 entries the map holds
                ("table size entry past the table's end", 0, m + h + 1, "BAD_BACKEND")]:
            inner.update(model.u32(key), model.u32(value))
            run_table(bgs, "ingress", [
                Case(desc, tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_DROP, stats=new,
                     drops={drop: 1})])
            inner.update(model.u32(key), good[key])
    run_table(bgs, "ingress", [
        Case("table restored", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[0][0], CPORT, BLUE[0][1]), stats=NEW_SYN),
    ])

    svc = bgs.services["mod"]
    assert bgs.table(svc, model.BGS_BLUE) is None, "a modulo service has no table"
    idx = model.u32(bgs.switch(svc).set_index(svc, model.BGS_BLUE))
    sets = bgs.map("bgs_sets")
    good = sets.lookup(idx)
    for desc, bad in [
            ("set names a free slot", model.pack_set([77])),
            ("set count beyond the maximum", model.pack_set([0],
                                                            count=model.BGS_MAX_BACKENDS + 1)),
            ("set slot beyond bgs_backends", model.pack_set([model.BGS_MAX_SLOTS * 1000]))]:
        sets.update(idx, bad)
        run_table(bgs, "ingress", [
            Case(desc, tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_DROP, stats=new,
                 drops={"BAD_BACKEND": 1})])
    sets.update(idx, good)
    run_table(bgs, "ingress", [
        Case("set restored", tcp(CLIENT, EMPTY_VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, BLUE[1][0], CPORT, BLUE[1][1]), stats=NEW_SYN),
    ])
