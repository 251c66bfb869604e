"""Fleet documents for the validator's tests: a valid document, the bad ones of issue 16 (and
more) as a table, a seeded generator of mutated and random documents, an independent model of
which generated documents are valid, and the runner of bgs-doccheck (the decoder of the agent and
the --etcd commands, alone).

Used by tests/test_fleet_doc.py (decoder only, fuzz) and tests/test_fleet.py (through etcd to
real agents).
"""

import copy
import ipaddress
import json
import os
import random
import subprocess

from .model import is_prime

SHARE_MAX = 10000
WEIGHT_MAX = 1000
TABLE_MIN, TABLE_MAX = 251, 131071
GEN_MAX = 0xFFFFFFFF
NAME_LEN = 32
MAX_BACKENDS = 256


def doc(name="web", vip="10.79.100.1:80", proto="tcp", generation=5, green_share=0,
        previous_share=None, lb="maglev", table_size=16381, split_by="flow", blue=None,
        green=None):
    """A valid document (as the encoder writes it) with two blue and two green backends."""
    blue = blue if blue is not None else ["10.79.200.11:8081", "10.79.200.12:8081"]
    green = green if green is not None else ["10.79.201.11:8082", "10.79.201.12:8082"]
    return {"name": name, "vip": vip, "proto": proto, "generation": generation,
            "green_share": green_share, "previous_share": previous_share, "lb": lb,
            "table_size": table_size, "split_by": split_by,
            "backends": {"blue": [{"addr": a, "weight": 1} for a in blue],
                         "green": [{"addr": a, "weight": 1} for a in green]}}


def text(d):
    return json.dumps(d, separators=(",", ":"))


def _set(path, value, drop=False):
    """A mutation: the value at path (keys and indexes) of the document replaced or dropped."""
    def mutate(d):
        d = copy.deepcopy(d)
        o = d
        for k in path[:-1]:
            o = o[k]
        if drop:
            del o[path[-1]]
        else:
            o[path[-1]] = value
        return text(d)
    return mutate


def _raw(s):
    return lambda d: s


def _append(tail):
    return lambda d: text(d) + tail


# (case id, the bad document from a valid one, words the refusal must contain). Issue 16,
# "What failed", points 1 to 4, first; then the rest of the rules. Each is bad whatever the
# valid document it starts from (its color, its generation).
BAD = [
    # 1. the repro: proto null (with the other keys missing, and alone)
    ("issue1-repro", _raw('{"name":"web","vip":"10.79.100.1:80","proto":null,"generation":5}'),
     "proto: null is not a string"),
    ("issue1-proto-null", _set(["proto"], None), "proto: null is not a string"),
    # 2. backends of the wrong type
    ("issue2-backends-string", _set(["backends"], "x"), "backends"),
    ("issue2-backends-array", _set(["backends"], []), "backends: [] is not an object"),
    ("issue2-backends-null", _set(["backends"], None), "backends: null is not an object"),
    ("issue2-backends-number", _set(["backends"], 5), "backends: 5 is not an object"),
    ("issue2-backends-empty", _set(["backends"], {}), "backends.blue: missing"),
    ("issue2-backends-missing", _set(["backends"], None, drop=True), "backends: missing"),
    ("issue2-colors-null", _set(["backends"], {"blue": None, "green": None}),
     "backends.blue: null is not an array"),
    ("issue2-color-purple", _set(["backends"], {"purple": [{"addr": "10.79.200.11:8081",
                                                           "weight": 1}]}),
     'unknown key "purple"'),
    ("issue2-blue-string", _set(["backends", "blue"], "x"), "backends.blue"),
    # 3. the color taking new flows left empty
    ("issue3-green-empty", lambda d: _set(["backends", "green"], [])(
        dict(d, green_share=SHARE_MAX)), "green takes new flows"),
    ("issue3-blue-weight0", lambda d: _set(["backends", "blue"],
                                          [{"addr": "10.79.200.11:8081", "weight": 0}])(
        dict(d, green_share=0)), "blue takes new flows"),
    ("issue3-split-green-empty", lambda d: _set(["backends", "green"], [])(
        dict(d, green_share=2500)), "green takes new flows"),
    # 4. wrong types, coerced before
    ("issue4-share-string", _set(["green_share"], "10000"), "green_share"),
    ("issue4-share-true", _set(["green_share"], True), "green_share: true is not an integer"),
    ("issue4-share-float", _set(["green_share"], 5000.9), "green_share: 5000.9"),
    ("issue4-weight-null", _set(["backends", "blue", 0, "weight"], None),
     "backends.blue[0].weight: null is not an integer"),
    ("issue4-weight-string", _set(["backends", "blue", 0, "weight"], "3"),
     "backends.blue[0].weight"),
    ("issue4-weight-float", _set(["backends", "blue", 0, "weight"], 2.5),
     "backends.blue[0].weight: 2.5"),
    ("issue4-table-string", _set(["table_size"], "251"), "table_size"),
    ("issue4-generation-string", _set(["generation"], "999"), "generation"),
    ("issue4-generation-true", _set(["generation"], True), "generation: true"),
    ("issue4-generation-float", _set(["generation"], 1.7), "generation: 1.7"),
    ("issue4-previous-negative", _set(["previous_share"], -5), "previous_share: -5"),
    ("issue4-trailing-garbage", _append("garbage"), "bytes after the JSON object"),
    ("issue4-trailing-object", _append('{"green_share":10000}'), "bytes after the JSON object"),
    ("issue4-name-32", _set(["name"], "w" * 32), "name"),
    # the rest of the rules
    ("share-above", _set(["green_share"], 10001), "green_share: 10001 is not an integer"),
    ("share-negative", _set(["green_share"], -1), "green_share: -1"),
    ("share-missing", _set(["green_share"], None, drop=True), "green_share: missing"),
    ("previous-above", _set(["previous_share"], 10001), "previous_share: 10001"),
    ("generation-zero", _set(["generation"], 0), "generation: 0"),
    ("generation-huge", _set(["generation"], 2 ** 64), "generation"),
    ("generation-missing", _set(["generation"], None, drop=True), "generation: missing"),
    ("weight-above", _set(["backends", "blue", 0, "weight"], 1001),
     "backends.blue[0].weight: 1001"),
    ("weight-negative", _set(["backends", "green", 1, "weight"], -1),
     "backends.green[1].weight: -1"),
    ("weight-missing", _set(["backends", "blue", 0, "weight"], None, drop=True),
     "backends.blue[0].weight: missing"),
    ("backend-unknown-key", _set(["backends", "blue", 0, "port"], 80), 'unknown key "port"'),
    ("backend-not-object", _set(["backends", "blue", 0], "10.79.200.11:8081"),
     "backends.blue[0]: not an object"),
    ("backend-bad-addr", _set(["backends", "blue", 0, "addr"], "10.79.200.11"),
     "backends.blue[0].addr"),
    ("backend-bad-port", _set(["backends", "blue", 0, "addr"], "10.79.200.11:0"), "port"),
    ("backend-loopback", _set(["backends", "blue", 0, "addr"], "127.0.0.1:80"), "unicast"),
    ("backend-is-vip", _set(["backends", "blue", 0, "addr"], "10.79.100.1:80"),
     "cannot be the VIP"),
    ("backend-family", _set(["backends", "blue", 0, "addr"], "[fd00::1]:80"),
     "address family"),
    ("backend-duplicate", _set(["backends", "blue", 1, "addr"], "10.79.200.11:8081"),
     "is also backends.blue[0]"),
    ("backend-both-colors", _set(["backends", "green", 0, "addr"], "10.79.200.11:8081"),
     "is also backends.blue[0]"),
    ("backends-too-many", _set(["backends", "blue"], [
        {"addr": f"10.80.{i // 250}.{i % 250 + 1}:80", "weight": 1} for i in range(257)]),
     "at most 256"),
    ("backends-fill-table", lambda d: _set(["backends", "blue"], [
        {"addr": f"10.80.0.{i + 1}:80", "weight": 1} for i in range(251)])(
            dict(d, table_size=251)), "as many as the table has positions"),
    ("table-not-prime", _set(["table_size"], 1000), "table_size: 1000 is not a prime"),
    ("table-too-small", _set(["table_size"], 241), "table_size: 241 is not a prime"),
    ("table-too-big", _set(["table_size"], 131101), "table_size: 131101"),
    ("modulo-with-table", _set(["lb"], "modulo"), "no table"),
    ("modulo-weight", lambda d: _set(["backends", "blue", 0, "weight"], 2)(
        dict(d, lb="modulo", table_size=0)), "without weights"),
    ("lb-unknown", _set(["lb"], "random"), "unknown --lb 'random'"),
    ("lb-null", _set(["lb"], None), "lb: null is not a string"),
    ("split-unknown", _set(["split_by"], "port"), "unknown --split-by 'port'"),
    ("proto-unknown", _set(["proto"], "sctp"), "unknown protocol 'sctp'"),
    ("proto-missing", _set(["proto"], None, drop=True), "proto: missing"),
    ("vip-bad", _set(["vip"], "10.79.100.1"), "vip"),
    ("vip-multicast", _set(["vip"], "224.0.0.1:80"), "unicast"),
    ("vip-null", _set(["vip"], None), "vip: null is not a string"),
    ("name-other", _set(["name"], "other"), "is not the name in its key"),
    ("name-bad-chars", _set(["name"], "we b"), "not a valid service name"),
    ("name-nul", _set(["name"], "web\u0000x"), "a NUL character"),
    ("key-nul", lambda d: text(d).replace('"blue"', '"blue\\u0000"'), "a NUL character"),
    ("unknown-key", _set(["colour"], "blue"), 'unknown key "colour"'),
    ("key-twice", lambda d: text(d)[:-1] + ',"green_share":10000}', "a key given twice"),
    ("key-twice-inner", lambda d: text(d).replace('"weight":1}', '"weight":1,"weight":0}', 1),
     "a key given twice"),
    ("not-an-object", _raw("[1,2,3]"), "not a JSON object"),
    ("empty", _raw(""), "not JSON"),
    ("truncated", lambda d: text(d)[:40], "not JSON"),
    ("not-utf8", lambda d: text(d).encode().replace(b'"web"', b'"w\xff"'), "not JSON"),
    ("nul-byte", lambda d: text(d) + "\x00", "a NUL byte"),
    ("deep", _raw('{"name":' + "[" * 5000 + "]" * 5000 + "}"), "not JSON"),
    ("single-quotes", _raw("{'name':'web'}"), "not JSON"),
]


def bad_cases():
    return [(cid, fn, want) for cid, fn, want in BAD]


def render(fn, base):
    """The bytes of a case's document made from base."""
    out = fn(base)
    return out if isinstance(out, bytes) else out.encode()


# ---- the generator ----------------------------------------------------------------------------

VALUES = [None, True, False, 0, 1, -1, 2, 250, 251, 257, 1000, 1001, 5000, 9999, 10000, 10001,
          16381, 131071, 131072, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64, -2 ** 63,
          0.5, 1.0, 1e3, -0.0, "", "x", "0", "10", "tcp", "udp", "TCP", "maglev", "modulo",
          "flow", "client", "blue", "green", "web", "10.79.100.1:80", "10.79.200.13:8081",
          "10.79.100.1:8080", "[fd00::1]:80", "127.0.0.1:80", "0.0.0.0:80", "10.79.200.13:0",
          "10.79.200.13:65536", "10.79.200.13", "a" * 70, "w" * 31, "w" * 32, "\u0000",
          "\u00e9t\u00e9", "\n", [], {}, [1], {"a": 1}, {"addr": "10.79.200.13:8081"},
          {"addr": "10.79.200.13:8081", "weight": 1}, {"addr": "10.79.200.13:8081", "weight": 0},
          {"addr": "10.79.200.11:8081", "weight": 1}]
KEYS = ["name", "vip", "proto", "generation", "green_share", "previous_share", "lb",
        "table_size", "split_by", "backends", "blue", "green", "addr", "weight", "purple", ""]


def _paths(o, path=()):
    yield path
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _paths(v, path + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _paths(v, path + (i,))


def _get(o, path):
    for k in path:
        o = o[k]
    return o


def _structured(rng, d):
    """1 to 3 changes to the document's tree: a value replaced, a key dropped or added, a backend
    added or removed, a share or a generation moved. The result is JSON (json.dumps)."""
    d = copy.deepcopy(d)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(d) if p]
        p = rng.choice(paths)
        parent = _get(d, p[:-1])
        op = rng.randrange(6)
        if op == 0:
            parent[p[-1]] = copy.deepcopy(rng.choice(VALUES))
        elif op == 1 and isinstance(parent, dict):
            del parent[p[-1]]
        elif op == 1:
            parent.pop(p[-1])
        elif op == 2 and isinstance(parent, dict):
            parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
        elif op == 3:
            col = rng.choice(["blue", "green"])
            if isinstance(d.get("backends"), dict) and isinstance(d["backends"].get(col), list):
                d["backends"][col].append({"addr": f"10.79.{rng.choice([200, 201, 202])}."
                                                   f"{rng.randint(1, 30)}:{rng.choice([8081, 8082])}",
                                           "weight": rng.choice([0, 1, 1, 3, 1000])})
        elif op == 4:
            d["green_share"] = rng.choice([0, 1, 2500, 9999, 10000])
        else:
            d["generation"] = rng.choice([1, 2, 6, 7, 2 ** 32 - 1])
    return json.dumps(d, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)


def _bytes(rng, s):
    """Byte-level damage: flips, cuts, splices and insertions in the text."""
    b = bytearray(s.encode("utf-8", "surrogatepass"))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 2:
            b[pos:pos] = rng.choice([b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"null",
                                     b"1e999", b"-", b"\x00", b"\xc3", b"\xff", b" ", b"\\u0000"])
        elif op == 3:
            b = b[:pos]
        else:
            b[pos:pos] = b[rng.randrange(len(b) + 1):][:rng.randint(1, 16)]
    return bytes(b)


def _random_json(rng, depth=0):
    r = rng.randrange(8 if depth < 4 else 5)
    if r < 5:
        return rng.choice(VALUES[:40])
    if r == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def generate(seed, count, base):
    """count documents from seed: (kind, bytes), kind "structured" (JSON text; the model can
    judge it), "bytes" (damaged text) or "random" (random JSON)."""
    rng = random.Random(seed)
    base_text = text(base)
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.6:
            out.append(("structured", _structured(rng, base).encode("utf-8", "surrogatepass")))
        elif r < 0.9:
            out.append(("bytes", _bytes(rng, base_text)))
        else:
            out.append(("random", json.dumps(_random_json(rng)).encode()))
    return out


# ---- an independent model of validity (for documents that are JSON) ---------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _endpoint(s):
    """(family, address int, port) of "A.B.C.D:P" or "[V6]:P", or None."""
    if not isinstance(s, str) or "\x00" in s:
        return None
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        fam = 6
    else:
        host, sep, port = s.rpartition(":")
        fam = 4
    if not sep or not (port.isascii() and port.isdigit()) or not (0 < int(port) < 65536) or port != port.strip():
        return None
    try:
        a = ipaddress.IPv4Address(host) if fam == 4 else ipaddress.IPv6Address(host)
    except ValueError:
        return None
    if "%" in host:
        return None
    return fam, int(a), int(port)


def _unicast(ep):
    fam, a, _ = ep
    if fam == 4:
        first = a >> 24
        return first != 0 and first != 127 and first < 224
    return a not in (0, 1) and (a >> 120) != 0xFF


def model_valid(d, key="web"):
    """Is the parsed document d valid? (The rules of README "Fleet", written again.)"""
    top = ["name", "vip", "proto", "generation", "green_share", "previous_share", "lb",
           "table_size", "split_by", "backends"]
    if not isinstance(d, dict) or set(d) != set(top):
        return False
    name = d["name"]
    if (not isinstance(name, str) or not (0 < len(name) < NAME_LEN) or name[0] == "-"
            or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name)
            or name != key):
        return False
    vip = _endpoint(d["vip"])
    if vip is None or len(d["vip"]) >= 64 or not _unicast(vip):
        return False
    if d["proto"] not in ("tcp", "udp") or not isinstance(d["proto"], str):
        return False
    for k, lo, hi in (("generation", 1, GEN_MAX), ("green_share", 0, SHARE_MAX)):
        if not _is_int(d[k]) or not lo <= d[k] <= hi:
            return False
    ps = d["previous_share"]
    if ps is not None and (not _is_int(ps) or not 0 <= ps <= SHARE_MAX):
        return False
    if d["lb"] not in ("maglev", "modulo") or d["split_by"] not in ("flow", "client"):
        return False
    ts = d["table_size"]
    if not _is_int(ts):
        return False
    if d["lb"] == "modulo" and ts != 0:
        return False
    if d["lb"] == "maglev" and not (TABLE_MIN <= ts <= TABLE_MAX and is_prime(ts)):
        return False
    bes = d["backends"]
    if not isinstance(bes, dict) or set(bes) != {"blue", "green"}:
        return False
    seen = set()
    weighted = {}
    for col in ("blue", "green"):
        arr = bes[col]
        if not isinstance(arr, list) or len(arr) > MAX_BACKENDS:
            return False
        if d["lb"] == "maglev" and len(arr) >= ts:
            return False
        weighted[col] = False
        for b in arr:
            if not isinstance(b, dict) or set(b) != {"addr", "weight"}:
                return False
            ep = _endpoint(b["addr"])
            if ep is None or len(b["addr"]) >= 64 or not _unicast(ep) or ep[0] != vip[0]:
                return False
            if ep[1:] == vip[1:]:  # the VIP itself; its address on another port is fine
                return False
            w = b["weight"]
            if not _is_int(w) or not 0 <= w <= WEIGHT_MAX:
                return False
            if d["lb"] == "modulo" and w != 1:
                return False
            if (ep[1], ep[2]) in seen:
                return False
            seen.add((ep[1], ep[2]))
            weighted[col] |= w > 0
    if d["generation"] == 1 and not bes["blue"] and not bes["green"]:
        return True
    if d["green_share"] < SHARE_MAX and not weighted["blue"]:
        return False
    if d["green_share"] > 0 and not weighted["green"]:
        return False
    return True


# ---- the decoder alone --------------------------------------------------------------------------

def doccheck_path(bgswitch):
    return os.path.join(os.path.dirname(bgswitch), "bgs-doccheck")


def doccheck(bgswitch, docs, key="web", timeout=600):
    """Feed documents (bytes) to bgs-doccheck: its lines, its exit status and its stderr."""
    data = b"".join(b"%d\n" % len(d) + d for d in docs)
    p = subprocess.run([doccheck_path(bgswitch), key], input=data, capture_output=True,
                       timeout=timeout)
    return p.stdout.decode("utf-8", "replace").splitlines(), p.returncode, p.stderr.decode(
        "utf-8", "replace")
