"""Load a BPF object file with the system's libbpf through ctypes, pinning nothing.

For the tests that need the verifier's verdict on a build other than the one the bgswitch
command embeds (tests/test_verifier.py): the object is opened, every map's pin path is cleared
(the maps are created private to this process, never reused from or pinned to a bpffs), it is
loaded, and each program's BPF_OBJ_GET_INFO_BY_FD is read; closing the object frees it all.

    with bpfobj.Object("/tmp/x/bgswitch.bpf.o") as obj:
        err = obj.load()                      # 0, or -errno (the verifier's log on stderr)
        infos = obj.prog_infos()              # -> [bpfsys.ProgInfo], one per program
"""

import ctypes
import ctypes.util
import os
from typing import List

from . import bpfsys

_lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
_p = ctypes.c_void_p
for _name, _res, _args in [
    ("bpf_object__open_file", _p, [ctypes.c_char_p, _p]),
    ("bpf_object__load", ctypes.c_int, [_p]),
    ("bpf_object__close", None, [_p]),
    ("bpf_object__next_map", _p, [_p, _p]),
    ("bpf_object__next_program", _p, [_p, _p]),
    ("bpf_map__set_pin_path", ctypes.c_int, [_p, ctypes.c_char_p]),
    ("bpf_program__fd", ctypes.c_int, [_p]),
]:
    _fn = getattr(_lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args


class Object:
    """One opened BPF object file; ``close()`` (or the with block) frees maps and programs."""

    def __init__(self, path: str):
        self.obj = _lib.bpf_object__open_file(os.fsencode(path), None)
        if not self.obj:
            err = ctypes.get_errno()
            raise OSError(err, f"libbpf: cannot open {path}: {os.strerror(err)}")
        m = _lib.bpf_object__next_map(self.obj, None)
        while m:
            err = _lib.bpf_map__set_pin_path(m, None)
            if err:
                self.close()
                raise OSError(-err, f"libbpf: cannot clear a map's pin path: {os.strerror(-err)}")
            m = _lib.bpf_object__next_map(self.obj, m)

    def load(self) -> int:
        """Create the maps and load every program; 0, or -errno."""
        return _lib.bpf_object__load(self.obj)

    def prog_infos(self) -> List[bpfsys.ProgInfo]:
        """The kernel's record of each loaded program, in the object's order."""
        out = []
        p = _lib.bpf_object__next_program(self.obj, None)
        while p:
            out.append(bpfsys.prog_info(_lib.bpf_program__fd(p)))
            p = _lib.bpf_object__next_program(self.obj, p)
        return out

    def close(self) -> None:
        if self.obj:
            _lib.bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self) -> "Object":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
