"""The binary trace format (.htb, csrc/hftrace.h): a streaming writer and an mmap'd, streaming reader."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from forensics.errors import BadInputError
from forensics.safeio import AtomicOutput
from forensics.trace.records import (
    TraceWriterBase,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAGIC,
    MASK64,
    MAX_HEADER_BYTES,
    OP_COUNT,
    OP_FREE,
    OP_MALLOC,
    RECORD_SIZE,
    RECORD_STRUCT,
    RECORD_STRUCT_SIGNED,
    U32_MAX,
    VERSION,
    Event,
    RawEvent,
    TraceFormatError,
    TraceHeader,
    TraceStats,
    _show,
    check_raw,
)
from forensics.trace.text import _open_input, _stats
from forensics.trace.validate import ObjectValidator

# Byte offsets of the header fields, for error messages.
OFF_VERSION, OFF_RECORD_SIZE, OFF_NUM_EVENTS, OFF_NUM_OBJECTS, OFF_NUM_THREADS = 8, 12, 16, 24, 28
OFF_RECORDS, OFF_TEXT_LEN, OFF_RESERVED = 32, 40, 44
_BATCH = 4096  # records buffered per write
_WINDOW_BYTES = RECORD_SIZE << 17  # 6 MiB of records mapped in at a time by the reader
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def records_offset_for(text_len: int) -> int:
    """Where the records start after a header text of text_len bytes (rounded up to 8)."""
    return (HEADER_SIZE + text_len + 7) & ~7


def is_binary_magic(head: bytes) -> bool:
    return head[:8] == MAGIC


class BinaryTraceWriter(TraceWriterBase):
    """Writes a .htb file as events come: a placeholder header, the header text, the records
    in batches; close() patches the counts (events, objects, threads) into the header."""

    format = "binary"

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.path = Path(path)
        self.header = header
        text = header.text.encode("utf-8")
        if len(text) > MAX_HEADER_BYTES:
            raise BadInputError(f"{path}: header text is {len(text)} bytes, more than {MAX_HEADER_BYTES}")
        self._text_len = len(text)
        self._records_offset = records_offset_for(len(text))
        # written to a temporary file renamed into place at close(): never a half-written trace
        self._out = AtomicOutput(path)
        self._f: IO[bytes] | None = self._out.file
        self._out.write(self._pack_header(0, 0, 0) + text + b"\0" * (self._records_offset - HEADER_SIZE - len(text)))
        self._buf = bytearray(RECORD_SIZE * _BATCH)
        self._fill = 0  # records in _buf
        self._n = 0
        self._max_obj = 0
        self._tids: set[int] = set()
        self._counts = [0] * OP_COUNT
        self.stats: TraceStats | None = None

    def _pack_header(self, num_events: int, num_objects: int, num_threads: int) -> bytes:
        return HEADER_STRUCT.pack(MAGIC, VERSION, RECORD_SIZE, num_events, num_objects, num_threads,
                                  self._records_offset, self._text_len, 0, 0, 0)

    def write_many(self, raws: Iterable[Sequence[int]], progress: Callable[[int], None] | None = None,
                   every: int = 1 << 16) -> int:
        """Write raw events (trusted: generators and checked readers make them); returns how many.

        progress(n_total) is called every ``every`` events."""
        f = self._f
        if f is None:
            raise ValueError("writer is closed")
        buf = self._buf
        pack_into = RECORD_STRUCT.pack_into
        counts = self._counts
        tids = self._tids
        add_tid = tids.add
        max_obj = self._max_obj
        fill = self._fill
        n = self._n
        start = n
        full = _BATCH * RECORD_SIZE
        pos = fill * RECORD_SIZE
        next_report = n + every if progress else -1
        try:
            for code, tid, obj, obj2, size, arg, value, site in raws:
                pack_into(buf, pos, code, 0, 0, tid, obj, obj2, size, arg & MASK64, value, site)
                pos += RECORD_SIZE
                n += 1
                counts[code] += 1
                add_tid(tid)
                if obj > max_obj:
                    max_obj = obj
                if obj2 > max_obj:
                    max_obj = obj2
                if pos == full:
                    f.write(buf)
                    pos = 0
                if n == next_report:
                    progress(n)  # type: ignore[misc]
                    next_report += every
        except struct.error as exc:
            raise ValueError(f"event {n}: a field is out of range for the record: {exc}") from None
        except OSError as exc:  # a full disk, a quota: the caller aborts, the destination keeps what it had
            raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        finally:
            self._fill = pos // RECORD_SIZE
            self._n = n
            self._max_obj = max_obj
        return n - start

    def close(self) -> TraceStats:
        f = self._f
        if f is not None:
            if self._max_obj > U32_MAX:
                raise ValueError(f"object id {self._max_obj} does not fit the header")
            try:
                if self._fill:
                    f.write(memoryview(self._buf)[: self._fill * RECORD_SIZE])
                    self._fill = 0
                f.seek(0)
                f.write(self._pack_header(self._n, self._max_obj, len(self._tids)))
            except OSError as exc:
                self.abort()
                raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
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


class BinaryTraceReader:
    """Reads a .htb file: the fixed header and header text at open (all checked), then the
    records streamed from an mmap of the file. ``position`` is the byte offset of the record
    last yielded."""

    format = "binary"

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name if name is not None else str(path)
        self._f: IO[bytes] | None = _open_input(path)
        self.position = 0
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BinaryTraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _error(self, reason: str, offset: int) -> TraceFormatError:
        return TraceFormatError(self.name, reason, offset=offset)

    def _read_header(self) -> None:
        assert self._f is not None
        size = os.fstat(self._f.fileno()).st_size
        self.file_size = size
        head = self._f.read(HEADER_SIZE)
        if head[:8] != MAGIC:
            if len(head) < 8 and MAGIC.startswith(head):
                raise self._error(f"truncated: the file is {size} bytes, shorter than the {HEADER_SIZE}-byte header", size)
            raise self._error(f"bad magic {_show(head[:8])} (expected 'HKTRACE\\x00'): not a binary hakmem trace", 0)
        if len(head) < HEADER_SIZE:
            raise self._error(f"truncated: the file is {size} bytes, shorter than the {HEADER_SIZE}-byte header", size)
        (magic, version, record_size, num_events, num_objects, num_threads, records_offset, text_len,
         reserved0, reserved1, reserved2) = HEADER_STRUCT.unpack(head)
        if version != VERSION:
            raise self._error(f"unsupported version {version} (this reader knows {VERSION})", OFF_VERSION)
        if record_size != RECORD_SIZE:
            raise self._error(f"record size {record_size} (expected {RECORD_SIZE})", OFF_RECORD_SIZE)
        if reserved0 or reserved1 or reserved2:
            raise self._error("reserved header bytes are not zero", OFF_RESERVED)
        if text_len > MAX_HEADER_BYTES:
            raise self._error(f"header text length {text_len} is more than {MAX_HEADER_BYTES}", OFF_TEXT_LEN)
        if records_offset % 8 or records_offset < HEADER_SIZE + text_len:
            raise self._error(
                f"records offset {records_offset} is not a multiple of 8 at or after the header text's end "
                f"({HEADER_SIZE + text_len})", OFF_RECORDS)
        end = records_offset + num_events * RECORD_SIZE
        if size < end:
            if size < HEADER_SIZE + text_len:
                reason = f"truncated: the file is {size} bytes, the header text ends at {HEADER_SIZE + text_len}"
            else:
                reason = (f"truncated: the header claims {num_events} events ending at offset {end}, "
                          f"but the file is {size} bytes")
            raise self._error(reason, size)
        if size > end:
            raise self._error(f"{size - end} bytes after the last of the {num_events} events the header claims", end)
        text = self._f.read(text_len)
        self.header = self._parse_text(text)
        if any(self._f.read(records_offset - HEADER_SIZE - text_len)):
            raise self._error("padding after the header text is not zero", HEADER_SIZE + text_len)
        self.num_events = num_events
        self.num_objects = num_objects
        self.num_threads = num_threads
        self.records_offset = records_offset

    def _parse_text(self, text: bytes) -> TraceHeader:
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._error("header text is not valid UTF-8", HEADER_SIZE + exc.start) from None
        if not decoded.endswith("\n"):
            raise self._error("header text does not end in a newline", HEADER_SIZE + len(text))
        lines = decoded[:-1].split("\n")
        offsets = []
        at = HEADER_SIZE
        for line in lines:
            offsets.append(at)
            at += len(line.encode("utf-8")) + 1
        try:
            return TraceHeader.parse(lines, self.name, 1)
        except TraceFormatError as exc:
            assert exc.line is not None
            raise self._error(f"header line {exc.line}: {exc.reason}", offsets[exc.line - 1]) from None

    def iter_raw(self, *, check: bool = True) -> Iterator[RawEvent]:
        """The records as raw tuples, streamed from the mmap. check: also validate object semantics."""
        if self._f is None:
            raise ValueError("reader is closed")
        n = self.num_events
        if n == 0:
            self.close()
            return
        start = self.records_offset
        num_objects = self.num_objects
        validator = ObjectValidator("event") if check else None
        vcheck = validator.check if validator else None
        tids: set[int] = set()
        add_tid = tids.add
        mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        iter_unpack = RECORD_STRUCT_SIGNED.iter_unpack
        pos, end = start, start + n * RECORD_SIZE
        dropped = 0  # mapped bytes handed back to the kernel so far
        offset = start - RECORD_SIZE
        index = -1
        it = view = None
        try:
            # Window by window, so that pages already read can be dropped from the mapping:
            # resident memory stays at a window however large the file.
            while pos < end:
                stop = min(end, pos + _WINDOW_BYTES)
                view = memoryview(mm)[pos:stop]
                it = iter_unpack(view)
                for code, flags, reserved, tid, obj, obj2, size, arg, value, site in it:
                    offset += RECORD_SIZE
                    index += 1
                    raw = (code, tid, obj, obj2, size, arg, value, site)
                    if flags or reserved or not 0 < code < OP_COUNT:
                        reason, at = self._record_problem(code, flags, index)
                        raise self._error(reason, offset + at)
                    if code == OP_MALLOC:
                        if obj2 or arg or value or not obj:
                            raise self._error(f"event {index}: {check_raw(raw)}", offset)
                    elif code == OP_FREE:
                        if obj2 or size or arg or value:
                            raise self._error(f"event {index}: {check_raw(raw)}", offset)
                    else:
                        reason = check_raw(raw)
                        if reason:
                            raise self._error(f"event {index}: {reason}", offset)
                    if obj > num_objects or obj2 > num_objects:
                        raise self._error(
                            f"event {index}: object id {max(obj, obj2)} is above the header's object count {num_objects}",
                            offset + (8 if obj > num_objects else 12))
                    if vcheck is not None:
                        reason = vcheck(raw, index)
                        if reason:
                            raise self._error(f"event {index}: {reason}", offset)
                    add_tid(tid)
                    self.position = offset
                    yield raw
                it = None
                view.release()
                view = None
                pos = stop
                upto = stop & ~(mmap.PAGESIZE - 1)
                if _MADV_DONTNEED is not None and upto > dropped:
                    mm.madvise(_MADV_DONTNEED, dropped, upto - dropped)
                    dropped = upto
            if len(tids) != self.num_threads:
                raise self._error(f"the header claims {self.num_threads} threads, the events use {len(tids)}",
                                  OFF_NUM_THREADS)
        finally:
            it = None
            if view is not None:
                view.release()
            mm.close()
            self.close()

    @staticmethod
    def _record_problem(code: int, flags: int, index: int) -> tuple[str, int]:
        """Reason and offset within the record of a bad op, flags or reserved field."""
        if not 0 < code < OP_COUNT:
            return f"unknown op {code} in event {index}", 0
        if flags:
            return f"event {index}: flags {flags:#x} are not zero", 1
        return f"event {index}: reserved bytes are not zero", 2

    def iter_events(self, *, check: bool = True) -> Iterator[Event]:
        from_raw = Event.from_raw
        for raw in self.iter_raw(check=check):
            yield from_raw(raw)
