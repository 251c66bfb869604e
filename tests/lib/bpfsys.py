"""The bpf(2) system call through ctypes: just what the data-plane unit tests need.

Everything works on raw bytes: keys and values are ``bytes`` exactly as the kernel stores them
(tests/lib/model.py packs and unpacks bgswitch's structures). No third-party dependency.

    fd = obj_get("/sys/fs/bpf/bgswitch/progs/bgs_ingress")
    res = prog_test_run(fd, frame)          # -> TestRun(retval, data, duration)
    info = prog_info(fd)                    # -> ProgInfo(id, name, verified_insns)

    flows = Map.open("/sys/fs/bpf/bgswitch/bgs_flows")
    value = flows.lookup(key)               # -> bytes, or None when absent
    per_cpu = Map.open(".../bgs_stats").lookup_percpu(key)   # -> [bytes] one per possible CPU

    inner = Map.by_id(map_id)               # a map known by its id (e.g. a map-in-map's value)
    values = inner.array_values()           # -> [bytes] every entry of an array, one batch
    raw = inner.array_raw()                 # -> bytes: the same, as one string

Errors raise ``BPFError`` (an ``OSError`` carrying errno and the command's name).
"""

import ctypes
import errno as _errno
import os
import platform
import struct
from typing import Iterator, List, NamedTuple, Optional

# bpf(2) syscall number per machine (only x86_64 is needed today; the others are cheap to list).
_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "riscv64": 280}

# enum bpf_cmd
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24

_CMD_NAMES = {
    BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM",
    BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_MAP_GET_FD_BY_ID: "BPF_MAP_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH",
}

# Map update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# Map types (enum bpf_map_type).
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
# Map types whose values are per CPU.
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                    BPF_MAP_TYPE_LRU_PERCPU_HASH}

# Verdicts, for readable assertions.
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
TC_ACT_OK = 0
TC_ACT_SHOT = 2


class BPFError(OSError):
    """A failed bpf(2) command: ``errno`` is set, ``cmd`` names the command."""

    def __init__(self, err: int, cmd: int, what: str = ""):
        self.cmd = _CMD_NAMES.get(cmd, str(cmd))
        msg = f"{self.cmd}{' ' + what if what else ''}: {os.strerror(err)}"
        super().__init__(err, msg)


# --- bpf_attr layouts, one per command (each a prefix of union bpf_attr) ------------------------

class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # also next_key
        ("flags", ctypes.c_uint64),
    ]


class _ObjGetAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _GetIdAttr(ctypes.Structure):
    """BPF_*_GET_FD_BY_ID."""

    _fields_ = [
        ("id", ctypes.c_uint32),  # map_id / prog_id ...
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _BatchAttr(ctypes.Structure):
    """BPF_MAP_*_BATCH."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    """The leading fields of struct bpf_map_info (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _nr() -> int:
    try:
        return _SYSCALL_NR[platform.machine()]
    except KeyError:
        raise RuntimeError(f"bpfsys: no bpf(2) syscall number for {platform.machine()}") from None


def bpf(cmd: int, attr: ctypes.Structure, what: str = "") -> int:
    """Issue bpf(cmd, &attr, sizeof(attr)); return the result or raise BPFError."""
    ret = _libc.syscall(ctypes.c_long(_nr()), ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        raise BPFError(ctypes.get_errno(), cmd, what)
    return ret


def _buf(data: bytes, size: Optional[int] = None):
    """A C buffer holding ``data`` (zero-padded to ``size``); keep it alive while in use."""
    size = len(data) if size is None else size
    b = ctypes.create_string_buffer(size)
    ctypes.memmove(b, data, min(len(data), size))
    return b


# --- objects --------------------------------------------------------------------------------------

def obj_get(path: str, flags: int = 0) -> int:
    """BPF_OBJ_GET: open a pinned map or program; returns a new fd (close it with os.close)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(p), file_flags=flags)
    return bpf(BPF_OBJ_GET, attr, path)


def map_get_fd_by_id(map_id: int) -> int:
    """BPF_MAP_GET_FD_BY_ID: open a map by its id (e.g. the id a lookup in a map of maps
    returns from user space); a new fd. Raises BPFError(ENOENT) when no map has that id
    (any more)."""
    attr = _GetIdAttr(id=map_id)
    return bpf(BPF_MAP_GET_FD_BY_ID, attr, f"id {map_id}")


class MapInfo(NamedTuple):
    """What BPF_OBJ_GET_INFO_BY_FD says of a map."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map fd."""
    info = _MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.map_flags, info.name.decode(errors="replace"))


# --- programs -------------------------------------------------------------------------------------

# struct bpf_prog_info (uapi/linux/bpf.h): the offsets of the fields read here.
_PROG_INFO_SIZE = 232  # up to and including attach_btf_id; the kernel fills what fits
_PROG_INFO_ID = 4
_PROG_INFO_NAME = 64  # char name[BPF_OBJ_NAME_LEN = 16]
_PROG_INFO_VERIFIED_INSNS = 216


class ProgInfo(NamedTuple):
    """What BPF_OBJ_GET_INFO_BY_FD says of a program (the fields the tests read)."""

    id: int
    name: str
    verified_insns: int  # instructions the verifier processed to accept it


def prog_info(fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a program fd."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = _InfoAttr(bpf_fd=fd, info_len=_PROG_INFO_SIZE, info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    raw = info.raw
    name = raw[_PROG_INFO_NAME:_PROG_INFO_NAME + 16].split(b"\0", 1)[0]
    return ProgInfo(struct.unpack_from("<I", raw, _PROG_INFO_ID)[0],
                    name.decode(errors="replace"),
                    struct.unpack_from("<I", raw, _PROG_INFO_VERIFIED_INSNS)[0])


class TestRun(NamedTuple):
    """Result of BPF_PROG_TEST_RUN: the program's return value, the packet after it, the
    average run time in ns."""

    retval: int
    data: bytes
    duration: int


# struct __sk_buff (uapi/linux/bpf.h): the offset of the one field the tests set.
SKB_INGRESS_IFINDEX = 36


def skb_ctx(ingress_ifindex: int) -> bytes:
    """A struct __sk_buff context for BPF_PROG_TEST_RUN of a TC program, up to and including
    ingress_ifindex (the kernel zeroes the rest): the interface the packet came in by, which
    the program reads as skb->ingress_ifindex."""
    return bytes(SKB_INGRESS_IFINDEX) + struct.pack("<I", ingress_ifindex)


def prog_test_run(prog_fd: int, data_in: bytes, data_size_out: Optional[int] = None,
                  repeat: int = 1, ctx_in: Optional[bytes] = None) -> TestRun:
    """BPF_PROG_TEST_RUN: run a program once (or ``repeat`` times) on ``data_in``.

    ``data_in`` is a whole frame, Ethernet header first (the kernel wants at least 14 bytes).
    ``data_size_out`` is the output buffer size, by default the input size plus 256.
    ``ctx_in`` is the program's context (e.g. skb_ctx()), None for the kernel's default.
    """
    if data_size_out is None:
        data_size_out = len(data_in) + 256
    inb = _buf(data_in)
    outb = ctypes.create_string_buffer(max(data_size_out, 1))
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data_in),
                        data_size_out=data_size_out, data_in=ctypes.addressof(inb),
                        data_out=ctypes.addressof(outb), repeat=repeat)
    if ctx_in is not None:
        ctxb = _buf(ctx_in)
        attr.ctx_in = ctypes.addressof(ctxb)
        attr.ctx_size_in = len(ctx_in)
    bpf(BPF_PROG_TEST_RUN, attr)
    return TestRun(attr.retval, outb.raw[:attr.data_size_out], attr.duration)


# --- maps -----------------------------------------------------------------------------------------

def map_lookup(fd: int, key: bytes, value_size: int) -> Optional[bytes]:
    """BPF_MAP_LOOKUP_ELEM: the value under ``key``, or None when there is none.

    For a per-CPU map ``value_size`` must be the whole per-CPU buffer (see percpu_lookup)."""
    k = _buf(key)
    v = ctypes.create_string_buffer(value_size)
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except BPFError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """BPF_MAP_UPDATE_ELEM: store ``value`` under ``key`` (flags BPF_ANY/NOEXIST/EXIST)."""
    k, v = _buf(key), _buf(value)
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v),
                        flags=flags)
    bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: bytes) -> bool:
    """BPF_MAP_DELETE_ELEM: returns False when the key was not there."""
    k = _buf(key)
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k))
    try:
        bpf(BPF_MAP_DELETE_ELEM, attr)
    except BPFError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_get_next_key(fd: int, key: Optional[bytes], key_size: int) -> Optional[bytes]:
    """BPF_MAP_GET_NEXT_KEY: the key after ``key`` (the first key when ``key`` is None), or
    None at the end."""
    k = _buf(key) if key is not None else None
    nk = ctypes.create_string_buffer(key_size)
    attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(k) if k is not None else 0,
                        value=ctypes.addressof(nk))
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, attr)
    except BPFError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    return nk.raw


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a map, by BPF_MAP_GET_NEXT_KEY (do not delete while iterating a hash)."""
    key = map_get_next_key(fd, None, key_size)
    while key is not None:
        yield key
        key = map_get_next_key(fd, key, key_size)


def map_lookup_batch(fd: int, key_size: int, value_size: int, count: int) -> tuple:
    """BPF_MAP_LOOKUP_BATCH from the start of a map, for up to ``count`` entries (a map that
    is not per CPU): (n, keys, values), the n keys and n values each as one byte string, in
    the map's order. One call for an array whose max_entries is ``count``; more calls as the
    kernel asks."""
    keys_out, vals_out, n = [], [], 0
    token = ctypes.create_string_buffer(max(key_size, 4))
    first = True
    while n < count:
        want = count - n
        keys = ctypes.create_string_buffer(key_size * want)
        vals = ctypes.create_string_buffer(value_size * want)
        attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(token),
                          out_batch=ctypes.addressof(token), keys=ctypes.addressof(keys),
                          values=ctypes.addressof(vals), count=want, map_fd=fd)
        done = False
        try:
            bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BPFError as e:
            if e.errno != _errno.ENOENT:
                raise
            done = True  # the end of the map: attr.count says how many came
        got = attr.count
        keys_out.append(keys.raw[:got * key_size])
        vals_out.append(vals.raw[:got * value_size])
        n += got
        first = False
        if done or got == 0:
            break
    return n, b"".join(keys_out), b"".join(vals_out)


def possible_cpus() -> int:
    """Number of possible CPUs, from /sys/devices/system/cpu/possible (e.g. "0-3,5")."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, (int(hi) if hi else int(lo)) + 1)
    return n


def percpu_value_size(value_size: int) -> int:
    """Size of one CPU's value in a per-CPU buffer: rounded up to 8."""
    return (value_size + 7) & ~7


def percpu_lookup(fd: int, key: bytes, value_size: int) -> Optional[List[bytes]]:
    """BPF_MAP_LOOKUP_ELEM on a per-CPU map: one ``value_size`` bytes value per possible CPU,
    or None when the key is absent."""
    stride = percpu_value_size(value_size)
    ncpu = possible_cpus()
    raw = map_lookup(fd, key, stride * ncpu)
    if raw is None:
        return None
    return [raw[i * stride:i * stride + value_size] for i in range(ncpu)]


class Map:
    """A map fd with its sizes, so that callers pass keys and values only.

    Use ``Map.open(path)`` for a pinned map; ``close()`` or a ``with`` block releases the fd.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.info = map_info(fd)
        self.key_size = self.info.key_size
        self.value_size = self.info.value_size
        self.percpu = self.info.type in PERCPU_MAP_TYPES

    @classmethod
    def open(cls, path: str) -> "Map":
        """Open a pinned map by path."""
        fd = obj_get(path)
        try:
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def by_id(cls, map_id: int) -> "Map":
        """Open a map by its id (BPF_MAP_GET_FD_BY_ID)."""
        fd = map_get_fd_by_id(map_id)
        try:
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Release the fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.info.name}: key is {len(key)} bytes, "
                             f"want {self.key_size}")

    def lookup(self, key: bytes) -> Optional[bytes]:
        """The value under ``key`` or None (for a per-CPU map: use lookup_percpu)."""
        self._check_key(key)
        if self.percpu:
            raise TypeError(f"map {self.info.name} is per CPU: use lookup_percpu")
        return map_lookup(self.fd, key, self.value_size)

    def lookup_percpu(self, key: bytes) -> Optional[List[bytes]]:
        """One value per possible CPU, or None."""
        self._check_key(key)
        return percpu_lookup(self.fd, key, self.value_size)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Store a value (for a per-CPU map, ``value`` is every CPU's value, rounded to 8
        and concatenated)."""
        self._check_key(key)
        want = (percpu_value_size(self.value_size) * possible_cpus() if self.percpu
                else self.value_size)
        if len(value) != want:
            raise ValueError(f"map {self.info.name}: value is {len(value)} bytes, want {want}")
        map_update(self.fd, key, value, flags)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False when it was not there."""
        self._check_key(key)
        return map_delete(self.fd, key)

    def keys(self) -> Iterator[bytes]:
        """Every key."""
        return map_keys(self.fd, self.key_size)

    def array_raw(self) -> bytes:
        """Every value of an array map (not per CPU), index 0 first, as one byte string, by
        BPF_MAP_LOOKUP_BATCH (arrays have every index: the values come in index order)."""
        if self.percpu:
            raise TypeError(f"map {self.info.name} is per CPU")
        n, keys, vals = map_lookup_batch(self.fd, self.key_size, self.value_size,
                                         self.info.max_entries)
        if n != self.info.max_entries or keys != struct.pack(f"<{n}I", *range(n)):
            raise AssertionError(f"map {self.info.name}: batch lookup gave {n} entries, not "
                                 f"indexes 0 to {self.info.max_entries - 1}")
        return vals

    def array_values(self) -> List[bytes]:
        """Every value of an array map (not per CPU), index 0 first."""
        raw, vs = self.array_raw(), self.value_size
        return [raw[i:i + vs] for i in range(0, len(raw), vs)]

    def items(self) -> Iterator[tuple]:
        """(key, value) pairs of a map that is not per CPU, skipping keys deleted meanwhile."""
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v
