"""Saved replay results (`replay --save FILE`): everything needed to explain an event later.

A saved result is a zip archive (conventionally `.hfres`) holding:

    result.json   {"schema": "hakmem-forensics/result/1",
                   "replay": <the replay report's JSON document, schema hakmem-forensics/replay/1>,
                   "config": {"lib": str|null, "libc": bool, "overrides": {knob: value},
                              "threads": bool, "judge": bool, "check_every": int},
                   "trace_source": str}          # the path the trace was replayed from
    events.bin    one 48-byte hfr_event record per trace event (csrc/hftrace.h)
    trace.htb     the trace, binary (docs/trace-format.md)

It is self-contained: explaining a result needs neither the original trace file nor the run
that made it (an event is inspected by replaying trace.htb again, up to that event). Writing
goes through a temporary file renamed into place, so an interrupted save never leaves a
half-written archive.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics import abi, model, native
from forensics.errors import BadInputError
from forensics.safeio import open_input
from forensics.replay import EVENT_SIZE, ReplayConfig, TraceFile, _op_name
from forensics.report import replay as replay_report
from forensics.trace import BinaryTraceReader, convert, sniff

SCHEMA = "hakmem-forensics/result/1"


def save_result(result: model.ReplayResult, config: ReplayConfig, path: str | os.PathLike[str], *, binary: Path | None = None) -> Path:
    """Write result (run with keep_events=True) and its trace to a saved-result archive.

    binary: the trace already converted to a binary file (what run_replay was given), so that
    a text trace is not converted a second time."""
    if result.raw_events is None:
        raise ValueError("save_result needs a result replayed with keep_events=True")
    out = Path(path)
    doc = {
        "schema": SCHEMA,
        "replay": replay_report.to_json(result),
        "config": {
            # the bundled library is recorded as null: wherever the result is opened, the
            # bundled hakmem-ref of that installation stands in for it
            "lib": None if config.libc or abi.is_bundled(Path(result.allocator)) else result.allocator,
            "libc": config.libc,
            "overrides": config.get_overrides(),
            "threads": config.threads,
            "judge": config.judge,
            "check_every": config.check_every,
        },
        "trace_source": result.trace,
    }
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        trace = Path(result.trace)
        if binary is None:
            binary = trace if sniff(trace) == "binary" else Path(tmp) / "trace.htb"
            if binary != trace:
                convert(trace, binary, to="binary")
        fd, partial = tempfile.mkstemp(prefix=out.name + ".", suffix=".partial", dir=str(out.parent.resolve()))
        os.close(fd)
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(partial, 0o666 & ~mask)  # mkstemp made it 0600; a saved result is an ordinary file
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as z:
                z.writestr("result.json", json.dumps(doc, indent=1))
                z.writestr("events.bin", result.raw_events)
                z.write(binary, "trace.htb")
            os.replace(partial, out)
        except OSError as exc:
            Path(partial).unlink(missing_ok=True)
            raise BadInputError(f"{out}: cannot write the saved result: {exc.strerror or exc}") from None
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return out


@dataclass
class SavedResult:
    """A saved result opened for reading; use as a context manager (it extracts the trace)."""

    path: Path
    doc: dict[str, Any]  # the replay report document
    config: ReplayConfig
    events: bytes
    trace: TraceFile
    trace_path: Path  # the extracted binary trace
    _tmp: tempfile.TemporaryDirectory

    @property
    def num_events(self) -> int:
        return self.trace.num_events

    @property
    def knobs(self) -> dict[str, str]:
        return dict(self.doc.get("knobs") or {})

    @property
    def probe_kind(self) -> model.ProbeKind | None:
        if self.config.libc:
            return None
        value = self.knobs.get("HAKMEM_HEADER_PROBE", "off")
        return model.ProbeKind(value) if value in {p.value for p in model.ProbeKind} else None

    def get_raw(self, index: int) -> native.HfrEvent:
        self._check_index(index)
        return native.HfrEvent.from_buffer_copy(self.events, index * EVENT_SIZE)

    def get_event(self, index: int) -> model.EventResult:
        raw = self.get_raw(index)
        crash = self.doc.get("crash")
        if crash and crash.get("event_index") == index:
            raw.outcome = model.Outcome.CRASHED.code
        rec = self.trace.get_record(index)
        return native.event_result(index, raw, op=_op_name(rec.op), tid=rec.tid, obj=rec.obj, probe_kind=self.probe_kind)

    def get_crash(self) -> model.CrashRecord | None:
        c = self.doc.get("crash")
        if not c:
            return None
        stage = next((s for s in model.Stage if s.value == c["stage"]), None)
        return model.CrashRecord(
            signo=c["signo"],
            si_code=c["si_code"],
            fault_address=c["fault_address"],
            ptr=c["ptr"],
            stage=stage,
            stage_name=c["stage"],
            has_state=c["ptr"] is not None,
            free_seq=c["free_seq"],
            event_index=c["event_index"],
            tid=c["tid"],
            maps="\n".join(c["maps"]),
            maps_truncated=False,
        )

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_events:
            raise BadInputError(f"{self.path}: event {index} is out of range (the trace has {self.num_events} events, 0..{self.num_events - 1})")

    def close(self) -> None:
        self.trace.close()
        self._tmp.cleanup()

    def __enter__(self) -> SavedResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_DOC_BYTES = 64 << 20  # result.json: the report of the first anomalies, a few MB at most
_MEMBERS = ("result.json", "events.bin", "trace.htb")
# What a damaged archive raises while a member is read: bad CRC, bad deflate data, truncation,
# an unsupported compression method or an encrypted member.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError,
               OSError)  # OSError: a member's header offset that points outside the file (seek fails)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true/false", type(None): "null"}


def _bad(path: Path, reason: str) -> BadInputError:
    return BadInputError(f"{path}: corrupt saved result: {reason}")


def _check_doc(doc: Any, p: Path) -> None:
    """The fields of result.json that opening and explaining a result read, with their types:
    a hostile or damaged archive is a one-line error here, never a KeyError later."""
    if not isinstance(doc, dict):
        raise _bad(p, f"result.json is a JSON {type(doc).__name__}, not an object")
    if doc.get("schema") != SCHEMA:
        raise BadInputError(f"{p}: not a saved result of this version (schema {_short(doc.get('schema'))}, expected {SCHEMA!r})")

    def need(d: dict, key: str, types: tuple, where: str, optional: bool = False) -> Any:
        if key not in d:
            if optional:
                return None
            raise _bad(p, f"{where}.{key} is missing")
        v = d[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            names = " or ".join(_TYPE_NAMES[t] for t in types)
            raise _bad(p, f"{where}.{key} is {_short(v)}, not {names}")
        return v

    replay = need(doc, "replay", (dict,), "result")
    need(doc, "trace_source", (str,), "result", optional=True)
    knobs = need(replay, "knobs", (dict, type(None)), "replay", optional=True) or {}
    for k, v in knobs.items():
        if not isinstance(v, str):
            raise _bad(p, f"replay.knobs.{_short(k)} is {_short(v)}, not a string")
    crash = need(replay, "crash", (dict, type(None)), "replay", optional=True)
    if crash is not None:
        for key, types in (("signo", (int,)), ("si_code", (int,)), ("fault_address", (int,)), ("ptr", (int, type(None))),
                           ("stage", (str,)), ("free_seq", (int,)), ("event_index", (int, type(None))), ("tid", (int,)),
                           ("maps", (list,))):
            need(crash, key, types, "replay.crash")
        if not all(isinstance(line, str) for line in crash["maps"]):
            raise _bad(p, "replay.crash.maps holds a line that is not a string")
    anomalies = need(replay, "anomalies", (list,), "replay", optional=True) or []
    for i, a in enumerate(anomalies):
        if not isinstance(a, dict):
            raise _bad(p, f"replay.anomalies[{i}] is {_short(a)}, not an object")
        need(a, "event_index", (int,), f"replay.anomalies[{i}]")
        need(a, "outcome", (str,), f"replay.anomalies[{i}]")
    config = need(doc, "config", (dict, type(None)), "result", optional=True) or {}
    need(config, "lib", (str, type(None)), "config", optional=True)
    for key in ("libc", "threads", "judge"):
        need(config, key, (bool,), "config", optional=True)
    check_every = need(config, "check_every", (int,), "config", optional=True)
    if check_every is not None and check_every < 0:
        raise _bad(p, f"config.check_every is {check_every}, not a count")
    overrides = need(config, "overrides", (dict, type(None)), "config", optional=True) or {}
    for k, v in overrides.items():
        if not isinstance(v, str):
            raise _bad(p, f"config.overrides.{_short(k)} is {_short(v)}, not a string")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_indices(doc: dict, n: int, p: Path) -> None:
    """Event indices the report names must be events of the trace."""
    crash = doc.get("crash")
    idx = [("replay.crash.event_index", crash.get("event_index"))] if crash else []
    idx += [(f"replay.anomalies[{i}].event_index", a["event_index"]) for i, a in enumerate(doc.get("anomalies") or [])]
    for where, i in idx:
        if i is not None and not 0 <= i < n:
            raise _bad(p, f"{where} is {i}, but the trace has {n:,} events")


def open_result(path: str | os.PathLike[str]) -> SavedResult:
    """Open a saved result; a file that is not one is bad input (one-line error).

    Resources are bounded by what the archive holds, not by what it claims: result.json is
    read only up to MAX_DOC_BYTES, the trace is extracted only when the temporary directory
    has room for it, and events.bin is read only when its size is exactly the trace's event
    count times 48 (so the events in memory are never more than the trace's records)."""
    p = Path(path)
    fh = open_input(p, "saved result")
    tmp: tempfile.TemporaryDirectory | None = None
    trace: TraceFile | None = None
    try:
        try:
            z = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
            raise BadInputError(f"{p}: not a saved result (not a zip archive; write one with `replay --save FILE`)") from None
        with z:
            infos = {i.filename: i for i in z.infolist()}
            for name in _MEMBERS:
                if name not in infos:
                    raise BadInputError(f"{p}: not a saved result (missing {name!r})")
            ji, ei, ti = (infos[n] for n in _MEMBERS)
            if ji.file_size > MAX_DOC_BYTES:
                raise _bad(p, f"result.json is {ji.file_size:,} bytes, more than the {MAX_DOC_BYTES >> 20} MiB a report can be")
            try:
                doc = json.loads(z.read(ji))
            except RecursionError:  # before _ZIP_ERRORS: it is a RuntimeError
                raise _bad(p, "result.json: JSON nested too deeply") from None
            except UnicodeDecodeError:
                raise _bad(p, "result.json: not UTF-8 text") from None
            except _ZIP_ERRORS as exc:  # ValueError included: JSONDecodeError says where
                raise _bad(p, f"result.json: {exc}") from None
            _check_doc(doc, p)
            tmp = tempfile.TemporaryDirectory(prefix="hakmem-forensics-")
            free = shutil.disk_usage(tmp.name).free
            if ti.file_size > free:
                raise _bad(p, f"trace.htb is {ti.file_size:,} bytes, more than the {free:,} bytes free in {tmp.name}")
            trace_path = Path(tmp.name) / "trace.htb"
            try:
                with z.open(ti) as src, open(trace_path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except OSError as exc:
                if exc.errno in _WRITE_ERRNOS:  # the temporary directory, not the archive
                    raise BadInputError(f"{p}: cannot extract trace.htb into {tmp.name}: {exc.strerror or exc}") from None
                raise _bad(p, f"trace.htb: {exc}") from None
            except _ZIP_ERRORS as exc:
                raise _bad(p, f"trace.htb: {exc}") from None
            try:
                with BinaryTraceReader(trace_path, name="trace.htb") as reader:
                    n = reader.num_events
            except BadInputError as exc:
                raise _bad(p, str(exc)) from None
            if ei.file_size != n * EVENT_SIZE:
                raise _bad(p, f"{ei.file_size:,} bytes of events for {n:,} trace events (expected {n * EVENT_SIZE:,})")
            try:
                events = z.read(ei)
            except _ZIP_ERRORS as exc:
                raise _bad(p, f"events.bin: {exc}") from None
            if len(events) != n * EVENT_SIZE:
                raise _bad(p, f"{len(events):,} bytes of events for {n:,} trace events")
        _check_indices(doc["replay"], n, p)
        trace = TraceFile(trace_path)
        c = doc.get("config") or {}
        config = ReplayConfig(
            lib=c.get("lib"),
            libc=bool(c.get("libc")),
            knobs=dict(c.get("overrides") or {}),
            threads=bool(c.get("threads", True)),
            judge=bool(c.get("judge", True)),
            check_every=int(c.get("check_every") or 0),
        )
        return SavedResult(path=p, doc=doc["replay"], config=config, events=events, trace=trace, trace_path=trace_path, _tmp=tmp)
    except BaseException:
        if trace is not None:
            trace.close()
        if tmp is not None:
            tmp.cleanup()
        raise
    finally:
        fh.close()
