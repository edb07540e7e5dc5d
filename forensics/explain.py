"""Explanations of events and addresses: what Valgrind would say, then what only this toolkit knows.

Inputs are records, never ctypes: a saved result (forensics.saved) for the history — every
event's pointer and the oracle's verdict — and the facts an inspection of the live heap just
before the event reported (model.Inspection from forensics.inspect: the bytes around the
header, owners, probe verdicts, the registry's change history, the memory map). Outputs are
model.Explanation records for
the reporters. Every sentence is derived from one of those inputs; the evidence is kept with it.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from forensics import model
from forensics.model import BlockRef, CrashPlacement, Explanation, Finding, HeaderDump, Inspection, OwnerInfo, OwnerKind, Provenance, ReqtraceRecord
from forensics.replay import EVENT_SIZE, RECORD_SIZE
from forensics.trace import TraceOp

NEAR = 4096  # how far before/after a block an address still counts as "near" it (bytes)

_REC = struct.Struct("<BBHIIIQqQQ")  # hft_record
_EVT = struct.Struct("<QQIIIIiIiBBBB")  # hfr_event
assert _REC.size == RECORD_SIZE and _EVT.size == EVENT_SIZE

_ALLOC_OPS = {TraceOp.MALLOC.code, TraceOp.CALLOC.code, TraceOp.MEMALIGN.code, TraceOp.LIBC_MALLOC.code}
_OP_REALLOC, _OP_FREE, _OP_FREE_LIBC = TraceOp.REALLOC.code, TraceOp.FREE.code, TraceOp.FREE_LIBC.code
_OP_FREE_INTERIOR, _OP_FREE_RAW, _OP_DOUBLE_FREE = TraceOp.FREE_INTERIOR.code, TraceOp.FREE_RAW.code, TraceOp.DOUBLE_FREE.code
_OP_CORRUPT = TraceOp.CORRUPT.code

EXPECTED_ROUTE = {
    OwnerKind.TINY: "hak_tiny_free (normally through ss_hit)",
    OwnerKind.MID: "hak_pool_free (normally through mid_hit)",
    OwnerKind.L25: "hak_l25_pool_free (normally through l25_hit)",
    OwnerKind.MMAP: "the header path: BigCache, batch madvise, the whale cache or munmap",
    OwnerKind.MALLOC: "the header path: malloc_hdr -> __libc_free(ptr - HEADER_SIZE)",
    OwnerKind.LIBC: "__libc_free(ptr): it is libc's block",
}


@dataclass(frozen=True)
class Geometry:
    """The few sizes explanations need (from the allocator; see native.Allocator.geometry)."""

    header_size: int
    magic: int
    superslab_size: int
    mid_chunk_size: int
    l25_chunk_size: int

    @classmethod
    def from_model(cls, g: model.Geometry) -> Geometry:
        return cls(g.header_size, g.magic, g.superslab_size, g.mid_chunk_size, g.l25_chunk_size)

    def region_size(self, reg: str) -> int:
        return {"ss": self.superslab_size, "mid": self.mid_chunk_size, "l25": self.l25_chunk_size}.get(reg, self.superslab_size)


class History:
    """The trace replayed in the mind: blocks, frees, and which event each free sequence number is.

    Built from a saved result's raw records in one pass (struct.iter_unpack, no per-event objects)."""

    def __init__(self, records: bytes, events: bytes, sites: dict[int, str] | None = None) -> None:
        self.records = records
        self.events = events
        self.n = len(events) // EVENT_SIZE
        self.sites = sites or {}
        self._seq_index: dict[int, int] | None = None

    def iter_rows(self, upto: int) -> Iterator[tuple[int, tuple, tuple]]:
        recs = _REC.iter_unpack(self.records[: upto * RECORD_SIZE])
        evts = _EVT.iter_unpack(self.events[: upto * EVENT_SIZE])
        for i, (r, e) in enumerate(zip(recs, evts)):
            yield i, r, e

    def seq_index(self) -> dict[int, int]:
        """Free sequence number (hak_free_decision.seq) -> event index."""
        if self._seq_index is None:
            out: dict[int, int] = {}
            for i, (_ptr, seq, *_rest) in enumerate(_EVT.iter_unpack(self.events)):
                if seq:
                    out[seq] = i
            self._seq_index = out
        return self._seq_index

    def site_text(self, site: int) -> str:
        if not site:
            return ""
        name = self.sites.get(site)
        return f", site {name}" if name else f", site {site:#x}"

    def provenance(self, addr: int, as_of: int) -> Provenance:
        """Where addr stands at the moment event `as_of` begins."""
        live: dict[int, BlockRef] = {}  # obj -> live block (all of them: we need the one holding addr)
        freed_inside: BlockRef | None = None
        for i, r, e in self.iter_rows(as_of):
            op, _f, _res, tid, obj, obj2, size, arg, _value, site = r
            ptr = e[0]
            status = e[11]
            if status != model.EventStatus.DONE.code:
                continue
            if op == _OP_REALLOC:
                old = live.pop(obj2, None) if obj2 else None
                if old is not None and old.ptr <= addr < old.ptr + max(old.size, 1):
                    freed_inside = _freed(old, i)
                if obj and ptr:
                    live[obj] = BlockRef(obj, ptr, size, i, "realloc", tid, site)
            elif op in _ALLOC_OPS:
                n = size * arg if op == TraceOp.CALLOC.code else size
                if ptr:
                    live[obj] = BlockRef(obj, ptr, n, i, TraceOp.from_code(op).value, tid, site, libc=op == TraceOp.LIBC_MALLOC.code)
            elif op in (_OP_FREE, _OP_FREE_LIBC) and obj:
                old = live.pop(obj, None)
                if old is not None and old.ptr <= addr < old.ptr + max(old.size, 1):
                    freed_inside = _freed(old, i)
        inside = [b for b in live.values() if b.ptr <= addr < b.ptr + max(b.size, 1)]
        if inside:
            b = max(inside, key=lambda b: b.alloc_event)
            return Provenance(addr, "inside", addr - b.ptr, b, as_of, self._sentence(addr, "inside", addr - b.ptr, b))
        if freed_inside is not None:
            b = freed_inside
            return Provenance(addr, "inside", addr - b.ptr, b, as_of, self._sentence(addr, "inside", addr - b.ptr, b))
        below = [b for b in live.values() if b.ptr + max(b.size, 1) <= addr < b.ptr + max(b.size, 1) + NEAR]
        above = [b for b in live.values() if b.ptr - NEAR <= addr < b.ptr]
        candidates: list[tuple[int, str, BlockRef]] = []
        if below:
            b = max(below, key=lambda b: b.ptr + b.size)
            candidates.append((addr - (b.ptr + max(b.size, 1)), "after", b))
        if above:
            b = min(above, key=lambda b: b.ptr)
            candidates.append((b.ptr - addr, "before", b))
        if candidates:
            dist, rel, b = min(candidates, key=lambda c: c[0])
            return Provenance(addr, rel, dist, b, as_of, self._sentence(addr, rel, dist, b))
        return Provenance(addr, "none", 0, None, as_of, f"{addr:#x} is not inside, nor within {NEAR} bytes of, any block the trace allocated")

    def find_writes(self, lo: int, hi: int, as_of: int) -> list[tuple[int, int, int, int]]:
        """(event, address, length, value) of every `corrupt` op before as_of that wrote into [lo, hi)."""
        live: dict[int, int] = {}
        out = []
        for i, r, e in self.iter_rows(as_of):
            op, _f, _res, _tid, obj, obj2, size, arg, value, _site = r
            if e[11] != model.EventStatus.DONE.code:
                continue
            if op in _ALLOC_OPS or (op == _OP_REALLOC and obj):
                live[obj] = e[0]
            if op == _OP_CORRUPT and obj in live:
                addr = live[obj] + arg
                if addr < hi and addr + size > lo:
                    out.append((i, addr, size, value))
        return out

    def _sentence(self, addr: int, rel: str, off: int, b: BlockRef) -> str:
        kind = f"{b.size}-byte {'libc ' if b.libc else ''}block"
        if rel == "inside":
            head = f"{addr:#x} is {off} bytes inside a {kind}" if off else f"{addr:#x} is the start of a {kind}"
        else:
            head = f"{addr:#x} is {off} bytes {rel} a {kind}"
        alloc = f"alloc'd at event #{b.alloc_event} ({b.alloc_op} obj {b.obj}, thread {b.tid}{self.site_text(b.site)})"
        if b.free_event is not None:
            return f"{head} free'd at event #{b.free_event}, {alloc}"
        return f"{head} {alloc}"

    def first_alloc_in(self, lo: int, hi: int, after_event: int) -> int | None:
        """The first allocation event at or after after_event whose pointer lies in [lo, hi)."""
        for i, (ptr, seq, *_rest) in enumerate(_EVT.iter_unpack(self.events)):
            if i < after_event or seq:
                continue
            if lo <= ptr < hi:
                op = self.records[i * RECORD_SIZE]
                if op in _ALLOC_OPS or op == _OP_REALLOC:
                    return i
        return None

    def event_of_request(self, rec: ReqtraceRecord, geometry: Geometry) -> int | None:
        """The event during which a registry request (from the reqtrace ring) was made.

        Changes of registration happen inside an allocation (register, capacity_error, dropped:
        a new region) or inside a free (unregister: a release). The record's free_seq is the
        last free begun by then, which pins the event down."""
        seqs = self.seq_index()
        if rec.op is model.ReqtraceOp.UNREGISTER:
            return seqs.get(rec.free_seq)
        start = seqs.get(rec.free_seq, -1) + 1 if rec.free_seq else 0
        reg = rec.reg.value if rec.reg else "ss"
        return self.first_alloc_in(rec.base, rec.base + geometry.region_size(reg), start)


def _freed(b: BlockRef, at: int) -> BlockRef:
    return BlockRef(b.obj, b.ptr, b.size, b.alloc_event, b.alloc_op, b.tid, b.site, at, b.libc)


# ------------------------------------------------------------------ the inspection
def _owner_text(o: OwnerInfo | None) -> str:
    if o is None or o.kind is OwnerKind.NONE:
        return "no block of the allocator (nothing it owns)"
    kind = o.kind.value
    region = f"{'SuperSlab' if o.kind is OwnerKind.TINY else 'region'} {o.region_base or 0:#x}"
    if not o.block_ptr:
        return f"uncarved space of {kind} {region}"
    off = o.addr - o.block_ptr
    where = f"byte {off} of" if off >= 0 else f"{-off} bytes before"
    cls = f" (class {o.class_index}, {o.block_size} bytes)" if o.class_index is not None else ""
    registered = "" if o.registered or o.kind not in _REG_OF_OWNER else ", not registered"
    return f"{where} a {o.state.value} {kind} block {o.block_ptr:#x}{cls} in {region}{registered}"


# ------------------------------------------------------------------------ maps
def parse_maps(text: str) -> list[tuple[int, int, str, str]]:
    """(lo, hi, perms, line) of each /proc/self/maps line."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or "-" not in parts[0]:
            continue
        try:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
        except ValueError:
            continue
        out.append((lo, hi, parts[1], line))
    return out


def place_address(addr: int, maps: list[tuple[int, int, str, str]], ptr: int | None, owner: OwnerInfo | None = None) -> tuple[str, tuple]:
    """A sentence placing addr among the mappings (and the freed pointer), plus an excerpt."""
    rows = sorted(maps)
    idx = next((i for i, (lo, hi, _p, _l) in enumerate(rows) if addr < hi), len(rows))
    inside = idx < len(rows) and rows[idx][0] <= addr
    rel = ""
    if ptr:
        delta = addr - ptr
        rel = "at ptr" if delta == 0 else f"at ptr{'-' if delta < 0 else '+'}{abs(delta)}"
    if inside:
        lo, hi, perms, line = rows[idx]
        fields = line.split()
        name = fields[5] if len(fields) >= 6 else ""
        named = f" {name}" if name else ""
        if "r" not in perms:
            where = f"in a mapping without read permission ({perms}) {lo:#x}-{hi:#x}{named}: a PROT_NONE guard"
        elif name == "[heap]":
            where = f"inside libc memory: the [heap] mapping {lo:#x}-{hi:#x}"
        else:
            where = f"inside the readable mapping {lo:#x}-{hi:#x} ({perms}){named}"
    else:
        below = rows[idx - 1] if idx > 0 else None
        above = rows[idx] if idx < len(rows) else None
        gap_lo = below[1] if below else 0
        gap_hi = above[0] if above else None
        page = 4096
        if above and gap_hi is not None and gap_hi - addr <= page:
            what = f"the mapping {above[0]:#x}-{above[1]:#x}"
            if ptr and above[0] <= ptr < above[1]:
                region = owner.region_base if owner else None
                if region and region == above[0]:
                    what = f"SuperSlab {region:#x}" if owner.kind is OwnerKind.TINY else f"region {region:#x}"
                what += " that holds the freed pointer"
            where = f"in the unmapped page just below {what}"
        else:
            span = f"{gap_lo:#x}-{gap_hi:#x}" if gap_hi is not None else f"above {gap_lo:#x}"
            where = f"in no mapping (the gap {span})"
    text = f"{addr:#x}{' (' + rel + ')' if rel else ''} is {where}"
    excerpt = []
    for i in range(max(0, idx - 2), min(len(rows), idx + 3)):
        lo, hi, _perms, line = rows[i]
        excerpt.append((lo, hi, line, lo <= addr < hi))
    return text, tuple(excerpt)


# ---------------------------------------------------------------------- explain
def _registry_findings(history: History, insp: Inspection, owner: OwnerInfo | None, reg: str, geometry: Geometry, knobs: dict[str, str], ptr: int) -> list[Finding]:
    """Why the reg registry did not know the block's region, from its change history."""
    gone = owner is None or owner.kind is OwnerKind.NONE
    # regions are aligned to their size: a region the allocator forgot is still ptr's aligned base
    base = (owner.region_base if owner else None) or (ptr & ~(geometry.region_size(reg) - 1))
    recs = [r for r in insp.reqtrace + insp.reqtrace_header_region if r.reg is not None and r.reg.value == reg and r.base == base]
    name = {"ss": "SuperSlab", "mid": "Mid chunk", "l25": "L25 chunk"}[reg]
    out: list[Finding] = []
    for r in recs:
        op = r.op.value if r.op else "?"
        ev = history.event_of_request(r, geometry)
        at = f" at event #{ev}" if ev is not None else ""
        evidence = f"reqtrace seq {r.seq}: op={op} reg={reg} base={base:#x} free_seq={r.free_seq} live={r.live}"
        if op == "capacity_error":
            cap = knobs.get("HAKMEM_SS_REG_CAPACITY" if reg == "ss" else f"HAKMEM_{reg.upper()}_REG_CAPACITY", "?")
            out.append(Finding(f"the {name} {base:#x} was never registered: the registry was full (capacity {cap}) when it was created{at} (SP_META_CAPACITY_ERROR)", evidence, ev, "bad"))
        elif op == "dropped":
            every = knobs.get(f"HAKMEM_{reg.upper()}_REG_DROP_EVERY", "?")
            out.append(Finding(f"the {name} {base:#x}'s registration was dropped{at} (fault injection: every {every}th registration)", evidence, ev, "bad"))
        elif op == "unregister":
            tail = f" while {r.live} of its blocks were live" if r.live else ""
            out.append(Finding(f"the {name} {base:#x} was unregistered{at}{tail}", evidence, ev, "bad" if r.live else "info"))
        elif op == "register":
            out.append(Finding(f"the {name} {base:#x} was registered{at}", evidence, ev, "info"))
    if not recs and base:
        if insp.knobs.get("HAKMEM_SUPER_REG_REQTRACE", "0") == "0":
            out.append(Finding(f"no registry history for {base:#x}: the request trace was off", "", None, "info"))
        else:
            out.append(Finding(f"no registry request for the {name} {base:#x} is in the ring", "", None, "info"))
    if gone:
        out.insert(0, Finding(f"the allocator no longer knows {ptr:#x} at all: its {name} {base:#x} is gone", "hak_owner: no owner", None, "bad"))
    return out


_STAGE_NAMES = {"ss": "SS registry lookup", "mid": "Mid registry lookup", "l25": "L25 registry lookup", "probe": "readability probe", "magic": "magic check", "method": "method dispatch"}
_REG_OF_OWNER = {OwnerKind.TINY: "ss", OwnerKind.MID: "mid", OwnerKind.L25: "l25"}


def explain_event(history: History, event: model.EventResult, insp: Inspection, geometry: Geometry, knobs: dict[str, str], crash: model.CrashRecord | None = None) -> Explanation:
    """The explanation of one event from the history before it and the heap as it met it."""
    # Two address spaces meet here: the saved run's (the history: event.ptr) and the inspection's
    # (the heap facts: insp.target). A serial replay puts them at the same place; where they
    # differ (threads, libc's own heap), history speaks of `ptr`, heap facts of `live`.
    ptr = event.ptr or insp.target or 0
    live = insp.target or ptr
    prov = history.provenance(ptr, event.index) if ptr else Provenance(0, "none", 0, None, event.index, "the event frees no pointer")
    owner_ptr = insp.get_owner(live)
    hdr_addr = live - geometry.header_size if live else 0
    owner_hdr = insp.get_owner(hdr_addr)
    saved_hdr = ptr - geometry.header_size if ptr else 0
    d = event.decision
    stages: list[Finding] = []
    causes: list[Finding] = []
    expected = EXPECTED_ROUTE.get(event.owner, "unknown: the allocator cannot say who owns this block")
    home = _REG_OF_OWNER.get(event.owner)

    tried = [s.value for s in d.tried] if d else []
    hit = {s.value for s in d.hit} if d else set()
    if crash is not None and crash.event_index == event.index and d is None:
        # died before the decision: the stages it reached follow from the crash stage
        tried = _stages_before(crash.stage_name, knobs)
    for stage in tried:
        ok = stage in hit
        name = _STAGE_NAMES.get(stage, stage)
        if stage in ("ss", "mid", "l25"):
            if ok:
                stages.append(Finding(f"{name}: hit", severity="ok"))
            elif stage == home:
                why = _registry_findings(history, insp, owner_ptr, stage, geometry, knobs, live)
                stages.append(Finding(f"{name}: MISSED, though this is a {event.owner.value} block", severity="bad"))
                stages.extend(why)
                causes.extend(f for f in why if f.severity == "bad")
            else:
                stages.append(Finding(f"{name}: missed (right: not a {'Tiny' if stage == 'ss' else stage.upper()} block)", severity="info"))
        elif stage == "probe":
            verdict = d.probe.value if d else "?"
            kind = d.probe_kind.value if d and d.probe_kind else knobs.get("HAKMEM_HEADER_PROBE", "?")
            truth = insp.get_probes(hdr_addr)
            if truth is not None:
                real = "readable" if truth.readable else "unreadable"
                right = real == verdict
                stages.append(Finding(f"{name} ({kind}) said the header at {hdr_addr:#x} is {verdict}; /proc/self/maps says {real}: {'right' if right else 'WRONG'}", f"probe verdicts on {hdr_addr:#x}: " + ", ".join(f"{k}={'readable' if v else 'unreadable'}" for k, v in truth.verdicts.items()), None, "ok" if right else "bad"))
            else:
                stages.append(Finding(f"{name} ({kind}) said the header is {verdict}"))
        elif stage == "magic":
            found = d.magic_found if d else None
            if found is None:
                stages.append(Finding(f"{name}: the process died reading the magic at {hdr_addr:#x}", severity="bad"))
            elif ok:
                stages.append(Finding(f"{name}: found {found:#x}, as expected", severity="ok"))
            else:
                stages.append(Finding(f"{name}: found {found:#x}, expected {geometry.magic:#x}: not a header", severity="bad"))
        elif stage == "method":
            m = d.method if d else None
            stages.append(Finding(f"{name}: method {m}" + ("" if ok else " is unknown"), severity="ok" if ok else "bad"))
    if d is not None:
        route = d.route.value if d.route else "none"
        stages.append(Finding(f"route {route} -> {d.action.value}", severity={"correct": "ok"}.get(event.outcome.value, "warn")))

    header = None
    if insp.dump_base is not None and ptr and (d is None or model.FreeStep.MAGIC in d.tried or (crash and crash.event_index == event.index)):
        header = HeaderDump(insp.dump_base, insp.dump, hdr_addr, geometry.header_size, geometry.magic, d.magic_found if d else None, _owner_text(owner_hdr), history.provenance(saved_hdr, event.index))

    placement = None
    if crash is not None and crash.event_index == event.index:
        maps = parse_maps(crash.maps) or parse_maps(insp.maps)
        text, excerpt = place_address(crash.fault_address, maps, crash.ptr, owner_ptr)
        placement = CrashPlacement(crash.signal_name, crash.fault_address, crash.ptr, crash.stage_name, f"{crash.signal_name} in {crash.stage_name}: fault address {text}", excerpt)

    # the chain of causes, oldest first
    causes.extend(_forensic_causes(history, event, prov, ptr, saved_hdr, geometry))
    if prov.block is not None and owner_ptr is not None and owner_ptr.region_base == live and event.owner is OwnerKind.TINY:
        causes.append(Finding(f"obj {prov.block.obj} was allocated at event #{prov.block.alloc_event} at {ptr:#x}, the first byte of SuperSlab {ptr:#x}: its ptr - {geometry.header_size} lies outside the SuperSlab", prov.text, prov.block.alloc_event, "warn"))
    if d is not None or placement is not None:
        misses = [s for s in tried if s in ("ss", "mid", "l25") and s not in hit]
        if misses and home in misses:
            causes.append(Finding(f"event #{event.index}: free({ptr:#x}) missed {', '.join(misses)}: the free path fell through to the header at ptr - {geometry.header_size}", "", event.index, "bad"))
    if placement is not None:
        causes.append(Finding(placement.text, f"crash record: {placement.signal} fault={placement.fault_address:#x} stage={placement.stage}", event.index, "bad"))
    elif header is not None and d is not None and d.magic_found is not None and model.FreeStep.MAGIC not in d.hit:
        causes.append(Finding(f"the 'header' at {hdr_addr:#x} is {header.owner_text}", header.provenance.text if header.provenance else "", event.index, "warn"))
    causes.sort(key=lambda f: (f.event_index if f.event_index is not None else event.index))

    verdict = _verdict(event, d, placement)
    return Explanation(event, ptr, prov, expected, stages, header, placement, causes, verdict, insp.facts)


def _forensic_causes(history: History, event: model.EventResult, prov: Provenance, ptr: int, hdr_addr: int, geometry: Geometry) -> list[Finding]:
    """What the trace itself did wrong (or odd) with this pointer, proved from the history."""
    out: list[Finding] = []
    b = prov.block
    if event.op == "double_free" and b is not None and b.free_event is not None:
        out.append(Finding(f"double free: the block {b.ptr:#x} (obj {b.obj}) was allocated at event #{b.alloc_event} and already freed at event #{b.free_event}", prov.text, b.free_event, "bad"))
    elif event.op == "free_interior" and b is not None and prov.relation == "inside":
        out.append(Finding(f"interior free: {ptr:#x} is {prov.offset} bytes inside obj {b.obj}'s {b.size}-byte block {b.ptr:#x} (alloc'd at event #{b.alloc_event}); free() needs the block's start", prov.text, event.index, "bad"))
    elif event.op == "free_raw":
        out.append(Finding(f"wild free: {ptr:#x} was never returned by an allocation: {prov.text}", prov.text, event.index, "bad"))
    if event.owner is OwnerKind.LIBC or (b is not None and b.libc):
        at = b.alloc_event if b is not None else None
        out.append(Finding(f"libc pointer: {ptr:#x} came from libc's malloc" + (f" at event #{at}" if at is not None else "") + ": it has no hakmem header, only __libc_free(ptr) can free it", prov.text, at, "bad"))
    if hdr_addr:
        for ev, addr, length, value in history.find_writes(hdr_addr, hdr_addr + geometry.header_size, event.index):
            out.append(Finding(f"header corruption: event #{ev} wrote {length} bytes {value:#x} at {addr:#x} (ptr{addr - ptr:+d}), over this block's header", f"corrupt at event #{ev}", ev, "bad"))
    return out


def _stages_before(stage: str, knobs: dict[str, str]) -> list[str]:
    order = ["ss", "mid", "l25"]
    probe = knobs.get("HAKMEM_HEADER_PROBE", "off") != "off"
    if stage in ("ss_lookup",):
        return ["ss"]
    if stage == "mid_lookup":
        return ["ss", "mid"]
    if stage == "l25_lookup":
        return order
    if stage == "probe":
        return order + ["probe"]
    if stage == "magic_read":
        return order + (["probe"] if probe else []) + ["magic"]
    return order + (["probe"] if probe else []) + ["magic", "method"]


def _verdict(event: model.EventResult, d: model.FreeDecision | None, placement: CrashPlacement | None) -> str:
    what = f"event #{event.index} ({event.op} of a {event.owner.value} block)"
    if placement is not None:
        return f"{what} crashed: {placement.text}"
    if d is None:
        return f"{what}: {event.outcome.value}"
    route = d.route.value if d.route else "no route"
    return f"{what} took {route} -> {d.action.value}: {event.outcome.value}"


def explain_address(history: History, addr: int, as_of: int, insp: Inspection) -> Explanation:
    """What is known about an arbitrary address at event as_of."""
    prov = history.provenance(addr, as_of)
    stages = [Finding(f"allocator's own bookkeeping: {_owner_text(insp.get_owner(addr))}")]
    probes = insp.get_probes(addr)
    if probes is not None:
        wrong = probes.get_wrong()
        stages.append(Finding("probe verdicts: " + ", ".join(f"{k}={'readable' if v else 'unreadable'}" for k, v in probes.verdicts.items()) + f"; /proc/self/maps: {'readable' if probes.readable else 'unreadable'}" + (f" (wrong: {', '.join(wrong)})" if wrong else "")))
    text, _excerpt = place_address(addr, parse_maps(insp.maps), None, None)
    stages.append(Finding(text))
    return Explanation(None, addr, prov, "", stages, None, None, [], prov.text, insp.facts)


# ------------------------------------------------------------------ orchestration
def get_geometry(lib: str | None) -> Geometry:
    """The allocator's sizes: loading the library reads them; nothing is allocated through it."""
    from forensics import native

    return Geometry.from_model(native.Allocator(lib).geometry())


def pick_events(saved, limit: int = 3) -> list[int]:
    """What to explain when nobody said: the crash, then the first anomaly of each outcome."""
    picked: list[int] = []
    crash = saved.doc.get("crash")
    if crash and crash.get("event_index") is not None:
        picked.append(crash["event_index"])
    seen = set()
    for a in saved.doc.get("anomalies", []):
        if len(picked) >= limit:
            break
        if a["outcome"] in seen or a["event_index"] in picked:
            continue
        seen.add(a["outcome"])
        picked.append(a["event_index"])
    return picked


def explain_result(saved, *, events: Iterable[int] = (), addrs: Iterable[int] = (), at: int | None = None, limit: int = 3) -> list[Explanation]:
    """Explanations of events (or addresses at event `at`) of a saved result (forensics.saved)."""
    from forensics.inspect import inspect_event

    geometry = get_geometry(None if saved.config.libc else saved.config.lib)
    from forensics.sites import get_sites
    from forensics.trace import read_header

    tf = saved.trace
    sites = {addr: info.describe() for addr, info in get_sites(read_header(saved.trace_path)).items()}
    history = History(tf.get_records_bytes(), saved.events, sites)
    crash = saved.get_crash()
    knobs = saved.knobs
    threaded = saved.config.threads and tf.num_threads > 1
    out: list[Explanation] = []
    event_list = list(events)
    addr_list = list(addrs)
    if not event_list and not addr_list:
        event_list = pick_events(saved, limit)
    # the inspection records the registry's changes (level 3 never records lookups, so the
    # allocator's decisions are the same as in the saved run)
    config = saved.config
    if not config.libc and "HAKMEM_SUPER_REG_REQTRACE" not in knobs:
        config = dataclasses.replace(config, knobs={**dict(config.knobs), "HAKMEM_SUPER_REG_REQTRACE": "3"})
    for index in event_list:
        saved._check_index(index)
        ev = saved.get_event(index)
        insp = inspect_event(saved.trace_path, index, config=config)
        e = explain_event(history, ev, insp, geometry, knobs, crash)
        if threaded or (ev.ptr and insp.target and insp.target != ev.ptr and ev.op != "corrupt"):
            e.stages.insert(0, Finding(f"note: the result came from a threaded replay; this inspection replayed serially and saw {insp.target or 0:#x} where the result has {ev.ptr:#x}", severity="warn"))
        out.append(e)
    if addr_list:
        when = saved.num_events if at is None else at
        if crash and crash.event_index is not None and when > crash.event_index:
            when = crash.event_index
        insp = inspect_event(saved.trace_path, when, addrs=addr_list, config=config)
        for a in addr_list:
            out.append(explain_address(history, a, when, insp))
    return out
