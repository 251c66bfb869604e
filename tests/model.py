"""A Python mirror of bgswitch's data-plane definitions, for the unit tests.

- ``flow_hash`` mirrors ``flow_hash()`` of bpf/flow.bpf.h bit for bit, and ``choose_slot``
  the choice ``set->slot[flow_hash(key) % count]`` made for a new flow.
- ``pack_*`` / ``unpack_*`` mirror the structures of include/bgswitch.h as the kernel stores
  them (x86_64: little-endian host, natural alignment). Addresses and ports stay in network
  byte order inside them, as in the C structures.

The module is written from the C sources, not from the running program, so that the tests
compare two independent implementations.
"""

import socket
import struct
from typing import List, NamedTuple, Sequence

# --- constants of include/bgswitch.h -------------------------------------------------------------

BGS_BLUE, BGS_GREEN = 0, 1
COLORS = {"blue": BGS_BLUE, "green": BGS_GREEN}
BGS_COLOR_NONE = 0xFF
BGS_AF_INET = 4
BGS_MAX_BACKENDS = 256

BGS_BACKEND_FREE, BGS_BACKEND_ACTIVE, BGS_BACKEND_DRAINING = 0, 1, 2

BGS_FLOW_SYN = 0x01
BGS_FLOW_FIN_CLIENT = 0x02
BGS_FLOW_FIN_SERVER = 0x04
BGS_FLOW_RST = 0x08

IPPROTO_TCP = 6
IPPROTO_UDP = 17

# enum bgs_stat
STATS = [
    "RX", "NOT_VIP", "NOT_IP", "PARSE_ERR", "FRAGMENT", "VIP", "FLOW_HIT", "FLOW_NEW",
    "FLOW_REOPEN", "SYN_MISS", "NOSYN_MISS", "TX", "REPLY_NAT", "REPLY_NO_FLOW",
]
STAT = {name: i for i, name in enumerate(STATS)}

# enum bgs_drop_reason
DROPS = ["NOSYN_MISS", "NO_BACKEND", "BAD_BACKEND", "FLOW_INSERT"]
DROP = {name: i for i, name in enumerate(DROPS)}

# struct bgs_backend_stats fields, in order
BACKEND_STATS = ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "new_flows", "resets"]

# Sizes of the structures, as the maps must declare them.
SIZES = {
    "bgs_vip_key": 20,
    "bgs_vip": 4,
    "bgs_switch": 8,
    "bgs_set": 4 + 4 * BGS_MAX_BACKENDS,
    "bgs_backend": 28,
    "bgs_flow_key": 40,
    "bgs_flow": 40,
    "bgs_reverse": 24,
    "bgs_backend_addr": 20,
    "bgs_config": 32,
    "bgs_backend_stats": 48,
}

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


def _addr_words(addr: str) -> List[int]:
    """The four __u32 words of a bgs address as the host reads them: an IPv4 address's
    network-order bytes loaded little-endian into word 0, words 1..3 zero."""
    raw = socket.inet_aton(addr)
    return [struct.unpack("<I", raw)[0], 0, 0, 0]


def _port_host(port: int) -> int:
    """A port stored in network byte order, read as a little-endian __u16."""
    return struct.unpack("<H", struct.pack("!H", port))[0]


def flow_hash(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> int:
    """flow_hash() of bpf/flow.bpf.h for an IPv4 client-to-VIP 5-tuple (ports as numbers)."""
    s, d = _addr_words(saddr), _addr_words(daddr)
    h = 0x62677377  # "bgsw"
    for i in range(4):
        h = _mix(h, s[i])
        h = _mix(h, d[i])
    h = _mix(h, ((_port_host(sport) << 16) | _port_host(dport)) & _M32)
    h = _mix(h, proto)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def choose_slot(slots: Sequence[int], saddr: str, daddr: str, sport: int, dport: int,
                proto: int) -> int:
    """The backend slot a new flow gets from a set holding ``slots``."""
    return slots[flow_hash(saddr, daddr, sport, dport, proto) % len(slots)]


# --- structure codecs ----------------------------------------------------------------------------

def _addr16(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def _addr_str(raw: bytes) -> str:
    return socket.inet_ntoa(raw[:4])


def u32(v: int) -> bytes:
    """A __u32 map key (array index)."""
    return struct.pack("<I", v)


def pack_flow_key(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> bytes:
    """struct bgs_flow_key (40 bytes) of an IPv4 5-tuple."""
    return (_addr16(saddr) + _addr16(daddr) + struct.pack("!HH", sport, dport)
            + struct.pack("<BBH", proto, BGS_AF_INET, 0))


def pack_vip_key(addr: str, port: int, proto: int) -> bytes:
    """struct bgs_vip_key (20 bytes)."""
    return _addr16(addr) + struct.pack("!H", port) + struct.pack("<BB", proto, BGS_AF_INET)


class Flow(NamedTuple):
    """struct bgs_flow, decoded."""

    daddr: str
    dport: int
    color: int
    slot: int
    state: int
    last_seen: int


def unpack_flow(raw: bytes) -> Flow:
    """Decode struct bgs_flow (40 bytes: 4 bytes of padding before last_seen)."""
    dport, = struct.unpack_from("!H", raw, 16)
    color, _pad, slot, state = struct.unpack_from("<BBII", raw, 18)
    last_seen, = struct.unpack_from("<Q", raw, 32)
    return Flow(_addr_str(raw), dport, color, slot, state, last_seen)


def pack_flow(f: Flow) -> bytes:
    """Encode struct bgs_flow."""
    return (_addr16(f.daddr) + struct.pack("!H", f.dport)
            + struct.pack("<BBIII", f.color, 0, f.slot, f.state, 0)
            + struct.pack("<Q", f.last_seen))


class Reverse(NamedTuple):
    """struct bgs_reverse, decoded."""

    vaddr: str
    vport: int
    slot: int


def unpack_reverse(raw: bytes) -> Reverse:
    """Decode struct bgs_reverse (24 bytes)."""
    vport, = struct.unpack_from("!H", raw, 16)
    slot, = struct.unpack_from("<I", raw, 20)
    return Reverse(_addr_str(raw), vport, slot)


class Switch(NamedTuple):
    """struct bgs_switch, decoded."""

    generation: int
    active: int
    previous: int
    set_sel: int

    def set_index(self, svc: int, color: int) -> int:
        """bgs_sets key of the buffer that ``color`` uses now."""
        return (svc << 2) | ((color & 1) << 1) | ((self.set_sel >> (color & 1)) & 1)


def unpack_switch(raw: bytes) -> Switch:
    """Decode struct bgs_switch (8 bytes)."""
    gen, active, previous, set_sel, _pad = struct.unpack("<IBBBB", raw)
    return Switch(gen, active, previous, set_sel)


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


def unpack_backend(raw: bytes) -> Backend:
    """Decode struct bgs_backend (28 bytes)."""
    port, = struct.unpack_from("!H", raw, 16)
    family, state, svc, color, proto = struct.unpack_from("<BBIBB", raw, 18)
    return Backend(_addr_str(raw), port, family, state, svc, color, proto)


class Config(NamedTuple):
    """struct bgs_config, decoded."""

    layout_version: int
    flow_entries: int
    tcp_idle_ns: int
    udp_idle_ns: int
    closing_ns: int


def unpack_config(raw: bytes) -> Config:
    """Decode struct bgs_config (32 bytes)."""
    return Config(*struct.unpack("<IIQQQ", raw))


def pack_config(c: Config) -> bytes:
    """Encode struct bgs_config."""
    return struct.pack("<IIQQQ", *c)


def unpack_u64(raw: bytes) -> int:
    """A __u64 counter."""
    return struct.unpack("<Q", raw)[0]


def unpack_backend_stats(raw: bytes) -> dict:
    """struct bgs_backend_stats as a dict of its fields."""
    return dict(zip(BACKEND_STATS, struct.unpack("<6Q", raw)))

