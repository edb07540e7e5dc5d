"""Workload generators, scenario presets, and the committed fixtures they make."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from forensics.trace import Event, TraceOp, iter_events, iter_raw, read_header, write_trace
from forensics.trace.generators import larson, random_mixed
from forensics.trace.records import OP_FREE, OP_MALLOC, OP_THREAD_END
from forensics.trace.scenarios import SPECS, Scenario
from forensics.trace.validate import ObjectValidator

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCENARIO_KNOBS = {
    Scenario.REGISTRY_CAPACITY: {"HAKMEM_MODE": "direct", "HAKMEM_SS_REG_CAPACITY": "4"},
    Scenario.REGISTRY_DROP: {"HAKMEM_MODE": "direct", "HAKMEM_SS_REG_DROP_EVERY": "2"},
    Scenario.EARLY_RELEASE: {"HAKMEM_MODE": "direct", "HAKMEM_SS_EARLY_RELEASE": "1"},
    Scenario.MIXED_LIBC: {"HAKMEM_MODE": "ldpreload"},
    Scenario.DOUBLE_FREE: {"HAKMEM_MODE": "direct"},
    Scenario.INTERIOR_FREE: {"HAKMEM_MODE": "direct"},
    Scenario.WILD_FREE: {"HAKMEM_MODE": "direct"},
    Scenario.HEADER_CORRUPTION: {"HAKMEM_MODE": "direct"},
}


def _validated(raws) -> list[tuple]:
    """All events, checked against the object rules as a reader would."""
    v = ObjectValidator("event")
    out = []
    for i, raw in enumerate(raws):
        reason = v.check(raw, i)
        assert reason is None, f"event {i} {raw}: {reason}"
        out.append(raw)
    return out


def _knobs_hakmem_knows() -> set[str]:
    src = (ROOT / "csrc" / "hakmem_ref.c").read_text()
    import re

    return set(re.findall(r'\{"(HAKMEM_[A-Z0-9_]+)", KB_', src))


# ------------------------------------------------------------------------------ determinism
def test_generators_are_deterministic(tmp_path):
    for name, make in (("l", lambda s: larson(1, 8, 128, 64, 2, s, 3)), ("r", lambda s: random_mixed(4000, 300, s))):
        a, b, c = tmp_path / f"{name}a.trace", tmp_path / f"{name}b.trace", tmp_path / f"{name}c.trace"
        for path, seed in ((a, 7), (b, 7), (c, 8)):
            w = make(seed)
            write_trace(path, w.header, w.iter_raw())
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
        w = make(7)
        assert list(w.iter_raw()) == list(w.iter_raw())  # a workload can be iterated again


# ------------------------------------------------------------------------------ larson
def test_larson_threads_cross_thread_frees_and_balance():
    w = larson(1, 8, 128, 256, 2, 12345, 4)
    raws = _validated(w.iter_raw())
    assert len(raws) == w.expected_events
    tids = {r[1] for r in raws}
    assert tids == {1, 2, 3, 4}
    owner: dict[int, int] = {}
    cross = same = 0
    for code, tid, obj, *_ in raws:
        if code == OP_MALLOC:
            owner[obj] = tid
        elif code == OP_FREE:
            if owner.pop(obj) == tid:
                same += 1
            else:
                cross += 1
    assert not owner  # every block freed
    # Refill after round 1 and the final frees are all cross-thread: 2 * 4 threads * 256 chunks.
    assert cross == 2 * 4 * 256
    assert same == 2 * 4 * 256  # the random replacements: SECONDS(1) * CHUNKS per thread per round
    last_by_tid = {}
    for i, r in enumerate(raws):
        last_by_tid[r[1]] = (i, r[0])
    assert all(code == OP_THREAD_END for _, code in last_by_tid.values())
    assert sum(1 for r in raws if r[0] == OP_THREAD_END) == 4
    sizes = [r[4] for r in raws if r[0] == OP_MALLOC]
    assert min(sizes) == 8 and max(sizes) == 128


def test_larson_seed_arguments():
    w = larson(10, 8, 128, 1024, 1, 12345, 4)
    assert w.header.get_meta("generator") == "larson 10 8 128 1024 1 12345 4"
    counts = Counter(r[0] for r in w.iter_raw())
    # fill 4*1024, 10*1024 replacements per thread (free+malloc), then 4*1024 cross-thread frees
    assert counts[OP_MALLOC] == 4 * 1024 + 4 * 10 * 1024
    assert counts[OP_FREE] == counts[OP_MALLOC]
    assert sum(counts.values()) == w.expected_events == 90_116


def test_larson_one_thread_has_no_cross_thread_frees():
    raws = _validated(larson(1, 16, 16, 8, 3, 1, 1).iter_raw())
    assert {r[1] for r in raws} == {1} and {r[4] for r in raws if r[0] == OP_MALLOC} == {16}


@pytest.mark.parametrize(
    "args, message",
    [
        ((1, 128, 8, 4, 1, 1, 1), "need 0 <= MIN_SIZE <= MAX_SIZE"),
        ((1, 8, 128, 0, 1, 1, 1), "CHUNKS_PER_THREAD must be >= 1"),
        ((1, 8, 128, 4, 0, 1, 1), "ROUNDS must be >= 1"),
        ((1, 8, 128, 4, 1, 1, 0), "THREADS must be in 1..4096"),
        ((-1, 8, 128, 4, 1, 1, 1), "SECONDS must be >= 0"),
    ],
)
def test_larson_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        larson(*args)


# ------------------------------------------------------------------------------ random_mixed
def test_random_mixed_seed_workload_is_balanced():
    w = random_mixed(50000, 2048, 1234567)
    raws = _validated(w.iter_raw())
    counts = Counter(r[0] for r in raws)
    assert set(counts) == {OP_MALLOC, OP_FREE}
    assert counts[OP_MALLOC] == counts[OP_FREE] > 20000
    assert len(raws) == 50000 + counts[OP_MALLOC] - (50000 - counts[OP_MALLOC])  # frees in the loop + the final ones
    sizes = [r[4] for r in raws if r[0] == OP_MALLOC]
    assert min(sizes) >= 16 and max(sizes) <= 1039 and len(set(sizes)) == 1024
    assert max(r[2] for r in raws) <= 2048 and {r[1] for r in raws} == {1}


def test_random_mixed_follows_the_bench():
    import random

    # Replay the bench's loop by hand: one 32-bit draw per iteration picks the slot and the size.
    bits = random.Random(99).getrandbits
    slots = [0] * 10
    expected = []
    for _ in range(200):
        r = bits(32)
        i = r % 10
        if slots[i]:
            slots[i] = 0
            expected.append(Event(TraceOp.FREE, 1, i + 1))
        else:
            slots[i] = 1
            expected.append(Event(TraceOp.MALLOC, 1, i + 1, size=16 + (r & 0x3FF)))
    expected += [Event(TraceOp.FREE, 1, i + 1) for i in range(10) if slots[i]]
    assert list(random_mixed(200, 10, 99)) == expected


@pytest.mark.parametrize("args", [(-1, 10, 1), (10, 0, 1), (10, 10, -1)])
def test_random_mixed_bad_arguments(args):
    with pytest.raises(ValueError, match="random-mixed: "):
        random_mixed(*args)


# ------------------------------------------------------------------------------ scenarios
@pytest.mark.parametrize("scenario", list(Scenario), ids=lambda s: s.value)
@pytest.mark.parametrize("generator", ["random-mixed", "larson"])
def test_scenario_header_and_additions(scenario, generator):
    if generator == "larson":
        plain, w = larson(1, 8, 128, 64, 2, 5, 3), larson(1, 8, 128, 64, 2, 5, 3, scenario=scenario.value)
    else:
        plain, w = random_mixed(3000, 256, 5), random_mixed(3000, 256, 5, scenario=scenario)
    assert w.header.knobs == SCENARIO_KNOBS[scenario]
    assert set(w.header.knobs) <= _knobs_hakmem_knows()
    assert w.header.get_meta("scenario") == scenario.value
    assert f"# {scenario.value}: {SPECS[scenario].description}" in w.header.lines
    raws = _validated(w.iter_raw())
    base = list(plain.iter_raw())
    # The workload's own events are all there, in order; the scenario only adds.
    it = iter(raws)
    assert all(any(r == b for r in it) for b in base)
    added = Counter(TraceOp.from_code(r[0]) for r in raws) - Counter(TraceOp.from_code(r[0]) for r in base)
    expected_added = {
        Scenario.MIXED_LIBC: {TraceOp.LIBC_MALLOC: 6, TraceOp.FREE_LIBC: 6},
        Scenario.DOUBLE_FREE: {TraceOp.DOUBLE_FREE: 4},
        Scenario.INTERIOR_FREE: {TraceOp.FREE_INTERIOR: 4},
        Scenario.WILD_FREE: {TraceOp.FREE_RAW: 4},
        Scenario.HEADER_CORRUPTION: {TraceOp.MALLOC: 4, TraceOp.CORRUPT: 4, TraceOp.FREE: 4},
    }.get(scenario, {})
    assert dict(added) == expected_added
    if generator == "larson":  # injected ops never follow their thread's end
        ended = set()
        for r in raws:
            assert r[1] not in ended
            if r[0] == OP_THREAD_END:
                ended.add(r[1])


def test_scenario_op_details():
    def events(sc):
        return list(random_mixed(3000, 256, 5, scenario=sc))

    ev = events(Scenario.INTERIOR_FREE)
    sizes = {}
    for i, e in enumerate(ev):
        if e.op is TraceOp.MALLOC:
            sizes[e.obj] = e.size
        if e.op is TraceOp.FREE_INTERIOR:
            assert e.arg == 16 and sizes[e.obj] >= 32
            assert ev[i + 1] == Event(TraceOp.FREE, e.tid, e.obj)
    ev = events(Scenario.DOUBLE_FREE)
    for i, e in enumerate(ev):
        if e.op is TraceOp.DOUBLE_FREE:
            assert ev[i - 1] == Event(TraceOp.FREE, e.tid, e.obj)
    assert [e.address for e in events(Scenario.WILD_FREE) if e.op is TraceOp.FREE_RAW] == [
        0x10000, 0xDEAD0000, 0x20000, 0xDEAD1000]
    ev = events(Scenario.HEADER_CORRUPTION)
    corrupted = [e.obj for e in ev if e.op is TraceOp.CORRUPT]
    big = {e.obj: e.size for e in ev if e.op is TraceOp.MALLOC and e.obj in corrupted}
    assert sorted(big.values())[0] < 32736 and all(2 << 20 <= s <= 3 << 20 for s in sorted(big.values())[1:])
    for i, e in enumerate(ev):
        if e.op is TraceOp.CORRUPT:
            assert (e.arg, e.size, e.value) == (-32, 4, 0xDEADBEEF)
            assert ev[i + 1] == Event(TraceOp.FREE, e.tid, e.obj)


def test_unknown_scenario():
    with pytest.raises(ValueError, match=r"unknown scenario 'nope' \(choose from: registry-capacity, "):
        random_mixed(10, 10, 1, scenario="nope")


# ------------------------------------------------------------------------------ fixtures
def _load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_fixtures_equal_a_fresh_run(tmp_path):
    written = _load_make_fixtures().make_fixtures(tmp_path)
    fresh = {p.relative_to(tmp_path) for p in written}
    # saved results (*.hfres) are replays, written by scripts/make_tui_fixture.py, not traces (those in
    # bad/saved/ are hand-made damaged archives, written by make_fixtures through make_bad_inputs.py)
    committed = {p.relative_to(FIXTURES) for p in FIXTURES.rglob("*")
                 if p.is_file() and "expected" not in p.parts and not (p.suffix == ".hfres" and p.parent == FIXTURES)}
    assert fresh == committed
    for rel in sorted(fresh):
        assert (tmp_path / rel).read_bytes() == (FIXTURES / rel).read_bytes(), f"fixtures/{rel} is stale: run scripts/make_fixtures.py"


def test_default_fixture_is_the_seed_workload_with_registry_escape():
    path = FIXTURES / "segv-registry-escape.trace"
    header = read_header(path)
    assert header.get_meta("generator") == "random-mixed 50000 2048 1234567"
    assert header.get_meta("scenario") == "registry-capacity"
    assert header.knobs["HAKMEM_SS_REG_CAPACITY"] == "4"
    assert 20_000 < sum(1 for _ in iter_raw(path)) < 100_000


@pytest.mark.parametrize("variant", ["seed-mincore", "seed-msync", "mincore", "safe"])
def test_probe_fixtures(variant):
    header = read_header(FIXTURES / f"probe-{variant}.trace")
    assert header.knobs == {"HAKMEM_MODE": "direct", "HAKMEM_SS_REG_CAPACITY": "4", "HAKMEM_HEADER_PROBE": variant}
    assert list(iter_raw(FIXTURES / f"probe-{variant}.trace")) == list(iter_raw(FIXTURES / "probe-safe.trace"))


def test_larson_fixture_has_four_threads_and_cross_thread_frees():
    owner, cross = {}, 0
    for e in iter_events(FIXTURES / "larson-tiny.trace"):
        if e.op is TraceOp.MALLOC:
            owner[e.obj] = e.tid
        elif e.op is TraceOp.FREE:
            cross += owner.pop(e.obj) != e.tid
    assert cross > 0 and not owner
    assert read_header(FIXTURES / "larson-tiny.trace").knobs == {}
