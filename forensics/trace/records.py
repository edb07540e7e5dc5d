"""Trace records: the op enum, the event and header types, and the one trace error (docs/trace-format.md)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence

from forensics.errors import BadInputError

FIRST_LINE = "# hakmem-trace v1"
KNOB_PREFIX = "# knob "
META_PREFIX = "# meta "

# Binary layout (csrc/hftrace.h). Field order of HEADER_STRUCT: magic, version, record_size,
# num_events, num_objects, num_threads, records_offset, text_len, reserved0, reserved[2].
MAGIC = b"HKTRACE\0"
VERSION = 1
HEADER_SIZE = 64
RECORD_SIZE = 48
HEADER_STRUCT = struct.Struct("<8sIIQIIQIIQQ")
# op, flags, reserved, tid, obj, obj2, size, arg, value, site. The arg is packed unsigned
# (masked to 64 bits) so that free_raw addresses above 2**63 need no special case; the
# bytes are the same two's complement either way, and readers unpack it signed.
RECORD_STRUCT = struct.Struct("<BBHIIIQQQQ")
RECORD_STRUCT_SIGNED = struct.Struct("<BBHIIIQqQQ")
assert HEADER_STRUCT.size == HEADER_SIZE and RECORD_STRUCT.size == RECORD_SIZE

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
MASK64 = U64_MAX

MAX_LINE_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024 * 1024

# A raw event is the record without flags/reserved, in record order:
# (op code, tid, obj, obj2, size, arg, value, site). Generators, writers and readers pass these
# tuples on their fast paths; Event is the typed form for everyone else.
RawEvent = tuple[int, int, int, int, int, int, int, int]


class TraceFormatError(BadInputError):
    """A trace that breaks docs/trace-format.md: names the file, the line (text) or byte offset
    (binary), and the reason, on one line: ``trace.txt:17: unknown op 'mallok'``."""

    def __init__(self, file: str, reason: str, *, line: int | None = None, offset: int | None = None) -> None:
        self.file = str(file)
        self.reason = reason
        self.line = line
        self.offset = offset
        if line is not None:
            where = f"{self.file}:{line}"
        elif offset is not None:
            where = f"{self.file}: offset {offset}"
        else:
            where = self.file
        super().__init__(f"{where}: {reason}")


class TraceOp(str, Enum):
    """Trace ops; the value is the text name, ``code`` the binary op (enum hft_op in csrc/hftrace.h)."""

    MALLOC = "malloc"
    CALLOC = "calloc"
    REALLOC = "realloc"
    MEMALIGN = "memalign"
    FREE = "free"
    THREAD_END = "thread_end"
    FREE_INTERIOR = "free_interior"
    DOUBLE_FREE = "double_free"
    FREE_RAW = "free_raw"
    LIBC_MALLOC = "libc_malloc"
    FREE_LIBC = "free_libc"
    CORRUPT = "corrupt"

    @property
    def code(self) -> int:
        return _OP_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> TraceOp:
        try:
            return _OPS_BY_CODE[code]
        except (KeyError, IndexError):
            raise ValueError(f"unknown op code {code}") from None


_OP_CODES = {op: i + 1 for i, op in enumerate(TraceOp)}
_OPS_BY_CODE: dict[int, TraceOp] = {code: op for op, code in _OP_CODES.items()}

# Integer op codes for the fast paths (hft_op).
OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_MEMALIGN, OP_FREE, OP_THREAD_END = 1, 2, 3, 4, 5, 6
OP_FREE_INTERIOR, OP_DOUBLE_FREE, OP_FREE_RAW, OP_LIBC_MALLOC, OP_FREE_LIBC, OP_CORRUPT = 7, 8, 9, 10, 11, 12
OP_COUNT = 13
assert [op.code for op in TraceOp] == list(range(1, OP_COUNT))
OP_NAMES: tuple[str, ...] = ("",) + tuple(op.value for op in TraceOp)


@dataclass(frozen=True, slots=True)
class Event:
    """One trace event, the typed twin of an hft_record (csrc/hftrace.h).

    ``obj`` is NEW and ``obj2`` OLD for realloc; ``size`` is the element size for calloc and LEN
    for corrupt; ``arg`` (signed 64-bit, as in the record) is NMEMB, ALIGN, OFFSET, or the
    free_raw address (addresses >= 2**63 appear negative, two's complement; see ``address``);
    ``value`` is corrupt's VALUE; ``site`` the call site, 0 = unknown.
    """

    op: TraceOp
    tid: int
    obj: int = 0
    obj2: int = 0
    size: int = 0
    arg: int = 0
    value: int = 0
    site: int = 0

    @classmethod
    def from_raw(cls, raw: Sequence[int]) -> Event:
        code, tid, obj, obj2, size, arg, value, site = raw
        return cls(_OPS_BY_CODE[code], tid, obj, obj2, size, arg, value, site)

    @property
    def raw(self) -> RawEvent:
        return (_OP_CODES[self.op], self.tid, self.obj, self.obj2, self.size, self.arg, self.value, self.site)

    @property
    def address(self) -> int:
        """free_raw's ADDR as an unsigned 64-bit address."""
        return self.arg & MASK64


# --------------------------------------------------------------------------- field checks
# What each op uses, for checks shared by the binary reader and Event writers. The text
# parser enforces the same rules as it parses. Slots: 2 obj, 3 obj2, 4 size, 5 arg, 6 value.
_USED_SLOTS: dict[int, frozenset[int]] = {
    OP_MALLOC: frozenset({2, 4}),
    OP_CALLOC: frozenset({2, 4, 5}),
    OP_REALLOC: frozenset({2, 3, 4}),
    OP_MEMALIGN: frozenset({2, 4, 5}),
    OP_FREE: frozenset({2}),
    OP_THREAD_END: frozenset(),
    OP_FREE_INTERIOR: frozenset({2, 5}),
    OP_DOUBLE_FREE: frozenset({2}),
    OP_FREE_RAW: frozenset({5}),
    OP_LIBC_MALLOC: frozenset({2, 4}),
    OP_FREE_LIBC: frozenset({2}),
    OP_CORRUPT: frozenset({2, 4, 5, 6}),
}
_SLOT_NAMES = {2: "obj", 3: "obj2", 4: "size", 5: "arg", 6: "value"}
_POSITIVE_OBJ = frozenset({OP_MALLOC, OP_CALLOC, OP_MEMALIGN, OP_FREE_INTERIOR, OP_DOUBLE_FREE, OP_LIBC_MALLOC,
                           OP_FREE_LIBC, OP_CORRUPT})


def check_raw(raw: Sequence[int]) -> str | None:
    """The reason a raw event is not a valid record of its op (ranges, unused fields), or None.

    Unused fields must be zero: the text form cannot carry them, and the round trip is lossless."""
    code, tid, obj, obj2, size, arg, value, site = raw
    used = _USED_SLOTS.get(code)
    if used is None:
        return f"unknown op {code}"
    name = OP_NAMES[code]
    if not 0 <= tid <= U32_MAX:
        return f"tid {tid} out of range 0..{U32_MAX}"
    for slot in (2, 3, 4, 5, 6):
        if slot not in used and raw[slot] != 0:
            return f"{name} does not use {_SLOT_NAMES[slot]} but it is {raw[slot]}"
    if not (0 <= obj <= U32_MAX and 0 <= obj2 <= U32_MAX):
        return f"object id out of range 0..{U32_MAX}"
    if code in _POSITIVE_OBJ and obj == 0:
        return f"{name} needs a positive object id"
    if not 0 <= size <= U64_MAX or not 0 <= value <= U64_MAX or not 0 <= site <= U64_MAX:
        return "size, value and site must be in 0..2**64-1"
    if code == OP_FREE_RAW:
        if not I64_MIN <= arg <= U64_MAX:
            return f"free_raw address {arg} out of range"
    elif not I64_MIN <= arg <= I64_MAX:
        return f"arg {arg} out of the signed 64-bit range"
    if code in (OP_CALLOC, OP_MEMALIGN) and arg < 0:
        return f"{name} {'NMEMB' if code == OP_CALLOC else 'ALIGN'} {arg} is negative"
    if code == OP_REALLOC:
        if obj == 0 and obj2 == 0:
            return "realloc names neither a new nor an old object"
        if size == 0 and obj != 0:
            return "realloc to size 0 frees OLD, so NEW must be 0"
        if size != 0 and obj == 0:
            return "realloc to a non-zero size needs a positive NEW id"
    if code == OP_CORRUPT:
        if not 1 <= size <= 8:
            return f"corrupt LEN {size} out of range 1..8"
        if value >> (8 * size):
            return f"corrupt VALUE {value:#x} does not fit in {size} byte(s)"
    return None


# --------------------------------------------------------------------------- header
_KNOB_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
_META_KEY_RE = re.compile(r"[^\s=]+")


@dataclass(frozen=True)
class TraceHeader:
    """The header of a trace: its lines verbatim (without newlines; the first is FIRST_LINE),
    the knobs they set in order, and the meta (key, value) pairs in order."""

    lines: tuple[str, ...] = (FIRST_LINE,)
    knobs: dict[str, str] = field(default_factory=dict)
    meta: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        knobs: Mapping[str, object] | Iterable[tuple[str, object]] = (),
        meta: Iterable[tuple[str, object]] = (),
        comments: Iterable[str] = (),
    ) -> TraceHeader:
        """A canonical header: the first line, knobs, meta, then comment lines ('# ' added)."""
        items = knobs.items() if isinstance(knobs, Mapping) else knobs
        lines = [FIRST_LINE]
        lines += [f"{KNOB_PREFIX}{k}={v}" for k, v in items]
        lines += [f"{META_PREFIX}{k}={v}" for k, v in meta]
        lines += [f"# {c}" if c else "#" for c in comments]
        return cls.parse(lines)

    @classmethod
    def parse(cls, lines: Iterable[str], file: str = "<header>", first_line_no: int = 1) -> TraceHeader:
        """Parse header lines; errors name file and line (line numbers from first_line_no)."""
        kept: list[str] = []
        knobs: dict[str, str] = {}
        meta: list[tuple[str, str]] = []
        for i, line in enumerate(lines):
            line_no = first_line_no + i
            reason = _header_line_error(line, first=(i == 0))
            if reason:
                raise TraceFormatError(file, reason, line=line_no)
            if line.startswith(KNOB_PREFIX):
                name, value = _parse_knob(line, file, line_no)
                knobs[name] = value
            elif line.startswith(META_PREFIX):
                meta.append(_parse_meta(line, file, line_no))
            kept.append(line)
        if not kept:
            raise TraceFormatError(file, f"empty file: the first line must be {FIRST_LINE!r}", line=first_line_no)
        return cls(tuple(kept), knobs, meta)

    @property
    def text(self) -> str:
        """The header as it is written: every line followed by a newline."""
        return "".join(line + "\n" for line in self.lines)

    def get_meta(self, key: str) -> str | None:
        """The last value of a meta key, or None."""
        for k, v in reversed(self.meta):
            if k == key:
                return v
        return None

class TraceWriterBase:
    """What both trace writers share: the context manager (close on success, abort on an
    error, so no half-written trace stays behind) and the typed entry points, which check an
    Event's fields and hand its raw form to the writer's own write_many()."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, event: Event) -> None:
        """Write one typed event, checking its fields (ValueError if they do not make a record)."""
        raw = event.raw
        reason = check_raw(raw)
        if reason:
            raise ValueError(f"invalid {event.op.value} event: {reason}")
        self.write_many((raw,))

    def write_raw(self, raw: RawEvent) -> None:
        self.write_many((raw,))



def _header_line_error(line: str, first: bool) -> str | None:
    if "\n" in line or "\r" in line:
        return "header line contains a line break"
    if first:
        if line == FIRST_LINE:
            return None
        if line.startswith("# hakmem-trace "):
            return f"unsupported trace version {_show(line[len('# hakmem-trace '):])} (this reader knows v1)"
        return f"first line must be {FIRST_LINE!r}, got {_show(line)}"
    if not line.startswith("#"):
        return f"header line does not start with '#': {_show(line)}"
    return None


def _parse_knob(line: str, file: str, line_no: int) -> tuple[str, str]:
    m = _KNOB_RE.fullmatch(line[len(KNOB_PREFIX):].strip())
    if not m:
        raise TraceFormatError(file, f"malformed knob line {_show(line)}: expected '# knob NAME=VALUE'", line=line_no)
    return m.group(1), m.group(2)


def _parse_meta(line: str, file: str, line_no: int) -> tuple[str, str]:
    key, sep, value = line[len(META_PREFIX):].partition("=")
    if not sep or not _META_KEY_RE.fullmatch(key):
        raise TraceFormatError(file, f"malformed meta line {_show(line)}: expected '# meta KEY=VALUE'", line=line_no)
    return key, value


def _show(text: str | bytes, limit: int = 40) -> str:
    """A quoted, escaped, shortened rendering of user text for a one-line message."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")  # undecodable bytes as \xNN
    if len(text) > limit:
        text = text[:limit] + "..."
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


# --------------------------------------------------------------------------- stats
@dataclass
class TraceStats:
    """What a writer saw: the numbers the binary header carries, plus a count per op."""

    num_events: int = 0
    num_objects: int = 0
    num_threads: int = 0
    op_counts: dict[TraceOp, int] = field(default_factory=dict)

    def describe(self, header: TraceHeader | None = None) -> str:
        """One line: events, objects, threads, knobs."""
        parts = [
            f"{self.num_events:,} event{'s' if self.num_events != 1 else ''}",
            f"{self.num_objects:,} object{'s' if self.num_objects != 1 else ''}",
            f"{self.num_threads:,} thread{'s' if self.num_threads != 1 else ''}",
        ]
        if header is not None:
            parts.append("knobs " + " ".join(f"{k}={v}" for k, v in header.knobs.items()) if header.knobs else "no knobs")
        return ", ".join(parts)
