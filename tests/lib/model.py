"""A Python mirror of bgswitch's data-plane definitions, for the unit tests.

- ``flow_hash`` mirrors ``flow_hash()`` of bpf/flow.bpf.h bit for bit; ``share_bucket`` /
  ``share_color`` the color a new flow gets under the switch's green share
  (include/bgswitch.h); ``pick_slot`` the backend choice of flow_pick(): position
  ``1 + h % M`` of the color's Maglev table, or ``set->slot[h % count]`` without a table
  (``choose_slot``, a service with ``--lb modulo``).
- ``maglev_table`` mirrors the table builder of user/maglev.c (weights included), so that a
  table read from bgs_tables can be checked against an independent implementation.
- ``pack_*`` / ``unpack_*`` mirror the structures of include/bgswitch.h as the kernel stores
  them (x86_64: little-endian host, natural alignment). Addresses and ports stay in network
  byte order inside them, as in the C structures.

Addresses are text ("10.0.0.1" or "fd00::1"); the family follows from the text. An IPv4
address sits in the first 4 bytes of a 16-byte field, the other 12 zero.

The module is written from the C sources, not from the running program, so that the tests
compare two independent implementations.
"""

import ipaddress
import os
import re
import socket
import struct
from typing import List, NamedTuple, Optional, Sequence

# --- constants of include/bgswitch.h -------------------------------------------------------------

BGS_LAYOUT_VERSION = 4
BGS_BLUE, BGS_GREEN = 0, 1
COLORS = {"blue": BGS_BLUE, "green": BGS_GREEN}
BGS_COLOR_NONE = 0xFF
BGS_AF_INET = 4
BGS_AF_INET6 = 6
BGS_MAX_BACKENDS = 256
BGS_MAX_SLOTS = 8192
BGS_MAX_EXTHDRS = 6
BGS_FRAG_ENTRIES = 16384
BGS_NAME_LEN = 32
BGS_ADDR_SVCS = 4  # services one backend address and port may serve (bgs_backend_ref.svc)
BGS_NEW_FLOW_TURNOVER = 2  # default node insert limit: the flow table's size every 2 s ...
BGS_NEW_FLOW_BURST_DIV = 8  # ... with a burst of an eighth of it (attach)
BGS_SEEN_SHIFT = 24  # bgs_flow.seen is bpf_ktime_get_coarse_ns() >> 24 (16.8 ms units)
BGS_NEXTHOP_NS = 10**9  # a cached next hop is looked up again after this long
BPF_FIB_LKUP_RET_NO_NEIGH = 7  # <linux/bpf.h>: route found, neighbour not resolved
BGS_TCP_IDLE_SEC = 900
BGS_UDP_IDLE_SEC = 30
BGS_CLOSING_SEC = 10
BGS_SW_DRAINING = 0x1  # bgs_switch.flags: flows of the share before the last change may be live
BGS_SW_HAS_PREV = 0x2  # bgs_switch.flags: prev_share is meaningful
BGS_SHARE_ALL = 10000  # bgs_switch.share of 100 % (0.01 % units)
BGS_TABLE_SIZE = 16381  # default Maglev table size
BGS_TABLE_MIN = 251  # smallest table size `--table-size` accepts (user/service.c)
BGS_TABLE_MAX = 131071  # largest
BGS_WEIGHT_MAX = 1000  # largest backend weight
BGS_TABLE_HDR = 1  # entry 0 of a table holds its size M
BGS_LB_MAGLEV, BGS_LB_MODULO = 0, 1
BGS_VIP_SPLIT_CLIENT = 0x1  # bgs_vip.flags: split between colors by the client's address
BGS_FRAG_PASS = 0xFFFFFFFF  # bgs_frag.slot of a pass marker: the datagram went to no service

BGS_BACKEND_FREE, BGS_BACKEND_ACTIVE, BGS_BACKEND_DRAINING = 0, 1, 2

BGS_FLOW_SYN = 0x01
BGS_FLOW_FIN_CLIENT = 0x02
BGS_FLOW_FIN_SERVER = 0x04
BGS_FLOW_RST = 0x08  # either side sent RST: not live, unless both sides go on
BGS_FLOW_CLIENT_ON = 0x10  # client sent a segment without RST after the RST
BGS_FLOW_SERVER_ON = 0x20  # backend sent a segment without RST after the RST
BGS_FLOW_BOTH_FIN = BGS_FLOW_FIN_CLIENT | BGS_FLOW_FIN_SERVER
BGS_FLOW_BOTH_ON = BGS_FLOW_CLIENT_ON | BGS_FLOW_SERVER_ON
BGS_FLOW_RST_SERVER = 0x40  # the RST came from the backend: the flow is over

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60

# --- names read from include/bgswitch.h ----------------------------------------------------------
# The counter and drop-reason lists and the stats structures' fields are read from the header
# (names only, no behaviour), so that a counter added there needs no copy here.

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(TOP, "include", "bgswitch.h")


def _header() -> str:
    with open(HEADER) as f:
        return f.read()


class HeaderEntry(NamedTuple):
    """One X(...) entry of an X-macro list: its ID (BGS_STAT_ID), name as shown, and help."""
    id: str
    name: str
    args: tuple  # the arguments between name and help (BGS_STATS: passed)
    help: str


def header_list(macro: str) -> List[HeaderEntry]:
    """The entries of `#define MACRO(X) X(ID, name, ..., "help") ...` in include/bgswitch.h."""
    m = re.search(rf"^#define {macro}\(X\)((?:.*\\\n)*.*)$", _header(), re.M)
    if not m:
        raise ValueError(f"no X-macro list {macro} in {HEADER}")
    body = m.group(1).replace("\\\n", " ")
    out = []
    for args, help_ in re.findall(r'X\(([^"()]*?),\s*"((?:[^"\\]|\\.)*)"\)', body):
        fields = [a.strip() for a in args.split(",")]
        out.append(HeaderEntry(fields[0], fields[1], tuple(fields[2:]), help_))
    if not out or len(out) != body.count("X("):
        raise ValueError(f"{macro}: an entry this parser cannot read")
    return out


def header_u64_fields(name: str) -> List[str]:
    """The __u64 fields of `struct NAME` in include/bgswitch.h, in order; an array field
    `__u64 drops[BGS_DROP_MAX]` becomes one field per drop reason, drop_<ID>."""
    m = re.search(rf"^struct {name} \{{(.*?)^\}};", _header(), re.M | re.S)
    if not m:
        raise ValueError(f"no struct {name} in {HEADER}")
    out = []
    for field, dim in re.findall(r"^\s*__u64 (\w+)(?:\[(\w+)\])?;", m.group(1), re.M):
        if dim == "BGS_DROP_MAX":
            out += [f"drop_{d}" for d in DROPS]
        elif dim:
            raise ValueError(f"struct {name}: array {field}[{dim}] this parser cannot name")
        else:
            out.append(field)
    return out


# enum bgs_stat (BGS_STATS): IDs in index order, and the name `status` shows for each
STAT_LIST = header_list("BGS_STATS")
STATS = [e.id for e in STAT_LIST]
STAT = {name: i for i, name in enumerate(STATS)}
STAT_NAMES = {e.id: e.name for e in STAT_LIST}

# enum bgs_drop_reason (BGS_DROP_REASONS)
DROP_LIST = header_list("BGS_DROP_REASONS")
DROPS = [e.id for e in DROP_LIST]
DROP = {name: i for i, name in enumerate(DROPS)}
DROP_NAMES = {e.id: e.name for e in DROP_LIST}

# struct bgs_backend_stats fields, in order
BACKEND_STATS = header_u64_fields("bgs_backend_stats")

# struct bgs_service_stats fields, in order (drops[] expanded by reason)
SERVICE_STATS = header_u64_fields("bgs_service_stats")

# Sizes of the structures, as the maps must declare them.
SIZES = {
    "bgs_vip_key": 20,
    "bgs_vip": 8,
    "bgs_switch": 8,
    "bgs_set": 4 + 4 * BGS_MAX_BACKENDS,
    "bgs_backend": 28,  # the last two bytes: weight
    "bgs_flow_key": 40,
    "bgs_conn_key": 24,
    "bgs_flow": 16,
    "bgs_nexthop": 32,  # 28 bytes of fields, aligned to 8 by the __u64
    "bgs_backend_addr": 20,
    "bgs_backend_ref": 8 + 2 * BGS_ADDR_SVCS,
    "bgs_vip_addr": 20,
    "bgs_frag_key": 40,
    "bgs_frag": 20,
    "bgs_service": BGS_NAME_LEN + 32,  # name, vip key, table_size, lb, pad, vip_flags
    "bgs_config": 56,
    "bgs_backend_stats": 48,
    "bgs_service_stats": 8 * (4 + len(DROPS)),
    "bgs_bucket": 16,
}

# --- addresses -----------------------------------------------------------------------------------


def family_of(addr: str) -> int:
    """BGS_AF_INET or BGS_AF_INET6 for an address in text form."""
    return BGS_AF_INET6 if ":" in addr else BGS_AF_INET


def addr16(addr: str) -> bytes:
    """An address as the 16 bytes of a bgs address field (IPv4 in the first 4)."""
    if family_of(addr) == BGS_AF_INET6:
        return socket.inet_pton(socket.AF_INET6, addr)
    return socket.inet_aton(addr) + bytes(12)


def addr_str(raw: bytes, family: int) -> str:
    """The text form of a 16-byte bgs address field."""
    if family == BGS_AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return socket.inet_ntoa(raw[:4])


def _guess_family(raw: bytes) -> int:
    """For values that do not carry their family: IPv4 when bytes 4..15 are zero."""
    return BGS_AF_INET if not any(raw[4:16]) else BGS_AF_INET6


def norm(addr: str) -> str:
    """Canonical text of an address (so that "fd00:0::1" equals "fd00::1")."""
    return str(ipaddress.ip_address(addr))


def endpoint(addr: str, port: int) -> str:
    """ADDR:PORT as the command takes it ("[V6]:PORT" for IPv6)."""
    return f"[{addr}]:{port}" if family_of(addr) == BGS_AF_INET6 else f"{addr}:{port}"


# --- flow_hash -----------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(h: int, w: int) -> int:
    w = (w * 0xCC9E2D51) & _M32
    w = _rotl(w, 15)
    w = (w * 0x1B873593) & _M32
    h ^= w
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _words(raw16: bytes) -> List[int]:
    """The four __u32 words of a 16-byte address field as the host reads them."""
    return list(struct.unpack("<4I", raw16))


def _port_host(port: int) -> int:
    """A port stored in network byte order, read as a little-endian __u16."""
    return struct.unpack("<H", struct.pack("!H", port))[0]


def fmix32(h: int) -> int:
    """bgs_fmix32() of include/bgswitch.h: murmur3's 32-bit finalizer."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def flow_hash_raw(saddr16: bytes, daddr16: bytes, sport: int, dport: int, proto: int) -> int:
    """flow_hash() of bpf/flow.bpf.h on raw 16-byte address fields (ports as numbers)."""
    s, d = _words(saddr16), _words(daddr16)
    h = 0x62677377  # "bgsw"
    for i in range(4):
        h = _mix(h, s[i])
        h = _mix(h, d[i])
    h = _mix(h, ((_port_host(sport) << 16) | _port_host(dport)) & _M32)
    return fmix32(_mix(h, proto))


def client_hash_raw(saddr16: bytes, family: int) -> int:
    """flow_client_hash() of bpf/flow.bpf.h: the client's address alone (--split-by client)."""
    s = _words(saddr16)
    h = 0x636C6E74  # "clnt"
    for i in range(4):
        h = _mix(h, s[i])
    return fmix32(_mix(h, family))


def client_hash(saddr: str) -> int:
    """flow_client_hash() for a client address (IPv4 or IPv6)."""
    return client_hash_raw(addr16(saddr), family_of(saddr))


def flow_hash(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> int:
    """flow_hash() of bpf/flow.bpf.h for a client-to-VIP 5-tuple (IPv4 or IPv6)."""
    return flow_hash_raw(addr16(saddr), addr16(daddr), sport, dport, proto)


def choose_slot(slots: Sequence[int], saddr: str, daddr: str, sport: int, dport: int,
                proto: int) -> int:
    """The backend slot a new flow gets from a set holding ``slots`` when its color has no
    lookup table (``--lb modulo``): set->slot[hash % count]."""
    return slots[flow_hash(saddr, daddr, sport, dport, proto) % len(slots)]


def pick_slot(table: Optional[Sequence[int]], slots: Sequence[int], h: int):
    """flow_pick() of bpf/flow.bpf.h for a flow hash ``h``: (slot, None), or (None, drop
    reason). ``table`` is the color's lookup table (entries 1..M, see unpack_table), None
    when the color has none (no bgs_tables entry); ``slots`` its current set. A table of
    size 0 drops NO_BACKEND; without a table an empty set drops NO_BACKEND, a count beyond
    BGS_MAX_BACKENDS BAD_BACKEND."""
    if table is not None:
        if not table:
            return None, "NO_BACKEND"
        return table[h % len(table)], None
    if not slots:
        return None, "NO_BACKEND"
    if len(slots) > BGS_MAX_BACKENDS:
        return None, "BAD_BACKEND"
    return slots[h % len(slots)], None


def table_words(raw: bytes) -> List[int]:
    """A bgs_tables inner map's values (index 0 first, as one byte string) as __u32 words."""
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def unpack_table(raw: bytes) -> List[int]:
    """A bgs_tables inner map (its values, index 0 first, as one byte string) as the list of
    its positions' slots: entries 1..M where M is entry 0. Raises when entry 0 names more
    entries than the map holds (the data plane would then drop some flows BAD_BACKEND)."""
    words = table_words(raw)
    m = words[0]
    if m + BGS_TABLE_HDR > len(words):
        raise ValueError(f"table says M = {m} but holds {len(words) - BGS_TABLE_HDR} entries")
    return words[BGS_TABLE_HDR:BGS_TABLE_HDR + m]


def parse_share(text: str) -> int:
    """A share as the command takes it ("25%", "2.5%", "0.01%", "10") in 0.01 % units."""
    v = round(float(text.rstrip("%")) * 100)
    assert 0 <= v <= BGS_SHARE_ALL, text
    return v


# --- the Maglev table builder (user/maglev.c) -----------------------------------------------------

_M64 = (1 << 64) - 1


def maglev_key(addr: str, port: int) -> bytes:
    """The 20-byte key that names a backend to the table builder: family, 0, port (network
    order), the 16-byte address field."""
    return bytes([family_of(addr), 0]) + struct.pack("!H", port) + addr16(addr)


def maglev_hash(key: bytes, seed: int) -> int:
    """FNV-1a (64 bits, basis xor seed) over the key, then splitmix64's finalizer."""
    h = 0xCBF29CE484222325 ^ seed
    for b in key:
        h ^= b
        h = (h * 0x100000001B3) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    h ^= h >> 31
    return h


def maglev_table(backends: Sequence[tuple], m: int) -> List[int]:
    """The table user/maglev.c builds: ``backends`` are (addr, port, weight, slot), in any
    order; returns the M positions' slots ([] when no backend has a weight above 0).

    Each backend walks its permutation (offset + j * skip) % M, offset and skip from two
    seeded hashes of its key; backends in key order take turns, each gaining its weight in
    credit per round and claiming its next free position per max-weight of credit."""
    be = sorted(((maglev_key(a, p), w, slot) for a, p, w, slot in backends),
                key=lambda t: t[0])
    wmax = max((w for _, w, _ in be), default=0)
    if not wmax:
        return []
    offset = [maglev_hash(k, 0x6267737730) % m for k, _, _ in be]
    skip = [maglev_hash(k, 0x6267737731) % (m - 1) + 1 for k, _, _ in be]
    nxt = [0] * len(be)
    credit = [0] * len(be)
    table = [None] * m
    filled = 0
    while filled < m:
        for i, (_, w, slot) in enumerate(be):
            if filled >= m:
                break
            if not w:
                continue
            credit[i] += w
            while credit[i] >= wmax and filled < m:
                credit[i] -= wmax
                while True:
                    c = (offset[i] + nxt[i] * skip[i]) % m
                    nxt[i] += 1
                    if table[c] is None:
                        break
                table[c] = slot
                filled += 1
    return table


def is_prime(n: int) -> bool:
    """Trial division (table sizes are at most BGS_TABLE_MAX)."""
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


# --- structure codecs ----------------------------------------------------------------------------

def u32(v: int) -> bytes:
    """A __u32 map key (array index)."""
    return struct.pack("<I", v)


def pack_flow_key(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> bytes:
    """struct bgs_flow_key (40 bytes) of a 5-tuple; the family follows from the addresses."""
    return (addr16(saddr) + addr16(daddr) + struct.pack("!HH", sport, dport)
            + struct.pack("<BBH", proto, family_of(saddr), 0))


def pack_flow_key_raw(saddr16: bytes, daddr16: bytes, sport: int, dport: int, proto: int,
                      family: int) -> bytes:
    """struct bgs_flow_key from raw 16-byte address fields."""
    return saddr16 + daddr16 + struct.pack("!HH", sport, dport) + struct.pack(
        "<BBH", proto, family, 0)


def unpack_flow_key_raw(raw: bytes) -> tuple:
    """struct bgs_flow_key as (saddr16, daddr16, sport, dport, proto, family)."""
    sport, dport = struct.unpack_from("!HH", raw, 32)
    proto, family = struct.unpack_from("<BB", raw, 36)
    return (bytes(raw[0:16]), bytes(raw[16:32]), sport, dport, proto, family)


def pack_conn_key(client: str, cport: int, svc: int, proto: int) -> bytes:
    """struct bgs_conn_key (bgs_flows key, 24 bytes): a connection by its client's address and
    port and its service id; the family follows from the address."""
    return addr16(client) + struct.pack("!H", cport) + struct.pack(
        "<HBBH", svc, proto, family_of(client), 0)


def pack_conn_key_raw(caddr16: bytes, cport: int, svc: int, proto: int, family: int) -> bytes:
    """struct bgs_conn_key from a raw 16-byte address field."""
    return caddr16 + struct.pack("!H", cport) + struct.pack("<HBBH", svc, proto, family, 0)


def unpack_conn_key_raw(raw: bytes) -> tuple:
    """struct bgs_conn_key as (caddr16, cport, svc, proto, family)."""
    cport, = struct.unpack_from("!H", raw, 16)
    svc, proto, family = struct.unpack_from("<HBB", raw, 18)
    return (bytes(raw[0:16]), cport, svc, proto, family)


def pack_vip_key(addr: str, port: int, proto: int) -> bytes:
    """struct bgs_vip_key (20 bytes)."""
    return addr16(addr) + struct.pack("!H", port) + struct.pack("<BB", proto, family_of(addr))


def unpack_vip_key_raw(raw: bytes) -> tuple:
    """struct bgs_vip_key as (addr16, port, proto, family)."""
    port, = struct.unpack_from("!H", raw, 16)
    proto, family = struct.unpack_from("<BB", raw, 18)
    return (bytes(raw[:16]), port, proto, family)


def pack_vip_addr(addr: str) -> bytes:
    """struct bgs_vip_addr (20 bytes)."""
    return addr16(addr) + struct.pack("<B3x", family_of(addr))


def unpack_vip_addr_raw(raw: bytes) -> tuple:
    """struct bgs_vip_addr as (addr16, family)."""
    return (bytes(raw[:16]), raw[16])


def unpack_backend_addr_raw(raw: bytes) -> tuple:
    """struct bgs_backend_addr as (addr16, port, proto, family)."""
    return unpack_vip_key_raw(raw)


def pack_backend_addr(addr: str, port: int, proto: int) -> bytes:
    """struct bgs_backend_addr (20 bytes): the same layout as struct bgs_vip_key."""
    return pack_vip_key(addr, port, proto)


def unpack_service_raw(raw: bytes) -> tuple:
    """struct bgs_service (bgs_services value) as (name, (addr16, port, proto, family))."""
    name = bytes(raw[:BGS_NAME_LEN]).split(b"\0", 1)[0].decode(errors="replace")
    return name, unpack_vip_key_raw(raw[BGS_NAME_LEN:BGS_NAME_LEN + 20])


class Service(NamedTuple):
    """struct bgs_service, decoded (the VIP key raw, as unpack_vip_key_raw gives it)."""

    name: str
    vip: tuple  # (addr16, port, proto, family)
    table_size: int  # Maglev table size M, 0 with BGS_LB_MODULO
    lb: int  # BGS_LB_*
    vip_flags: int = 0  # BGS_VIP_*


def unpack_service(raw: bytes) -> Service:
    """Decode struct bgs_service (name, VIP key, table_size, lb, 3 bytes of padding,
    vip_flags)."""
    name, vip = unpack_service_raw(raw)
    table_size, lb = struct.unpack_from("<IB", raw, BGS_NAME_LEN + 20)
    vip_flags, = struct.unpack_from("<I", raw, BGS_NAME_LEN + 28)
    return Service(name, vip, table_size, lb, vip_flags)


class BackendRef(NamedTuple):
    """struct bgs_backend_ref (bgs_backend_addrs value), decoded."""

    refs: int  # slots with this address, port and protocol
    svcs: tuple  # the services they serve (svc[0..nsvc)), where a reply looks for its flow


def unpack_backend_ref(raw: bytes) -> BackendRef:
    """Decode struct bgs_backend_ref (refs, nsvc, svc[BGS_ADDR_SVCS]); svcs holds the first
    nsvc ids (at most BGS_ADDR_SVCS, as the data plane reads them)."""
    refs, nsvc = struct.unpack_from("<II", raw, 0)
    svc = struct.unpack_from(f"<{BGS_ADDR_SVCS}H", raw, 8)
    return BackendRef(refs, tuple(svc[:min(nsvc, BGS_ADDR_SVCS)]))


def pack_backend_ref(r: BackendRef, nsvc: Optional[int] = None) -> bytes:
    """Encode struct bgs_backend_ref (``nsvc`` may be forced to test bounds)."""
    svc = list(r.svcs) + [0] * (BGS_ADDR_SVCS - len(r.svcs))
    return struct.pack(f"<II{BGS_ADDR_SVCS}H", r.refs, len(r.svcs) if nsvc is None else nsvc,
                       *svc)


class Bucket(NamedTuple):
    """struct bgs_bucket (bgs_insert_budget value, per CPU), decoded."""

    last_ns: int
    tokens: int  # in millionths of an insert


def unpack_bucket(raw: bytes) -> Bucket:
    """Decode struct bgs_bucket (16 bytes)."""
    return Bucket(*struct.unpack("<QQ", raw))


def pack_bucket(b: Bucket) -> bytes:
    """Encode struct bgs_bucket."""
    return struct.pack("<QQ", b.last_ns, b.tokens)


def pack_frag_key_raw(saddr16: bytes, daddr16: bytes, frag_id: bytes, proto: int,
                      family: int) -> bytes:
    """struct bgs_frag_key (40 bytes). ``frag_id`` is the identification as the __u32 holds
    it: IPv4's 2 network-order bytes then 2 zero bytes, IPv6's 4 network-order bytes."""
    return saddr16 + daddr16 + frag_id.ljust(4, b"\0") + struct.pack("<BBH", proto, family, 0)


def unpack_frag_key_raw(raw: bytes) -> tuple:
    """struct bgs_frag_key as (saddr16, daddr16, id4, proto, family)."""
    return (bytes(raw[0:16]), bytes(raw[16:32]), bytes(raw[32:36]), raw[36], raw[37])


class Frag(NamedTuple):
    """struct bgs_frag, decoded."""

    addr: str
    slot: int


def unpack_frag(raw: bytes, family: Optional[int] = None) -> Frag:
    """Decode struct bgs_frag (20 bytes)."""
    family = _guess_family(raw) if family is None else family
    slot, = struct.unpack_from("<I", raw, 16)
    return Frag(addr_str(raw, family), slot)


class Flow(NamedTuple):
    """struct bgs_flow (bgs_flows value, 16 bytes), decoded. The backend's address and port
    are its slot's (bgs_backends)."""

    slot: int
    color: int
    state: int  # BGS_FLOW_*
    ifindex: int  # where the backend's packets come in (its next hop's interface), 0: local
    seen: int  # the client's last packet: bpf_ktime_get_coarse_ns() >> BGS_SEEN_SHIFT


def unpack_flow(raw: bytes) -> Flow:
    """Decode struct bgs_flow (slot u16, color u8, pad u8, state, ifindex, seen u32)."""
    slot, color, _pad, state, ifindex, seen = struct.unpack("<HBBIII", raw)
    return Flow(slot, color, state, ifindex, seen)


def pack_flow(f: Flow) -> bytes:
    """Encode struct bgs_flow."""
    return struct.pack("<HBBIII", f.slot, f.color, 0, f.state, f.ifindex, f.seen & _M32)


def seen_of(ns: int) -> int:
    """bgs_flow.seen of a bpf_ktime_get_coarse_ns() time (``ns``)."""
    return (ns >> BGS_SEEN_SHIFT) & _M32


def flow_age_ns(seen: int, now_ns: int) -> int:
    """flow_age() of bpf/flow.bpf.h: how long ago (ns) a flow last seen at ``seen`` was seen,
    at ``now_ns``, in whole units of 2^BGS_SEEN_SHIFT ns; 0 when ``seen`` is ahead of now."""
    d = (seen_of(now_ns) - seen) & _M32
    d = d - (1 << 32) if d & 0x80000000 else d
    return d << BGS_SEEN_SHIFT if d > 0 else 0


class Nexthop(NamedTuple):
    """struct bgs_nexthop (bgs_nexthops value, per CPU), decoded."""

    expires: int
    ifindex: int
    mtu: int
    dmac: bytes
    smac: bytes
    rc: int  # BPF_FIB_LKUP_RET_*


def unpack_nexthop(raw: bytes) -> Nexthop:
    """Decode struct bgs_nexthop (28 bytes of fields; the map's value is 32)."""
    return Nexthop(*struct.unpack_from("<QIH6s6sB", raw))


class Switch(NamedTuple):
    """struct bgs_switch, decoded: generation, then one 32-bit word of bit fields (share: bits
    0-13, prev_share: 14-27, set_sel: 28-29, flags: 30-31)."""

    generation: int
    share: int  # green share of new flows, 0.01 % units (BGS_SHARE_ALL: all green)
    prev_share: int = 0
    set_sel: int = 0
    flags: int = 0  # BGS_SW_*

    @property
    def draining(self) -> bool:
        """BGS_SW_DRAINING: flows of the share before the last change may be live."""
        return bool(self.flags & BGS_SW_DRAINING)

    @property
    def active(self) -> int:
        """The one color every new flow goes to, or BGS_COLOR_NONE for a split."""
        return share_color_of(self.share)

    @property
    def previous(self) -> int:
        """The color of prev_share, or BGS_COLOR_NONE (split, or nothing to roll back to)."""
        if not self.flags & BGS_SW_HAS_PREV:
            return BGS_COLOR_NONE
        return share_color_of(self.prev_share)

    def set_index(self, svc: int, color: int) -> int:
        """bgs_sets / bgs_tables key of the buffer that ``color`` uses now."""
        return (svc << 2) | ((color & 1) << 1) | ((self.set_sel >> (color & 1)) & 1)


def share_color_of(share: int) -> int:
    """The one color a share sends every new flow to, or BGS_COLOR_NONE."""
    if share == 0:
        return BGS_BLUE
    if share >= BGS_SHARE_ALL:
        return BGS_GREEN
    return BGS_COLOR_NONE


def share_bucket(h: int) -> int:
    """bgs_share_bucket() of include/bgswitch.h: a flow's bucket in the split, from its hash."""
    return fmix32(h ^ 0x9E3779B9) % BGS_SHARE_ALL


def share_color(h: int, share: int) -> int:
    """bgs_share_color(): the color a new flow with flow hash ``h`` gets under ``share``."""
    if share == 0:
        return BGS_BLUE
    if share >= BGS_SHARE_ALL:
        return BGS_GREEN
    return BGS_GREEN if share_bucket(h) < share else BGS_BLUE


def unpack_switch(raw: bytes) -> Switch:
    """Decode struct bgs_switch (8 bytes)."""
    gen, w = struct.unpack("<II", raw)
    return Switch(gen, w & 0x3FFF, (w >> 14) & 0x3FFF, (w >> 28) & 3, (w >> 30) & 3)


def pack_switch(sw: Switch) -> bytes:
    """Encode struct bgs_switch."""
    w = ((sw.share & 0x3FFF) | ((sw.prev_share & 0x3FFF) << 14) | ((sw.set_sel & 3) << 28)
         | ((sw.flags & 3) << 30))
    return struct.pack("<II", sw.generation, w)


def unpack_set_raw(raw: bytes) -> tuple:
    """struct bgs_set as (count, [all BGS_MAX_BACKENDS slot words])."""
    count, = struct.unpack_from("<I", raw, 0)
    return count, list(struct.unpack_from(f"<{BGS_MAX_BACKENDS}I", raw, 4))


def unpack_set(raw: bytes) -> List[int]:
    """Decode struct bgs_set into its list of slots (count first)."""
    count, = struct.unpack_from("<I", raw, 0)
    n = min(count, BGS_MAX_BACKENDS)
    return list(struct.unpack_from(f"<{n}I", raw, 4)) + ([None] * (count - n))


def pack_set(slots: Sequence[int], count: int = None) -> bytes:
    """Encode struct bgs_set (``count`` may be forced to test bounds)."""
    count = len(slots) if count is None else count
    body = struct.pack(f"<{len(slots)}I", *slots)
    return struct.pack("<I", count) + body + bytes(4 * BGS_MAX_BACKENDS - len(body))


class Backend(NamedTuple):
    """struct bgs_backend, decoded."""

    addr: str
    port: int
    family: int
    state: int
    svc: int
    color: int
    proto: int
    weight: int = 1


def unpack_backend(raw: bytes) -> Backend:
    """Decode struct bgs_backend (28 bytes)."""
    port, = struct.unpack_from("!H", raw, 16)
    family, state, svc, color, proto, weight = struct.unpack_from("<BBIBBH", raw, 18)
    fam = family if family in (BGS_AF_INET, BGS_AF_INET6) else _guess_family(raw)
    return Backend(addr_str(raw, fam), port, family, state, svc, color, proto, weight)


class Config(NamedTuple):
    """struct bgs_config, decoded."""

    layout_version: int
    flow_entries: int
    tcp_idle_ns: int
    udp_idle_ns: int
    closing_ns: int
    new_flow_rate: int = 0  # inserts per second, this CPU's part of the node's; 0: no limit
    new_flow_burst: int = 0  # this CPU's part of the node's burst
    collected: int = 0  # flow entries deleted by user space
    node_flow_rate: int = 0  # the node's insert limit as set (`bgswitch limits`)
    node_flow_burst: int = 0


_CONFIG = "<IIQQQIIQII"


def unpack_config(raw: bytes) -> Config:
    """Decode struct bgs_config (56 bytes)."""
    return Config(*struct.unpack(_CONFIG, raw))


def pack_config(c: Config) -> bytes:
    """Encode struct bgs_config."""
    return struct.pack(_CONFIG, *c)


def cpu_part(node: int, ncpus: int) -> int:
    """Each CPU's part of a node-wide insert rate or burst (user/state.c config_set_limits):
    rounded up."""
    return (node + ncpus - 1) // ncpus


def unpack_u64(raw: bytes) -> int:
    """A __u64 counter."""
    return struct.unpack("<Q", raw)[0]


def unpack_backend_stats(raw: bytes) -> dict:
    """struct bgs_backend_stats as a dict of its fields."""
    return dict(zip(BACKEND_STATS, struct.unpack("<6Q", raw)))


def unpack_service_stats(raw: bytes) -> dict:
    """struct bgs_service_stats as a dict (drops by reason as drop_<REASON>)."""
    return dict(zip(SERVICE_STATS, struct.unpack(f"<{len(SERVICE_STATS)}Q", raw)))
