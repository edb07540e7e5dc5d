"""Opening traces of either encoding: sniffing, readers, writers, and lossless conversion."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence, Union

from forensics.errors import BadInputError
from forensics.trace.binary import BinaryTraceReader, BinaryTraceWriter
from forensics.trace.records import FIRST_LINE, MAGIC, Event, RawEvent, TraceHeader, TraceStats
from forensics.trace.text import TextTraceReader, TextTraceWriter, _open_input

Format = Literal["text", "binary"]
TraceReader = Union[TextTraceReader, BinaryTraceReader]
TraceWriter = Union[TextTraceWriter, BinaryTraceWriter]
PathLike = Union[str, "os.PathLike[str]"]

BINARY_SUFFIX = ".htb"
TEXT_SUFFIXES = (".trace", ".txt")


def sniff(path: PathLike) -> Format:
    """The encoding of a trace file, from its first bytes.

    The binary magic means binary and a leading '#' means text (the text reader then checks
    the first line). Anything else is reported by the reader its name suggests, so that the
    error says what is wrong: a .htb file or one that starts with non-text bytes gets the
    binary reader's bad-magic error at offset 0, other files the text reader's first-line error."""
    with _open_input(path) as f:
        head = f.read(len(FIRST_LINE))
    if head[:8] == MAGIC:
        return "binary"
    if head[:1] == b"#":
        return "text"
    if Path(path).suffix == BINARY_SUFFIX or (head and not _looks_like_text(head)):
        return "binary"
    return "text"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def format_for_output(path: PathLike) -> Format:
    """The encoding a file name asks for: .htb is binary, anything else text."""
    return "binary" if Path(path).suffix == BINARY_SUFFIX else "text"


def open_trace(path: PathLike) -> TraceReader:
    """A reader of the right encoding, its header already read and checked."""
    if sniff(path) == "binary":
        return BinaryTraceReader(path)
    return TextTraceReader(path)


def read_header(path: PathLike) -> TraceHeader:
    with open_trace(path) as reader:
        return reader.header


def iter_raw(path: PathLike, *, check: bool = True) -> Iterator[RawEvent]:
    """The events of a trace of either encoding as raw tuples (see records.RawEvent), streamed.

    check: validate object semantics too (ids live when used). Errors: TraceFormatError."""
    reader = open_trace(path)
    yield from reader.iter_raw(check=check)


def iter_events(path: PathLike, *, check: bool = True) -> Iterator[Event]:
    """The events of a trace of either encoding, streamed. Errors: TraceFormatError."""
    reader = open_trace(path)
    yield from reader.iter_events(check=check)


def open_writer(path: PathLike, header: TraceHeader, *, binary: bool | None = None) -> TraceWriter:
    """A streaming writer; binary=None chooses by the file name (.htb is binary)."""
    if binary is None:
        binary = format_for_output(path) == "binary"
    return BinaryTraceWriter(path, header) if binary else TextTraceWriter(path, header)


def write_trace(
    path: PathLike,
    header: TraceHeader,
    events: Iterable[Event] | Iterable[Sequence[int]],
    *,
    binary: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> TraceStats:
    """Write a whole trace from typed events or raw tuples; the partial file is removed on error."""
    with open_writer(path, header, binary=binary) as writer:
        iterator = iter(events)
        first = next(iterator, None)
        if first is not None:
            if isinstance(first, Event):
                writer.write(first)
                for event in iterator:
                    writer.write(event)  # type: ignore[arg-type]
            else:
                writer.write_many([first])  # type: ignore[list-item]
                writer.write_many(iterator, progress)  # type: ignore[arg-type]
    assert writer.stats is not None
    return writer.stats


@dataclass(frozen=True)
class ConvertResult:
    src_format: Format
    dst_format: Format
    header: TraceHeader
    stats: TraceStats


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    to: Format | None = None,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ConvertResult:
    """Convert a trace between the encodings, losslessly.

    The source encoding is sniffed; the output is the other one unless ``to`` says otherwise
    (the same encoding rewrites the trace in canonical form). Text -> binary -> text gives back
    canonical text byte for byte. The source is checked (format and object semantics) as it
    streams; on any error the partial output is removed."""
    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists() and src_path.exists() and os.path.samefile(src_path, dst_path):
        raise BadInputError(f"{dst}: is the input file; choose another output")
    reader = open_trace(src)
    try:
        dst_format: Format = to or ("text" if reader.format == "binary" else "binary")
        with open_writer(dst, reader.header, binary=(dst_format == "binary")) as writer:
            writer.write_many(reader.iter_raw(check=check), progress)
    finally:
        reader.close()
    assert writer.stats is not None
    return ConvertResult(reader.format, dst_format, reader.header, writer.stats)
