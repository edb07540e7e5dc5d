"""Importers: foreign allocation logs (Valgrind, Android malloc_debug, glibc mtrace) to traces.

Each format module has a parser that turns lines into calls — ``(pid, tid, kind, a, b, c,
site, line, extra)`` tuples, kinds below — and this module's ``import_file`` does the rest
for all of them: addresses become objects through the AddressMapper (reuse, interior,
double and unknown frees), one trace per process in the log (the first process's is the
output file, others ``NAME.<pid>SUFFIX`` next to it), provenance in ``# meta`` lines, counts
per op and per thread, and the forensic findings. The input streams (plain, .gz, or .zip
with one member): memory holds the live set, never the file.

A malformed line is an ImportFormatError naming file and line; with ``lenient`` it is
counted, the first few are kept for the report, and the import goes on. A number out of the
trace format's range (an address or size above 2**64-1, a negative size, a thread id above
2**32-1) is a malformed line too. Damage in a compressed input (a truncated or corrupt gzip
or zip stream) stops the import with the line it reached.

Memory is bounded whatever the log says (docs/trace-format.md, "Importers"): a line is read
64 KiB at most; the live set holds at most ``max_live`` blocks (DEFAULT_MAX_LIVE) and the
memory of freed blocks ``freed_limit`` (addrmap.DEFAULT_FREED_LIMIT); a log may hold at most
``max_processes`` processes (DEFAULT_MAX_PROCESSES: one trace file each). Going past a limit
stops the import with FILE:LINE and the option that raises it, lenient or not.
"""

from __future__ import annotations

import gzip
import io
import os
import resource
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import IO, Callable, Iterator

from forensics import model
from forensics.errors import BadInputError
from forensics.safeio import open_input
from forensics.importers.addrmap import DEFAULT_FREED_LIMIT, AddressMapper
from forensics.trace import TraceHeader, open_writer
from forensics.trace.records import OP_CALLOC, OP_MALLOC, OP_MEMALIGN, OP_NAMES

FORMATS = ("valgrind", "android", "mtrace")
MAX_MALFORMED_SAMPLES = 20
DEFAULT_MAX_LIVE = 1 << 22  # blocks live at once: ~1 GiB of mapper state at most
DEFAULT_MAX_PROCESSES = 256  # processes of one log (each has its own trace file open)
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_I64 = (1 << 63) - 1

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


class _StreamDamage(Exception):
    """iter_lines hit damage in a compressed stream after `line` good lines."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _range_problem(kind: int, tid: int, a: int, b: int, c: int, site: int = 0) -> str | None:
    """Why a call's numbers do not fit the trace format (docs/trace-format.md), or None."""
    if not 0 <= tid <= _U32:
        return f"thread id {_short(str(tid))} is out of range (0..{_U32})"
    if not 0 <= site <= _U64:
        return f"call site {_short(hex(site))} is out of range (max {_U64:#x})"
    if kind == K_MALLOC:
        checks = (("address", a, _U64), ("size", b, _U64))
    elif kind == K_FREE:
        checks = (("address", a, _U64),)
    elif kind == K_CALLOC:
        checks = (("address", a, _U64), ("count", b, _I64), ("size", c, _U64))
    elif kind == K_MEMALIGN:
        checks = (("address", a, _U64), ("alignment", b, _I64), ("size", c, _U64))
    elif kind == K_REALLOC:
        checks = (("address", a, _U64), ("old address", b, _U64), ("size", c, _U64))
    else:
        return None
    for label, value, hi in checks:
        if value < 0:
            return f"{label} {_short(str(value))} is negative"
        if value > hi:
            if "address" in label:
                return f"{label} {_short(hex(value))} is out of range (max {hi:#x})"
            return f"{label} {_short(str(value))} is out of range (max {hi})"
    return None


def _short(digits: str, limit: int = 40) -> str:
    return digits if len(digits) <= limit else digits[:limit] + "..."


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
    """A quoted, shortened rendering of input text for a one-line message: undecodable bytes and
    control characters as \\xNN escapes (escaped once, as the trace reader shows them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = text.rstrip("\r\n")
    if len(text) > limit:
        text = text[:limit] + "..."
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


# ---------------------------------------------------------------------------- input
def open_source(path: str | os.PathLike[str]) -> tuple[IO[bytes], str]:
    """A binary stream of the log's text (a .zip's only member, a .gz decompressed), and the
    name errors use for it (``FILE`` or ``FILE[member]``)."""
    p = Path(path)
    fh = open_input(p, "log")  # a regular file: the zip reader seeks, and a FIFO would block
    head = fh.read(4)
    fh.seek(0)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            zf = zipfile.ZipFile(fh)
            members = [i for i in zf.infolist() if not i.is_dir()]
            if not members:
                raise BadInputError(f"{p}: the zip archive is empty")
            if len(members) > 1:
                texts = [i for i in members if i.filename.endswith(".txt")]
                if len(texts) != 1:
                    raise BadInputError(f"{p}: the zip archive holds {len(members)} files; expected one log")
                members = texts
            return zf.open(members[0]), f"{p}[{members[0].filename}]"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
            fh.close()
            raise BadInputError(f"{p}: unreadable zip archive: {exc}") from None
        except BadInputError:
            fh.close()
            raise
    if head[:2] == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=fh, mode="rb")
        gz.myfileobj = fh  # closed with it, as gzip.open does
        return gz, str(p)  # type: ignore[return-value]
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
    max_live: int = DEFAULT_MAX_LIVE,
    max_processes: int = DEFAULT_MAX_PROCESSES,
) -> model.ImportResult:
    """Import a log of format fmt (one of FORMATS) into output (.htb: binary, else text).

    max_lines: stop after that many input lines (a prefix; the traces are still valid).
    max_live, max_processes: the memory bounds (module docstring); past one, the import stops.
    On error every trace written so far is removed (the outputs keep what they had)."""
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r} (choose from: {', '.join(FORMATS)})")
    from forensics.importers import android, mtrace, valgrind

    parser_cls = {"valgrind": valgrind.ValgrindParser, "android": android.AndroidParser, "mtrace": mtrace.MtraceParser}[fmt]
    out = Path(output)
    if out.is_dir():
        raise BadInputError(f"{out}: is a directory; -o names the trace file to write")
    start = time.monotonic()
    if max_live < 1 or max_processes < 1:
        raise BadInputError("--max-live and --max-processes must be at least 1")
    stream, name = open_source(path)
    errors = LineErrors(name, lenient)
    parser = parser_cls(errors)
    parser.max_processes = max_processes
    sinks: dict[int | None, _Sink] = {}
    meta_learnt: list[tuple[str, str]] = []
    source_abs = str(Path(path).resolve())

    def sink_for(pid: int | None, line: int = 0) -> _Sink:
        if len(sinks) >= max_processes:
            raise ImportFormatError(name, line, f"more than {max_processes} processes in the log (one trace each; "
                                                "--max-processes N raises the limit)")
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
            for pid, tid, kind, a, b, c, site, line, extra in _guarded(parser.iter_calls(stream, max_lines), name):
                if kind == K_META:
                    meta_learnt.append(extra)
                    continue
                if kind <= K_THREAD_END:
                    problem = _range_problem(kind, tid, a, b, c, site)
                    if problem is not None:
                        errors.bad(line, problem)
                        continue
                sink = sinks.get(pid)
                if sink is None:
                    sink = sink_for(pid, line)
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
                    if m.num_live > max_live:
                        raise ImportFormatError(name, line, f"more than {max_live:,} blocks live at once (the "
                                                            "importer's memory bound; --max-live N raises it)")
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


def _guarded(calls: Iterator[tuple], name: str) -> Iterator[tuple]:
    """The parser's calls; damage in a compressed stream becomes FILE:LINE: reason."""
    try:
        yield from calls
    except _StreamDamage as exc:
        raise ImportFormatError(name, exc.line + 1, exc.reason) from None


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
    n = 0
    while True:
        try:
            line = readline(limit)
            if len(line) == limit and not line.endswith(b"\n"):
                rest = line
                while rest and not rest.endswith(b"\n"):
                    rest = readline(limit)
                line = line[:200] + _OVERLONG
        except EOFError:
            raise _StreamDamage(n, "truncated compressed stream (the file ends inside it)") from None
        except (OSError, zlib.error, zipfile.BadZipFile) as exc:
            raise _StreamDamage(n, f"damaged compressed stream: {exc}") from None
        if not line:
            return
        n += 1
        yield line


__all__ = [
    "FORMATS",
    "ImportFormatError",
    "LineErrors",
    "import_file",
    "open_source",
    "output_name",
]
