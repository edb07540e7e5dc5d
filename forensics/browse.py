"""Columns, filters and aggregates over a replay's events, for browsing a million of them.

The TUI (and anything else that pages through events) asks this module for rows, filtered
index lists, counts and jump targets; it never touches the raw records itself. Nothing here
makes one Python object per event: each column is a bytes or array slice of the saved records
(C-speed strided copies), a filter is a big-integer bitmask (one byte a row, ANDed together),
and counts are popcounts.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from functools import cached_property

from forensics import model
from forensics.model import Outcome, Route
from forensics.trace import TraceOp

_ALLOC_CODES = frozenset({TraceOp.MALLOC.code, TraceOp.CALLOC.code, TraceOp.MEMALIGN.code, TraceOp.LIBC_MALLOC.code, TraceOp.REALLOC.code})
_FREEING_CODES = frozenset({TraceOp.FREE.code, TraceOp.FREE_LIBC.code, TraceOp.DOUBLE_FREE.code, TraceOp.FREE_INTERIOR.code, TraceOp.REALLOC.code})

SIZE_CLASSES = ("tiny", "mid", "l25", "large")


@dataclass(frozen=True)
class Row:
    """One event as the table shows it."""

    index: int
    tid: int
    op: str
    obj: int
    ptr: int
    size: int
    route: str  # "" when the event made no free decision
    outcome: str  # "" for non-frees


@dataclass(frozen=True)
class Filter:
    """What the user narrowed the view to; empty sets mean "any"."""

    routes: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()
    tids: frozenset[int] = frozenset()
    size_classes: frozenset[str] = frozenset()
    ptr_text: str = ""  # hex digits the pointer must contain
    anomalies_only: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.routes or self.outcomes or self.tids or self.size_classes or self.ptr_text or self.anomalies_only)

    def describe(self) -> str:
        parts = []
        if self.anomalies_only:
            parts.append("anomalies")
        for name, values in (("route", self.routes), ("outcome", self.outcomes), ("thread", self.tids), ("size", self.size_classes)):
            if values:
                parts.append(f"{name}={','.join(sorted(map(str, values)))}")
        if self.ptr_text:
            parts.append(f"ptr~{self.ptr_text}")
        return " ".join(parts) or "all events"


@dataclass
class Counts:
    routes: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    rows: int = 0


def _ones(n: int) -> int:
    return int.from_bytes(b"\x01" * n, "little") if n else 0


class EventColumns:
    """The events of one replay as columns (from the raw hfr_event and hft_record bytes)."""

    def __init__(self, records: bytes, events: bytes, *, crash_index: int | None = None, geometry_limits: tuple[int, int, int] = (1024, 32736, 1048544)) -> None:
        self.n = len(events) // 48
        assert len(records) == self.n * 48, "records and events disagree"
        self.crash_index = crash_index
        self.tiny_max, self.mid_max, self.l25_max = geometry_limits
        rec_i = array("I", records)
        rec_q = array("Q", records)
        ev_q = array("Q", events)
        ev_i = array("I", events)
        self.op = records[0::48]
        self.tid = rec_i[1::12]
        self.obj = rec_i[2::12]
        self.obj2 = rec_i[3::12]
        self.size_col = rec_q[2::6]
        self.arg = rec_q[3::6]
        self.ptr = ev_q[0::6]
        self.route_col = ev_i[4::12]
        self.outcome_col = bytearray(events[45::48])
        self.status = events[46::48]
        if crash_index is not None and 0 <= crash_index < self.n:
            self.outcome_col[crash_index] = Outcome.CRASHED.code
        self.outcome_col = bytes(self.outcome_col)
        self.all = _ones(self.n)

    # ---- rows
    def get_row(self, i: int) -> Row:
        op = self.op[i]
        route = Route.from_code(self.route_col[i])
        outcome = Outcome.from_code(self.outcome_col[i])
        size = self.size_col[i] * (self.arg[i] if op == TraceOp.CALLOC.code else 1)
        return Row(
            index=i,
            tid=self.tid[i],
            op=TraceOp.from_code(op).value if 0 < op < 13 else f"op{op}",
            obj=self.obj[i],
            ptr=self.ptr[i],
            size=size if op in _ALLOC_CODES else 0,
            route=route.value if route else "",
            outcome="" if outcome in (None, Outcome.NONE) else outcome.value,
        )

    # ---- masks: int with byte i == 1 where row i matches
    def _mask_from_table(self, column: bytes, wanted: set[int]) -> int:
        table = bytes(1 if b in wanted else 0 for b in range(256))
        return int.from_bytes(column.translate(table), "little")

    @cached_property
    def _route_bytes(self) -> bytes:
        return bytes(r if r < 255 else 255 for r in self.route_col)

    @cached_property
    def _tid_ids(self) -> tuple[list[int], bytes]:
        tids = sorted(set(self.tid))
        if len(tids) > 255:
            return tids, b""
        pos = {t: i for i, t in enumerate(tids)}
        return tids, bytes(pos[t] for t in self.tid)

    @cached_property
    def size_class_col(self) -> bytes:
        """0 tiny, 1 mid, 2 l25, 3 large, 255 not an allocation."""
        out = bytearray(b"\xff" * self.n)
        t, m, l = self.tiny_max, self.mid_max, self.l25_max
        ops = self.op
        sizes = self.size_col
        args = self.arg
        calloc = TraceOp.CALLOC.code
        for i in range(self.n):
            op = ops[i]
            if op in _ALLOC_CODES or op in _FREEING_CODES:
                s = sizes[i] * args[i] if op == calloc else sizes[i]
                if op in _FREEING_CODES and op != TraceOp.REALLOC.code:
                    continue
                out[i] = 0 if s <= t else 1 if s <= m else 2 if s <= l else 3
        return bytes(out)

    @cached_property
    def _ptr_text(self) -> str:
        return "".join(f"{p:016x}\n" for p in self.ptr)

    def get_mask(self, f: Filter) -> int:
        mask = self.all
        if f.anomalies_only:
            mask &= self._mask_from_table(self.outcome_col, {o.code for o in Outcome if o not in (Outcome.NONE, Outcome.CORRECT)})
        if f.outcomes:
            mask &= self._mask_from_table(self.outcome_col, {Outcome(o).code for o in f.outcomes if o in Outcome._value2member_map_})
        if f.routes:
            mask &= self._mask_from_table(self._route_bytes, {Route(r).code for r in f.routes if r in Route._value2member_map_})
        if f.tids:
            tids, col = self._tid_ids
            if col:
                mask &= self._mask_from_table(col, {tids.index(t) for t in f.tids if t in tids})
            else:
                wanted = set(f.tids)
                mask &= int.from_bytes(bytes(1 if t in wanted else 0 for t in self.tid), "little")
        if f.size_classes:
            mask &= self._mask_from_table(self.size_class_col, {SIZE_CLASSES.index(c) for c in f.size_classes if c in SIZE_CLASSES})
        if f.ptr_text:
            digits = f.ptr_text.lower().removeprefix("0x")
            if not re.fullmatch(r"[0-9a-f]+", digits):
                return 0
            hits = bytearray(self.n)
            text = self._ptr_text
            start = text.find(digits)
            while start != -1:
                row = start // 17
                hits[row] = 1
                start = text.find(digits, (row + 1) * 17)
            mask &= int.from_bytes(hits, "little")
        return mask

    def get_indices(self, f: Filter) -> array:
        """Row indices matching f, in trace order."""
        if f.is_empty:
            return array("I", range(self.n))
        flags = self.get_mask(f).to_bytes(self.n, "little") if self.n else b""
        out = array("I")
        i = flags.find(1)
        while i != -1:
            out.append(i)
            i = flags.find(1, i + 1)
        return out

    def get_counts(self, f: Filter) -> Counts:
        """Route and outcome counts of the rows f keeps (frees only have routes/outcomes)."""
        mask = self.get_mask(f)
        counts = Counts(rows=mask.bit_count())
        for route in Route:
            c = (mask & self._mask_from_table(self._route_bytes, {route.code})).bit_count()
            if c:
                counts.routes[route.value] = c
        for outcome in Outcome:
            if outcome is Outcome.NONE:
                continue
            c = (mask & self._mask_from_table(self.outcome_col, {outcome.code})).bit_count()
            if c:
                counts.outcomes[outcome.value] = c
        return counts

    # ---- jumps (indices into the trace, not into a filtered view)
    def find_next_anomaly(self, after: int) -> int | None:
        flags = self.outcome_col.translate(bytes(0 if b in (Outcome.NONE.code, Outcome.CORRECT.code) else 1 for b in range(256)))
        i = flags.find(1, after + 1)
        return None if i == -1 else i

    def find_last_anomaly(self) -> int | None:
        flags = self.outcome_col.translate(bytes(0 if b in (Outcome.NONE.code, Outcome.CORRECT.code) else 1 for b in range(256)))
        i = flags.rfind(1)
        return None if i == -1 else i

    def find_allocation(self, i: int) -> int | None:
        """The event that allocated the block event i frees (or uses)."""
        op = self.op[i]
        obj = self.obj2[i] if op == TraceOp.REALLOC.code else self.obj[i]
        if not obj:
            return None
        for j in range(i - 1, -1, -1):
            if self.obj[j] == obj and self.op[j] in _ALLOC_CODES:
                return j
        return None

    def find_previous_free(self, i: int) -> int | None:
        """The last event before i that freed the same pointer (any object)."""
        ptr = self.ptr[i] if self.op[i] in _FREEING_CODES else 0
        if not ptr:
            return None
        for j in range(i - 1, -1, -1):
            if self.ptr[j] == ptr and self.op[j] in _FREEING_CODES and self.op[j] != TraceOp.REALLOC.code:
                return j
        return None

    def get_threads(self) -> list[int]:
        return self._tid_ids[0]


def from_saved(saved) -> EventColumns:
    """Columns of a saved result (forensics.saved.SavedResult)."""
    crash = saved.doc.get("crash")
    return EventColumns(saved.trace.get_records_bytes(), saved.events, crash_index=crash.get("event_index") if crash else None)


def outcome_of(code: int) -> model.Outcome | None:
    return Outcome.from_code(code)
