"""Katran's XDP balancer, measured side by side with bgswitch (`make bench KATRAN_OBJ=path`).

Nothing of Katran is in this repository. The user builds its balancer object (balancer.bpf.o)
from Katran's own source with Katran's own pipeline and passes its path; this module loads it
with libbpf (benchlib.c) and writes its maps the way Katran's user space (KatranLb) does for
one VIP with one real, at its default sizes:

* ctl_array[0]: the default gateway's MAC address (where encapsulated packets go);
* vip_map: the VIP (address, port, protocol) -> flags 0 and its vip_num;
* reals: the real at index vip_num + 1 (index 0 means "no real" to Katran);
* ch_rings: the VIP's whole consistent-hash ring (RING_SIZE positions) -> that real;
* lru_mapping: one LRU hash per forwarding core (every CPU here), each of
  LruSize / cores entries (KatranConfig's default LruSize: 8,000,000), made with the key and
  value sizes of the object's inner map definition, as KatranLb::initLrus() does.

Katran encapsulates (IPIP, or IPv6-in-IPv6) toward the real; expected_output() builds that
frame from the input independently, following Katran's encap_v4() / encap_v6() and
create_encap_ipv4_src() / create_encap_ipv6_src(). Its counters (the per-CPU `stats` array,
indexes from its balancer_consts.h) say which path each packet took.

Katran skips its LRU update above MAX_CONN_RATE new flows per second and CPU (is_under_flood(),
125,000 in its default build); a run of BPF_PROG_TEST_RUN new flows comes faster, so the rate
counter is reset before each block (reset_conn_rate()), as bgswitch's insert limit is raised out
of its runs' reach: both make every insert they would make on a node below the limit.
"""

import ctypes
import os
import struct
from typing import Dict, List

from lib import bpfsys
import pkt
from common import BenchError, close_all, lib

BPF_MAP_TYPE_LRU_HASH = 9
KATRAN_LRU_SIZE = 8000000  # KatranConfig's LruSize default (kDefaultLruSize), over all cores
XDP_PASS, XDP_TX = 2, 3
F_IPV6 = 1
# Indexes into `stats` past MAX_VIPS (balancer_consts.h).
LRU_CNTRS, LRU_MISS_CNTR, NEW_CONN_RATE_CNTR, XDP_PASS_CNTR = 0, 1, 2, 19
IPIP_V4_PREFIX = 4268  # 172.16/16 as a little-endian __u32, the outer source's first half
DEFAULT_TTL = 64


def _dup_map(fd: int) -> bpfsys.Map:
    """A Map on our own copy of an fd the libbpf object owns."""
    return bpfsys.Map(os.dup(fd))


def memlock(fd: int) -> int:
    """The kernel's memlock figure of a map fd (what bpftool shows as bytes_memlock)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise BenchError(f"no memlock in fdinfo of fd {fd}")


class Katran:
    """Katran's balancer object, loaded and configured (see the module docstring). close()
    releases everything."""

    def __init__(self, path: str):
        self.path = path
        self.fds: List[int] = []
        self.maps: Dict[str, bpfsys.Map] = {}
        err = ctypes.c_int(0)
        self.obj = lib().bb_obj_open(path.encode(), ctypes.byref(err))
        if not self.obj:
            raise BenchError(f"KATRAN_OBJ {path}: cannot open: {os.strerror(-err.value)}")
        ksz, vsz = ctypes.c_uint32(), ctypes.c_uint32()
        if lib().bb_obj_inner_sizes(self.obj, b"lru_mapping", ctypes.byref(ksz),
                                    ctypes.byref(vsz)):
            self.close()
            raise BenchError(f"KATRAN_OBJ {path}: no lru_mapping map-in-map: not Katran's "
                             "balancer object?")
        self.lru_key_size, self.lru_value_size = ksz.value, vsz.value
        rc = lib().bb_obj_load(self.obj)
        if rc:
            self.close()
            raise BenchError(f"KATRAN_OBJ {path}: loading failed: {os.strerror(-rc)}")
        self.prog_fd = lib().bb_obj_prog_fd(self.obj, b"balancer_ingress")
        if self.prog_fd < 0:
            self.close()
            raise BenchError(f"KATRAN_OBJ {path}: no program balancer_ingress")
        for name in ("vip_map", "reals", "ch_rings", "ctl_array", "lru_mapping", "stats"):
            fd = lib().bb_obj_map_fd(self.obj, name.encode())
            if fd < 0:
                self.close()
                raise BenchError(f"KATRAN_OBJ {path}: no map {name}")
            self.maps[name] = _dup_map(fd)
        # Its compile-time sizes, as its maps say: MAX_VIPS entries in vip_map, and
        # MAX_VIPS * RING_SIZE in ch_rings.
        self.max_vips = self.maps["vip_map"].info.max_entries
        self.ring_size = self.maps["ch_rings"].info.max_entries // self.max_vips
        self.vips: Dict[bytes, int] = {}
        self.lrus: Dict[str, Dict[int, int]] = {}
        self.gw_mac = b""

    def close(self) -> None:
        close_all(self.maps, self.fds)
        if self.obj:
            lib().bb_obj_close(self.obj)
            self.obj = None

    def verified_insns(self) -> int:
        return lib().bb_prog_verified_insns(self.prog_fd)

    # --- configuration, as KatranLb writes it ---------------------------------------------------

    def set_gateway(self, mac: bytes) -> None:
        """ctl_array[0]: the default router's MAC (a struct ctl_value, 8 bytes)."""
        self.gw_mac = mac
        self.maps["ctl_array"].update(struct.pack("<I", 0), mac + bytes(2))

    def add_vip(self, vip: str, port: int, real: str) -> None:
        """A TCP VIP with one real: vip_map, reals and the VIP's whole ring."""
        num = len(self.vips)
        key = _vip_key(vip, port)
        self.maps["vip_map"].update(key, struct.pack("<II", 0, num))
        flags = F_IPV6 if pkt.family(real) == 6 else 0
        raddr = pkt.addr_bytes(real)
        value = (raddr + bytes(16 - len(raddr)) + bytes([flags])).ljust(
            self.maps["reals"].value_size, b"\0")
        self.maps["reals"].update(struct.pack("<I", num + 1), value)
        rc = lib().bb_fill_u32(self.maps["ch_rings"].fd, num * self.ring_size, self.ring_size,
                               num + 1)
        if rc:
            raise BenchError(f"Katran ch_rings: {os.strerror(-rc)}")
        self.vips[key] = num

    def make_lrus(self, name: str, per_core: int, cpus=None) -> Dict[int, int]:
        """One LRU hash per possible CPU, or per CPU of `cpus` (KatranLb's per-core connection
        tables), kept under `name`; use_lrus() puts a set in lru_mapping."""
        lrus = {}
        for cpu in cpus if cpus is not None else range(bpfsys.possible_cpus()):
            fd = lib().bb_map_create(BPF_MAP_TYPE_LRU_HASH, f"katran_lru{cpu}".encode(),
                                     self.lru_key_size, self.lru_value_size, per_core, 0)
            if fd < 0:
                raise BenchError(f"Katran LRU of {per_core} entries: {os.strerror(-fd)}")
            self.fds.append(fd)
            lrus[cpu] = fd
        self.lrus[name] = lrus
        return lrus

    def use_lrus(self, name: str) -> None:
        for cpu, fd in self.lrus[name].items():
            self.maps["lru_mapping"].update(struct.pack("<I", cpu), struct.pack("<I", fd))

    def fill_lru(self, fd: int, vip: str, port: int, count: int, start: int) -> None:
        """Insert `count` synthetic flows to the VIP (benchlib's clients) into one LRU, real
        index of the VIP, as its own inserts would."""
        key = _flow_key("0.0.0.0", vip, 0, port, self.lru_key_size)
        num = self.vips[_vip_key(vip, port)]
        val = struct.pack("<IIQ", num + 1, 0, 0)[:self.lru_value_size]
        rc = lib().bb_fill_keys(fd, key, len(key), val, len(val), 0, 32, start, count)
        if rc:
            raise BenchError(f"filling Katran's LRU: {os.strerror(-rc)}")

    def reset_conn_rate(self) -> None:
        """Zero the new-connection rate counter of every CPU (see the module docstring)."""
        m = self.maps["stats"]
        m.update(struct.pack("<I", self.max_vips + NEW_CONN_RATE_CNTR),
                 bytes(bpfsys.percpu_value_size(m.value_size) * bpfsys.possible_cpus()))

    def counters(self) -> Dict[str, int]:
        """NEW: TCP SYNs that missed the LRU (and were placed by the ring); HIT: VIP packets
        found in the LRU; PASS: packets passed to the stack."""
        m = self.maps["stats"]

        def sums(idx):
            vals = m.lookup_percpu(struct.pack("<I", self.max_vips + idx))
            return [sum(struct.unpack_from("<QQ", v)[i] for v in vals) for i in (0, 1)]

        total, misses = sums(LRU_CNTRS)
        syn_miss, _ = sums(LRU_MISS_CNTR)
        passed, _ = sums(XDP_PASS_CNTR)
        return {"NEW": syn_miss, "HIT": total - misses, "PASS": passed}

    # --- what it makes of a frame -----------------------------------------------------------------

    def expected_output(self, frame: bytes, real: str) -> bytes:
        """The frame Katran sends for a client frame to one of its VIPs: the client's IP packet
        unchanged behind a new IP header toward the real, in a new Ethernet header from the
        node (the frame's destination MAC) to the gateway."""
        inner = frame[pkt.ETH_LEN:]
        v6 = inner[0] >> 4 == 6
        sport = frame[pkt.ETH_LEN + (40 if v6 else 20):][:2]
        raddr = pkt.addr_bytes(real)
        if len(raddr) == 4:
            outer = _outer_v4(inner, v6, sport, raddr)
            ethertype = b"\x08\x00"
        else:
            outer = _outer_v6(inner, v6, sport, raddr)
            ethertype = b"\x86\xdd"
        return self.gw_mac + frame[:6] + ethertype + outer + inner


def _vip_key(vip: str, port: int) -> bytes:
    """struct vip_definition: the address (16 bytes), the port as on the wire, the protocol."""
    a = pkt.addr_bytes(vip)
    return a + bytes(16 - len(a)) + struct.pack("!H", port) + bytes([6, 0])


def _flow_key(client: str, vip: str, sport: int, dport: int, size: int) -> bytes:
    """struct flow_key: source, destination (16 bytes each), the ports as on the wire, the
    protocol, padded to its size."""
    c, v = pkt.addr_bytes(client), pkt.addr_bytes(vip)
    return (c + bytes(16 - len(c)) + v + bytes(16 - len(v)) + struct.pack("!HH", sport, dport)
            + bytes([6])).ljust(size, b"\0")


def _inner_src_word(inner: bytes, v6: bool) -> int:
    """The client address's last 32 bits as Katran reads them (a __be32 in a little-endian
    register)."""
    off = 8 + 12 if v6 else 12
    return struct.unpack_from("<I", inner, off)[0]


def _inner_tos(inner: bytes, v6: bool) -> int:
    if v6:
        return ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
    return inner[1]


def _outer_v4(inner: bytes, v6: bool, sport: bytes, real: bytes) -> bytes:
    if v6:
        raise BenchError("Katran sends IPv6 clients to IPv6 reals only")
    # create_encap_ipv4_src(): the port in host order in the upper half, xor the source, its
    # upper half kept, 172.16 in the lower one.
    suffix = (struct.unpack("!H", sport)[0] << 16) ^ _inner_src_word(inner, v6)
    src = struct.pack("<I", (suffix & 0xFFFF0000) | IPIP_V4_PREFIX)
    ip = struct.pack("!BBHHHBBH", 0x45, _inner_tos(inner, v6), len(inner) + 20, 0, 0,
                     DEFAULT_TTL, 4, 0) + src + real
    return ip[:10] + struct.pack("!H", pkt.csum(ip)) + ip[12:]


def _outer_v6(inner: bytes, v6: bool, sport: bytes, real: bytes) -> bytes:
    # create_encap_ipv6_src(): 0100::/64, then the source's last word xor the port.
    word = _inner_src_word(inner, v6) ^ struct.unpack("<H", sport)[0]
    src = struct.pack("<IIII", 1, 0, 0, word)
    tc = _inner_tos(inner, v6)
    payload = len(inner) if not v6 else struct.unpack_from("!H", inner, 4)[0] + 40
    first = (6 << 28) | (tc << 20)
    return struct.pack("!IHBB", first, payload, 41 if v6 else 4, DEFAULT_TTL) + src + real


def lru_sizes(path: str):
    """(key size, value size) of the per-core LRU an object's lru_mapping holds."""
    err = ctypes.c_int(0)
    obj = lib().bb_obj_open(path.encode(), ctypes.byref(err))
    if not obj:
        raise BenchError(f"KATRAN_OBJ {path}: cannot open: {os.strerror(-err.value)}")
    ksz, vsz = ctypes.c_uint32(), ctypes.c_uint32()
    rc = lib().bb_obj_inner_sizes(obj, b"lru_mapping", ctypes.byref(ksz), ctypes.byref(vsz))
    lib().bb_obj_close(obj)
    if rc:
        raise BenchError(f"KATRAN_OBJ {path}: no lru_mapping map-in-map")
    return ksz.value, vsz.value


def lru_bytes_per_flow(path: str, size: int) -> Dict:
    """Katran's memory per tracked flow: the growth of memlock of its per-core LRU (its only
    per-flow map), made as KatranLb makes it, from `size` to 2 * `size` entries, over the
    growth of entries."""
    ksz, vsz = lru_sizes(path)
    figures = []
    for n in (size, 2 * size):
        fd = lib().bb_map_create(BPF_MAP_TYPE_LRU_HASH, b"katran_lru_mem", ksz, vsz, n, 0)
        if fd < 0:
            raise BenchError(f"Katran LRU of {n} entries: {os.strerror(-fd)}")
        try:
            figures.append(memlock(fd))
        finally:
            os.close(fd)
    return {"entries": [size, 2 * size], "bytes_memlock": figures,
            "bytes_per_flow": round((figures[1] - figures[0]) / size, 1),
            "key_size": ksz, "value_size": vsz}
