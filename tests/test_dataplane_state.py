"""Data-plane unit tests: the maps, slots and configuration as the command leaves them.

Table-driven, as tests/lib/dataplane.py describes (the Case runner, the addresses and
the common set-ups; the ``bgs`` fixture is in tests/lib/unit_fixtures.py).
"""

import os

from lib import bpfsys
from lib import model
from lib.bpfsys import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_PERCPU_ARRAY
from lib.dataplane import web
from lib.unit_fixtures import MAP_NAMES


# === state as the command leaves it ===============================================================

def test_state_maps_match_model(bgs):
    """Every pinned map has the key and value sizes of include/bgswitch.h (layout 4) as
    model.py reads them, the pin root holds exactly unit_fixtures.MAP_NAMES, attach --flows
    sized the flow table, bgs_nexthops holds a next hop per slot and CPU, bgs_tables is a map
    of maps with a key per service, color and buffer, and bgs_config holds the defaults: the
    insert limit the flow table's size every BGS_NEW_FLOW_TURNOVER seconds with a burst of an
    eighth of it, for the node, and each CPU's part of both, rounded up."""
    want = {
        "bgs_vips": ("bgs_vip_key", "bgs_vip"), "bgs_switch": (4, "bgs_switch"),
        "bgs_services": (4, "bgs_service"),
        "bgs_sets": (4, "bgs_set"), "bgs_backends": (4, "bgs_backend"),
        "bgs_backend_addrs": ("bgs_backend_addr", "bgs_backend_ref"),
        "bgs_flows": ("bgs_conn_key", "bgs_flow"), "bgs_nexthops": (4, "bgs_nexthop"),
        "bgs_config": (4, "bgs_config"),
        "bgs_stats": (4, 8), "bgs_drops": (4, 8), "bgs_backend_stats": (4, "bgs_backend_stats"),
        "bgs_vip_addrs": ("bgs_vip_addr", 4), "bgs_frags": ("bgs_frag_key", "bgs_frag"),
        "bgs_service_stats": (4, "bgs_service_stats"),
        "bgs_insert_budget": (4, "bgs_bucket"), "bgs_tx_ports": (4, 4),
        "bgs_tables": (4, 4),  # a map of maps: user space reads the inner map's id
        "bgs_vip_filter": (4, 8),
        # local clients (bpf/sock.bpf.h): netns cookies, per-slot counts, socket storage
        "bgs_local_netns": (8, 4), "bgs_local_counts": (4, 16), "bgs_socks": (4, 48),
    }
    for name, (k, v) in want.items():
        info = bgs.map(name).info
        ks = model.SIZES[k] if isinstance(k, str) else k
        vs = model.SIZES[v] if isinstance(v, str) else v
        assert (info.key_size, info.value_size) == (ks, vs), name
    pinned = {n for n in os.listdir(bgs.pin_root) if n != "progs"}
    assert pinned == set(MAP_NAMES)
    assert bgs.map("bgs_stats").info.max_entries == len(model.STATS)
    assert bgs.map("bgs_drops").info.max_entries == len(model.DROPS)
    assert bgs.map("bgs_flows").info.max_entries == 4096
    nexthops = bgs.map("bgs_nexthops").info
    assert (nexthops.type, nexthops.max_entries) == (BPF_MAP_TYPE_PERCPU_ARRAY,
                                                     model.BGS_MAX_SLOTS)
    assert bgs.map("bgs_frags").info.max_entries == model.BGS_FRAG_ENTRIES
    budget = bgs.map("bgs_insert_budget")
    assert (budget.info.type, budget.info.max_entries) == (BPF_MAP_TYPE_PERCPU_ARRAY, 1)
    rate, burst = 4096 // model.BGS_NEW_FLOW_TURNOVER, 4096 // model.BGS_NEW_FLOW_BURST_DIV
    ncpus = bpfsys.possible_cpus()
    assert bgs.config() == model.Config(
        layout_version=model.BGS_LAYOUT_VERSION, flow_entries=4096, tcp_idle_ns=900 * 10**9,
        udp_idle_ns=30 * 10**9, closing_ns=10 * 10**9,
        new_flow_rate=model.cpu_part(rate, ncpus), new_flow_burst=model.cpu_part(burst, ncpus),
        collected=0, node_flow_rate=rate, node_flow_burst=burst)
    tables = bgs.map("bgs_tables").info
    assert (tables.type, tables.max_entries) == (BPF_MAP_TYPE_ARRAY_OF_MAPS,
                                                  4 * bgs.map("bgs_switch").info.max_entries)
    assert model.BGS_LAYOUT_VERSION == 4


def test_state_backend_slots_follow_add_order(bgs):
    """Slots are handed out from 0 in the order backends are added, the service id from 0,
    and the active set lists the color's slots in that order; the switch sends every new
    flow to blue (share 0) with nothing to roll back to, and each color's current buffer has
    a lookup table of the default size (BGS_TABLE_SIZE, in entry 0) naming only that color's
    slots, every one of them (weight 1 each)."""
    slots = web(bgs, blue=3, green=2)
    assert bgs.services["web"] == 0
    assert slots == {"blue": [0, 1, 2], "green": [3, 4]}
    assert bgs.active_set(0, model.BGS_BLUE) == [0, 1, 2]
    assert bgs.active_set(0, model.BGS_GREEN) == [3, 4]
    sw = bgs.switch(0)
    assert (sw.share, sw.flags) == (0, 0)
    assert (sw.active, sw.previous) == (model.BGS_BLUE, model.BGS_COLOR_NONE)
    assert bgs.service(0).table_size == model.BGS_TABLE_SIZE
    assert bgs.service(0).lb == model.BGS_LB_MAGLEV
    for color, want in ((model.BGS_BLUE, slots["blue"]), (model.BGS_GREEN, slots["green"])):
        with bgs.table_map(sw.set_index(0, color)) as inner:
            assert (inner.info.type, inner.info.max_entries) == (
                BPF_MAP_TYPE_ARRAY, model.BGS_TABLE_HDR + model.BGS_TABLE_SIZE)
            table = model.unpack_table(inner.array_raw())
        assert len(table) == model.BGS_TABLE_SIZE and set(table) == set(want), color
