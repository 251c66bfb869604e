"""The fleet document validator alone (user/fleet_doc.c through bgs-doccheck, no etcd, no
root): every bad document of issue 16 and the rest of the rules refused with the reason, valid
documents accepted and re-encoded identically, and a seeded fuzz run of mutated and random
documents checked against an independent model (tests/lib/fleetdocs.py), without a crash.

BGSWITCH=.output/san/bgswitch runs it against the ASan/UBSan build (its bgs-doccheck, next to
it); `make test` does both. FLEET_DOC_FUZZ_SEED and FLEET_DOC_FUZZ_COUNT (default 0 and 4000)
set the fuzz run; `make fuzz` runs 200,000 documents against the sanitizer build.
"""

import json
import os
import random
import time

import pytest

from lib import fleetdocs
from lib.netns import BGSWITCH


def check(docs, key="web"):
    lines, rc, err = fleetdocs.doccheck(BGSWITCH, docs, key)
    assert rc == 0 and "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
    assert len(lines) == len(docs), (len(lines), len(docs), err[-2000:])
    return lines


@pytest.mark.parametrize("cid,fn,want", fleetdocs.bad_cases(),
                         ids=[c[0] for c in fleetdocs.bad_cases()])
def test_fleet_doc_refuses_bad_document(cid, fn, want):
    """Each bad document: refused, with one line naming the place and the reason."""
    (line,) = check([fleetdocs.render(fn, fleetdocs.doc())])
    assert line.startswith("invalid ") and want in line, (cid, line)


VALID = [
    ("as written", fleetdocs.doc()),
    ("green", fleetdocs.doc(green_share=10000, previous_share=0)),
    ("split", fleetdocs.doc(green_share=2500, previous_share=10000, split_by="client")),
    ("udp modulo", fleetdocs.doc(proto="udp", lb="modulo", table_size=0)),
    ("table 251", fleetdocs.doc(table_size=251)),
    ("new service", fleetdocs.doc(generation=1, blue=[], green=[])),
    ("green empty while blue takes all", fleetdocs.doc(green=[])),
    ("ipv6", fleetdocs.doc(vip="[fd00:79::1]:80", blue=["[fd00:79::11]:8081"],
                           green=["[fd00:79::21]:8082"])),
    ("backends on the VIP's address, other ports",
     fleetdocs.doc(blue=["10.79.100.1:8081"], green=["10.79.100.1:8082"])),
    ("generation max", fleetdocs.doc(generation=0xFFFFFFFF)),
    ("weights 0 and 1000", fleetdocs.doc()),
]
VALID[-1][1]["backends"]["blue"][0]["weight"] = 0
VALID[-1][1]["backends"]["blue"][1]["weight"] = 1000


@pytest.mark.parametrize("what,d", VALID, ids=[v[0] for v in VALID])
def test_fleet_doc_accepts_valid_document(what, d):
    """Valid documents pass, the encoder writes them back byte for byte (the field order is the
    encoder's), and white space around the object is fine."""
    (line,) = check([fleetdocs.text(d).encode()])
    assert line == "ok " + fleetdocs.text(d), (what, line)
    (line,) = check([b" \n" + fleetdocs.text(d).encode() + b"\n\t "])
    assert line.startswith("ok "), (what, line)


def test_fleet_doc_weight_zero_alone_refused_where_it_takes_flows():
    """Weight 0 everywhere in the color taking new flows: refused; in the other color: fine."""
    d = fleetdocs.doc()
    for b in d["backends"]["green"]:
        b["weight"] = 0
    (line,) = check([fleetdocs.text(d).encode()])
    assert line.startswith("ok "), line
    d["green_share"] = 1
    (line,) = check([fleetdocs.text(d).encode()])
    assert line.startswith("invalid backends.green: green takes new flows"), line


def test_fleet_doc_key_names_it():
    """The document's name is its key's; a key of 32 characters or more is refused by name."""
    d = fleetdocs.doc()
    (line,) = check([fleetdocs.text(d).encode()], key="other")
    assert "is not the name in its key" in line, line
    long = "w" * 40
    (line,) = check([fleetdocs.text(fleetdocs.doc(name=long)).encode()], key=long)
    assert line.startswith("invalid name: a string of at most 31 characters"), line


def test_fleet_doc_fuzz():
    """Mutated and random documents from a seed: no crash or sanitizer report, one verdict per
    document, every accepted one re-encodes to itself, every JSON one judged as the model
    judges it, and a valid document afterwards is accepted. Prints the count and the time."""
    seed = os.environ.get("FLEET_DOC_FUZZ_SEED", "0")
    seed = int(seed) if seed.isdigit() else random.randrange(2 ** 32)
    count = int(os.environ.get("FLEET_DOC_FUZZ_COUNT", "4000"))
    base = fleetdocs.doc()
    docs = fleetdocs.generate(seed, count, base)
    t0 = time.monotonic()
    lines = check([d for _, d in docs] + [fleetdocs.text(base).encode()])
    took = time.monotonic() - t0
    assert lines[-1] == "ok " + fleetdocs.text(base), lines[-1]
    verdicts = {"ok": 0, "invalid": 0}
    wrong = []
    for (kind, d), line in zip(docs, lines):
        verdict, _, rest = line.partition(" ")
        assert verdict in verdicts and rest, (d, line)
        verdicts[verdict] += 1
        if verdict == "ok":
            assert json.loads(rest) == json.loads(d.decode()), (d, line)
        if kind == "structured":
            if fleetdocs.model_valid(json.loads(d.decode())) != (verdict == "ok"):
                wrong.append((d.decode(), line))
    assert not wrong, f"{len(wrong)} verdicts differ from the model, first: {wrong[:3]}"
    assert verdicts["ok"] > 0 and verdicts["invalid"] > 0, verdicts
    print(f"\nFLEET DOC FUZZ seed {seed}: {count} documents in {took:.2f} s "
          f"({'sanitizer build' if '/san/' in BGSWITCH else 'normal build'}): "
          f"{verdicts['ok']} valid, {verdicts['invalid']} refused, 0 crashes")
