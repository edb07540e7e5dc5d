"""The address -> object logic shared by the recorder and the importers (forensics.importers.addrmap)."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from forensics.importers.addrmap import AddressMapper, SortedStarts
from forensics.trace import ObjectValidator
from forensics.trace.records import OP_MALLOC, OP_NAMES


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), max_size=3000), st.integers(0, 5000))
def test_sorted_starts_floor_matches_a_sorted_list(ops, probe):
    starts = SortedStarts()
    SortedStarts.LOAD = 8  # small buckets: splits and empty buckets happen in small examples
    try:
        model: list[int] = []
        for add, x in ops:
            i = bisect.bisect_left(model, x)
            present = i < len(model) and model[i] == x
            if add and not present:
                starts.add(x)
                model.insert(i, x)
            elif not add and present:
                starts.remove(x)
                del model[i]
            j = bisect.bisect_right(model, probe)
            assert starts.floor(probe) == (model[j - 1] if j else None)
        assert list(starts) == model
        rebuilt = SortedStarts.from_sorted(model)
        assert [rebuilt.floor(v) for v in (probe, probe + 1, 0)] == [starts.floor(v) for v in (probe, probe + 1, 0)]
    finally:
        SortedStarts.LOAD = 512


def _names(events):
    return [(OP_NAMES[e[0]],) + tuple(e[1:]) for e in events]


def test_interior_double_and_raw_frees_and_the_index_built_on_demand():
    m = AddressMapper()
    for i in range(100):
        m.alloc(1, OP_MALLOC, 0x10000 + i * 0x100, 64, 0, 0, 64)
    assert m._starts is None  # nobody asked "inside which block?" yet
    m.free(1, 0x10000 + 50 * 0x100 + 8, 0xAA)
    assert m._starts is not None
    m.free(1, 0x10000 + 50 * 0x100, 0)
    m.free(1, 0x10000 + 50 * 0x100, 0xBB)
    m.free(1, 0x10000 + 50 * 0x100 + 64, 0)  # just past a freed 64-byte block: nobody's
    m.free(1, 0x10000 + 51 * 0x100 + 63, 0)  # the last byte of a live block
    events = _names(m.drain())[100:]
    assert events == [
        ("free_interior", 1, 51, 0, 0, 8, 0, 0xAA),
        ("free", 1, 51, 0, 0, 0, 0, 0),
        ("double_free", 1, 51, 0, 0, 0, 0, 0xBB),
        ("free_raw", 1, 0, 0, 0, 0x10000 + 50 * 0x100 + 64, 0, 0),
        ("free_interior", 1, 52, 0, 0, 63, 0, 0),
    ]


def test_a_live_address_allocated_again_frees_the_old_object_first():
    m = AddressMapper()
    m.alloc(1, OP_MALLOC, 0x5000, 16, 0, 0, 16)
    m.alloc(2, OP_MALLOC, 0x5000, 32, 0, 0x77, 32)  # its free was never shown
    m.free(2, 0x5000, 0)
    events = _names(m.drain())
    assert events == [("malloc", 1, 1, 0, 16, 0, 0, 0), ("free", 2, 1, 0, 0, 0, 0, 0),
                      ("malloc", 2, 1, 0, 32, 0, 0, 0x77), ("free", 2, 1, 0, 0, 0, 0, 0)]
    assert m.counts == {"implicit_free": 1}
    assert [f.kind for f in m.findings] == ["implicit_free"]


def test_ids_are_recycled_and_freed_memory_is_bounded():
    m = AddressMapper(freed_limit=4)
    v = ObjectValidator()
    for i in range(20_000):  # every block at a new address: no address reuse at all
        m.alloc(1, OP_MALLOC, 0x100000 + i * 16, 8, 0, 0, 8)
        m.free(1, 0x100000 + i * 16, 0)
    events = m.drain()
    for k, e in enumerate(events):
        assert v.check(e, k) is None  # a valid trace: ids live when used
    assert max(e[2] for e in events) <= 6  # the freed memory (4) + one live + one in flight
    assert m.counts["freed_forgotten"] == 20_000 - 4
    m.free(1, 0x100000, 0)  # forgotten long ago: no longer a double free
    m.free(1, 0x100000 + 19_999 * 16, 0)  # remembered
    assert [OP_NAMES[e[0]] for e in m.drain()] == ["free_raw", "double_free"]


def test_realloc_in_two_halves_lets_another_thread_take_the_address():
    m = AddressMapper()
    m.alloc(1, OP_MALLOC, 0x1000, 16, 0, 0, 16)
    m.realloc_begin(1, 1, 0x1000, 0)  # thread 1: realloc(0x1000, 64) starts
    m.alloc(2, OP_MALLOC, 0x1000, 16, 0, 0, 16)  # thread 2 gets the address realloc released
    m.realloc_end(1, 1, 0x1000, 0x2000, 64, 0)
    events = _names(m.drain())
    assert events == [("malloc", 1, 1, 0, 16, 0, 0, 0), ("malloc", 2, 2, 0, 16, 0, 0, 0),
                      ("realloc", 1, 3, 1, 64, 0, 0, 0)]
    assert m.counts == {}


def test_failed_allocations_make_no_event():
    m = AddressMapper()
    assert m.alloc(1, OP_MALLOC, 0, 1 << 60, 0, 0, 1 << 60) == 0
    m.alloc(1, OP_MALLOC, 0x40, 8, 0, 0, 8)
    m.realloc(1, 0x40, 0, 1 << 60, 0)  # failed: the old block stays
    m.free(1, 0x40, 0)
    assert [OP_NAMES[e[0]] for e in m.drain()] == ["malloc", "free"]
    assert m.counts == {"failed_alloc": 2}
