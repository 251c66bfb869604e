"""A reference model of bgswitch's data plane: what bgs_ingress (XDP) and bgs_egress (TC) must
do with one packet, given the maps' contents.

It is written from the data plane's specification (the semantics listed below), not from, and
never by calling, the BPF code. Two implementations of one specification, run on the same
packets and compared (tests/test_differential.py), find the places where either is wrong.

The model works on raw frames (bytes in, bytes out) with its own parser, and keeps its own
mirror of every table the data plane reads or writes:

* configuration, read from the real pinned maps through bpfsys (``load_config``) after each
  control-plane command: services (bgs_vips, bgs_vip_addrs, bgs_services), switch words (green
  share, previous share, buffers, flags), backend sets, lookup tables (bgs_tables: each inner
  map opened by its id, read whole), backends, backend addresses (with their reference: the
  services they serve, up to BGS_ADDR_SVCS), timeouts, the insert limit;
* dynamic tables, which the model updates itself as packets create or change entries: the
  flow table (one entry per connection, keyed by client address, client port, service,
  protocol and family: struct bgs_conn_key) and fragment records; ``load_dynamic`` reads them
  from the maps, for resynchronising after a reported difference, and ``dump_*`` give them in
  a comparable form;
* the insert budget (a token bucket) of the one CPU the programs are run on (``cpu``), kept
  by the model from the times it is given; ``load_bucket`` reads it from bgs_insert_budget;
* every counter: bgs_stats, bgs_drops, bgs_service_stats, bgs_backend_stats.

Semantics modelled
------------------
Parsing, ingress and egress alike (a failure passes the packet untouched; ingress counts the
named reason, egress counts nothing but TX):

* Ethernet, then at most two VLAN tags (0x8100 or 0x88a8, either order). A truncated header
  or tag is PARSE_L2; a third tag, or any EtherType other than IPv4/IPv6, is NOT_IP.
* IPv4: 20 bytes, version 4, IHL >= 5, IHL*4 bytes present, else PARSE_IP_HDR. Total length
  below IHL*4 or beyond the frame: PARSE_IP_LEN. MF or offset makes a fragment: first
  (offset 0) or later (offset > 0).
* IPv6: 40 bytes and version 6, else PARSE_IP_HDR; payload length 0 or beyond the frame:
  PARSE_IP_LEN. Extension headers hop-by-hop (0), routing (43), destination options (60) and
  fragment (44) are walked, at most BGS_MAX_EXTHDRS of them; a header cut by the end of the
  frame is PARSE_IP_HDR; still an extension header after the bound: EXTHDR_LIMIT. A fragment
  header with offset > 0 makes a later fragment, offset 0 with M a first fragment, offset 0
  without M (atomic) nothing.
* The IP length must cover every header read: IPv6 extension headers, the TCP header with its
  options, the UDP header, the ICMP header, else PARSE_IP_LEN. Nothing is read from the
  Ethernet padding beyond the IP length (the quote of an ICMP error included).
* A later fragment has no transport header: nothing more is parsed.
* TCP: 20 bytes, data offset >= 5 and within the frame, else PARSE_L4. UDP: 8 bytes, length
  >= 8, else PARSE_L4. ICMP (IPv4 protocol 1) / ICMPv6 (IPv6 next header 58): 8 bytes, else
  PARSE_L4. Another protocol: NOT_VIP. Then TCP/UDP source or destination port 0: ZERO_PORT.

Ingress (XDP, verdict XDP_PASS unless a drop is named):

* Later fragment: a record in bgs_frags (saddr, daddr, id, proto, family) -> destination
  address rewritten to the record's, IPv4 header checksum updated, nothing else; FRAG_LATER,
  the record's backend rx counters. A pass marker (slot BGS_FRAG_PASS): untouched, FRAG_PASS.
  No record: to a VIP address (bgs_vip_addrs) -> XDP_DROP, drop FRAG_MISS (node counter
  only); else NOT_VIP.
* A first fragment to a VIP address (bgs_vip_addrs) that no service steers leaves a pass
  marker {address 0, slot BGS_FRAG_PASS} in bgs_frags under its key (replacing a record
  there), counters as without it: a TCP/UDP one with no service (NOT_VIP), an ICMP one of a
  type that is not an error above (NOT_VIP). ICMP errors leave none.
* ICMP / ICMPv6 errors (v4 types 3, 11, 12; v6 types 1, 2, 3, 4) quoting a TCP/UDP packet
  whose source is a service (VIP:port/proto): when the outer destination is that VIP and the
  flow entry (quoted destination address and port, that service) exists and its slot is not
  a free backend, the outer destination, the quoted source address and port become that
  backend's (expired or closed flows too), with the quoted transport checksum (when quoted
  whole), the quoted IPv4 header checksum, the outer IPv4 header checksum and the ICMP
  checksum (IPv6: with the pseudo-header) updated: ICMP_IN, backend rx. Quoting a service but
  no flow: ICMP_NO_FLOW. Any other ICMP: NOT_VIP. A quote is an IPv4 header (version 4,
  IHL >= 5, not a later fragment) or a bare IPv6 header, then 8 bytes of TCP/UDP.
* TCP/UDP to a service (bgs_vips: daddr, dport, proto, family), else NOT_VIP. VIP. The flow
  table is keyed by (client address, client port, service id, proto, family); an entry holds
  the backend slot, the color, state bits, the interface the backend's packets come in by
  (ifindex) and the client's last-seen time ``seen`` (coarse ns >> BGS_SEEN_SHIFT; ages in
  whole units, a seen time ahead of now is age 0). A first packet is a UDP datagram, or a
  TCP segment with SYN and without ACK. An entry whose slot is a free backend (or beyond
  bgs_backends) counts as no entry at all (not "had": no FLOW_REOPEN). An entry is followed
  (FLOW_HIT; ``seen`` set to now when now - seen > BGS_TOUCH_NS >> BGS_SEEN_SHIFT units, 5;
  TCP flags recorded as the client's, see "TCP state" below) unless the packet is a first
  packet and the entry is dead (TCP: closed; any: idle past its protocol's timeout), in
  which case it is replaced. A miss (no entry, or a dead one replaced) is counted and placed
  by a share:
  - not a first packet (a TCP segment without SYN, or with SYN|ACK): NOSYN_MISS and
    SECOND_CHANCE (node and service); the previous share when the switch word's flags hold
    both BGS_SW_DRAINING and BGS_SW_HAS_PREV ("draining"), else the current share;
  - a first packet on a dead entry: FLOW_REOPEN (node and service); the current share, except
    a UDP datagram while draining: SECOND_CHANCE too (node and service), the previous share
    (a UDP flow whose entry expired while its service drains is re-pinned where it was). A
    TCP SYN's dead entry is deleted first, whatever follows (an entry written, none: RST or
    over the budget, or a drop), so that the new connection's next segments never follow
    it to the old backend; a UDP one stays until replaced (its next datagram, if none is
    written, is a reopen placed the same way);
  - a first packet without entry: SYN_MISS (TCP only; node and service), the current share.
  The color is model.share_color(hs, that share), hs = model.flow_hash of the packet, or
  model.client_hash of its source with BGS_VIP_SPLIT_CLIENT: blue at share 0, green at
  BGS_SHARE_ALL (100 %), in between green exactly when model.share_bucket(hs) < share.
* Creating a flow toward a color: the backend, from the color's current buffer (switch
  set_sel): when bgs_tables has an inner map under that buffer's key (its lookup table, read
  through the map's id), entry 0 is M; M = 0: drop NO_BACKEND; else the slot at entry
  1 + h % M, and an entry beyond the inner map's size drops BAD_BACKEND. Without a table, the
  set buffer: empty set: drop NO_BACKEND; count beyond BGS_MAX_BACKENDS: BAD_BACKEND; else
  set[h % count]. Whether the miss gets an entry is decided before the color: a TCP segment
  with RST opens nothing (RST_MISS, no entry; a dead entry stays as it was); else one insert
  is taken from the CPU's budget, a token bucket of new_flow_burst + 1 inserts refilled at
  new_flow_rate inserts per second (bgs_config, the CPU's part of the node's limit; rate 0: no
  limit, nothing taken), by whole microseconds elapsed since its last refill (at most 10^9 of
  them) times the rate, in millionths of an insert, only when time has moved past its last
  refill; none left: UNTRACKED, no entry (a flood: forwarded, placed as above, only its entry
  skipped), and a TCP SYN that gets none while draining is placed by the previous share (its
  next segments, misses too, are re-pinned there). A chosen slot that is not an active
  backend: drop BAD_BACKEND (drops count node and service). Else the packet goes to that
  backend whether or not an entry is written, and the backend counts new_flows for an entry
  written, or for a first packet (SYN, UDP) without one, UNTRACKED:
  - no entry (RST_MISS or UNTRACKED, counted then);
  - else the entry {slot, color, state SYN for a TCP first packet, FIN_CLIENT too for a TCP
    FIN, ifindex of the next hop toward the backend, seen now} is written: FLOW_NEW.
  A first fragment is then recorded (FRAG_FIRST). Destination address and port are rewritten
  to the backend's; TCP/UDP checksum by difference (UDP 0 stays 0, a result of 0 is 0xffff),
  IPv4 header checksum by difference. Backend rx counters (IP length, IPv6: header included).
* Fast path (bpf/fwd.bpf.h, merged after the rest): a rewritten client packet (a VIP flow's, or
  a later fragment's) is then offered to a FIB lookup and may leave by XDP_TX/XDP_REDIRECT with
  its TTL decremented and MACs set. The model covers only the environment the tests give it:
  programs run from a namespace with no route (tests/lib/unit_fixtures.py), where the fast
  path always falls back to the stack: XDP_PASS, nothing more changed, FWD_STACK counted.

Egress (TC, verdict TC_ACT_OK always):

* Later fragment with a record (backend, client, id, proto, family): source address becomes
  the record's (the VIP), IPv4 header checksum updated; REPLY_NAT, backend tx. No record,
  or a pass marker: untouched.
* The flow of a reply from a backend address:port/proto (bgs_backend_addrs, its reference
  listing the services it serves) to a client address:port: the first of those services, in
  the reference's order, under which the flow table holds an entry (client address and port,
  that service, proto, family) whose slot is not a free backend, whose backend address and
  port are the reply's source, and that is not closed; else the first such entry that is
  closed. Each reply thus finds its own service's flow, and a flow on another backend is
  never its.
* ICMP errors quoting client -> backend:port/proto (a backend address): the flow of a reply
  backend -> client; when there is one and the packet came in by the flow's ifindex
  (skb->ingress_ifindex) or was made by the node itself (ingress_ifindex 0), the quoted destination address and port become the VIP's
  (bgs_services of the flow's service), the outer source too when it is the backend's own
  address, every checksum as on ingress: ICMP_OUT, backend tx (expired or closed flows too).
  A backend address but no such flow, or another interface: ICMP_NO_FLOW. Others untouched,
  uncounted.
* TCP/UDP from a backend address: its flow (above). None, or one that is expired (closed:
  idle longer than the closing timeout; else idle past its protocol's timeout):
  REPLY_NO_FLOW, untouched. A packet that came in by another interface than the flow's
  ifindex: REPLY_WRONG_DEV, untouched. A segment with SYN (SYN-ACK included) on a closed
  flow: a new connection on the same addresses and ports, not the flow's: the entry is
  deleted, REPLY_SUPERSEDED, untouched. Otherwise the reply is the flow's: its TCP flags are
  recorded as the backend's (see "TCP state"); a first fragment is recorded (its later
  fragments will get the VIP as source), FRAG_FIRST; source address and port become the
  VIP's, checksums by difference; REPLY_NAT, backend tx, resets on RST. From an address that
  is no backend's: untouched, uncounted.

TCP state (one side's segment on its flow; the client's on ingress, with FIN_CLIENT and
CLIENT_ON, the backend's on egress, with FIN_SERVER and SERVER_ON):

* an RST sets RST (the backend's also RST_SERVER) and clears both ON bits, unless those bits
  are set already without ON bits (then nothing changes); nothing else is recorded of it;
* otherwise a FIN sets the side's FIN bit; and when RST is set without the side's ON bit,
  that bit is set, and once both ON bits are set RST, RST_SERVER and both ON bits are
  cleared (the RST did not end the connection: a spoofed or out-of-window RST, RFC 5961).
* A flow is closed when RST is set, or both FIN bits; closed flows are dead at once (a first
  packet replaces them). Closed by the backend's RST or by both FINs, a flow expires after
  the closing timeout; closed by the client's RST alone, after the idle timeout.

Checksums "by difference" follow RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), in ones'
complement arithmetic with end-around carry: a checksum that was wrong stays wrong by the
same amount.

Corners the specification leaves open, and the choice the model makes (listed in
UNSPECIFIED so that a report can say which rule a difference rests on):

* several IPv6 fragment headers in one chain: each one walked updates the state (offset > 0:
  later; offset 0 with M: first; atomic: unchanged), the identification is the last one's;
* counters of egress parse failures: none (the reasons are ingress counters);
* the next hop's interface: the tests run the programs where no FIB lookup succeeds
  (tests/lib/unit_fixtures.py), so every new entry's ifindex is ``RefModel.nh_ifindex`` (0) and a
  followed entry's is never changed; egress packets come in by the interface the caller
  names (0 unless told);
* the insert budget's size: new_flow_burst + 1 inserts (a burst of 0 still lets one insert
  through at the rate); the bucket of a CPU never used refills from time 0 (so it starts
  full);
* the TCP/UDP pseudo-header of IPv6 uses the IPv6 header's destination even when a routing
  header with segments left names another final destination.
"""

import struct
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from . import model

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_OK = 0

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
TOUCH_NS = 100 * 1000 * 1000
V6_EXT = (model.IPPROTO_HOPOPTS, model.IPPROTO_ROUTING, model.IPPROTO_DSTOPTS,
          model.IPPROTO_FRAGMENT)
ICMP_ERRORS = {model.BGS_AF_INET: (3, 11, 12), model.BGS_AF_INET6: (1, 2, 3, 4)}

FRAG_NONE, FRAG_FIRST, FRAG_LATER = 0, 1, 2

UNSPECIFIED = {
    "v6-multi-frag-hdr": "several IPv6 fragment headers: each updates the state, the last "
                         "identification is kept",
    "egress-parse-count": "egress parse failures are not counted by reason",
    "insert-budget-size": "the insert budget holds new_flow_burst + 1 inserts (from time 0 "
                          "for a CPU never used)",
    "nexthop-ifindex": "no FIB lookup succeeds where the tests run: new entries' ifindex is "
                       "RefModel.nh_ifindex (0), followed entries' never changes",
    "v6-routing-pseudo": "IPv6 pseudo-header uses the header's destination, routing header "
                         "or not",
}


def _u16(b, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


# --- checksums (RFC 1624) ------------------------------------------------------------------------

def _words(b: bytes) -> Iterable[int]:
    if len(b) & 1:
        b = bytes(b) + b"\0"
    return struct.unpack(f"!{len(b) // 2}H", b)


def csum_adjust(old: int, removed: Iterable[int], added: Iterable[int]) -> int:
    """HC' = ~(~HC + sum(~m) + sum(m')) over 16-bit words, ones' complement."""
    s = ~old & 0xFFFF
    for w in removed:
        s += ~w & 0xFFFF
    for w in added:
        s += w
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_adjust_bytes(old: int, before: bytes, after: bytes) -> int:
    """The same for a change of a 16-bit aligned byte string."""
    return csum_adjust(old, _words(before), _words(after))


def csum_adjust_udp(old: int, before: bytes, after: bytes) -> int:
    """UDP: 0 means no checksum and stays 0; a result of 0 is sent as 0xffff."""
    if old == 0:
        return 0
    return csum_adjust_bytes(old, before, after) or 0xFFFF


# --- parsing -------------------------------------------------------------------------------------

@dataclass
class Pkt:
    """What the model knows of one parsed packet (addresses as 16-byte fields)."""

    l3: int = 0
    family: int = 0
    saddr: bytes = b""
    daddr: bytes = b""
    proto: int = 0
    ip_len: int = 0  # IPv4 total length, IPv6 payload length + 40
    ip_end: int = 0  # offset of the end of the IP packet in the frame
    frag: int = FRAG_NONE
    frag_id: bytes = b"\0\0\0\0"
    l4: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    icmp_type: int = -1

    def key(self) -> tuple:
        return (self.saddr, self.daddr, self.sport, self.dport, self.proto, self.family)

    def frag_key(self) -> tuple:
        return (self.saddr, self.daddr, self.frag_id, self.proto, self.family)

    @property
    def is_icmp(self) -> bool:
        return self.proto == (model.IPPROTO_ICMPV6 if self.family == model.BGS_AF_INET6
                              else model.IPPROTO_ICMP)

    @property
    def alen(self) -> int:
        return 16 if self.family == model.BGS_AF_INET6 else 4

    @property
    def saddr_off(self) -> int:
        return self.l3 + (8 if self.family == model.BGS_AF_INET6 else 12)

    @property
    def daddr_off(self) -> int:
        return self.l3 + (24 if self.family == model.BGS_AF_INET6 else 16)


def parse(f: bytes, quirks: frozenset = frozenset()) -> Tuple[Optional[str], Pkt]:
    """(reason, pkt): reason is None for a packet the switch looks at further, else the
    bgs_stat name it is passed untouched under. ``quirks``: see QUIRKS."""
    p = Pkt()
    n = len(f)
    if n < 14:
        return "PARSE_L2", p
    et = _u16(f, 12)
    pos = 14
    for _ in range(2):
        if et not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if pos + 4 > n:
            return "PARSE_L2", p
        et = _u16(f, pos + 2)
        pos += 4
    p.l3 = pos
    room = n - pos
    if et == ETH_P_IP:
        if room < 20 or f[pos] >> 4 != 4 or f[pos] & 15 < 5:
            return "PARSE_IP_HDR", p
        hl = (f[pos] & 15) * 4
        if hl > room:
            return "PARSE_IP_HDR", p
        tot = _u16(f, pos + 2)
        if tot < hl or tot > room:
            return "PARSE_IP_LEN", p
        fo = _u16(f, pos + 6)
        if fo & 0x3FFF:
            p.frag = FRAG_LATER if fo & 0x1FFF else FRAG_FIRST
            p.frag_id = bytes(f[pos + 4:pos + 6]) + b"\0\0"
        p.family = model.BGS_AF_INET
        p.proto = f[pos + 9]
        p.saddr = bytes(f[pos + 12:pos + 16]) + bytes(12)
        p.daddr = bytes(f[pos + 16:pos + 20]) + bytes(12)
        p.ip_len = tot
        p.ip_end = pos + tot
        p.l4 = pos + hl
    elif et == ETH_P_IPV6:
        if room < 40 or f[pos] >> 4 != 6:
            return "PARSE_IP_HDR", p
        plen = _u16(f, pos + 4)
        if plen == 0 or plen + 40 > room:
            return "PARSE_IP_LEN", p
        nxt = f[pos + 6]
        q = pos + 40
        for _ in range(model.BGS_MAX_EXTHDRS):
            if nxt in (model.IPPROTO_HOPOPTS, model.IPPROTO_ROUTING, model.IPPROTO_DSTOPTS):
                if q + 2 > n or q + (f[q + 1] + 1) * 8 > n:
                    return "PARSE_IP_HDR", p
                nxt, q = f[q], q + (f[q + 1] + 1) * 8
            elif nxt == model.IPPROTO_FRAGMENT:
                if q + 8 > n:
                    return "PARSE_IP_HDR", p
                off = _u16(f, q + 2)
                if off & 0xFFF8:
                    p.frag = FRAG_LATER
                elif off & 1:
                    p.frag = FRAG_FIRST
                p.frag_id = bytes(f[q + 4:q + 8])
                nxt, q = f[q], q + 8
            else:
                break
        if nxt in V6_EXT:
            return "EXTHDR_LIMIT", p
        p.family = model.BGS_AF_INET6
        p.proto = nxt
        p.saddr = bytes(f[pos + 8:pos + 24])
        p.daddr = bytes(f[pos + 24:pos + 40])
        p.ip_len = plen + 40
        p.ip_end = pos + 40 + plen
        p.l4 = q
    else:
        return "NOT_IP", p

    # The extension headers read must lie inside the IP packet, not in padding, whatever
    # follows them (a later fragment, a transport header, another protocol).
    if p.l4 > p.ip_end and not (p.frag == FRAG_LATER
                                and "later-frag-hdr-beyond-ip-length" in quirks):
        return "PARSE_IP_LEN", p
    if p.frag == FRAG_LATER:
        return None, p

    l4 = p.l4
    if p.proto == model.IPPROTO_TCP:
        if l4 + 20 > n:
            return "PARSE_L4", p
        doff = f[l4 + 12] >> 4
        if doff < 5 or l4 + doff * 4 > n:
            return "PARSE_L4", p
        end = l4 + doff * 4
        p.tcp_flags = f[l4 + 13]
        p.sport, p.dport = _u16(f, l4), _u16(f, l4 + 2)
    elif p.proto == model.IPPROTO_UDP:
        if l4 + 8 > n or _u16(f, l4 + 4) < 8:
            return "PARSE_L4", p
        end = l4 + 8
        p.sport, p.dport = _u16(f, l4), _u16(f, l4 + 2)
    elif p.is_icmp:
        if l4 + 8 > n:
            return "PARSE_L4", p
        end = l4 + 8
        p.icmp_type = f[l4]
    else:
        return "NOT_VIP", p
    if end > p.ip_end and not (p.is_icmp and "icmp-beyond-ip-length" in quirks):
        return "PARSE_IP_LEN", p
    if not p.is_icmp and (p.sport == 0 or p.dport == 0):
        return "ZERO_PORT", p
    return None, p


class Quote(NamedTuple):
    """The packet an ICMP error quotes."""

    l3: int
    family: int
    saddr: bytes
    daddr: bytes
    proto: int
    l4: int
    sport: int
    dport: int
    csum_off: Optional[int]  # the quoted transport checksum, when quoted whole


def parse_quote(f: bytes, p: Pkt, quirks: frozenset = frozenset()) -> Optional[Quote]:
    """The quote of an ICMP error, read inside the IP packet only; None when there is none
    the switch can use."""
    end = len(f) if "icmp-beyond-ip-length" in quirks else p.ip_end
    q = p.l4 + 8
    if p.family == model.BGS_AF_INET:
        if q + 20 > end or f[q] >> 4 != 4 or f[q] & 15 < 5:
            return None
        if _u16(f, q + 6) & 0x1FFF:
            return None
        hl = (f[q] & 15) * 4
        proto = f[q + 9]
        saddr = bytes(f[q + 12:q + 16]) + bytes(12)
        daddr = bytes(f[q + 16:q + 20]) + bytes(12)
    else:
        if q + 40 > end or f[q] >> 4 != 6:
            return None
        hl = 40
        proto = f[q + 6]
        saddr = bytes(f[q + 8:q + 24])
        daddr = bytes(f[q + 24:q + 40])
    if proto not in (model.IPPROTO_TCP, model.IPPROTO_UDP):
        return None
    l4 = q + hl
    if l4 + 8 > end:
        return None
    if proto == model.IPPROTO_UDP:
        csum = l4 + 6
    else:
        csum = l4 + 16 if l4 + 18 <= end else None
    return Quote(q, p.family, saddr, daddr, proto, l4, _u16(f, l4), _u16(f, l4 + 2), csum)


# --- rewrites ------------------------------------------------------------------------------------

def _put16(b: bytearray, off: int, v: int) -> None:
    b[off] = v >> 8
    b[off + 1] = v & 0xFF


def _rewrite_l3l4(frame: bytes, p: Pkt, src: bool, to16: bytes, port: Optional[int]) -> bytes:
    """Rewrite the source (src) or destination address, and the port unless ``port`` is None
    (a later fragment), with every checksum by difference."""
    b = bytearray(frame)
    a_off = p.saddr_off if src else p.daddr_off
    old_a = bytes(b[a_off:a_off + p.alen])
    new_a = to16[:p.alen]
    if port is not None:
        p_off = p.l4 + (0 if src else 2)
        old_p, new_p = bytes(b[p_off:p_off + 2]), struct.pack("!H", port)
        if p.proto == model.IPPROTO_TCP:
            c = p.l4 + 16
            _put16(b, c, csum_adjust_bytes(_u16(b, c), old_a + old_p, new_a + new_p))
        else:
            c = p.l4 + 6
            _put16(b, c, csum_adjust_udp(_u16(b, c), old_a + old_p, new_a + new_p))
        b[p_off:p_off + 2] = new_p
    if p.family == model.BGS_AF_INET:
        c = p.l3 + 10
        _put16(b, c, csum_adjust_bytes(_u16(b, c), old_a, new_a))
    b[a_off:a_off + p.alen] = new_a
    return bytes(b)


def _rewrite_icmp(frame: bytes, p: Pkt, q: Quote, quote_src: bool, to16: bytes, port: int,
                  outer_dst: bool, outer_src: bool, msg_end: int) -> bytes:
    """Translate an ICMP error: the quoted source (quote_src) or destination address and
    port; the outer destination and/or source address; every checksum covering them."""
    b = bytearray(frame)
    alen = p.alen
    new_a = to16[:alen]
    # The quoted packet: its transport checksum, its IPv4 header checksum, then the fields.
    qa = q.l3 + ((8 if quote_src else 24) if q.family == model.BGS_AF_INET6
                 else (12 if quote_src else 16))
    qp = q.l4 + (0 if quote_src else 2)
    old_a, old_p = bytes(b[qa:qa + alen]), bytes(b[qp:qp + 2])
    new_p = struct.pack("!H", port)
    if q.csum_off is not None:
        old = _u16(b, q.csum_off)
        if q.proto == model.IPPROTO_UDP:
            new = csum_adjust_udp(old, old_a + old_p, new_a + new_p)
        else:
            new = csum_adjust_bytes(old, old_a + old_p, new_a + new_p)
        _put16(b, q.csum_off, new)
    if q.family == model.BGS_AF_INET:
        c = q.l3 + 10
        _put16(b, c, csum_adjust_bytes(_u16(b, c), old_a, new_a))
    b[qa:qa + alen] = new_a
    b[qp:qp + 2] = new_p
    # The ICMP checksum covers the message: whatever changed in it.
    start, end = p.l4, msg_end
    before, after = _words(frame[start:end]), _words(bytes(b[start:end]))
    removed = [w for i, (w, v) in enumerate(zip(before, after)) if w != v and i != 1]
    added = [v for i, (w, v) in enumerate(zip(before, after)) if w != v and i != 1]
    # The outer addresses: IPv4 header checksum, or the ICMPv6 pseudo-header.
    for do, off in ((outer_dst, p.daddr_off), (outer_src, p.saddr_off)):
        if not do:
            continue
        old_o = bytes(b[off:off + alen])
        if p.family == model.BGS_AF_INET:
            c = p.l3 + 10
            _put16(b, c, csum_adjust_bytes(_u16(b, c), old_o, new_a))
        else:
            removed += list(_words(old_o))
            added += list(_words(new_a))
        b[off:off + alen] = new_a
    c = p.l4 + 2
    _put16(b, c, csum_adjust(_u16(b, c), removed, added))
    return bytes(b)


# --- tables --------------------------------------------------------------------------------------

@dataclass
class FlowVal:
    """A bgs_flows value as the model keeps it (the key: (caddr16, cport, svc, proto,
    family), model.unpack_conn_key_raw)."""

    slot: int
    color: int
    state: int
    ifindex: int
    seen: int  # coarse ns >> BGS_SEEN_SHIFT

    def pack(self) -> bytes:
        return model.pack_flow(model.Flow(self.slot, self.color, self.state, self.ifindex,
                                          self.seen))

    @classmethod
    def unpack(cls, raw: bytes) -> "FlowVal":
        return cls(*model.unpack_flow(raw))


class FragVal(NamedTuple):
    addr: bytes
    slot: int


class Bucket(NamedTuple):
    """The insert budget of a CPU: time of its last refill, inserts left in millionths."""

    last_ns: int
    tokens: int


INSERT = 1000000  # one insert, in the budget's unit


class BackendVal(NamedTuple):
    addr: bytes
    port: int
    family: int
    state: int
    svc: int
    color: int
    proto: int


class Outcome(NamedTuple):
    """What the data plane must do with one packet."""

    verdict: int
    data: bytes
    reason: str  # the outcome's class: the main bgs_stat/drop name it is counted under
    stats: Tuple[str, ...]
    drops: Tuple[str, ...]
    effects: Tuple[tuple, ...]  # every counter change, for RefModel.undo
    tables_changed: bool  # flows, fragment records or insert budget written


# Known departures of the data plane from the specification, which the model can emulate on
# request (RefModel.quirks) so that a test can tell "this difference is exactly that bug" from
# an unknown one. Each is reported, never silently accepted (tests/test_differential.py).
QUIRKS = {
    "icmp-beyond-ip-length": "the ICMP header and the quote of an ICMP error are read up to "
                             "the end of the frame instead of the IP length (Ethernet padding "
                             "is parsed and rewritten)",
    "later-frag-hdr-beyond-ip-length": "an IPv6 later fragment whose extension headers (its "
                                       "fragment header included) lie beyond the payload "
                                       "length is handled as a fragment (followed, or dropped "
                                       "as FRAG_MISS) instead of passed as PARSE_IP_LEN",
}


class RefModel:
    """The reference model: tables, counters, and ``ingress``/``egress``."""

    def __init__(self):
        self.vips: Dict[tuple, int] = {}
        self.vip_flags: Dict[tuple, int] = {}  # BGS_VIP_* of each VIP entry
        self.vip_addrs: set = set()
        self.switch: Dict[int, model.Switch] = {}
        self.sets: Dict[int, Tuple[int, List[int]]] = {}
        # bgs_tables: set index -> every word of the inner map (entry 0: M); absent: no table
        self.tables: Dict[int, List[int]] = {}
        self.backends: Dict[int, BackendVal] = {}
        # (addr16, port, proto, family) -> model.BackendRef (refs, the services it serves)
        self.backend_addrs: Dict[tuple, model.BackendRef] = {}
        self.services: Dict[int, tuple] = {}  # bgs_services: id -> VIP (addr16, port, ...)
        self.tcp_idle_ns = 0
        self.udp_idle_ns = 0
        self.closing_ns = 0
        self.nh_ifindex = 0  # the next hop's interface of every new entry (see UNSPECIFIED)
        self.new_flow_rate = 0  # 0: no insert limit
        self.new_flow_burst = 0
        self.cpu = 0  # the CPU the programs run on: whose insert budget the model keeps
        self.bucket = Bucket(0, 0)
        self.flows: Dict[tuple, FlowVal] = {}
        self.frags: Dict[tuple, FragVal] = {}
        self.stats: Counter = Counter()
        self.drops: Counter = Counter()
        self.svc_stats: Dict[int, Counter] = {}
        self.be_stats: Dict[int, Counter] = {}
        self._st: List[str] = []
        self._dr: List[str] = []
        self._fx: List[tuple] = []
        self._tables = False
        self.quirks: frozenset = frozenset()
        # How new flows were placed (for a test to show, and require, what it exercised):
        # "share-split"/"prev-split" (the color from a split share / previous share),
        # "table", "table-empty", "table-short", "set", "set-empty", "set-over".
        self.paths: Counter = Counter()

    # --- loading from the real maps ------------------------------------------------------

    def load_config(self, bgs) -> None:
        """Read the configuration tables from the pinned maps (bpfsys)."""
        vips = {model.unpack_vip_key_raw(k): struct.unpack("<II", v)
                for k, v in bgs.map("bgs_vips").items()}
        self.vips = {k: v[0] for k, v in vips.items()}
        self.vip_flags = {k: v[1] for k, v in vips.items()}
        self.vip_addrs = {model.unpack_vip_addr_raw(k) for k in bgs.map("bgs_vip_addrs").keys()}
        self.backend_addrs = {model.unpack_backend_addr_raw(k): model.unpack_backend_ref(v)
                              for k, v in bgs.map("bgs_backend_addrs").items()}
        svcs = set(self.vips.values())
        self.services = {}
        for s in svcs.union(*(r.svcs for r in self.backend_addrs.values())):
            raw = (bgs.map("bgs_services").lookup(model.u32(s))
                   if s < bgs.map("bgs_services").info.max_entries else None)
            if raw is not None:
                self.services[s] = model.unpack_service_raw(raw)[1]
        self.switch = {s: model.unpack_switch(bgs.map("bgs_switch").lookup(model.u32(s)))
                       for s in svcs}
        self.sets, self.tables, slots = {}, {}, set()
        for s in svcs:
            for i in range(4):
                idx = (s << 2) | i
                count, words = model.unpack_set_raw(bgs.map("bgs_sets").lookup(model.u32(idx)))
                self.sets[idx] = (count, words)
                slots.update(words[:min(count, model.BGS_MAX_BACKENDS)])
                inner = bgs.table_map(idx)
                if inner is not None:
                    with inner:
                        tw = model.table_words(inner.array_raw())
                    self.tables[idx] = tw
                    slots.update(tw[1:])
        self.backends = {}
        self._load_backends(bgs, slots)
        cfg = bgs.config()
        self.tcp_idle_ns, self.udp_idle_ns = cfg.tcp_idle_ns, cfg.udp_idle_ns
        self.closing_ns = cfg.closing_ns
        self.new_flow_rate, self.new_flow_burst = cfg.new_flow_rate, cfg.new_flow_burst
        for s in svcs:
            self.svc_stats.setdefault(s, Counter())

    def _load_backends(self, bgs, slots: Iterable[int]) -> None:
        """Read the backends of ``slots`` and of every flow entry's slot (bgs_backends)."""
        be = bgs.map("bgs_backends")
        for slot in set(slots) | {f.slot for f in self.flows.values()}:
            if slot >= be.info.max_entries:
                continue
            raw = be.lookup(model.u32(slot))
            port, = struct.unpack_from("!H", raw, 16)
            family, state, svc, color, proto = struct.unpack_from("<BBIBB", raw, 18)
            self.backends[slot] = BackendVal(bytes(raw[:16]), port, family, state, svc, color,
                                             proto)

    def load_dynamic(self, bgs) -> None:
        """Replace the model's flows and fragment records by the maps'."""
        self.flows = {model.unpack_conn_key_raw(k): FlowVal.unpack(v)
                      for k, v in bgs.map("bgs_flows").items()}
        self._load_backends(bgs, [f.slot for f in self.flows.values()
                                  if f.slot not in self.backends])
        self.frags = {}
        for k, v in bgs.map("bgs_frags").items():
            self.frags[model.unpack_frag_key_raw(k)] = FragVal(bytes(v[:16]),
                                                               struct.unpack_from("<I", v, 16)[0])

    def load_bucket(self, bgs, cpu: int) -> None:
        """Take the insert budget of ``cpu`` (bgs_insert_budget) as the model's, and keep that
        CPU's from now on: the programs must then run on it."""
        self.cpu = cpu
        raw = bgs.map("bgs_insert_budget").lookup_percpu(model.u32(0))[cpu]
        self.bucket = Bucket(*struct.unpack("<QQ", raw))

    def load_counters(self, bgs) -> None:
        """Take the maps' counters as the model's (after a reported difference)."""
        self.stats = Counter({k: v for k, v in bgs.stats().items() if v})
        self.drops = Counter({k: v for k, v in bgs.drops().items() if v})
        for s in list(self.svc_stats):
            self.svc_stats[s] = Counter({k: v for k, v in bgs.service_stats(s).items() if v})
        for slot in list(self.be_stats):
            self.be_stats[slot] = Counter({k: v for k, v in bgs.backend_stats(slot).items()
                                           if v})

    # --- counters ------------------------------------------------------------------------

    def _counter(self, where: str, key, field: str, v: int = 1) -> None:
        if where == "stats":
            self.stats[field] += v
        elif where == "drops":
            self.drops[field] += v
        elif where == "svc":
            self.svc_stats.setdefault(key, Counter())[field] += v
        else:
            self.be_stats.setdefault(key, Counter())[field] += v
        self._fx.append((where, key, field, v))

    def _stat(self, name: str) -> None:
        self._counter("stats", None, name)
        self._st.append(name)

    def _drop(self, name: str, svc: Optional[int] = None) -> None:
        self._counter("drops", None, name)
        self._dr.append(name)
        if svc is not None:
            self._counter("svc", svc, f"drop_{name}")

    def _be(self, slot: int, **inc: int) -> None:
        for k, v in inc.items():
            if v:
                self._counter("be", slot, k, v)

    def _begin(self) -> None:
        self._st, self._dr, self._fx, self._tables = [], [], [], False

    def _out(self, verdict: int, data: bytes, reason: str) -> Outcome:
        o = Outcome(verdict, data, reason, tuple(self._st), tuple(self._dr), tuple(self._fx),
                    self._tables)
        self._begin()
        return o

    def undo(self, o: Outcome) -> None:
        """Take back an outcome's counter changes (only for one that wrote no table)."""
        assert not o.tables_changed, "undo: the outcome wrote tables"
        for where, key, field, v in o.effects:
            self._counter(where, key, field, -v)
        self._fx = []

    def redo(self, o: Outcome) -> None:
        """Apply an outcome's counter changes again (after undo)."""
        for where, key, field, v in o.effects:
            self._counter(where, key, field, v)
        self._fx = []

    def run(self, hook: str, frame: bytes, now: int, ingress_ifindex: int = 0) -> Outcome:
        """ingress() for hook "in", egress() (come in by ``ingress_ifindex``) for "out"."""
        if hook == "in":
            return self.ingress(frame, now)
        return self.egress(frame, now, ingress_ifindex)

    # --- ingress -------------------------------------------------------------------------

    def ingress(self, frame: bytes, now: int) -> Outcome:
        """What bgs_ingress must do with ``frame`` at time ``now`` (ns, coarse monotonic)."""
        self._begin()
        self._stat("RX")
        reason, p = parse(frame, self.quirks)
        if reason:
            self._stat(reason)
            return self._out(XDP_PASS, frame, reason)
        if p.frag == FRAG_LATER:
            rec = self.frags.get(p.frag_key())
            if rec is None:
                if (p.daddr, p.family) in self.vip_addrs:
                    self._drop("FRAG_MISS")
                    return self._out(XDP_DROP, frame, "FRAG_MISS")
                self._stat("NOT_VIP")
                return self._out(XDP_PASS, frame, "NOT_VIP")
            if rec.slot == model.BGS_FRAG_PASS:
                self._stat("FRAG_PASS")
                return self._out(XDP_PASS, frame, "FRAG_PASS")
            self._stat("FRAG_LATER")
            self._be(rec.slot, rx_packets=1, rx_bytes=p.ip_len)
            out = _rewrite_l3l4(frame, p, False, rec.addr, None)
            return self._fast_path(out, "FRAG_LATER")
        if p.is_icmp:
            if p.icmp_type not in ICMP_ERRORS[p.family]:
                self._frag_pass(p)
            return self._icmp_in(frame, p)

        svc = self.vips.get((p.daddr, p.dport, p.proto, p.family))
        if svc is None:
            self._frag_pass(p)
            self._stat("NOT_VIP")
            return self._out(XDP_PASS, frame, "NOT_VIP")
        self._stat("VIP")
        key = (p.saddr, p.sport, svc, p.proto, p.family)
        tcp = p.proto == model.IPPROTO_TCP
        first = (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN if tcp else True
        f = self.flows.get(key)
        if f is not None and self._live_backend(f.slot) is None:
            f = None  # an entry whose slot is a free backend counts as none
        if f is not None and not (first and self._dead(f, p.proto, now)):
            self._stat("FLOW_HIT")
            self._tables = True
            if _s32(model.seen_of(now) - f.seen) > TOUCH_UNITS:
                f.seen = model.seen_of(now)
            if tcp:
                _mark(f, p.tcp_flags, model.BGS_FLOW_FIN_CLIENT, model.BGS_FLOW_CLIENT_ON,
                      model.BGS_FLOW_RST)
            slot, reason = f.slot, "FLOW_HIT"
        else:
            sw = self.switch.get(svc, model.Switch(0, 0))
            h = model.flow_hash_raw(p.saddr, p.daddr, p.sport, p.dport, p.proto)
            if self.vip_flags.get((p.daddr, p.dport, p.proto, p.family), 0) & \
                    model.BGS_VIP_SPLIT_CLIENT:
                h_split = model.client_hash_raw(p.saddr, p.family)
                self.paths["split-client"] += 1
            else:
                h_split = h
            share, prev, reason = self._miss_share(svc, sw, first, f is not None, tcp)
            if 0 < share < model.BGS_SHARE_ALL:
                self.paths["prev-split" if prev else "share-split"] += 1
            if tcp and f is not None:
                del self.flows[key]  # a new connection on a dead entry: the entry goes now
                self._tables = True
            if tcp and p.tcp_flags & TCP_RST:
                track = "+RST_MISS"
            else:
                track = None if self._insert_allowed(now) else "+UNTRACKED"
            both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
            if track == "+UNTRACKED" and tcp and first and sw.flags & both == both:
                share = sw.prev_share  # where its next segments, misses too, will go
            slot, err = self._create(p, key, now, sw, model.share_color(h_split, share), h,
                                     tcp and first, track)
            if err is None and slot is None:
                raise AssertionError("_create gave neither a slot nor a drop")
            if slot is None:
                self._drop(err, svc)
                return self._out(XDP_DROP, frame, err)
            reason += err or ""
        be = self.backends[slot]
        if p.frag == FRAG_FIRST:
            self._tables = True
            self.frags[p.frag_key()] = FragVal(be.addr, slot)
            self._stat("FRAG_FIRST")
            reason += "+FRAG_FIRST"
        out = _rewrite_l3l4(frame, p, False, be.addr, be.port)
        self._be(slot, rx_packets=1, rx_bytes=p.ip_len)
        return self._fast_path(out, reason)

    def _frag_pass(self, p: Pkt) -> None:
        """A first fragment to a VIP address that no service steers: its pass marker."""
        if p.frag == FRAG_FIRST and (p.daddr, p.family) in self.vip_addrs:
            self._tables = True
            self.frags[p.frag_key()] = FragVal(bytes(16), model.BGS_FRAG_PASS)

    def _fast_path(self, out: bytes, reason: str) -> Outcome:
        """The XDP fast path after a rewrite, with no route in the FIB: back to the stack."""
        self._stat("FWD_STACK")
        return self._out(XDP_PASS, out, reason)

    def _live_backend(self, slot: int) -> Optional["BackendVal"]:
        """The backend of a slot unless the slot is free (flow_backend())."""
        be = self.backends.get(slot)
        return be if be is not None and be.state != model.BGS_BACKEND_FREE else None

    def _miss_share(self, svc: int, sw: model.Switch, first: bool, had: bool, tcp: bool):
        """Count a miss; (the share that places it, whether that is the previous share, the
        outcome's reason)."""
        both = model.BGS_SW_DRAINING | model.BGS_SW_HAS_PREV
        draining = sw.flags & both == both
        if not first:
            self._stat("NOSYN_MISS")
            self._counter("svc", svc, "nosyn_miss")
            reason = "REPIN_PREVIOUS" if draining else "REPIN_ACTIVE"
        elif had:
            self._stat("FLOW_REOPEN")
            self._counter("svc", svc, "reopen")
            if tcp or not draining:
                return sw.share, False, "FLOW_REOPEN"
            reason = "REOPEN_PREVIOUS"
        else:
            if tcp:
                self._stat("SYN_MISS")
                self._counter("svc", svc, "syn_miss")
            return sw.share, False, "FLOW_NEW"
        self._stat("SECOND_CHANCE")
        self._counter("svc", svc, "second_chance")
        return (sw.prev_share, True, reason) if draining else (sw.share, False, reason)

    def _age(self, f: FlowVal, now: int) -> int:
        return model.flow_age_ns(f.seen, now)

    def _closed(self, f: FlowVal, proto: int) -> bool:
        both = model.BGS_FLOW_BOTH_FIN
        return proto == model.IPPROTO_TCP and bool(
            f.state & model.BGS_FLOW_RST or f.state & both == both)

    def _idle(self, proto: int) -> int:
        return self.tcp_idle_ns if proto == model.IPPROTO_TCP else self.udp_idle_ns

    def _dead(self, f: FlowVal, proto: int, now: int) -> bool:
        """A first packet may replace the entry: closed, or idle past its timeout."""
        return self._closed(f, proto) or self._age(f, now) > self._idle(proto)

    def _expired(self, f: FlowVal, proto: int, now: int) -> bool:
        """Replies are no longer translated: closed by the backend's RST or by FIN from both
        sides for longer than the closing timeout, or else idle past the protocol's timeout
        (a flow closed by the client's RST alone too: the backend may not have taken it)."""
        both = model.BGS_FLOW_BOTH_FIN
        if self._closed(f, proto) and (f.state & model.BGS_FLOW_RST_SERVER or
                                       f.state & both == both):
            return self._age(f, now) > self.closing_ns
        return self._age(f, now) > self._idle(proto)

    def _insert_allowed(self, now: int) -> bool:
        """Take one insert from the CPU's budget, when there is one (see the module doc)."""
        if not self.new_flow_rate:
            return True
        last, tokens = self.bucket
        cap = (self.new_flow_burst + 1) * INSERT
        if now > last:
            us = min((now - last) // 1000, 10**9)
            tokens = min(cap, tokens + us * self.new_flow_rate)
            last = now
        ok = tokens >= INSERT
        self.bucket = Bucket(last, tokens - INSERT if ok else tokens)
        self._tables = True
        return ok

    def _pick(self, idx: int, h: int) -> Tuple[Optional[int], Optional[str]]:
        """The slot a new flow of hash ``h`` gets from buffer ``idx`` (its table, else its
        set), or the drop reason."""
        table = self.tables.get(idx)
        if table is not None:
            m = table[0]
            if m == 0:
                self.paths["table-empty"] += 1
                return None, "NO_BACKEND"
            pos = model.BGS_TABLE_HDR + h % m
            if pos >= len(table):
                self.paths["table-short"] += 1
                return None, "BAD_BACKEND"
            self.paths["table"] += 1
            return table[pos], None
        count, words = self.sets.get(idx, (0, []))
        if count == 0:
            self.paths["set-empty"] += 1
            return None, "NO_BACKEND"
        if count > model.BGS_MAX_BACKENDS:
            self.paths["set-over"] += 1
            return None, "BAD_BACKEND"
        self.paths["set"] += 1
        return words[h % count], None

    def _create(self, p: Pkt, key: tuple, now: int, sw: model.Switch, color: int, h: int,
                syn: bool, track: Optional[str]) -> Tuple[Optional[int], Optional[str]]:
        """Place a new flow on a backend of ``color`` and record it unless ``track`` says why
        not ("+RST_MISS", "+UNTRACKED": the insert budget was taken before): (slot, None) with
        an entry written, (slot, track) without one, or (None, drop reason). A backend counts
        a new flow for an entry, and for a first packet (SYN, UDP) without one."""
        svc = key[2]
        slot, err = self._pick(sw.set_index(svc, color), h)
        if slot is None:
            return None, err
        be = self.backends.get(slot)
        if be is None or be.state != model.BGS_BACKEND_ACTIVE:
            return None, "BAD_BACKEND"
        tcp = p.proto == model.IPPROTO_TCP
        if track is not None:
            self._stat(track[1:])
            if track == "+UNTRACKED" and (not tcp or
                                          p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
                self._be(slot, new_flows=1)
            return slot, track
        state = model.BGS_FLOW_SYN if syn else 0
        if tcp and p.tcp_flags & TCP_FIN:
            state |= model.BGS_FLOW_FIN_CLIENT
        self.flows[key] = FlowVal(slot, color, state, self.nh_ifindex, model.seen_of(now))
        self._tables = True
        self._stat("FLOW_NEW")
        self._be(slot, new_flows=1)
        return slot, None

    def _msg_end(self, frame: bytes, p: Pkt) -> int:
        return len(frame) if "icmp-beyond-ip-length" in self.quirks else p.ip_end

    def _icmp_in(self, frame: bytes, p: Pkt) -> Outcome:
        q = (parse_quote(frame, p, self.quirks) if p.icmp_type in ICMP_ERRORS[p.family]
             else None)
        svc = None if q is None else self.vips.get((q.saddr, q.sport, q.proto, q.family))
        if svc is None:
            self._stat("NOT_VIP")
            return self._out(XDP_PASS, frame, "NOT_VIP")
        f = self.flows.get((q.daddr, q.dport, svc, q.proto, q.family))
        be = self._live_backend(f.slot) if f is not None else None
        if be is None or p.daddr != q.saddr:
            self._stat("ICMP_NO_FLOW")
            return self._out(XDP_PASS, frame, "ICMP_NO_FLOW")
        out = _rewrite_icmp(frame, p, q, True, be.addr, be.port, outer_dst=True,
                            outer_src=False, msg_end=self._msg_end(frame, p))
        self._stat("ICMP_IN")
        self._be(f.slot, rx_packets=1, rx_bytes=p.ip_len)
        return self._out(XDP_PASS, out, "ICMP_IN")

    # --- egress --------------------------------------------------------------------------

    def egress(self, frame: bytes, now: int, ingress_ifindex: int = 0) -> Outcome:
        """What bgs_egress must do with ``frame``, come in by ``ingress_ifindex``."""
        self._begin()
        self._stat("TX")
        reason, p = parse(frame, self.quirks)
        if reason:
            return self._out(TC_ACT_OK, frame, "eg:" + reason)
        if p.frag == FRAG_LATER:
            rec = self.frags.get(p.frag_key())
            if rec is None or rec.slot == model.BGS_FRAG_PASS:
                return self._out(TC_ACT_OK, frame, "eg:FRAG_NO_RECORD")
            self._stat("REPLY_NAT")
            self._be(rec.slot, tx_packets=1, tx_bytes=p.ip_len)
            return self._out(TC_ACT_OK, _rewrite_l3l4(frame, p, True, rec.addr, None),
                             "eg:FRAG_LATER")
        if p.is_icmp:
            return self._icmp_out(frame, p, ingress_ifindex)
        ref = self.backend_addrs.get((p.saddr, p.sport, p.proto, p.family))
        if ref is None:
            return self._out(TC_ACT_OK, frame, "eg:NOT_BACKEND")
        f, key = self._flow_of_reply(p.saddr, p.sport, p.daddr, p.dport, p.proto, p.family,
                                     ref)
        if f is None or self._expired(f, p.proto, now):
            self._stat("REPLY_NO_FLOW")
            return self._out(TC_ACT_OK, frame, "REPLY_NO_FLOW")
        if ingress_ifindex != f.ifindex:
            self._stat("REPLY_WRONG_DEV")
            return self._out(TC_ACT_OK, frame, "REPLY_WRONG_DEV")
        if p.tcp_flags & TCP_SYN and self._closed(f, p.proto):
            del self.flows[key]
            self._tables = True
            self._stat("REPLY_SUPERSEDED")
            return self._out(TC_ACT_OK, frame, "REPLY_SUPERSEDED")
        vip = self.services.get(key[2])
        if vip is None:
            return self._out(TC_ACT_OK, frame, "eg:NO_SERVICE")
        vaddr, vport = vip[:2]
        reason = "REPLY_NAT"
        if p.proto == model.IPPROTO_TCP:
            self._tables = True
            _mark(f, p.tcp_flags, model.BGS_FLOW_FIN_SERVER, model.BGS_FLOW_SERVER_ON,
                  model.BGS_FLOW_RST | model.BGS_FLOW_RST_SERVER)
        if p.frag == FRAG_FIRST:
            self._tables = True
            self.frags[p.frag_key()] = FragVal(vaddr, f.slot)
            self._stat("FRAG_FIRST")
            reason += "+FRAG_FIRST"
        out = _rewrite_l3l4(frame, p, True, vaddr, vport)
        self._stat("REPLY_NAT")
        rst = 1 if p.proto == model.IPPROTO_TCP and p.tcp_flags & TCP_RST else 0
        self._be(f.slot, tx_packets=1, tx_bytes=p.ip_len, resets=rst)
        return self._out(TC_ACT_OK, out, reason)

    def _flow_of_reply(self, baddr: bytes, bport: int, caddr: bytes, cport: int, proto: int,
                       family: int, ref: model.BackendRef):
        """(flow, key) of a packet from backend baddr:bport to client caddr:cport: under each
        service the backend address serves, in order, the first entry whose backend is that
        address and port and that is not closed, else the first closed one; (None, None) when
        there is none."""
        closed = (None, None)
        for svc in ref.svcs:
            key = (caddr, cport, svc, proto, family)
            f = self.flows.get(key)
            if f is None:
                continue
            be = self._live_backend(f.slot)
            if be is None or be.addr != baddr or be.port != bport:
                continue
            if not self._closed(f, proto):
                return f, key
            if closed[0] is None:
                closed = (f, key)
        return closed

    def _icmp_out(self, frame: bytes, p: Pkt, ingress_ifindex: int) -> Outcome:
        q = (parse_quote(frame, p, self.quirks) if p.icmp_type in ICMP_ERRORS[p.family]
             else None)
        ref = None if q is None else self.backend_addrs.get((q.daddr, q.dport, q.proto,
                                                             q.family))
        if ref is None:
            return self._out(TC_ACT_OK, frame, "eg:ICMP_OTHER")
        f, key = self._flow_of_reply(q.daddr, q.dport, q.saddr, q.sport, q.proto, q.family,
                                     ref)
        vip = (self.services.get(key[2])
               if f is not None and ingress_ifindex in (f.ifindex, 0) else None)
        if vip is None:
            self._stat("ICMP_NO_FLOW")
            return self._out(TC_ACT_OK, frame, "eg:ICMP_NO_FLOW")
        out = _rewrite_icmp(frame, p, q, False, vip[0], vip[1], outer_dst=False,
                            outer_src=p.saddr == q.daddr, msg_end=self._msg_end(frame, p))
        self._stat("ICMP_OUT")
        self._be(f.slot, tx_packets=1, tx_bytes=p.ip_len)
        return self._out(TC_ACT_OK, out, "ICMP_OUT")

    # --- comparable dumps ----------------------------------------------------------------

    def dump_flows(self, now: int) -> Dict[tuple, tuple]:
        """Flows as key -> (slot, color, state, ifindex, aged): aged when last seen more than
        AGED_NS before ``now`` (the exact time of a touch is not the model's business)."""
        return {k: (v.slot, v.color, v.state, v.ifindex, _aged(v.seen, now))
                for k, v in self.flows.items()}

    def dump_frags(self) -> Dict[tuple, tuple]:
        return {k: tuple(v) for k, v in self.frags.items()}


AGED_NS = 1800 * 10**9
TOUCH_UNITS = TOUCH_NS >> model.BGS_SEEN_SHIFT  # flow_touch(): seen is rewritten after this


def _s32(v: int) -> int:
    """A 32-bit difference read as signed."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _mark(f: FlowVal, flags: int, fin: int, on: int, rst: int) -> None:
    """flow_mark(): one side's TCP flags on its flow (see "TCP state" in the module doc)."""
    if flags & TCP_RST:
        if f.state & (rst | model.BGS_FLOW_BOTH_ON) != rst:
            f.state = (f.state & ~model.BGS_FLOW_BOTH_ON) | rst
        return
    if flags & TCP_FIN:
        f.state |= fin
    if f.state & model.BGS_FLOW_RST and not f.state & on:
        f.state |= on
        if f.state & model.BGS_FLOW_BOTH_ON == model.BGS_FLOW_BOTH_ON:
            f.state &= ~(model.BGS_FLOW_RST | model.BGS_FLOW_RST_SERVER | model.BGS_FLOW_BOTH_ON)


def _aged(seen: int, now: int) -> bool:
    return model.flow_age_ns(seen, now) > AGED_NS


def dump_real_flows(bgs, now: int) -> Dict[tuple, tuple]:
    """bgs_flows in RefModel.dump_flows's form."""
    out = {}
    for k, v in bgs.map("bgs_flows").items():
        f = model.unpack_flow(v)
        out[model.unpack_conn_key_raw(k)] = (f.slot, f.color, f.state, f.ifindex,
                                             _aged(f.seen, now))
    return out


def dump_real_frags(bgs) -> Dict[tuple, tuple]:
    return {model.unpack_frag_key_raw(k): (bytes(v[:16]), struct.unpack_from("<I", v, 16)[0])
            for k, v in bgs.map("bgs_frags").items()}
