"""Helpers the tests share (run inside isolated children unless said otherwise)."""

from __future__ import annotations

import re
import struct

from forensics import isolate, native

# Every child states the knobs it depends on, so defaults changing in C cannot silently
# change what a test measures.
BASE_KNOBS = {
    "HAKMEM_MODE": "direct",
    "HAKMEM_INVALID_FREE": 1,
    "HAKMEM_INVALID_FREE_LOG": 1,
    "HAKMEM_HEADER_PROBE": "off",
    "HAKMEM_TINY": 1,
    "HAKMEM_POOL": 1,
    "HAKMEM_L25": 1,
    "HAKMEM_BIGCACHE": 1,
    "HAKMEM_BIGCACHE_L25": 0,
    "HAKMEM_BATCH_MADVISE": 0,
    "HAKMEM_WHALE": 1,
}


def run(fn, timeout: float = 60.0, **knobs):
    """Run fn(ctx) in a child with BASE_KNOBS + knobs; return the ChildResult."""
    merged = dict(BASE_KNOBS)
    merged.update(knobs)
    return isolate.run_isolated(fn, knobs=merged, timeout=timeout)


def run_ok(fn, timeout: float = 60.0, **knobs):
    """Like run(), but the child must finish normally; returns its value."""
    return run(fn, timeout=timeout, **knobs).unwrap()


def pattern(i: int, n: int) -> bytes:
    """n bytes unique to block i (so overlapping blocks show up as a mismatch)."""
    stamp = struct.pack("<I", (i * 2654435761 + 12345) & 0xFFFFFFFF)
    return (stamp * (n // 4 + 1))[:n]


def check_blocks(a: native.Allocator, blocks: list[tuple[int, int]]) -> None:
    """Blocks (ptr, size) are usable, writable and pairwise disjoint (raises AssertionError)."""
    spans = []
    for i, (p, size) in enumerate(blocks):
        assert p != 0
        usable = a.usable_size(p)
        assert usable >= size, f"usable_size({p:#x}) = {usable} < requested {size}"
        native.write_memory(p, pattern(i, size))
        spans.append((p, p + size))
    for i, (p, size) in enumerate(blocks):
        assert native.read_memory(p, size) == pattern(i, size), f"block {i} at {p:#x} was overwritten"
    spans.sort()
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 <= s1, f"blocks [{s0:#x},{e0:#x}) and [{s1:#x},{e1:#x}) overlap"


def read_header(p: int, header_size: int) -> tuple[int, int, int, int, int]:
    """(magic, method, size, alloc_site, class_bytes) of the AllocHeader in front of p."""
    return struct.unpack("<IIQQQ", native.read_memory(p - header_size, 32))


def find_first_block_of_new_superslab(a: native.Allocator, size: int) -> int:
    """Allocate `size` blocks until one starts a SuperSlab (ptr == region base); return it."""
    g = a.geometry()
    for _ in range(g.superslab_size // max(size, 1) + 2):
        p = a.alloc(size)
        o = a.owner(p)
        if o.region_base == p:
            return p
    raise AssertionError(f"no new SuperSlab started after {g.superslab_size // size + 2} allocations")


ROUTE_LINE = re.compile(
    r"^\[hakmem-route\] seq=(?P<seq>\d+) tid=(?P<tid>\d+) ptr=0x(?P<ptr>[0-9a-f]+) route=(?P<route>[a-z0-9_]+) "
    r"action=(?P<action>[a-z0-9_]+) tried=(?P<tried>[a-z0-9,]+|-) hit=(?P<hit>[a-z0-9,]+|-) "
    r"probe=(?P<probe>-|readable|unreadable) magic=(?P<magic>0x[0-9a-fA-F]+|-) method=(?P<method>\d+|-)$"
)
REG_LINE = re.compile(
    r"^\[hakmem-reg\] seq=(?P<seq>\d+) free_seq=(?P<free_seq>\d+) tid=(?P<tid>\d+) op=(?P<op>[a-z_]+) "
    r"reg=(?P<reg>ss|mid|l25) base=0x(?P<base>[0-9a-f]+) addr=0x(?P<addr>[0-9a-f]+) live=(?P<live>\d+)$"
)


def route_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("[hakmem-route]"):
            m = ROUTE_LINE.match(line)
            assert m, f"malformed route trace line: {line!r}"
            out.append(m.groupdict())
    return out


def reg_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("[hakmem-reg]"):
            m = REG_LINE.match(line)
            assert m, f"malformed registry trace line: {line!r}"
            out.append(m.groupdict())
    return out


