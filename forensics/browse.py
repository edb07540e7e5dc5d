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
_EVT = __import__("struct").Struct("<QQIIIIiIiBBBB")  # hfr_event (csrc/hftrace.h)


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
        self._events = events
        self.note = ""  # what the reader left out (from_log: a damaged gzip tail, the row limit)

    def get_event(self, i: int) -> model.EventResult:
        """Event i as a model record (decoded from the raw hfr_event; no ctypes)."""
        ptr, seq, route, action, tried, hit, probe, magic, method, owner, _outcome, status, check = _EVT.unpack_from(self._events, i * 48)
        d = None
        if route or seq:
            steps = model.FreeStep.from_mask(tried)
            d = model.FreeDecision(seq=seq, ptr=ptr, route=Route.from_code(route), action=model.Action.from_code(action) or model.Action.NONE,
                                   tried=steps, hit=model.FreeStep.from_mask(hit), probe=model.ProbeVerdict.from_code(probe), probe_kind=None,
                                   magic_found=magic if model.FreeStep.MAGIC in steps else None, method=method if method >= 0 else None, tid=self.tid[i])
        row = self.get_row(i)
        return model.EventResult(index=i, op=row.op, tid=row.tid, obj=row.obj, ptr=ptr, owner=model.OwnerKind.from_code(owner) or model.OwnerKind.NONE,
                                 outcome=Outcome.from_code(self.outcome_col[i]) or Outcome.NONE, status=model.EventStatus.from_code(status) or model.EventStatus.PENDING,
                                 check_failed=bool(check), decision=d)

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


# ------------------------------------------------------------------------- route logs
LOG_MAX_ROWS = 20_000_000  # ~100 bytes a row: about 2 GB at most, whatever the log
LOG_MAX_LINE = 64 * 1024  # longer lines are skipped whole (never held)
LOG_MAX_OWNERS = 1 << 20  # allocations remembered for judging their free (oldest forgotten first)
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def from_log(path, *, limit: int = LOG_MAX_ROWS) -> EventColumns:
    """Columns of a route log (HAKMEM_FREE_ROUTE_TRACE, plus [hakmem-alloc] lines if present):
    one row per allocation or free line, in log order, judged by the same rule as the replay's
    oracle when the allocation's path is in the log. Plain or gzip. Unlike `routes`, this keeps
    one compact row per line (96 bytes, plus the columns built from them): it is for browsing,
    up to `limit` rows.

    Memory is bounded whatever the log holds: at most `limit` rows, lines read LOG_MAX_LINE
    bytes at most (a longer line is skipped), and the allocation path of the last
    LOG_MAX_OWNERS allocations (a free of an older one is unjudged). Lines whose numbers do not
    fit hakmem's fields (a tid above 2**32-1, a pointer or size above 2**64-1) are skipped like
    lines that do not parse. A damaged gzip stream ends the rows where the damage starts
    (``columns.note`` says so); with no row before it, it is a BadInputError."""
    import gzip
    import struct
    import zlib
    from collections import OrderedDict

    from forensics.errors import BadInputError
    from forensics.model import Action, FreeStep, OwnerKind
    from forensics.routelog import ALLOC_RE, EXPECTED_ACTIONS, INVALID_MAGIC_ROUTES, ROUTE_RE
    from forensics.safeio import open_input

    rec = struct.Struct("<BBHIIIQqQQ")
    evt = struct.Struct("<QQIIIIiIiBBBB")
    records = bytearray()
    events = bytearray()
    owner_of: OrderedDict[int, str] = OrderedDict()
    route_codes = {r.value.encode(): r.code for r in Route}
    action_codes = {a.value.encode(): a.code for a in Action}
    step_bits = {s.value.encode(): s.bit for s in FreeStep}
    owner_codes = {k.value: k.code for k in OwnerKind}
    free_op, malloc_op = TraceOp.FREE.code, TraceOp.MALLOC.code
    probes = {b"-": -1, b"unreadable": 0, b"readable": 1}
    note = ""

    def mask(field: bytes) -> int:
        return 0 if field == b"-" else sum(step_bits.get(s, 0) for s in field.split(b","))

    raw = open_input(path, "log")
    with raw:
        try:
            head = raw.peek(2)[:2]
        except OSError:
            head = b""
        stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
        readline = stream.readline
        rows = 0
        try:
            while rows < limit:
                line = readline(LOG_MAX_LINE + 1)
                if not line:
                    break
                if len(line) > LOG_MAX_LINE:
                    while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                        line = readline(LOG_MAX_LINE + 1)
                    continue
                line = line.rstrip(b"\n")
                if line.startswith(b"[hakmem-route]"):
                    m = ROUTE_RE.match(line)
                    if m is None:
                        continue
                    seq_b, tid_b, ptr_b, route_b, action_b, tried, hit, probe_b, magic_b, method_b = m.groups()
                    ptr = 0 if ptr_b == b"(nil)" else int(ptr_b, 16)
                    seq, tid = int(seq_b), int(tid_b)
                    method = int(method_b) if method_b != b"-" else -1
                    if ptr > _U64 or seq > _U64 or tid > _U32 or not -(1 << 31) <= method < 1 << 31:
                        continue  # not a line hakmem prints: its fields are narrower
                    route = route_b.decode()
                    action = action_b.decode()
                    path_name = owner_of.pop(ptr, None)
                    if ptr == 0:
                        outcome = Outcome.CORRECT
                    elif route in INVALID_MAGIC_ROUTES:
                        outcome = Outcome.INVALID_MAGIC
                    elif action == "none":
                        outcome = Outcome.LEAKED
                    elif path_name is None:
                        outcome = Outcome.NONE  # unjudged: the allocation is not in the log
                    elif action in EXPECTED_ACTIONS.get(path_name, ()):
                        outcome = Outcome.CORRECT
                    else:
                        outcome = Outcome.MISROUTED
                    records += rec.pack(free_op, 0, 0, tid, 0, 0, 0, 0, 0, 0)
                    events += evt.pack(ptr, seq, route_codes.get(route_b, 0), action_codes.get(action_b, 0), mask(tried), mask(hit),
                                       probes[probe_b], int(magic_b, 16) & 0xFFFFFFFF if magic_b != b"-" else 0, method,
                                       owner_codes.get(path_name or "unknown", OwnerKind.UNKNOWN.code), outcome.code, model.EventStatus.DONE.code, 0)
                    rows += 1
                elif line.startswith(b"[hakmem-alloc]"):
                    m = ALLOC_RE.match(line)
                    if m is None:
                        continue
                    _seq, _fseq, tid_b, ptr_h, size_b, _align, path_b = m.groups()
                    ptr, tid, size = int(ptr_h, 16), int(tid_b), int(size_b)
                    if ptr > _U64 or tid > _U32 or size > _U64:
                        continue
                    path_name = path_b.decode()
                    owner_of[ptr] = path_name
                    owner_of.move_to_end(ptr)
                    if len(owner_of) > LOG_MAX_OWNERS:
                        owner_of.popitem(last=False)
                    records += rec.pack(malloc_op, 0, 0, tid, 0, 0, size, 0, 0, 0)
                    events += evt.pack(ptr, 0, 0, 0, 0, 0, -1, 0, -1, owner_codes.get(path_name, OwnerKind.UNKNOWN.code), Outcome.NONE.code, model.EventStatus.DONE.code, 0)
                    rows += 1
        except (OSError, EOFError, zlib.error) as exc:
            reason = "truncated gzip stream" if isinstance(exc, EOFError) else f"damaged gzip stream ({exc})"
            if not events:
                raise BadInputError(f"{path}: cannot read log: {reason}") from None
            note = f"{path}: {reason}: the rows stop there"
        else:
            try:
                if rows >= limit and readline(1):
                    note = f"{path}: only the first {limit:,} rows are shown"
            except (OSError, EOFError, zlib.error):
                pass
    if not events:
        raise BadInputError(f"{path}: no [hakmem-route] or [hakmem-alloc] lines (is HAKMEM_FREE_ROUTE_TRACE=1 set?)")
    columns = EventColumns(bytes(records), bytes(events))
    columns.note = note
    return columns
