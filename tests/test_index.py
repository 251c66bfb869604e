"""The service index (user/index.c): bgs_svc_index, service name -> id, a hint that commands
check on every use. Whatever it holds, missing, stale or pointing nowhere, a command must act on
the service of that name and set the entry right; a deleted service must stay unknown; `service
add` sets the new service's entry; and `detach --purge` removes it with the rest of the state.

Topology and style as tests/test_ops.py (tests/lib/netns.py); every test attaches bgswitch afresh
with a pin root of its own and purges it afterwards.

Run as root: /usr/bin/pytest -q tests/test_index.py   (BGSWITCH=path picks another binary)
"""

import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import bpfsys  # noqa: E402
from lib import model  # noqa: E402
from lib.netns import NODE_IFACE, VIP_PORT, one_line_error  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, BPF)")

INDEX = "bgs_svc_index"
NAME_LEN = 32  # BGS_NAME_LEN
VIPS = {"api": "10.0.0.101", "web": "10.0.0.102"}  # web gets the higher id


@pytest.fixture
def sw(topo):
    """bgswitch attached (mode auto) with services api and web, purged afterwards."""
    s = topo.bgswitch()
    s("attach", NODE_IFACE)
    try:
        for name, vip in VIPS.items():
            s.setup_service(name, vip=vip, port=VIP_PORT)
        yield s
    finally:
        for args, rc, out, err in s.history:  # shown by pytest when the test failed
            print(f"bgswitch {' '.join(map(str, args))} -> {rc}\n{out[:400]}{err}")
        problems = s.purge()
        assert problems == [], problems


def key(name):
    return name.encode().ljust(NAME_LEN, b"\0")


def index_entry(s, name):
    """The id the index gives name, or None."""
    with bpfsys.Map.open(f"{s.pin_root}/{INDEX}") as m:
        v = m.lookup(key(name))
    return None if v is None else struct.unpack("<I", v)[0]


def set_entry(s, name, svc):
    with bpfsys.Map.open(f"{s.pin_root}/{INDEX}") as m:
        m.update(key(name), struct.pack("<I", svc))


def ids(s):
    return {svc["name"]: svc["id"] for svc in s.status()["services"]}


def switch_word(s, svc):
    with bpfsys.Map.open(f"{s.pin_root}/bgs_switch") as m:
        return model.unpack_switch(m.lookup(struct.pack("<I", svc)))


def spoil_missing(s, svc_ids):
    os.unlink(f"{s.pin_root}/{INDEX}")


def spoil_other_service(s, svc_ids):
    set_entry(s, "web", svc_ids["api"])


def spoil_free_id(s, svc_ids):
    set_entry(s, "web", max(svc_ids.values()) + 5)


def spoil_out_of_range(s, svc_ids):
    set_entry(s, "web", 0xFFFFFFF0)


@pytest.mark.parametrize("spoil", [spoil_missing, spoil_other_service, spoil_free_id,
                                   spoil_out_of_range],
                         ids=["missing", "other-service", "free-id", "out-of-range"])
def test_index_wrong_entry_flips_the_named_service_and_is_set_right(sw, spoil):
    svc_ids = ids(sw)
    sw("flip", "web", "--no-check")  # the index is made and holds web
    assert index_entry(sw, "web") == svc_ids["web"]
    spoil(sw, svc_ids)
    before = {n: switch_word(sw, i) for n, i in svc_ids.items()}
    sw("flip", "web", "--no-check")
    after = {n: switch_word(sw, i) for n, i in svc_ids.items()}
    assert after["web"].generation == before["web"].generation + 1
    assert after["web"].share != before["web"].share
    assert after["api"] == before["api"], "the flip changed another service"
    assert index_entry(sw, "web") == svc_ids["web"]


def test_index_deleted_service_stays_unknown_and_readded_one_is_found(sw):
    svc_ids = ids(sw)
    sw("flip", "web", "--no-check")
    assert index_entry(sw, "web") == svc_ids["web"]
    sw("service", "del", "web")
    sw("service", "del", "api")
    p = sw.run("flip", "web", "--no-check")
    assert one_line_error(p, 1) == "bgswitch: unknown service 'web'"
    assert index_entry(sw, "web") is None, "a stale entry was left for a deleted service"
    # Added again, web gets the lowest free id (api's), not the one the index once gave it.
    sw.setup_service("web", vip=VIPS["web"], port=VIP_PORT)
    new_id = ids(sw)["web"]
    assert new_id != svc_ids["web"]
    set_entry(sw, "web", svc_ids["web"])  # what the index held before the deletes
    sw("flip", "web", "--no-check")
    assert sw.service("web")["active"] == "green"
    assert index_entry(sw, "web") == new_id


def test_index_service_add_sets_the_new_entry(sw):
    sw("service", "add", "fresh", f"10.0.0.103:{VIP_PORT}")
    entry = index_entry(sw, "fresh")  # read before any command could look it up
    assert entry is not None and entry == ids(sw)["fresh"]


def test_index_purge_removes_it(sw):
    sw("flip", "web", "--no-check")
    assert os.path.exists(f"{sw.pin_root}/{INDEX}")
    problems = sw.purge()
    assert problems == [] and not os.path.exists(sw.pin_root), problems
