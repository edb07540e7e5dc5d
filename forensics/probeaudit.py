"""The probe audit: every header readability probe against a test bed, judged by /proc/self/maps.

The bed is built in an isolated child (so a probe that faults, or a bed that goes wrong,
never takes the toolkit down): anonymous pages made read-write, unmapped, PROT_NONE and
read-only, addressed page-aligned and unaligned (+8, +page-1), 32-byte headers straddling a
mapped/unmapped and a mapped/PROT_NONE boundary, and allocator memory — the first block of a
fresh SuperSlab, whose header lies in the unmapped hole (or the PROT_NONE guard page) below
it, and a Mid block's real header. Every probe is called through the driver's hfd_probe, the
same code the allocator's free path runs (csrc/probes.h), with the header's length; the seed's
two probes look at the address alone, exactly as the seed wrote them.

Cost per call comes from hfd_probe_time: many batches of `calls` calls each, per-call ns and
TSC cycles per batch, reported as the median and quartiles over the batches. TSC cycles are
reference cycles at the TSC's fixed rate, not core cycles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from forensics import isolate, model, native

PROBES: tuple[str, ...] = tuple(k.value for k in model.ProbeKind)  # off, seed-mincore, seed-msync, mincore, safe
FIX_PROBES: tuple[str, ...] = PROBES[1:]  # the variants of the fix (off is the pre-fix free path)
GROUND_TRUTH = "maps"
DEFAULT_CALLS = 1000
DEFAULT_BATCHES = 21
DEFAULT_TIMEOUT = 120.0

# The rows the cost claim quotes: a mapped page-aligned address (mincore() does its whole job)
# and a mapped unaligned header (what a free really hands the probe: ptr - HEADER_SIZE).
COST_ALIGNED_ROW = "rw+0"
COST_HEADER_ROW = "rw+8"


@dataclass(frozen=True)
class _Site:
    name: str
    description: str
    addr: int
    length: int
    expected: bool | None


def _page_sites(pages: native.Pages, hs: int) -> list[_Site]:
    """Nine pages: [rw][rw][unmapped][PROT_NONE][rw][PROT_NONE][ro][ro][unmapped]."""
    ps = pages.page_size
    base = pages.map(9)
    p = [base + i * ps for i in range(9)]
    pages.protect(p[3], ps, native.PROT_NONE)
    pages.protect(p[5], ps, native.PROT_NONE)
    pages.protect(p[6], 2 * ps, native.PROT_READ)
    pages.unmap(p[2], ps)
    pages.unmap(p[8], ps)
    last = ps - 1
    top = ps - hs
    return [
        _Site("rw+0", "read-write page, page-aligned", p[0], hs, True),
        _Site("rw+8", "read-write page +8: unaligned, as ptr - HEADER_SIZE of a real header", p[0] + 8, hs, True),
        _Site(f"rw+{last}", "read-write page, last byte: the header runs on into the next read-write page", p[0] + last, hs, True),
        _Site("unmapped+0", "unmapped page, page-aligned", p[2], hs, False),
        _Site("unmapped+8", "unmapped page +8", p[2] + 8, hs, False),
        _Site(f"unmapped+{top}", "a header at the top of an unmapped page, right below a mapping (a SuperSlab's first block)", p[2] + top, hs, False),
        _Site(f"unmapped+{last}", "unmapped page, last byte (runs on into a PROT_NONE page)", p[2] + last, hs, False),
        _Site("protnone+0", "PROT_NONE page, page-aligned", p[3], hs, False),
        _Site("protnone+8", "PROT_NONE page +8", p[3] + 8, hs, False),
        _Site(f"protnone+{last}", "PROT_NONE page, last byte (runs on into a read-write page)", p[3] + last, hs, False),
        _Site("ro+0", "read-only page, page-aligned", p[6], hs, True),
        _Site("ro+8", "read-only page +8", p[6] + 8, hs, True),
        _Site(f"ro+{last}", "read-only page, last byte (runs on into a read-only page)", p[6] + last, hs, True),
        _Site("rw|unmapped", f"{hs}-byte header straddling read-write/unmapped (8 bytes mapped)", p[1] + ps - 8, hs, False),
        _Site("rw|protnone", f"{hs}-byte header straddling read-write/PROT_NONE (8 bytes readable)", p[4] + ps - 8, hs, False),
    ]


def _first_block_of_new_superslab(a: native.Allocator, size: int, superslab_size: int) -> int | None:
    for _ in range(superslab_size // max(size, 1) + 2):
        p = a.alloc(size)
        o = a.owner(p)
        if o.kind is model.OwnerKind.TINY and o.region_base == p:
            return p
    return None


def _allocator_sites(a: native.Allocator, hs: int, notes: list[str]) -> list[_Site]:
    """Rows in allocator memory (this runs in the isolated child: allocating here is safe)."""
    missing = [f for f in ("owner", "geometry", "knobs") if not a.has_feature(f)]
    if missing:
        notes.append(f"no allocator rows: the library lacks the {', '.join(missing)} feature(s)")
        return []
    g = a.geometry()
    sites: list[_Site] = []
    if g.mid_class_user_sizes:
        # The second block of a fresh chunk: the first one's header may sit on a page boundary.
        a.alloc(g.mid_class_user_sizes[0])
        p = a.alloc(g.mid_class_user_sizes[0])
        if a.owner(p).kind is model.OwnerKind.MID:
            sites.append(_Site("mid-header", "a live Mid block's AllocHeader (mapped; where a real free's probe looks)", p - hs, hs, True))
    classes = [s for s in g.tiny_class_sizes if s >= 16]
    if len(classes) < 2:
        notes.append("no SuperSlab rows: fewer than two Tiny classes")
        return sites
    # The guarded SuperSlab first, the plain one last: a later mapping could land in a hole.
    a.set_knob("HAKMEM_SS_GUARD", "protnone")
    p = _first_block_of_new_superslab(a, classes[-1], g.superslab_size)
    if p is not None:
        sites.append(_Site("ss-guard", "header of a SuperSlab's first block, in the PROT_NONE guard page below (HAKMEM_SS_GUARD=protnone)", p - hs, hs, False))
    a.set_knob("HAKMEM_SS_GUARD", "none")
    p = _first_block_of_new_superslab(a, classes[-2], g.superslab_size)
    if p is not None:
        sites.append(_Site("ss-block", "a SuperSlab's first block itself (mapped, page-aligned)", p, hs, True))
        sites.append(_Site("ss-hole", "header of a SuperSlab's first block, in the unmapped hole below (HAKMEM_SS_GUARD=none)", p - hs, hs, False))
    else:
        notes.append("no SuperSlab rows: no block started a fresh SuperSlab")
    return sites


def _audit_in_child(ctx: isolate.ChildContext, calls: int, batches: int) -> model.ProbeAudit:
    drv = ctx.driver
    notes: list[str] = []
    hs = ctx.allocator.geometry().header_size if ctx.allocator.has_feature("geometry") else 32
    # Allocator rows first: its mappings made after the page bed could land in the bed's holes.
    alloc_sites = _allocator_sites(ctx.allocator, hs, notes)
    pages = native.Pages()
    sites = _page_sites(pages, hs) + alloc_sites
    rows = []
    for s in sites:
        truth = drv.probe(GROUND_TRUTH, s.addr, s.length)
        verdicts = {p: drv.probe(p, s.addr, s.length) for p in PROBES}
        if s.expected is not None and truth != s.expected:
            notes.append(f"{s.name}: built to be {'readable' if s.expected else 'unreadable'}, but /proc/self/maps says otherwise (the bed moved); judged by /proc/self/maps")
        rows.append(model.ProbeBedRow(s.name, s.description, s.addr, s.length, truth, s.expected, verdicts))
    costs = []
    if calls > 0 and batches > 0:
        for s in sites:
            per: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in PROBES}
            for _ in range(batches):  # batches interleaved across probes: drift hits all alike
                for p in PROBES:
                    ns, cyc = drv.probe_time(p, s.addr, s.length, calls)
                    per[p][0].append(ns / calls)
                    per[p][1].append(cyc / calls)
            costs.extend(model.ProbeCost(p, s.name, calls, tuple(v[0]), tuple(v[1])) for p, v in per.items())
    has_tsc = any(c > 0 for cost in costs for c in cost.cycles)
    if costs and not has_tsc:
        notes.append("no TSC on this machine: cycles are reported as 0")
    return model.ProbeAudit(PROBES, rows, costs, pages.page_size, hs, has_tsc, notes)


def run_audit(*, calls: int = DEFAULT_CALLS, batches: int = DEFAULT_BATCHES, lib: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> model.ProbeAudit:
    """Build the bed and call every probe in an isolated child; IsolationError if the child dies."""
    knobs = {"HAKMEM_MODE": "direct", "HAKMEM_SS_GUARD": "none"}
    result = isolate.run_isolated(lambda ctx: _audit_in_child(ctx, calls, batches), lib=lib, knobs=knobs, timeout=timeout)
    return result.unwrap()
