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

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics import abi, model, native
from forensics.errors import BadInputError
from forensics.replay import EVENT_SIZE, ReplayConfig, TraceFile, _op_name
from forensics.report import replay as replay_report
from forensics.trace import convert, sniff

SCHEMA = "hakmem-forensics/result/1"


def save_result(result: model.ReplayResult, config: ReplayConfig, path: str | os.PathLike[str]) -> Path:
    """Write result (run with keep_events=True) and its trace to a saved-result archive."""
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


def open_result(path: str | os.PathLike[str]) -> SavedResult:
    """Open a saved result; a file that is not one is bad input (one-line error)."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such file")
    try:
        with zipfile.ZipFile(p) as z:
            doc = json.loads(z.read("result.json"))
            if doc.get("schema") != SCHEMA:
                raise BadInputError(f"{p}: not a saved result of this version (schema {doc.get('schema')!r}, expected {SCHEMA!r})")
            events = z.read("events.bin")
            tmp = tempfile.TemporaryDirectory(prefix="hakmem-forensics-")
            z.extract("trace.htb", tmp.name)
    except zipfile.BadZipFile:
        raise BadInputError(f"{p}: not a saved result (not a zip archive; write one with `replay --save FILE`)") from None
    except KeyError as exc:
        raise BadInputError(f"{p}: not a saved result (missing {exc.args[0]})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{p}: corrupt saved result: {exc}") from None
    trace_path = Path(tmp.name) / "trace.htb"
    trace = TraceFile(trace_path)
    if len(events) != trace.num_events * EVENT_SIZE:
        trace.close()
        tmp.cleanup()
        raise BadInputError(f"{p}: corrupt saved result: {len(events)} bytes of events for {trace.num_events} trace events")
    c = doc.get("config") or {}
    config = ReplayConfig(
        lib=c.get("lib"),
        libc=bool(c.get("libc")),
        knobs=dict(c.get("overrides") or {}),
        threads=bool(c.get("threads", True)),
        judge=bool(c.get("judge", True)),
        check_every=int(c.get("check_every", 0)),
    )
    return SavedResult(path=p, doc=doc["replay"], config=config, events=events, trace=trace, trace_path=trace_path, _tmp=tmp)
