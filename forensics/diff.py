"""Two replays side by side: route and outcome deltas, and the first event decided differently.

Two forms. One trace replayed under two configurations (probe, library, mode, allocator,
knobs): both replays keep every hfr_event record, so the comparison is event by event, over
the columns that make a decision (status, outcome, route, action, stages tried and hit, probe
verdict); pointers are not compared (two allocators place blocks differently). Or two saved
results: a saved archive (`replay --save`) holds every record and is compared the same way; a
JSON report (`replay --json`, schema hakmem-forensics/replay/1) lists only the first
anomalies, so two of those are compared anomaly by anomaly, which misses a correct free whose
route changed (the result says so: exact is False).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from forensics import model, native
from forensics.errors import BadInputError
from forensics.safeio import open_input
from forensics.minimize import decode_event, probe_kind_of
from forensics.replay import EVENT_SIZE, RECORD_SIZE, ReplayConfig, TraceFile, run_replay
from forensics.report import replay as replay_report
from forensics.trace import convert, sniff

# hfr_event columns that make up a decision (csrc/hftrace.h), compared by their low byte:
# every route, action, stage mask, probe verdict (-1, 0, 1), outcome and status fits in it.
_F = native.HfrEvent
_DECISION_COLUMNS: tuple[tuple[str, int], ...] = (
    ("status", _F.status.offset),
    ("outcome", _F.outcome.offset),
    ("route", _F.route.offset),
    ("action", _F.action.offset),
    ("stages", _F.stages_tried.offset),
    ("stages", _F.stages_hit.offset),
    ("probe", _F.probe.offset),
)
_OWNER_COLUMN = _F.owner.offset
_STATUS_COLUMN = _F.status.offset
_STARTED = model.EventStatus.STARTED.code
ZIP_MAGIC = b"PK\x03\x04"
MAX_REPORT_BYTES = 256 << 20  # a replay --json report holds the first anomalies only: a few MB at most

ProgressFn = Callable[[str, int, int], None]  # (side label, events done, events in all)


@dataclass(frozen=True)
class SideConfig:
    """One side of a trace diff: a label and how to replay."""

    label: str
    config: ReplayConfig


def first_mismatch(x: bytes, y: bytes) -> int | None:
    """Index of the first byte where x and y differ (a length difference counts), or None."""
    if x == y:
        return None
    lo, hi = 0, min(len(x), len(y))
    if x[:hi] == y[:hi]:
        return hi
    while lo < hi:  # the prefix up to lo agrees, the one up to hi + 1 does not
        mid = (lo + hi) // 2
        if x[: mid + 1] == y[: mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    return lo


def compare_records(ra: bytes, rb: bytes) -> tuple[int | None, tuple[str, ...], int | None]:
    """The first event whose decision differs between two replays' raw hfr_event arrays (of
    the same trace): (index or None, what differs there, first event whose owner differs)."""
    firsts: dict[str, int] = {}
    for name, off in _DECISION_COLUMNS:
        i = first_mismatch(ra[off::EVENT_SIZE], rb[off::EVENT_SIZE])
        if i is not None and (name not in firsts or i < firsts[name]):
            firsts[name] = i
    # owners only where both sides finished the event (after a crash the rest is all zero)
    reached = min(_first_not_done(ra), _first_not_done(rb))
    owner = first_mismatch(ra[_OWNER_COLUMN : reached * EVENT_SIZE : EVENT_SIZE], rb[_OWNER_COLUMN : reached * EVENT_SIZE : EVENT_SIZE])
    if not firsts:
        return None, (), owner
    index = min(firsts.values())
    what = tuple(dict.fromkeys(name for name, i in firsts.items() if i == index))
    status_a, status_b = ra[index * EVENT_SIZE + _STATUS_COLUMN], rb[index * EVENT_SIZE + _STATUS_COLUMN]
    if _STARTED in (status_a, status_b):
        what = ("crash",)  # the side that died made no decision to compare
    return index, what, owner


_NOT_DONE = bytes(0 if b == model.EventStatus.DONE.code else 1 for b in range(256))


def _first_not_done(raw: bytes) -> int:
    """Index of the first event whose record is not DONE (the number of events if none)."""
    i = raw[_STATUS_COLUMN::EVENT_SIZE].translate(_NOT_DONE).find(1)
    return len(raw) // EVENT_SIZE if i == -1 else i


def side_from_result(label: str, result: model.ReplayResult) -> model.DiffSide:
    return model.DiffSide(
        label=label,
        source=result.trace,
        allocator=result.allocator,
        knobs=dict(result.knobs),
        num_events=result.num_events,
        events_done=result.events_done,
        completed=result.completed,
        routes=dict(result.routes),
        outcomes=dict(result.outcomes),
        crash=result.crash,
        crash_event=result.crash_event,
        hang=result.hang,
    )


def _table(a: dict[str, int], b: dict[str, int], order: list[str]) -> list[tuple[str, int, int]]:
    names = [k for k in order if k in a or k in b] + sorted(k for k in set(a) | set(b) if k not in order)
    return [(k, a.get(k, 0), b.get(k, 0)) for k in names]


def _route_order() -> list[str]:
    return [r.value for r in model.Route] + ["(none)"]


def _outcome_order() -> list[str]:
    return [o.value for o in model.Outcome if o is not model.Outcome.NONE]


def _tables(a: model.DiffSide, b: model.DiffSide) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    return _table(a.routes, b.routes, _route_order()), _table(a.outcomes, b.outcomes, _outcome_order())


# ------------------------------------------------------------------ one trace, two configurations
def diff_trace(trace: str | os.PathLike[str], a: SideConfig, b: SideConfig, *, jobs: int = 2, progress: ProgressFn | None = None) -> model.DiffResult:
    """Replay one trace under two configurations (at once, with jobs >= 2) and compare."""
    path = Path(trace)
    if not path.exists():
        raise BadInputError(f"{trace}: no such file")
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-diff-") as tmp:
        binary = path
        if sniff(path) != "binary":
            binary = Path(tmp) / (path.name + ".htb")
            convert(path, binary, to="binary")

        def run(side: SideConfig) -> model.ReplayResult:
            cb = (lambda done, total: progress(side.label, done, total)) if progress else None
            return run_replay(binary, side.config, progress=cb, keep_events=True)

        if jobs >= 2:
            with cf.ThreadPoolExecutor(max_workers=2) as pool:
                ra, rb = pool.map(run, (a, b))
        else:
            ra, rb = run(a), run(b)
        for r in (ra, rb):
            r.trace = str(path)
        with TraceFile(binary) as tf:
            return _diff_replays(a.label, ra, b.label, rb, tf)


def _diff_replays(la: str, ra: model.ReplayResult, lb: str, rb: model.ReplayResult, tf: TraceFile) -> model.DiffResult:
    assert ra.raw_events is not None and rb.raw_events is not None
    sa, sb = side_from_result(la, ra), side_from_result(lb, rb)
    index, what, owner = compare_records(ra.raw_events, rb.raw_events)
    divergence = None
    if index is not None:
        rec = tf.get_record(index)
        record = (rec.op, rec.tid, rec.obj)
        ea = decode_event(ra.raw_events, index, record, probe_kind_of(ra.allocator, ra.knobs))
        eb = decode_event(rb.raw_events, index, record, probe_kind_of(rb.allocator, rb.knobs))
        divergence = model.Divergence(index, what, ea, eb, ea.status is model.EventStatus.STARTED, eb.status is model.EventStatus.STARTED)
    routes, outcomes = _tables(sa, sb)
    return model.DiffResult(
        a=sa,
        b=sb,
        routes=routes,
        outcomes=outcomes,
        divergence=divergence,
        events_compared=index if index is not None else tf.num_events,
        exact=True,
        first_owner_difference=owner,
    )


# ------------------------------------------------------------------ two saved results
@dataclass
class _Loaded:
    """A result file: its side, its anomalies by event (JSON), its records (saved archive)."""

    side: model.DiffSide
    anomalies: dict[int, model.EventResult] = field(default_factory=dict)
    complete_to: float = float("inf")  # the anomaly list is complete up to this event (inclusive)
    raw: bytes | None = None  # every record (saved archive)
    trace_records: bytes | None = None  # the trace's records (saved archive): both must have replayed one trace

    def get_record(self, index: int) -> tuple[int, int, int]:
        """(op, tid, obj) of trace event `index` (hft_record: op at 0, tid at 4, obj at 8)."""
        assert self.trace_records is not None
        r = self.trace_records[index * RECORD_SIZE : (index + 1) * RECORD_SIZE]
        return r[0], int.from_bytes(r[4:8], "little"), int.from_bytes(r[8:12], "little")


def detect(path: str | os.PathLike[str]) -> str:
    """'saved' (a replay --save archive), 'json' (a replay --json report) or 'trace'."""
    with open_input(path, "saved result, replay report or trace") as fh:
        head = fh.read(64)
    if head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):  # an empty archive: open_result says why not
        return "saved"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "trace"


def diff_files(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> model.DiffResult:
    """Compare two saved results (JSON reports, or replay --save archives)."""
    kinds = [detect(path_a), detect(path_b)]
    for p, k in zip((path_a, path_b), kinds):
        if k == "trace":
            raise BadInputError(f"{p}: a trace, not a replay result; give two results, or one trace with two configurations (e.g. --probe off --probe safe)")
    la, lb = _labels(Path(path_a), Path(path_b))
    loaded = [_load(p, k, label) for p, k, label in zip((path_a, path_b), kinds, (la, lb))]
    a, b = loaded
    routes, outcomes = _tables(a.side, b.side)
    if a.raw is not None and b.raw is not None:
        if a.trace_records != b.trace_records:
            return model.DiffResult(a.side, b.side, routes, outcomes, None, 0, False, note="the two results replayed different traces: only the tables are compared")
        index, what, owner = compare_records(a.raw, b.raw)
        divergence = None
        if index is not None:
            record = a.get_record(index)
            ea = decode_event(a.raw, index, record, probe_kind_of(a.side.allocator, a.side.knobs))
            eb = decode_event(b.raw, index, record, probe_kind_of(b.side.allocator, b.side.knobs))
            divergence = model.Divergence(index, what, ea, eb, ea.status is model.EventStatus.STARTED, eb.status is model.EventStatus.STARTED)
        return model.DiffResult(a.side, b.side, routes, outcomes, divergence, index if index is not None else a.side.num_events, True, owner)
    if a.side.num_events != b.side.num_events:
        note = f"the two results replayed traces of different lengths ({a.side.num_events:,} and {b.side.num_events:,} events): only the tables are compared"
        return model.DiffResult(a.side, b.side, routes, outcomes, None, 0, False, note=note)
    divergence, compared = _anomaly_divergence(a, b)
    note = (
        "a JSON report lists only the first anomalies, so this compares anomalies: a correct free whose route "
        "changed does not show; for an event-level diff replay the trace under both configurations "
        "(diff TRACE --probe X --probe Y) or compare results saved with replay --save"
    )
    return model.DiffResult(a.side, b.side, routes, outcomes, divergence, compared, False, note=note)


def _labels(a: Path, b: Path) -> tuple[str, str]:
    if a.name != b.name:
        return a.name, b.name
    return str(a), str(b)


def _load(path: str | os.PathLike[str], kind: str, label: str) -> _Loaded:
    if kind == "saved":
        from forensics import saved  # replay --save archives

        with saved.open_result(path) as sr:
            loaded = _from_doc(sr.doc, label, str(path))
            loaded.raw = sr.events
            with open(sr.trace_path, "rb") as fh:
                data = fh.read()
            loaded.trace_records = data[int.from_bytes(data[32:40], "little") :]
        return loaded
    try:
        with open_input(path, "replay report") as fh:
            data = fh.read(MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            raise BadInputError(f"{path}: not a replay report: more than {MAX_REPORT_BYTES >> 20} MiB of JSON")
        doc = json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise BadInputError(f"{path}: not a JSON replay report: {type(exc).__name__ if isinstance(exc, RecursionError) else exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != replay_report.SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise BadInputError(f"{path}: not a replay report (schema {schema!r}, expected {replay_report.SCHEMA!r}; write one with replay --json FILE)")
    return _from_doc(doc, label, str(path))


def _from_doc(doc: dict[str, Any], label: str, source: str) -> _Loaded:
    try:
        knobs = dict(doc.get("knobs") or {})
        probe = probe_kind_of(doc["allocator"], knobs)
        crash = _crash_from_json(doc.get("crash"))
        crash_event = event_from_json(doc["crash"]["event"], probe) if doc.get("crash") and doc["crash"].get("event") else None
        side = model.DiffSide(
            label=label,
            source=f"{source} (trace {doc['trace']})",
            allocator=doc["allocator"],
            knobs=knobs,
            num_events=int(doc["events"]),
            events_done=int(doc["events_done"]),
            completed=bool(doc["completed"]),
            routes={k: int(v) for k, v in doc["routes"].items()},
            outcomes={k: int(v) for k, v in doc["outcomes"].items()},
            crash=crash,
            crash_event=crash_event,
            hang=bool(doc.get("hang")),
        )
        anomalies = {e.index: e for e in (event_from_json(d, probe) for d in doc.get("anomalies") or [])}
        incomplete = int(doc.get("anomalies_total", 0)) > len(doc.get("anomalies") or [])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{source}: malformed replay report: {type(exc).__name__}: {exc}") from None
    if crash_event is not None:
        anomalies[crash_event.index] = crash_event
    complete_to = float("inf")
    if incomplete:
        complete_to = max(anomalies, default=-1)
    return _Loaded(side, anomalies, complete_to)


def event_from_json(d: dict[str, Any], probe_kind: model.ProbeKind | None) -> model.EventResult:
    """An event of a replay report (report/replay.py's event_to_json) as a model record."""
    decision = None
    if d.get("seq") is not None:
        decision = model.FreeDecision(
            seq=int(d["seq"]),
            ptr=int(d["ptr"]),
            route=model.Route(d["route"]) if d.get("route") else None,
            action=model.Action(d["action"]) if d.get("action") else model.Action.NONE,
            tried=tuple(model.FreeStep(s) for s in d.get("stages_tried") or []),
            hit=tuple(model.FreeStep(s) for s in d.get("stages_hit") or []),
            probe=model.ProbeVerdict(d.get("probe") or "-"),
            probe_kind=probe_kind,
            magic_found=d.get("magic_found"),
            method=d.get("method"),
            tid=int(d["tid"]),
        )
    return model.EventResult(
        index=int(d["event_index"]),
        op=str(d["op"]),
        tid=int(d["tid"]),
        obj=int(d["obj"]),
        ptr=int(d["ptr"]),
        owner=model.OwnerKind(d["owner"]),
        outcome=model.Outcome(d["outcome"]),
        status=model.EventStatus(d["status"]),
        check_failed=bool(d.get("check_failed")),
        decision=decision,
    )


def _crash_from_json(c: dict[str, Any] | None) -> model.CrashRecord | None:
    if not c:
        return None
    stage = next((s for s in model.Stage if s.value == c.get("stage")), None)
    return model.CrashRecord(
        signo=int(c["signo"]),
        si_code=int(c.get("si_code", 0)),
        fault_address=int(c["fault_address"]),
        ptr=c.get("ptr"),
        stage=stage,
        stage_name=str(c.get("stage")),
        has_state=c.get("ptr") is not None,
        free_seq=int(c.get("free_seq", 0)),
        event_index=c.get("event_index"),
        tid=int(c.get("tid", 0)),
        maps="\n".join(c.get("maps") or []),
        maps_truncated=False,
    )


def _decision_key(e: model.EventResult) -> dict[str, Any]:
    d = e.decision
    return {
        "status": e.status,
        "outcome": e.outcome,
        "route": d.route if d else None,
        "action": d.action if d else None,
        "stages": (d.tried, d.hit) if d else None,
        "probe": d.probe if d else None,
    }


def _anomaly_divergence(a: _Loaded, b: _Loaded) -> tuple[model.Divergence | None, int]:
    """The first event where the two anomaly lists disagree, within what both lists cover."""
    horizon = min(a.complete_to, b.complete_to)
    for i in sorted(set(a.anomalies) | set(b.anomalies)):
        if i > horizon:
            break
        ea, eb = a.anomalies.get(i), b.anomalies.get(i)
        if ea is not None and eb is not None:
            ka, kb = _decision_key(ea), _decision_key(eb)
            what = tuple(k for k in ka if ka[k] != kb[k])
            if not what:
                continue
        else:
            what = ("outcome",)
        crashed_a = ea is not None and ea.status is model.EventStatus.STARTED
        crashed_b = eb is not None and eb.status is model.EventStatus.STARTED
        if crashed_a or crashed_b:
            what = ("crash",)
        return model.Divergence(i, what, ea, eb, crashed_a, crashed_b), i
    compared = min(a.side.num_events, horizon + 1 if horizon != float("inf") else a.side.num_events)
    return None, int(compared)
