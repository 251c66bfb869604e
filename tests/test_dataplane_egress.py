"""Data-plane unit tests: replies (reverse NAT, the flow a reply finds from its backend,
backends of two services, evicted flows, backend references).

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

from scapy.layers.inet import ICMP, IP, TCP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lib import model
from lib.bpfsys import TC_ACT_OK, XDP_PASS
from lib.dataplane import (ACK, BLUE, BLUE6, CLIENT, CLIENT2, CLIENT6, CPORT, Case, Chooser,
                           EMPTY_VIP, GREEN, NAT, NEW_SYN, NEW_UDP, OTHER_IP, REPIN, SEQ, UDP_PORT,
                           UDP_VIP, VIP, VIP6, VIP_PORT, dns, ip_frame, l2_head, new_flow_slot,
                           open_flow, run_table, tcp, udp, udp_payload_for_ffff, web, web6)
from lib.model import IPPROTO_TCP, IPPROTO_UDP


# === egress: replies ==============================================================================

def test_egress_reply_reverse_nat(bgs):
    """A backend's replies leave with the VIP:port as their source, checksums right; TC_ACT_OK;
    counted REPLY_NAT and in the backend's tx counters."""
    slots = web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN)])
    body = b"HTTP/1.1 200 OK\r\n" * 20
    cases = [
        Case("SYN|ACK", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK, ack=SEQ + 1), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1), stats=NAT),
        Case("data", tcp(be, CLIENT, bport, CPORT, "PA", seq=ACK + 1, ack=SEQ + 1,
                         payload=body), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", seq=ACK + 1, ack=SEQ + 1,
                     payload=body), stats=NAT),
        Case("tagged ACK", tcp(be, CLIENT, bport, CPORT, "A", seq=ACK, ack=SEQ + 1, vlan=42),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK, ack=SEQ + 1,
                                vlan=42), stats=NAT),
        Case("with IP options", tcp(be, CLIENT, bport, CPORT, "A", seq=ACK,
                                    options=[IPOption_Router_Alert()]), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK,
                     options=[IPOption_Router_Alert()]), stats=NAT),
    ]
    run_table(bgs, "egress", cases)
    st = bgs.backend_stats(slots["blue"][0])
    assert st["tx_packets"] == len(cases)
    assert st["tx_bytes"] == sum(Ether(c.pkt)[IP].len for c in cases)
    assert st["resets"] == 0


def test_egress_udp_reply_reverse_nat(bgs):
    """UDP replies are rewritten; a zero checksum stays zero, a sum of 0 is sent as 0xffff."""
    dns(bgs)
    be = BLUE[0][0]
    run_table(bgs, "ingress", [
        Case("query", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, be, CPORT, 5353), stats=NEW_UDP)])
    ffff = udp_payload_for_ffff(UDP_VIP, CLIENT, UDP_PORT, CPORT)
    run_table(bgs, "egress", [
        Case("answer", udp(be, CLIENT, 5353, CPORT, b"answer"), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"answer"), stats=NAT),
        Case("answer without checksum", udp(be, CLIENT, 5353, CPORT, b"a", chksum=0),
             TC_ACT_OK, out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"a", chksum=0), stats=NAT),
        Case("answer whose sum becomes 0", udp(be, CLIENT, 5353, CPORT, ffff), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, ffff), stats=NAT),
    ])


def test_egress_non_backend_untouched(bgs):
    """Packets that do not come from a backend address:port/proto leave untouched and are
    counted TX only."""
    web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN)])
    run_table(bgs, "egress", [
        Case("from another host", tcp(OTHER_IP, CLIENT, bport, CPORT, "SA"), TC_ACT_OK),
        Case("from the backend address, other port", tcp(be, CLIENT, 22, CPORT, "SA"),
             TC_ACT_OK),
        Case("UDP from the backend's TCP address:port", udp(be, CLIENT, bport, CPORT),
             TC_ACT_OK),
        Case("from the VIP itself", tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), TC_ACT_OK),
        Case("ICMP from the backend", bytes(l2_head() / IP(src=be, dst=CLIENT) / ICMP()),
             TC_ACT_OK),
        Case("IPv6", bytes(l2_head() / IPv6(src="fd00::1", dst="fd00::2")
                           / TCP(sport=bport, dport=CPORT)), TC_ACT_OK),
        Case("truncated TCP from the backend", tcp(be, CLIENT, bport, CPORT, "SA")[:14 + 30],
             TC_ACT_OK),
        Case("later fragment from the backend, no record",
             ip_frame(be, CLIENT, Raw(b"x" * 8), proto=6, frag=4), TC_ACT_OK),
        Case("first fragment from another host", ip_frame(OTHER_IP, CLIENT, TCP(
            sport=bport, dport=CPORT), flags="MF"), TC_ACT_OK),
    ])


def test_egress_backend_without_flow_untouched_and_counted(bgs):
    """From a backend address:port but to a client with no flow: untouched, counted
    REPLY_NO_FLOW."""
    web(bgs)
    be, bport = BLUE[0]
    run_table(bgs, "egress", [
        Case("SYN|ACK to an unknown client", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("RST to an unknown client", tcp(be, CLIENT2, bport, CPORT, "R"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
    ])


def test_egress_reply_finds_its_flow_by_backend(bgs):
    """A reply finds the connection's one entry from its destination (client address and
    port) under each service its source (backend address:port/proto, bgs_backend_addrs)
    serves, and only an entry whose slot's backend is that very address and port: then it
    leaves as the VIP (a FIN marks the flow). TCP, UDP and IPv6. From another backend of the
    service, the same address on another port, to a client port without flow or to another
    client: REPLY_NO_FLOW, untouched, nothing written."""
    slots = web(bgs, blue=1, green=1)
    uslots = dns(bgs, blue=1, green=0)
    slots6 = web6(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    g, gport = GREEN[0]
    ub = BLUE[0][0]
    b6, bp6 = BLUE6[0]
    # The blue backend's address again on another port, for the same service.
    other = bgs.add_backend("web", "green", be, 7070)
    web_id = bgs.services["web"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(1, (web_id,))
    assert bgs.backend_ref(be, 7070) == model.BackendRef(1, (web_id,))
    assert bgs.backend_ref(ub, 5353, IPPROTO_UDP) == model.BackendRef(1, (bgs.services["dns"],))
    assert bgs.backend_ref(b6, bp6) == model.BackendRef(1, (bgs.services["web6"],))
    run_table(bgs, "ingress", [
        Case("SYN", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
        Case("query", udp(CLIENT, UDP_VIP, CPORT, UDP_PORT), XDP_PASS,
             out=udp(CLIENT, ub, CPORT, 5353), stats=NEW_UDP),
        Case("IPv6 SYN", tcp(CLIENT6, VIP6, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN),
    ])
    flows = {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()}
    run_table(bgs, "egress", [
        Case("from another backend of the service (the flow is not its)",
             tcp(g, CLIENT, gport, CPORT, "SA"), TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("from the flow's backend address, another port",
             tcp(be, CLIENT, 7070, CPORT, "SA"), TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("to a client port without flow", tcp(be, CLIENT, bport, CPORT + 1, "SA"),
             TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
        Case("to another client", tcp(be, CLIENT2, bport, CPORT, "SA"), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("UDP from the TCP flow's backend address:port", udp(be, CLIENT, bport, CPORT),
             TC_ACT_OK),
    ])
    assert {k: bgs.map("bgs_flows").lookup(k) for k in bgs.map("bgs_flows").keys()} == flows
    run_table(bgs, "egress", [
        Case("SYN|ACK of the flow", tcp(be, CLIENT, bport, CPORT, "SA", seq=ACK, ack=SEQ + 1),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA", seq=ACK, ack=SEQ + 1),
             stats=NAT),
        Case("next reply", tcp(be, CLIENT, bport, CPORT, "PA", payload=b"ok"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "PA", payload=b"ok"), stats=NAT),
        Case("UDP answer", udp(ub, CLIENT, 5353, CPORT, b"answer"), TC_ACT_OK,
             out=udp(UDP_VIP, CLIENT, UDP_PORT, CPORT, b"answer"), stats=NAT),
        Case("IPv6 SYN|ACK", tcp(b6, CLIENT6, bp6, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT, "SA"), stats=NAT),
        Case("backend FIN", tcp(be, CLIENT, bport, CPORT, "FA", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "FA", seq=ACK), stats=NAT),
    ])
    assert bgs.count("bgs_flows") == 3
    assert bgs.backend_stats(slots["blue"][0])["tx_packets"] == 3
    assert bgs.backend_stats(uslots["blue"][0])["tx_packets"] == 1
    assert bgs.backend_stats(slots6["blue"][0])["tx_packets"] == 1
    assert bgs.backend_stats(other)["tx_packets"] == 0
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == (
        model.BGS_FLOW_SYN | model.BGS_FLOW_FIN_SERVER)


def test_egress_evicted_flow_repinned_then_replies(bgs):
    """The connection's entry evicted (deleted here): the backend's reply leaves untouched
    (REPLY_NO_FLOW); the client's next segment is re-pinned (second chance) to the same
    backend by the same hash, writing the entry again, so the backend's replies leave from
    the VIP again."""
    web(bgs, blue=3, green=0)
    _, slot = new_flow_slot(bgs, 0, CLIENT, VIP, CPORT, VIP_PORT)
    a, p = BLUE[slot]
    open_flow(bgs, be=(a, p))
    assert bgs.delete_flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("backend reply, no entry", tcp(a, CLIENT, p, CPORT, "A", seq=ACK), TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    run_table(bgs, "ingress", [
        Case("client ACK after the eviction", tcp(CLIENT, VIP, CPORT, VIP_PORT, "A", ack=ACK),
             XDP_PASS, out=tcp(CLIENT, a, CPORT, p, "A", ack=ACK), stats=REPIN)])
    run_table(bgs, "egress", [
        Case("backend reply", tcp(a, CLIENT, p, CPORT, "A", seq=ACK), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "A", seq=ACK), stats=NAT)])
    assert bgs.flow(CLIENT, VIP, CPORT, VIP_PORT).state == 0


def test_egress_backend_of_two_services_replies_as_each_vip(bgs):
    """One backend address:port serving two services (bgs_backend_addrs lists both): each
    reply finds its own connection's entry, under its own service, and leaves as that
    service's VIP and port, TCP and IPv6 alike; a reply to a client port with neither
    service's flow is untouched. Deleting one flow's entry leaves the other's replies
    translated."""
    web(bgs, blue=1, green=0)
    web6(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    b6, bp6 = BLUE6[0]
    web_id, web6_id = bgs.services["web"], bgs.services["web6"]
    bgs.add_service("web2", EMPTY_VIP, 8080, "tcp")
    slot2 = bgs.add_backend("web2", "blue", be, bport)
    bgs.add_service("web62", VIP6, 8443, "tcp")
    bgs.add_backend("web62", "blue", b6, bp6)
    web2_id, web62_id = bgs.services["web2"], bgs.services["web62"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(2, (web_id, web2_id))
    assert bgs.backend_ref(b6, bp6) == model.BackendRef(2, (web6_id, web62_id))
    run_table(bgs, "ingress", [
        Case("SYN to web", tcp(CLIENT, VIP, CPORT, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT, be, CPORT, bport), stats=NEW_SYN),
        Case("SYN to web2", tcp(CLIENT, EMPTY_VIP, CPORT + 1, 8080), XDP_PASS,
             out=tcp(CLIENT, be, CPORT + 1, bport), stats=NEW_SYN),
        Case("IPv6 SYN to web62", tcp(CLIENT6, VIP6, CPORT, 8443), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT, bp6), stats=NEW_SYN),
        Case("IPv6 SYN to web6", tcp(CLIENT6, VIP6, CPORT + 1, VIP_PORT), XDP_PASS,
             out=tcp(CLIENT6, b6, CPORT + 1, bp6), stats=NEW_SYN),
    ])
    assert bgs.flow(CLIENT, EMPTY_VIP, CPORT + 1, 8080).slot == slot2
    replies = [
        Case("reply of the web flow: web's VIP", tcp(be, CLIENT, bport, CPORT, "SA"),
             TC_ACT_OK, out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT),
        Case("reply of the web2 flow: web2's VIP", tcp(be, CLIENT, bport, CPORT + 1, "SA"),
             TC_ACT_OK, out=tcp(EMPTY_VIP, CLIENT, 8080, CPORT + 1, "SA"), stats=NAT),
        Case("IPv6 reply of the web62 flow", tcp(b6, CLIENT6, bp6, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, 8443, CPORT, "SA"), stats=NAT),
        Case("IPv6 reply of the web6 flow", tcp(b6, CLIENT6, bp6, CPORT + 1, "SA"), TC_ACT_OK,
             out=tcp(VIP6, CLIENT6, VIP_PORT, CPORT + 1, "SA"), stats=NAT),
        Case("to a client port of neither", tcp(be, CLIENT, bport, CPORT + 2, "SA"),
             TC_ACT_OK, stats={"REPLY_NO_FLOW": 1}),
    ]
    run_table(bgs, "egress", replies)
    assert bgs.delete_flow(CLIENT, VIP, CPORT, VIP_PORT)
    run_table(bgs, "egress", [
        Case("web's flow gone: its reply untouched", replies[0].pkt, TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1}),
        Case("web2's reply still web2's", replies[1].pkt, TC_ACT_OK, out=replies[1].out,
             stats=NAT),
    ])


def test_egress_backend_ref_single_service_again(bgs):
    """Once the second service's slot on a shared backend address is released (`backend
    del`, then `gc`), the address serves one service again: its bgs_backend_addrs entry names
    that one, and its replies still find their flows."""
    web(bgs, blue=1, green=0)
    be, bport = BLUE[0]
    bgs.add_service("web2", EMPTY_VIP, 8080, "tcp")
    bgs.add_backend("web2", "blue", be, bport)
    web_id, web2_id = bgs.services["web"], bgs.services["web2"]
    assert bgs.backend_ref(be, bport) == model.BackendRef(2, (web_id, web2_id))
    bgs.cli("backend", "del", "web2", "blue", f"{be}:{bport}")
    bgs.cli("gc")
    assert bgs.find_slot("web2", "blue", be, bport, model.BGS_BACKEND_DRAINING) is None
    assert bgs.backend_ref(be, bport) == model.BackendRef(1, (web_id,))
    open_flow(bgs)
    run_table(bgs, "egress", [
        Case("reply of the web flow", tcp(be, CLIENT, bport, CPORT, "SA"), TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, CPORT, "SA"), stats=NAT)])


def test_egress_backend_ref_repair_keeps_service(bgs):
    """A stale bgs_backend_addrs entry (as a command killed half way leaves one: a wrong
    count, no service) makes the address's replies find no flow (REPLY_NO_FLOW, untouched);
    `gc` repairs it to the slots' count and their service, and the replies are translated
    again."""
    slots = web(bgs, blue=2, green=0)
    be, bport = BLUE[0]
    web_id = bgs.services["web"]
    now = Chooser(bgs, 0)
    port = next(c for c in range(CPORT, CPORT + 100)
                if now.slot(CLIENT, VIP, c, VIP_PORT)[1] == slots["blue"][0])
    open_flow(bgs, sport=port)
    bgs.map("bgs_backend_addrs").update(model.pack_backend_addr(be, bport, IPPROTO_TCP),
                                        model.pack_backend_ref(model.BackendRef(5, ())))
    reply = tcp(be, CLIENT, bport, port, "SA")
    run_table(bgs, "egress", [
        Case("reply, the address names no service", reply, TC_ACT_OK,
             stats={"REPLY_NO_FLOW": 1})])
    bgs.cli("gc")
    for a, p in BLUE[:2]:
        assert bgs.backend_ref(a, p) == model.BackendRef(1, (web_id,)), f"{a}:{p}"
    run_table(bgs, "egress", [
        Case("reply after the repair", reply, TC_ACT_OK,
             out=tcp(VIP, CLIENT, VIP_PORT, port, "SA"), stats=NAT)])
