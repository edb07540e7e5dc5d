"""The text trace format (docs/trace-format.md): a streaming reader and a canonical writer."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from forensics.errors import BadInputError
from forensics.safeio import AtomicOutput, open_input
from forensics.trace.records import (
    TraceWriterBase,
    FIRST_LINE,
    I64_MAX,
    I64_MIN,
    MASK64,
    MAX_HEADER_BYTES,
    MAX_LINE_BYTES,
    OP_CORRUPT,
    OP_COUNT,
    OP_FREE,
    OP_MALLOC,
    OP_NAMES,
    OP_REALLOC,
    U32_MAX,
    U64_MAX,
    Event,
    RawEvent,
    TraceFormatError,
    TraceHeader,
    TraceStats,
    TraceOp,
    _show,
)
from forensics.trace.validate import ObjectValidator

# Field kinds: how a text field is parsed and range-checked.
_POS32, _U32, _U64, _NN63, _I64, _ADDR, _LEN, _VAL = range(8)
_KIND_RANGE = {
    _POS32: (1, U32_MAX),
    _U32: (0, U32_MAX),
    _U64: (0, U64_MAX),
    _NN63: (0, I64_MAX),
    _I64: (I64_MIN, I64_MAX),
    _ADDR: (0, U64_MAX),
    _LEN: (1, 8),
    _VAL: (0, U64_MAX),
}

# op name -> (code, ((label, raw slot, kind), ...)). Raw slots: 2 obj, 3 obj2, 4 size, 5 arg, 6 value.
_OP_FIELDS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "malloc": (("OBJ", 2, _POS32), ("SIZE", 4, _U64)),
    "calloc": (("OBJ", 2, _POS32), ("NMEMB", 5, _NN63), ("SIZE", 4, _U64)),
    "realloc": (("NEW", 2, _U32), ("OLD", 3, _U32), ("SIZE", 4, _U64)),
    "memalign": (("OBJ", 2, _POS32), ("ALIGN", 5, _NN63), ("SIZE", 4, _U64)),
    "free": (("OBJ", 2, _U32),),
    "thread_end": (),
    "free_interior": (("OBJ", 2, _POS32), ("OFFSET", 5, _I64)),
    "double_free": (("OBJ", 2, _POS32),),
    "free_raw": (("ADDR", 5, _ADDR),),
    "libc_malloc": (("OBJ", 2, _POS32), ("SIZE", 4, _U64)),
    "free_libc": (("OBJ", 2, _POS32),),
    "corrupt": (("OBJ", 2, _POS32), ("OFFSET", 5, _I64), ("LEN", 4, _LEN), ("VALUE", 6, _VAL)),
}
assert tuple(_OP_FIELDS) == OP_NAMES[1:]
_OPS: dict[bytes, tuple[int, tuple[tuple[str, int, int], ...]]] = {
    name.encode(): (code, fields) for code, (name, fields) in enumerate(_OP_FIELDS.items(), start=1)
}

_NUMBER = re.compile(rb"(-?)(?:0x([0-9a-fA-F]+)|([0-9]+))")
_MAX_NUMBER_TOKEN = 24  # longer than any in-range number: saves int() from hostile digit strings


class _Bad(Exception):
    """A reason, raised inside the line parser; the reader adds file and line."""


def _number(tok: bytes, label: str, kind: int) -> int:
    if tok.isdigit() and len(tok) <= _MAX_NUMBER_TOKEN:
        value = int(tok)
    else:
        m = _NUMBER.fullmatch(tok) if len(tok) <= _MAX_NUMBER_TOKEN else None
        if m is None:
            if len(tok) > _MAX_NUMBER_TOKEN and _NUMBER.fullmatch(tok[:_MAX_NUMBER_TOKEN]):
                raise _Bad(f"{label} {_show(tok)} is out of range")
            raise _Bad(f"bad {label} {_show(tok)}: not a number")
        value = int(m.group(2), 16) if m.group(2) is not None else int(m.group(3))
        if m.group(1):
            value = -value
    lo, hi = _KIND_RANGE[kind]
    if value < lo:
        if value < 0 and lo >= 0:
            raise _Bad(f"{label} {value} is negative")
        if kind == _POS32:
            raise _Bad(f"{label} must be positive (object ids start at 1)")
        raise _Bad(f"{label} {value} is out of range {lo}..{hi}")
    if value > hi:
        raise _Bad(f"{label} {value} is out of range {lo}..{hi}" if kind == _LEN else f"{label} {value} is out of range (max {hi})")
    return value


def _usage(name: str, fields: Sequence[tuple[str, int, int]]) -> str:
    if not fields:
        return f"{name} takes no fields"
    return f"{name} takes {len(fields)} field{'s' if len(fields) > 1 else ''} ({' '.join(f[0] for f in fields)})"


def parse_event_line(parts: list[bytes]) -> RawEvent:
    """Parse the tokens of one event line (``TID OP FIELDS... [@SITE]``) to a raw event.

    Raises _Bad with the reason."""
    tok = parts[0]
    if tok.isdigit() and len(tok) <= 10:
        tid = int(tok)
        if tid > U32_MAX:
            raise _Bad(f"TID {tid} is out of range (max {U32_MAX})")
    else:
        tid = _number(tok, "TID", _U32)
    if len(parts) < 2:
        raise _Bad("missing op after the thread id")
    spec = _OPS.get(parts[1])
    if spec is None:
        raise _Bad(f"unknown op {_show(parts[1])}")
    code, fields = spec
    site = 0
    last = parts[-1]
    nfields = len(parts) - 2
    if last[:1] == b"@" and nfields > 0:
        site = _number(last[1:], "SITE", _U64)
        nfields -= 1
    if nfields != len(fields):
        raise _Bad(f"{_usage(OP_NAMES[code], fields)}, got {nfields}")
    raw = [code, tid, 0, 0, 0, 0, 0, site]
    for (label, slot, kind), tok in zip(fields, parts[2:]):
        if kind == _POS32 and tok.isdigit() and len(tok) <= 10:
            v = int(tok)
            if not 0 < v <= U32_MAX:
                v = _number(tok, label, kind)
        elif kind == _U64 and tok.isdigit() and len(tok) <= 19:
            v = int(tok)
        else:
            v = _number(tok, label, kind)
        if kind == _ADDR and v > I64_MAX:
            v -= 1 << 64  # the record's arg is signed
        raw[slot] = v
    if code == OP_REALLOC:
        if raw[2] == 0 and raw[3] == 0:
            raise _Bad("realloc names neither a new nor an old object (NEW and OLD are 0)")
        if raw[4] == 0 and raw[2] != 0:
            raise _Bad("realloc to SIZE 0 frees OLD, so NEW must be 0")
        if raw[4] != 0 and raw[2] == 0:
            raise _Bad("realloc to a non-zero SIZE needs a positive NEW id")
    elif code == OP_CORRUPT and raw[6] >> (8 * raw[4]):
        raise _Bad(f"VALUE {raw[6]:#x} does not fit in LEN {raw[4]} byte{'s' if raw[4] > 1 else ''}")
    return tuple(raw)  # type: ignore[return-value]


def format_event(raw: Sequence[int]) -> str:
    """The canonical text line of a raw event (no newline)."""
    code, tid, obj, obj2, size, arg, value, site = raw
    if code == OP_MALLOC:
        line = f"{tid} malloc {obj} {size}"
    elif code == OP_FREE:
        line = f"{tid} free {obj}"
    else:
        line = _FORMATTERS[code](tid, obj, obj2, size, arg, value)
    if site:
        return f"{line} @{site:#x}"
    return line


_FORMATTERS: tuple[Callable[..., str], ...] = (
    lambda *a: "",
    lambda t, o, o2, s, a, v: f"{t} malloc {o} {s}",
    lambda t, o, o2, s, a, v: f"{t} calloc {o} {a} {s}",
    lambda t, o, o2, s, a, v: f"{t} realloc {o} {o2} {s}",
    lambda t, o, o2, s, a, v: f"{t} memalign {o} {a} {s}",
    lambda t, o, o2, s, a, v: f"{t} free {o}",
    lambda t, o, o2, s, a, v: f"{t} thread_end",
    lambda t, o, o2, s, a, v: f"{t} free_interior {o} {a}",
    lambda t, o, o2, s, a, v: f"{t} double_free {o}",
    lambda t, o, o2, s, a, v: f"{t} free_raw {a & MASK64:#x}",
    lambda t, o, o2, s, a, v: f"{t} libc_malloc {o} {s}",
    lambda t, o, o2, s, a, v: f"{t} free_libc {o}",
    lambda t, o, o2, s, a, v: f"{t} corrupt {o} {a} {s} {v:#x}",
)
assert len(_FORMATTERS) == OP_COUNT


# --------------------------------------------------------------------------- reader
def _open_input(path: str | os.PathLike[str]) -> IO[bytes]:
    # a regular file only: a FIFO would block the reader (and cannot be mapped or read twice)
    return open_input(path, "trace")


class TextTraceReader:
    """Reads a text trace: the header at open, the events streamed by iter_raw()/iter_events().

    ``position`` is the line number of the event last yielded (for error messages)."""

    format = "text"

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name if name is not None else str(path)
        self._f: IO[bytes] | None = _open_input(path)
        self.position = 0
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TextTraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _error(self, reason: str, line: int) -> TraceFormatError:
        return TraceFormatError(self.name, reason, line=line)

    def _readline(self, line_no: int) -> bytes:
        assert self._f is not None
        line = self._f.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise self._error(f"line longer than {MAX_LINE_BYTES} bytes", line_no)
        return line

    def _read_header(self) -> TraceHeader:
        lines: list[str] = []
        total = 0
        line_no = 0
        self._pending: bytes | None = None
        while True:
            raw = self._readline(line_no + 1)
            if not raw:
                break
            if not raw.startswith(b"#") and lines:
                self._pending = raw  # the first event line (or blank line): iter_raw starts with it
                break
            line_no += 1
            total += len(raw)
            if total > MAX_HEADER_BYTES:
                raise self._error(f"header longer than {MAX_HEADER_BYTES} bytes", line_no)
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._error("header line is not valid UTF-8", line_no) from None
            if not lines and text != FIRST_LINE:
                if not raw:
                    raise self._error(f"first line must be {FIRST_LINE!r}, got an empty line", line_no)
                TraceHeader.parse([text], self.name, line_no)  # raises the precise reason
            lines.append(text)
        if not lines:
            raise self._error(f"empty file: the first line must be {FIRST_LINE!r}", 1)
        self._header_lines = line_no
        return TraceHeader.parse(lines, self.name, 1)

    def iter_raw(self, *, check: bool = True) -> Iterator[RawEvent]:
        """The events as raw tuples, streamed. check: also validate object semantics."""
        if self._f is None:
            raise ValueError("reader is closed")
        f = self._f
        readline = f.readline
        limit = MAX_LINE_BYTES + 1
        line_no = self._header_lines
        validator = ObjectValidator("line") if check else None
        vcheck = validator.check if validator else None
        pending = self._pending
        self._pending = None
        parse = parse_event_line
        try:
            while True:
                if pending is not None:
                    line, pending = pending, None
                else:
                    line = readline(limit)
                    if not line:
                        break
                line_no += 1
                if len(line) > MAX_LINE_BYTES:
                    raise self._error(f"line longer than {MAX_LINE_BYTES} bytes", line_no)
                parts = line.split()
                if not parts or parts[0][:1] == b"#":
                    continue
                # Fast paths for the two ops that make up most traces; anything unusual (hex,
                # sites, big numbers, errors) takes the general parser.
                raw = None
                nparts = len(parts)
                if nparts == 3 and parts[1] == b"free":
                    t, o = parts[0], parts[2]
                    if t.isdigit() and o.isdigit() and len(t) < 10 and len(o) < 10:
                        raw = (OP_FREE, int(t), int(o), 0, 0, 0, 0, 0)
                elif nparts == 4 and parts[1] == b"malloc":
                    t, o, sz = parts[0], parts[2], parts[3]
                    if t.isdigit() and o.isdigit() and sz.isdigit() and len(t) < 10 and len(o) < 10 and len(sz) < 20:
                        obj = int(o)
                        if obj:
                            raw = (OP_MALLOC, int(t), obj, 0, int(sz), 0, 0, 0)
                if raw is None:
                    try:
                        raw = parse(parts)
                    except _Bad as exc:
                        raise self._error(str(exc), line_no) from None
                if vcheck is not None:
                    reason = vcheck(raw, line_no)
                    if reason:
                        raise self._error(reason, line_no)
                self.position = line_no
                yield raw
        finally:
            self.close()

    def iter_events(self, *, check: bool = True) -> Iterator[Event]:
        from_raw = Event.from_raw
        for raw in self.iter_raw(check=check):
            yield from_raw(raw)


# --------------------------------------------------------------------------- writer
class TextTraceWriter(TraceWriterBase):
    """Writes canonical text: the header lines verbatim, then one canonical line per event."""

    format = "text"

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.path = Path(path)
        self.header = header
        # written to a temporary file renamed into place at close(): never a half-written trace
        self._out = AtomicOutput(path, text=True, buffering=1 << 20)
        self._f: IO[str] | None = self._out.file
        self._out.write(header.text)
        self._n = 0
        self._max_obj = 0
        self._tids: set[int] = set()
        self._counts = [0] * OP_COUNT
        self.stats: TraceStats | None = None

    def write_many(self, raws: Iterable[Sequence[int]], progress: Callable[[int], None] | None = None,
                   every: int = 1 << 16) -> int:
        """Write raw events (trusted: generators and checked readers make them); returns how many.

        progress(n_total) is called every ``every`` events."""
        f = self._f
        if f is None:
            raise ValueError("writer is closed")
        write = f.write
        fmt = _FORMATTERS
        counts = self._counts
        tids = self._tids
        max_obj = self._max_obj
        n = self._n
        start = n
        next_report = n + every if progress else -1
        try:
            for code, tid, obj, obj2, size, arg, value, site in raws:
                if code == OP_MALLOC:
                    line = f"{tid} malloc {obj} {size}"
                elif code == OP_FREE:
                    line = f"{tid} free {obj}"
                else:
                    line = fmt[code](tid, obj, obj2, size, arg, value)
                if site:
                    write(f"{line} @{site:#x}\n")
                else:
                    write(line + "\n")
                n += 1
                counts[code] += 1
                tids.add(tid)
                if obj > max_obj:
                    max_obj = obj
                if obj2 > max_obj:
                    max_obj = obj2
                if n == next_report:
                    progress(n)  # type: ignore[misc]
                    next_report += every
        except OSError as exc:  # a full disk, a quota: the caller aborts, the destination keeps what it had
            raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        finally:
            self._n = n
            self._max_obj = max_obj
        return n - start

    def close(self) -> TraceStats:
        if self._f is not None:
            self._f = None
            self._out.commit()
            self.stats = _stats(self._n, self._max_obj, self._tids, self._counts)
        assert self.stats is not None
        return self.stats

    def abort(self) -> None:
        """Close and delete the partial file (the destination keeps what it had)."""
        if self._f is not None:
            self._f = None
            self._out.discard()


def _stats(n: int, max_obj: int, tids: set[int], counts: list[int]) -> TraceStats:
    return TraceStats(
        num_events=n,
        num_objects=max_obj,
        num_threads=len(tids),
        op_counts={TraceOp.from_code(c): k for c, k in enumerate(counts) if c and k},
    )
