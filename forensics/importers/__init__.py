"""Importers: foreign allocation logs (Valgrind, Android malloc_debug, glibc mtrace) to traces.

Each format module has a parser that turns lines into calls — ``(pid, tid, kind, a, b, c,
site, line, extra)`` tuples, kinds below — and this module's ``import_file`` does the rest
for all of them: addresses become objects through the AddressMapper (reuse, interior,
double and unknown frees), one trace per process in the log (the first process's is the
output file, others ``NAME.<pid>SUFFIX`` next to it), provenance in ``# meta`` lines, counts
per op and per thread, and the forensic findings. The input streams (plain, .gz, or .zip
with one member): memory holds the live set, never the file.

A malformed line is an ImportFormatError naming file and line; with ``lenient`` it is
counted, the first few are kept for the report, and the import goes on.
"""

from __future__ import annotations

import gzip
import io
import os
import resource
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import IO, Callable, Iterator

from forensics import model
from forensics.errors import BadInputError
from forensics.importers.addrmap import DEFAULT_FREED_LIMIT, AddressMapper
from forensics.trace import TraceHeader, open_writer
from forensics.trace.records import OP_CALLOC, OP_MALLOC, OP_MEMALIGN, OP_NAMES

FORMATS = ("valgrind", "android", "mtrace")
MAX_MALFORMED_SAMPLES = 20

# Call kinds a parser yields: (pid, tid, kind, a, b, c, site, line, extra)
K_MALLOC = 1  # a = returned address, b = size
K_CALLOC = 2  # a = returned address, b = nmemb, c = element size
K_MEMALIGN = 3  # a = returned address, b = alignment, c = size
K_REALLOC = 4  # a = returned address, b = old address, c = size
K_FREE = 5  # a = address
K_THREAD_END = 6
K_VERDICT = 7  # memcheck's report on the last free: extra = (kind, offset, block size)
K_META = 8  # provenance learnt on the way: extra = (key, value), kept for traces created later


class ImportFormatError(BadInputError):
    """A line the importer cannot read: ``file:line: reason``."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        super().__init__(f"{file}:{line}: {reason}")


class LineErrors:
    """Where a parser sends a malformed line: raise, or (lenient) count and keep a sample."""

    def __init__(self, name: str, lenient: bool) -> None:
        self.name = name
        self.lenient = lenient
        self.count = 0
        self.samples: list[str] = []

    def bad(self, line: int, reason: str) -> None:
        if not self.lenient:
            raise ImportFormatError(self.name, line, reason)
        self.count += 1
        if len(self.samples) < MAX_MALFORMED_SAMPLES:
            self.samples.append(f"{self.name}:{line}: {reason}")


def show(text: bytes | str, limit: int = 60) -> str:
    """A quoted, shortened rendering of input text for a one-line message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = text.rstrip("\r\n")
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


# ---------------------------------------------------------------------------- input
def open_source(path: str | os.PathLike[str]) -> tuple[IO[bytes], str]:
    """A binary stream of the log's text (a .zip's only member, a .gz decompressed), and the
    name errors use for it (``FILE`` or ``FILE[member]``)."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory")
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise BadInputError(f"{p}: cannot open: {exc.strerror}") from None
    head = fh.read(4)
    fh.seek(0)
    if head[:4] == b"PK\x03\x04":
        fh.close()
        try:
            zf = zipfile.ZipFile(p)
            members = [i for i in zf.infolist() if not i.is_dir()]
            if not members:
                raise BadInputError(f"{p}: the zip archive is empty")
            if len(members) > 1:
                texts = [i for i in members if i.filename.endswith(".txt")]
                if len(texts) != 1:
                    raise BadInputError(f"{p}: the zip archive holds {len(members)} files; expected one log")
                members = texts
            return zf.open(members[0]), f"{p}[{members[0].filename}]"
        except (zipfile.BadZipFile, OSError) as exc:
            raise BadInputError(f"{p}: unreadable zip archive: {exc}") from None
    if head[:2] == b"\x1f\x8b":
        fh.close()
        return gzip.open(p, "rb"), str(p)  # type: ignore[return-value]
    return fh, str(p)


def output_name(output: Path, pid: int, generation: int = 0) -> Path:
    """The trace file of a process other than the first: NAME.<pid>[-<gen>]SUFFIX."""
    tag = f"{pid}" if generation == 0 else f"{pid}-{generation}"
    suffix = output.suffix
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(f"{stem}.{tag}{suffix}")


# ---------------------------------------------------------------------------- the driver
class _Sink:
    """One process of the log: its mapper and its trace writer."""

    def __init__(self, path: Path, header: TraceHeader, pid: int | None, binary: bool | None, freed_limit: int) -> None:
        self.path = path
        self.pid = pid
        self.writer = open_writer(path, header, binary=binary)
        self.mapper = AddressMapper(freed_limit=freed_limit)
        self.op_counts: Counter = Counter()
        self.thread_counts: Counter = Counter()
        self.written = 0
        self.last_release: tuple[int, int, int] | None = None  # (event index, op code, arg) of the last free
        self.memcheck: list[model.MemcheckCheck] = []

    def flush(self) -> None:
        batch = self.mapper.drain()
        if not batch:
            return
        ops = self.op_counts
        threads = self.thread_counts
        for e in batch:
            ops[e[0]] += 1
            threads[e[1]] += 1
        self.writer.write_many(batch)
        self.written += len(batch)

    def result(self, note: str = "") -> model.TraceOutput:
        stats = self.writer.stats
        m = self.mapper
        forensic = ("free_interior", "double_free", "free_raw")
        return model.TraceOutput(
            path=str(self.path),
            pid=self.pid,
            events=self.written,
            objects=stats.num_objects if stats else 0,
            threads=stats.num_threads if stats else 0,
            op_counts={OP_NAMES[k]: v for k, v in sorted(self.op_counts.items())},
            thread_counts=dict(sorted(self.thread_counts.items())),
            repairs={k: v for k, v in sorted(m.counts.items()) if k not in forensic},
            findings=list(m.findings),
            finding_count=sum(v for k, v in m.counts.items() if k in forensic or k == "implicit_free"),
            memcheck=self.memcheck,
            note=note,
        )


def _release_op(sink: _Sink, before: int) -> None:
    """Remember the event a free/realloc call produced first (for memcheck's verdict)."""
    m = sink.mapper
    k = before - (m.num_events - len(m.events))
    if 0 <= k < len(m.events):
        e = m.events[k]
        sink.last_release = (before, e[0], e[5])


_VERDICT_OURS = {5: "free", 3: "realloc", 7: "free_interior", 8: "double_free", 9: "free_raw"}


def import_file(
    fmt: str,
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    lenient: bool = False,
    binary: bool | None = None,
    freed_limit: int = DEFAULT_FREED_LIMIT,
    max_lines: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> model.ImportResult:
    """Import a log of format fmt (one of FORMATS) into output (.htb: binary, else text).

    max_lines: stop after that many input lines (a prefix; the traces are still valid).
    On error every trace written so far is removed."""
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r} (choose from: {', '.join(FORMATS)})")
    from forensics.importers import android, mtrace, valgrind

    parser_cls = {"valgrind": valgrind.ValgrindParser, "android": android.AndroidParser, "mtrace": mtrace.MtraceParser}[fmt]
    out = Path(output)
    if out.is_dir():
        raise BadInputError(f"{out}: is a directory; -o names the trace file to write")
    start = time.monotonic()
    stream, name = open_source(path)
    errors = LineErrors(name, lenient)
    parser = parser_cls(errors)
    sinks: dict[int | None, _Sink] = {}
    meta_learnt: list[tuple[str, str]] = []
    source_abs = str(Path(path).resolve())

    def sink_for(pid: int | None) -> _Sink:
        target = out if not sinks else output_name(out, pid if pid is not None else 0)
        meta: list[tuple[str, object]] = [("source", fmt), ("file", source_abs)]
        if name != str(path):
            meta.append(("member", name[name.index("[") + 1 : -1]))
        if pid is not None:
            meta.append(("pid", pid))
        meta += meta_learnt
        meta += parser.header_meta(pid)
        s = _Sink(target, TraceHeader.build(meta=meta), pid, binary, freed_limit)
        sinks[pid] = s
        return s

    lines = 0
    verdicts = getattr(parser, "verdicts", False)
    try:
        try:
            for pid, tid, kind, a, b, c, site, line, extra in parser.iter_calls(stream, max_lines):
                if kind == K_META:
                    meta_learnt.append(extra)
                    continue
                sink = sinks.get(pid)
                if sink is None:
                    sink = sink_for(pid)
                m = sink.mapper
                m.where = line
                if kind == K_MALLOC:
                    m.alloc(tid, OP_MALLOC, a, b, 0, site, b)
                elif kind == K_FREE:
                    if verdicts:
                        before = m.num_events
                        m.free(tid, a, site)
                        _release_op(sink, before)
                    else:
                        m.free(tid, a, site)
                elif kind == K_CALLOC:
                    m.alloc(tid, OP_CALLOC, a, c, b, site, b * c)
                elif kind == K_REALLOC:
                    before = m.num_events
                    m.realloc(tid, b, a, c, site)
                    if b and verdicts:
                        _release_op(sink, before)
                elif kind == K_MEMALIGN:
                    m.alloc(tid, OP_MEMALIGN, a, c, b, site, c)
                elif kind == K_THREAD_END:
                    m.thread_end(tid)
                elif kind == K_VERDICT:
                    _verdict(sink, extra, line)
                if len(m.events) >= 4096:
                    sink.flush()
                    if progress:
                        progress(line)
            lines = parser.lines
        finally:
            stream.close()
        if not sinks:  # nothing in the log: still write the (empty) trace the user asked for
            sink_for(None)
        results = []
        for s in sinks.values():
            s.flush()
            s.writer.close()
            results.append(s.result())
    except BaseException:
        for s in sinks.values():
            s.writer.abort()
        raise
    seconds = time.monotonic() - start
    return model.ImportResult(
        format=fmt,
        source=name,
        lines=lines,
        malformed=errors.count,
        malformed_samples=errors.samples,
        outputs=results,
        seconds=seconds,
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        timing=dict(getattr(parser, "timing", {})),
    )


def _verdict(sink: _Sink, extra: tuple[str, int | None, int | None], line: int) -> None:
    kind, offset, block = extra
    if sink.last_release is None:
        return
    index, code, arg = sink.last_release
    ours = _VERDICT_OURS.get(code, OP_NAMES[code] if 0 < code < len(OP_NAMES) else str(code))
    sink.memcheck.append(model.MemcheckCheck(index, ours, arg if code == 7 else 0, kind, offset, block, line))
    sink.last_release = None


MAX_LINE_BYTES = 64 * 1024
_OVERLONG = b" \0(line longer than 65536 bytes)"


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Lines of a binary stream, read in large blocks. A line longer than MAX_LINE_BYTES is
    not held whole: its first part comes with a marker no parser accepts (so it is malformed,
    with its line number) and the rest is skipped."""
    if not isinstance(stream, io.BufferedReader):
        stream = io.BufferedReader(stream, 1 << 20)  # type: ignore[arg-type]
    readline = stream.readline
    limit = MAX_LINE_BYTES + 1
    while True:
        line = readline(limit)
        if not line:
            return
        if len(line) == limit and not line.endswith(b"\n"):
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = readline(limit)
            line = line[:200] + _OVERLONG
        yield line


__all__ = [
    "FORMATS",
    "ImportFormatError",
    "LineErrors",
    "import_file",
    "open_source",
    "output_name",
]
