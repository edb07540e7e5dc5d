"""Delta debugging of a failing trace: the smallest trace that still fails the same way.

The failure is a signature taken from the original replay (model.FailureSignature): a crash
(same signal, same stage, same op of the crashing event), an outcome (an anomaly of the same
class on the same owner kind of block) or a route (a free taking the same route on the same
owner kind). Every candidate trace is written as a binary trace into a temporary directory
and replayed natively in its own hfreplay child; with jobs > 1 several children run at once
(threads, each waiting on its child).

The search; every candidate is a subsequence, so each thread's order is kept:
1. cut: everything after the event that carries the signature goes (it never ran, or it ran
   after the failure had already happened);
2. units: ddmin over allocation units: one block's allocation with everything that uses it
   (its free or realloc, interior frees, corruptions, double frees), so every kept free keeps
   its allocation and every candidate is a valid trace;
3. events: ddmin over single events (a free may go while its allocation stays); candidates
   the trace rules reject are skipped without a replay.
The result renumbers objects densely (one id per block, in order of allocation) and keeps the
original header (its knobs) with comment lines saying how it was made.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from forensics import model, native
from forensics.errors import BadInputError
from forensics.replay import EVENT_SIZE, ReplayConfig, run_replay
from forensics.trace import TraceHeader, iter_raw, read_header, write_trace
from forensics.trace.records import (
    OP_CALLOC,
    OP_CORRUPT,
    OP_DOUBLE_FREE,
    OP_FREE,
    OP_FREE_INTERIOR,
    OP_FREE_LIBC,
    OP_LIBC_MALLOC,
    OP_MALLOC,
    OP_MEMALIGN,
    OP_NAMES,
    OP_REALLOC,
    RawEvent,
)
from forensics.trace.text import format_event
from forensics.trace.validate import ObjectValidator

ProgressFn = Callable[[str, int, int], None]  # (phase, events in the current trace, replays so far)

_ALLOCS = frozenset({OP_MALLOC, OP_CALLOC, OP_MEMALIGN, OP_LIBC_MALLOC})
# hfr_event fields scanned in bulk (csrc/hftrace.h): owner and outcome are one byte each;
# route is a little-endian uint32 whose codes all fit in its low byte.
_OWNER_OFFSET = native.HfrEvent.owner.offset
_OUTCOME_OFFSET = native.HfrEvent.outcome.offset
_ROUTE_OFFSET = native.HfrEvent.route.offset
MIN_CANDIDATE_TIMEOUT = 5.0
LIST_LIMIT = 48  # original indices / object ids listed in the header comment


@dataclasses.dataclass(frozen=True)
class MinimizeOptions:
    signature: model.SignatureKind | None = None  # None: crash if the original crashes, else outcome
    event: int | None = None  # take the signature from this event (default: the crash / first anomaly)
    jobs: int = 1
    timeout: float | None = None  # per candidate; None: 10x the original replay, at least 5 s


# ------------------------------------------------------------------ signatures
def decode_event(raw_events: bytes, index: int, record: Sequence[int], probe_kind: model.ProbeKind | None) -> model.EventResult:
    """Event `index` of a replay's raw hfr_event records as a model record; record is the
    trace event (op code, tid, obj, ...)."""
    e = native.HfrEvent.from_buffer_copy(raw_events, index * EVENT_SIZE)
    return native.event_result(index, e, op=OP_NAMES[record[0]], tid=record[1], obj=record[2], probe_kind=probe_kind)


def probe_kind_of(allocator: str, knobs: Mapping[str, str]) -> model.ProbeKind | None:
    """The header probe a replay ran with, from its allocator and effective knobs (None: libc)."""
    if allocator == "libc":
        return None
    value = knobs.get("HAKMEM_HEADER_PROBE", "off")
    return model.ProbeKind(value) if value in {p.value for p in model.ProbeKind} else None


def pick_signature(
    result: model.ReplayResult, events: Sequence[RawEvent], kind: model.SignatureKind | None = None, event: int | None = None
) -> model.FailureSignature:
    """The failure to keep, from the original replay (run with keep_events); BadInputError if none."""
    if kind is None:
        kind = model.SignatureKind.CRASH if result.crash is not None else model.SignatureKind.OUTCOME
    if kind is model.SignatureKind.CRASH:
        c, e = result.crash, result.crash_event
        if c is None or e is None:
            what = "hangs" if result.hang else "does not crash"
            raise BadInputError(f"{result.trace}: the replay {what}, so there is no crash to keep (try --signature outcome or route)")
        if event is not None and event != e.index:
            raise BadInputError(f"--event {event}: the replay crashes in event {e.index}; a crash signature comes from that event")
        return model.FailureSignature(kind, e.index, e.op, e.owner, signo=c.signo, signal=c.signal_name, stage=c.stage_name)
    if event is not None:
        if not 0 <= event < result.num_events:
            raise BadInputError(f"--event {event}: out of range (the trace has {result.num_events} events)")
        assert result.raw_events is not None
        ev = result.crash_event if result.crash_event is not None and result.crash_event.index == event else None
        ev = ev or decode_event(result.raw_events, event, events[event], probe_kind_of(result.allocator, result.knobs))
        if ev.status is model.EventStatus.PENDING:
            raise BadInputError(f"--event {event}: the replay never got there")
    elif kind is model.SignatureKind.OUTCOME:
        ev = result.anomalies[0] if result.anomalies else None
        if ev is None:
            raise BadInputError(f"{result.trace}: every free is correct, so there is no anomaly to keep (try --signature route --event N)")
    else:
        ev = next((a for a in result.anomalies if a.decision is not None and a.decision.route is not None), None)
        if ev is None:
            raise BadInputError(f"{result.trace}: no anomaly took a route; name the free to keep with --event N")
    if kind is model.SignatureKind.OUTCOME:
        if not ev.is_anomaly:
            raise BadInputError(f"--event {ev.index}: its outcome is {ev.outcome.value}, not an anomaly (try --signature route)")
        return model.FailureSignature(kind, ev.index, ev.op, ev.owner, outcome=ev.outcome)
    if ev.decision is None or ev.decision.route is None:
        raise BadInputError(f"--event {ev.index}: a {ev.op} that took no route; a route signature needs a free")
    return model.FailureSignature(kind, ev.index, ev.op, ev.owner, route=ev.decision.route)


def matches(sig: model.FailureSignature, result: model.ReplayResult) -> bool:
    """Whether a replay shows the failure (outcome and route need result.raw_events)."""
    if sig.kind is model.SignatureKind.CRASH:
        c, e = result.crash, result.crash_event
        return c is not None and e is not None and c.signo == sig.signo and c.stage_name == sig.stage and e.op == sig.op
    raw = result.raw_events
    if raw is None:
        raise ValueError("matches() needs a replay run with keep_events=True")
    owners = raw[_OWNER_OFFSET::EVENT_SIZE]
    if sig.kind is model.SignatureKind.OUTCOME:
        assert sig.outcome is not None
        column, value = raw[_OUTCOME_OFFSET::EVENT_SIZE], sig.outcome.code
    else:
        assert sig.route is not None
        column, value = raw[_ROUTE_OFFSET::EVENT_SIZE], sig.route.code
    want = bytes([value])
    owner = sig.owner.code
    i = column.find(want)
    while i != -1:
        if owners[i] == owner:
            return True
        i = column.find(want, i + 1)
    return False


# ------------------------------------------------------------------ units
def allocation_units(events: Sequence[RawEvent], indices: Sequence[int]) -> list[list[int]]:
    """The events at `indices` grouped into allocation units, in order of their first event.

    A unit is one block's life: its allocation, the ops that use it while live, its free (or
    the realloc that frees it, which then continues the unit with the new block: a realloc
    chain is one unit), and double frees of it after. Ops on no object (thread_end, free_raw,
    free(NULL), realloc(NULL, ...) starting a chain) start units of their own."""
    units: list[list[int]] = []
    current: dict[int, int] = {}  # object id -> unit of its live block
    last: dict[int, int] = {}  # object id -> unit of its latest block (for double_free)

    def new() -> int:
        units.append([])
        return len(units) - 1

    for i in indices:
        code, obj, obj2 = events[i][0], events[i][2], events[i][3]
        if code in _ALLOCS:
            u = current[obj] = last[obj] = new()
        elif code == OP_FREE or code == OP_FREE_LIBC:
            u = current.pop(obj) if obj else new()
        elif code == OP_REALLOC:
            u = current.pop(obj2) if obj2 else new()
            if obj:
                current[obj] = last[obj] = u
        elif code == OP_FREE_INTERIOR or code == OP_CORRUPT:
            u = current[obj]
        elif code == OP_DOUBLE_FREE:
            u = last[obj]
        else:  # thread_end, free_raw
            u = new()
        units[u].append(i)
    return units


def is_valid(events: Sequence[RawEvent], indices: Sequence[int]) -> bool:
    """Whether the events at `indices` form a trace the replay accepts (object rules)."""
    v = ObjectValidator("event")
    return all(v.check(events[i], k) is None for k, i in enumerate(indices))


def renumber(events: Sequence[RawEvent], indices: Sequence[int]) -> tuple[list[RawEvent], dict[int, int]]:
    """The events at `indices` with objects renumbered densely: one id per block, 1, 2, ...
    in order of allocation. Returns the events and new id -> original id."""
    out: list[RawEvent] = []
    names: dict[int, int] = {}
    current: dict[int, int] = {}  # original id -> new id of its live block
    last: dict[int, int] = {}  # original id -> new id of its latest block
    counter = itertools.count(1)

    def fresh(orig: int) -> int:
        new = next(counter)
        names[new] = orig
        current[orig] = last[orig] = new
        return new

    for i in indices:
        code, tid, obj, obj2, size, arg, value, site = events[i]
        if code in _ALLOCS:
            obj = fresh(obj)
        elif code == OP_FREE or code == OP_FREE_LIBC:
            obj = current.pop(obj) if obj else 0
        elif code == OP_REALLOC:
            obj2 = current.pop(obj2) if obj2 else 0
            obj = fresh(obj) if obj else 0
        elif code == OP_FREE_INTERIOR or code == OP_CORRUPT:
            obj = current[obj]
        elif code == OP_DOUBLE_FREE:
            obj = last[obj]
        out.append((code, tid, obj, obj2, size, arg, value, site))
    return out, names


# ------------------------------------------------------------------ the search
class _Tester:
    """Replays candidate traces (subsequences of the original) and says which still fail.

    Results are cached by candidate; replays run on `jobs` threads at a time, each waiting on
    its own hfreplay child."""

    def __init__(self, events: Sequence[RawEvent], header: TraceHeader, config: ReplayConfig, sig: model.FailureSignature, jobs: int, workdir: Path, progress: ProgressFn | None) -> None:
        self.events = events
        self.header = header
        self.config = config
        self.sig = sig
        self.jobs = max(1, jobs)
        self.workdir = workdir
        self.progress = progress
        self.replays = 0
        self.phase = "cut"
        self.size = len(events)
        self._cache: dict[tuple[int, ...], bool] = {}
        self._lock = threading.Lock()
        self._names = itertools.count()
        self._pool = cf.ThreadPoolExecutor(max_workers=self.jobs) if self.jobs > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def report(self, phase: str | None = None, size: int | None = None) -> None:
        if phase is not None:
            self.phase = phase
        if size is not None:
            self.size = size
        if self.progress:
            self.progress(self.phase, self.size, self.replays)

    def test(self, indices: tuple[int, ...]) -> bool:
        with self._lock:
            if indices in self._cache:
                return self._cache[indices]
        if not indices:
            ok = False
        else:
            path = self.workdir / f"candidate-{next(self._names)}.htb"
            write_trace(path, self.header, (self.events[i] for i in indices), binary=True)
            try:
                result = run_replay(path, self.config, keep_events=self.sig.kind is not model.SignatureKind.CRASH)
                ok = matches(self.sig, result)
            except BadInputError:
                ok = False  # the native replay refused the candidate: it shows nothing
            finally:
                path.unlink(missing_ok=True)
            with self._lock:
                self.replays += 1
        with self._lock:
            self._cache[indices] = ok
        self.report()
        return ok

    def first_passing(self, candidates: list[tuple[int, ...]]) -> int | None:
        """Index of the first candidate (in order) that still fails the same way, or None.

        Runs `jobs` at a time; a window's later successes are kept in the cache."""
        for start in range(0, len(candidates), self.jobs):
            window = candidates[start : start + self.jobs]
            if self._pool is None or len(window) == 1:
                oks = [self.test(c) for c in window]
            else:
                oks = list(self._pool.map(self.test, window))
            for k, ok in enumerate(oks):
                if ok:
                    return start + k
        return None


def _split(items: list, n: int) -> list[list]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return [c for c in out if c]


def ddmin(items: list, flatten: Callable[[list], tuple[int, ...]], tester: _Tester, valid: Callable[[tuple[int, ...]], bool] | None = None) -> list:
    """Zeller's ddmin over `items` (complements first, then subsets); a candidate is the
    sorted event indices `flatten` makes of a list of items. Returns a 1-minimal list."""
    n = 2
    while len(items) >= 2:
        n = min(n, len(items))
        chunks = _split(items, n)
        options: list[tuple[list, tuple[int, ...], bool]] = []  # (items, candidate, is_subset)
        for k in range(len(chunks)):
            rest = [x for j, c in enumerate(chunks) if j != k for x in c]
            options.append((rest, flatten(rest), False))
        if n > 2:
            options += [(c, flatten(c), True) for c in chunks]
        if valid is not None:
            options = [o for o in options if valid(o[1])]
        hit = tester.first_passing([o[1] for o in options])
        if hit is not None:
            items, _, subset = options[hit]
            n = 2 if subset else max(n - 1, 2)
            tester.report(size=len(flatten(items)))
            continue
        if n >= len(items):
            break
        n = min(2 * n, len(items))
    return items


def minimize(
    trace: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: ReplayConfig = ReplayConfig(threads=False),
    options: MinimizeOptions = MinimizeOptions(),
    *,
    progress: ProgressFn | None = None,
) -> model.MinimizeResult:
    """Minimize `trace` into `output` (text, or binary for a .htb name) keeping its failure."""
    start = time.monotonic()
    src, out = Path(trace), Path(output)
    if not src.exists():
        raise BadInputError(f"{trace}: no such file")
    if out.exists() and os.path.samefile(src, out):
        raise BadInputError(f"{output}: is the input trace; choose another output")
    header = read_header(src)
    events: list[RawEvent] = list(iter_raw(src))
    if not events:
        raise BadInputError(f"{trace}: the trace has no events")
    original = run_replay(src, config, keep_events=True)
    sig = pick_signature(original, events, options.signature, options.event)
    timeout = options.timeout or max(MIN_CANDIDATE_TIMEOUT, 10 * original.seconds)
    cand_config = dataclasses.replace(config, timeout=min(timeout, config.timeout), max_anomalies=8)
    steps = [model.MinimizeStep("original", len(events), 1, time.monotonic() - start)]
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-minimize-") as tmp:
        tester = _Tester(events, header, cand_config, sig, options.jobs, Path(tmp), progress)
        tester.replays = 1
        try:
            kept = tuple(range(len(events)))
            tester.report("cut", len(kept))
            cut = tuple(range(sig.event_index + 1))
            if len(cut) < len(kept) and tester.test(cut):
                kept = cut
            steps.append(model.MinimizeStep("cut", len(kept), tester.replays, time.monotonic() - start))

            units = allocation_units(events, kept)
            tester.report("units", len(kept))
            units = ddmin(units, lambda us: tuple(sorted(i for u in us for i in u)), tester)
            kept = tuple(sorted(i for u in units for i in u))
            steps.append(model.MinimizeStep("units", len(kept), tester.replays, time.monotonic() - start))

            tester.report("events", len(kept))
            kept = tuple(ddmin(list(kept), tuple, tester, valid=lambda c: is_valid(events, c)))
            steps.append(model.MinimizeStep("events", len(kept), tester.replays, time.monotonic() - start))
        finally:
            tester.close()
    replays = tester.replays

    minimal_events, names = renumber(events, kept)
    text_header = _minimized_header(header, src, sig, replays + 1, len(events), kept, names)
    write_trace(out, text_header, minimal_events)
    minimal = run_replay(out, config, keep_events=True)
    replays += 1
    ok = matches(sig, minimal)
    steps.append(model.MinimizeStep("written", len(minimal_events), replays, time.monotonic() - start))
    return model.MinimizeResult(
        source=str(src),
        output=str(out),
        signature=sig,
        original=original,
        minimal=minimal,
        minimal_matches=ok,
        original_events=len(events),
        minimal_events=len(minimal_events),
        kept=list(kept),
        objects=names,
        lines=[format_event(e) for e in minimal_events],
        steps=steps,
        replays=replays,
        seconds=time.monotonic() - start,
        jobs=max(1, options.jobs),
    )


def _listing(items: Sequence[str]) -> str:
    if len(items) <= LIST_LIMIT:
        return " ".join(items)
    return " ".join(items[:LIST_LIMIT]) + f" ... ({len(items) - LIST_LIMIT} more)"


def _minimized_header(header: TraceHeader, src: Path, sig: model.FailureSignature, replays: int, n: int, kept: Sequence[int], names: dict[int, int]) -> TraceHeader:
    """The original header lines (knobs, meta, comments) and how this trace was made."""
    lines = list(header.lines)
    lines.append(f"# minimized from {src.name} by hakmem-forensics minimize, signature {sig.describe()}, {replays} replays")
    lines.append(f"# {n} -> {len(kept)} events; original event indices: {_listing([str(i) for i in kept])}")
    if names:
        lines.append(f"# objects renumbered (new=original): {_listing([f'{k}={v}' for k, v in names.items()])}")
    return TraceHeader.parse(lines)
