"""Record a real program with libhfrecord.so (LD_PRELOAD) and turn its raw logs into traces.

`run_record` runs the command with the recorder preloaded, writing raw logs into a scratch
directory (one per process image: csrc/hfrecord.h), then converts each log into a trace:
records merged across threads by timestamp, addresses turned into objects by the same
AddressMapper the importers use, call sites kept, the memory map kept in the header as
``# meta map=`` lines, and the sites symbolized (``# meta site=``) while the binaries are
still there. The main process's trace is the output file; other processes (forks, exec'd
images) get ``NAME.<pid>[-<gen>]SUFFIX`` next to it. A forked child's trace starts with the
blocks it inherited from its parent (rebuilt from the parent's records up to its fork
record), so its frees of them are ordinary frees.
"""

from __future__ import annotations

import heapq
import mmap
import os
import shlex
import shutil
import signal as _signal
import struct
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

from forensics import abi, model, sites
from forensics.errors import BadInputError, ForensicsError
from forensics.importers.addrmap import AddressMapper
from forensics.trace import TraceHeader, open_writer
from forensics.trace.records import OP_CALLOC, OP_MALLOC, OP_MEMALIGN

RECORDER_FILE = "libhfrecord.so"
ENV_RECORDER = "HFRECORD_LIB"  # a rebuilt recorder, for testing
RAW_SUFFIX = ".hfrec"
MAPS_SUFFIX = ".maps"

# csrc/hfrecord.h
MAGIC = b"HFRECRD\0"
CHUNK_MAGIC = b"HFCHUNK\0"
VERSION = 1
HEADER_SIZE = 4096
RECORD_SIZE = 48
CHUNK_HEADER_SIZE = 64
# magic, version, record_size, chunk_size, chunk_header_size, pid, ppid, start_ns, start_mono_ns,
# generation, flags, signal, pointer_size, page_size, clock, dropped, start_clock
_HEADER = struct.Struct("<8sIIIIIIQQIIIIIIQQ")
_EXE_OFFSET, _EXE_LEN = 128, 256
_CMDLINE_OFFSET, _CMDLINE_LEN = 384, 3712
_CHUNK = struct.Struct("<8sIIIIQ")  # magic, thread, tid, count, capacity, index
_RECORD = struct.Struct("<BBHIQQQQQ")  # op, flags, reserved, reserved2, ts, ret, a, b, site
assert _RECORD.size == RECORD_SIZE

(R_MALLOC, R_CALLOC, R_REALLOC_BEGIN, R_REALLOC_END, R_MEMALIGN, R_POSIX_MEMALIGN, R_ALIGNED_ALLOC, R_VALLOC,
 R_PVALLOC, R_FREE, R_USABLE_SIZE, R_THREAD_END, R_MAPS, R_FORK) = range(1, 15)
RAW_OP_NAMES = {
    R_MALLOC: "malloc", R_CALLOC: "calloc", R_REALLOC_BEGIN: "realloc", R_REALLOC_END: "realloc_end",
    R_MEMALIGN: "memalign", R_POSIX_MEMALIGN: "posix_memalign", R_ALIGNED_ALLOC: "aligned_alloc",
    R_VALLOC: "valloc", R_PVALLOC: "pvalloc", R_FREE: "free", R_USABLE_SIZE: "malloc_usable_size",
    R_THREAD_END: "thread_end", R_MAPS: "maps", R_FORK: "fork",
}
FLAG_EXITED, FLAG_EXEC, FLAG_SIGNAL, FLAG_FORKED = 1, 2, 4, 8
_DIRECT_INDEX = (1 << 64) - 1


def find_recorder() -> Path:
    env = os.environ.get(ENV_RECORDER)
    if env:
        return Path(env).expanduser()
    return abi.NATIVE_DIR / RECORDER_FILE


# ---------------------------------------------------------------------------- raw logs
@dataclass(frozen=True)
class RawLog:
    """The header of one raw log (csrc/hfrecord.h: hfrec_header)."""

    path: Path
    pid: int
    ppid: int
    generation: int
    start_ns: int  # wall clock
    flags: int
    signal: int
    pointer_size: int
    dropped: int
    exe: str
    argv: tuple[str, ...]
    num_slots: int

    @property
    def maps_path(self) -> Path:
        return self.path.with_suffix(MAPS_SUFFIX)

    @property
    def forked(self) -> bool:
        """A forked child (that has not exec'd): it started with its parent's heap."""
        return bool(self.flags & FLAG_FORKED)

    @property
    def ending(self) -> str:
        """How the process image ended, as far as the log knows."""
        if self.flags & FLAG_SIGNAL:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.flags & FLAG_EXEC:
            return "exec"
        if self.flags & FLAG_EXITED:
            return "exited"
        return "incomplete (killed, or _exit without running destructors)"


def read_raw_log(path: str | os.PathLike[str]) -> RawLog:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise BadInputError(f"{p}: cannot read: {exc.strerror}") from None
    if len(head) < HEADER_SIZE:
        raise BadInputError(f"{p}: offset {len(head)}: truncated raw log (the header page is {HEADER_SIZE} bytes)")
    (magic, version, record_size, chunk_size, chunk_header_size, pid, ppid, start_ns, _mono, generation, flags, sig,
     pointer_size, _page, _clock, dropped, _start_clock) = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise BadInputError(f"{p}: offset 0: not a recorder log (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION or record_size != RECORD_SIZE or chunk_header_size != CHUNK_HEADER_SIZE or chunk_size < 4096:
        raise BadInputError(f"{p}: offset 8: unsupported raw log version {version} (record size {record_size}, "
                            f"chunk {chunk_size}); this reader knows version {VERSION}")
    exe = head[_EXE_OFFSET:_EXE_OFFSET + _EXE_LEN].split(b"\0", 1)[0].decode("utf-8", "replace")
    cmd = head[_CMDLINE_OFFSET:_CMDLINE_OFFSET + _CMDLINE_LEN].rstrip(b"\0")
    argv = tuple(a.decode("utf-8", "replace") for a in cmd.split(b"\0")) if cmd else ()
    num_slots = max(0, (size - HEADER_SIZE + chunk_size - 1) // chunk_size)
    return RawLog(p, pid, ppid, generation, start_ns, flags, sig, pointer_size, dropped, exe, argv, num_slots)


class _Chunks:
    """The chunk slots of a raw log, grouped by thread in each thread's own order."""

    def __init__(self, log: RawLog) -> None:
        self.log = log
        self._fh = open(log.path, "rb")
        size = os.fstat(self._fh.fileno()).st_size
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        chunk_size = _chunk_size(self._map)
        self.by_thread: dict[int, list[tuple[int, int, int, int]]] = {}  # thread -> [(index, offset, count, tid)]
        self.skipped = 0
        for k in range(log.num_slots):
            off = HEADER_SIZE + k * chunk_size
            if self._map is None or off + CHUNK_HEADER_SIZE > len(self._map):
                break
            magic, thread, tid, count, capacity, index = _CHUNK.unpack_from(self._map, off)
            if magic != CHUNK_MAGIC or thread == 0:
                self.skipped += 1  # reserved, never written
                continue
            count = min(count, capacity, (len(self._map) - off - CHUNK_HEADER_SIZE) // RECORD_SIZE)
            self.by_thread.setdefault(thread, []).append((index, off, count, tid))
        for chunks in self.by_thread.values():
            chunks.sort()  # by the thread's chunk index; direct chunks (index max) last, by offset

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._fh.close()

    def tids(self) -> dict[int, int]:
        return {thread: chunks[0][3] for thread, chunks in self.by_thread.items()}

    def iter_thread(self, thread: int) -> Iterator[tuple]:
        """(ts, thread, op, ret, a, b, site) of one thread, in its order."""
        m = self._map
        unpack = _RECORD.iter_unpack
        for _index, off, count, _tid in self.by_thread[thread]:
            start = off + CHUNK_HEADER_SIZE
            for op, _f, _r, _r2, ts, ret, a, b, site in unpack(m[start:start + count * RECORD_SIZE]):
                if op:
                    yield ts, thread, op, ret, a, b, site

    def iter_unordered(self) -> Iterator[tuple]:
        for thread in sorted(self.by_thread):
            yield from self.iter_thread(thread)

    def iter_merged(self) -> Iterator[tuple]:
        """Every thread's records merged by timestamp (ties: thread, then the thread's order)."""
        threads = sorted(self.by_thread)
        if len(threads) == 1:
            return self.iter_thread(threads[0])
        return heapq.merge(*(self.iter_thread(t) for t in threads), key=_ts_key)


def _ts_key(rec: tuple) -> int:
    return rec[0]


def _chunk_size(m: mmap.mmap | None) -> int:
    if m is None or len(m) < HEADER_SIZE:
        return 65536
    return _HEADER.unpack_from(m)[3]


def read_snapshots(log: RawLog, offsets: Sequence[tuple[int, int]]) -> list[list[model.MappedFile]]:
    """The memory-map snapshots the log points to, each a list of executable file mappings."""
    out: list[list[model.MappedFile]] = []
    try:
        with open(log.maps_path, "rb") as fh:
            for offset, length in offsets:
                fh.seek(offset)
                out.append(sites.parse_proc_maps(fh.read(length).decode("utf-8", "replace")))
    except OSError:
        pass
    return out


# ---------------------------------------------------------------------------- conversion
@dataclass
class _Pass1:
    raw_counts: Counter = field(default_factory=Counter)
    sites: set[int] = field(default_factory=set)
    snapshots: list[tuple[int, int]] = field(default_factory=list)
    forks: list[int] = field(default_factory=list)  # child pids


def _scan(chunks: _Chunks) -> _Pass1:
    info = _Pass1()
    counts = info.raw_counts
    site_set = info.sites
    for _ts, _thread, op, ret, a, b, site in chunks.iter_unordered():
        counts[op] += 1
        if op == R_MAPS:
            info.snapshots.append((a, b))
        elif op == R_FORK:
            info.forks.append(ret)
            continue  # its site is fork()'s caller, not an allocator call site
        if site:
            site_set.add(site)
    info.snapshots.sort()
    return info


def list_forks(log: RawLog) -> list[int]:
    """The pids of the children a process image forked (its fork records)."""
    chunks = _Chunks(log)
    try:
        return [ret for _ts, _t, op, ret, _a, _b, _s in chunks.iter_unordered() if op == R_FORK]
    finally:
        chunks.close()


def inherited_blocks(parent: RawLog, child_pid: int) -> list[tuple[int, int]] | None:
    """(address, size) of the blocks live in parent when it forked child_pid, in allocation
    order; None if parent has no fork record for that child."""
    chunks = _Chunks(parent)
    live: dict[int, int] = {}
    pending: dict[int, tuple[int, int] | None] = {}
    try:
        for _ts, thread, op, ret, a, b, _site in chunks.iter_merged():
            if op == R_FREE:
                live.pop(a, None)
            elif op == R_FORK:
                if ret == child_pid:
                    return list(live.items())
            elif op == R_REALLOC_BEGIN:
                pending[thread] = (a, live.pop(a)) if a in live else None
            elif op == R_REALLOC_END:
                old = pending.pop(thread, None)
                if ret:
                    live[ret] = b
                elif b and old is not None:  # failed: the old block stays
                    live[old[0]] = old[1]
            elif ret and op in (R_MALLOC, R_MEMALIGN, R_POSIX_MEMALIGN, R_ALIGNED_ALLOC, R_VALLOC):
                live[ret] = b
            elif ret and op == R_CALLOC:
                live[ret] = a * b
            elif ret and op == R_PVALLOC:
                live[ret] = ((b + a - 1) // a) * a if a else b
        return None
    finally:
        chunks.close()


def _header_for(log: RawLog, chunks: _Chunks, maps: list[model.MappedFile], site_infos: dict[int, model.SiteInfo],
                modules: dict[str, str | None], inherited: int | None) -> TraceHeader:
    started = datetime.fromtimestamp(log.start_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    meta: list[tuple[str, object]] = [
        ("source", "record"),
        ("command", sites.one_line(shlex.join(log.argv) if log.argv else log.exe)),
        ("exe", sites.one_line(log.exe)),
        ("pid", log.pid),
        ("ppid", log.ppid),
        ("generation", log.generation),
        ("started", started),
        ("ending", log.ending),
        ("pointer_size", log.pointer_size),
    ]
    if log.dropped:
        meta.append(("dropped_records", log.dropped))
    if inherited is not None:
        meta.append(("inherited_blocks", f"{inherited} (live in pid {log.ppid} when it forked this process: "
                                         "malloc events at the start, without a site)"))
    for thread, tid in sorted(chunks.tids().items()):
        meta.append(("thread", f"{thread} tid={tid}"))
    meta += sites.format_map_meta(maps, modules)
    meta += [("site", sites.format_site(s)) for _, s in sorted(site_infos.items())]
    return TraceHeader.build(meta=meta)


def convert_raw_log(
    raw: str | os.PathLike[str] | RawLog,
    output: str | os.PathLike[str],
    *,
    symbolize: bool = True,
    cache_dir: Path | None = None,
    binary: bool | None = None,
    progress: Callable[[int], None] | None = None,
    inherited: list[tuple[int, int]] | None = None,
) -> model.TraceOutput:
    """Turn one raw log into a trace (see the module docstring). Partial output is removed on error.

    inherited: the (address, size) blocks a forked child got from its parent (inherited_blocks):
    allocated at the start of the trace, so the child's frees of them are ordinary frees."""
    log = raw if isinstance(raw, RawLog) else read_raw_log(raw)
    chunks = _Chunks(log)
    try:
        scan = _scan(chunks)
        snapshots = read_snapshots(log, scan.snapshots)
        maps = sites.merge_snapshots(snapshots)
        modules = sites.get_module_ids(maps)
        site_infos: dict[int, model.SiteInfo] = {}
        if symbolize and scan.sites:
            site_infos = sites.symbolize(sorted(scan.sites), maps, cache_dir=cache_dir)
        header = _header_for(log, chunks, maps, site_infos, modules, None if inherited is None else len(inherited))
        threads = sorted(chunks.by_thread)
        next_tid = (max(threads) if threads else 0) + 1
        with open_writer(output, header, binary=binary) as writer:
            stats = _convert(chunks, writer, next_tid, progress, inherited or [])
        return model.TraceOutput(
            path=str(output),
            pid=log.pid,
            generation=log.generation,
            events=stats["events"],
            objects=writer.stats.num_objects if writer.stats else 0,
            threads=writer.stats.num_threads if writer.stats else 0,
            op_counts=stats["ops"],
            thread_counts=stats["threads"],
            repairs=stats["repairs"],
            findings=stats["findings"],
            finding_count=stats["finding_count"],
            calls={RAW_OP_NAMES[k]: v for k, v in sorted(scan.raw_counts.items()) if k not in (R_MAPS, R_REALLOC_END)},
            inherited=len(inherited or []),
            note=log.ending,
            symbolized=sum(1 for s in site_infos.values() if s.function),
            sites=len(scan.sites),
        )
    finally:
        chunks.close()


# A thread's thread_end waits this long (record clock units: ns or TSC ticks) before it goes
# into the trace: libc frees a little more after the recorder's last TSD destructor round.
THREAD_END_GRACE = 50_000_000


def _convert(chunks: _Chunks, writer, next_tid: int, progress: Callable[[int], None] | None,
             inherited: list[tuple[int, int]]) -> dict:
    mapper = AddressMapper()
    first = min(chunks.by_thread, default=1)
    for addr, size in inherited:
        mapper.alloc(first, OP_MALLOC, addr, size, 0, 0, size)
    trace_tid: dict[int, int] = {}  # thread serial -> trace tid of its current lifetime
    pending_end: dict[int, int] = {}  # thread serial -> ts of its thread_end, not yet written
    ended: set[int] = set()  # serials that had a trace tid (so a new lifetime needs a new tid)
    thread_counts: Counter = Counter()
    op_counts: Counter = Counter()
    written = 0
    i = 0
    for ts, thread, op, ret, a, b, site in chunks.iter_merged():
        i += 1
        if pending_end:
            for t in [t for t, end in pending_end.items() if ts > end + THREAD_END_GRACE and t != thread]:
                del pending_end[t]
                mapper.thread_end(trace_tid.pop(t))
        tid = trace_tid.get(thread)
        if tid is None:
            # first record of the thread; or a record after its thread_end was written (late
            # libc cleanup after a long pause): it continues under a new trace tid
            if thread in ended:
                tid = next_tid
                next_tid += 1
            else:
                tid = thread
                ended.add(thread)
            trace_tid[thread] = tid
        mapper.where = i
        if op == R_MALLOC:
            mapper.alloc(tid, OP_MALLOC, ret, b, 0, site, b)
        elif op == R_FREE:
            mapper.free(tid, a, site)
        elif op == R_REALLOC_BEGIN:
            mapper.realloc_begin(thread, tid, a, site)
        elif op == R_REALLOC_END:
            mapper.realloc_end(thread, tid, a, ret, b, site)
        elif op == R_CALLOC:
            mapper.alloc(tid, OP_CALLOC, ret, b, a, site, a * b)
        elif op in (R_MEMALIGN, R_POSIX_MEMALIGN, R_ALIGNED_ALLOC, R_VALLOC):
            mapper.alloc(tid, OP_MEMALIGN, ret, b, a, site, b)
        elif op == R_PVALLOC:
            size = ((b + a - 1) // a) * a if a else b
            mapper.alloc(tid, OP_MEMALIGN, ret, size or a, a, site, size or a)
        elif op == R_THREAD_END:
            pending_end[thread] = ts
            continue
        if thread in pending_end and op != R_MAPS:
            pending_end[thread] = ts  # still running: its thread_end moves after this call
        if len(mapper.events) >= 8192:
            batch = mapper.drain()
            _count(batch, op_counts, thread_counts)
            writer.write_many(batch)
            written += len(batch)
            if progress:
                progress(written)
    for t in sorted(pending_end, key=lambda t: pending_end[t]):
        mapper.thread_end(trace_tid.pop(t))
    batch = mapper.drain()
    _count(batch, op_counts, thread_counts)
    writer.write_many(batch)
    written += len(batch)
    return {
        "events": written,
        "ops": {_op_name(k): v for k, v in sorted(op_counts.items())},
        "threads": dict(sorted(thread_counts.items())),
        "repairs": {k: v for k, v in sorted(mapper.counts.items()) if k not in _FORENSIC},
        "findings": list(mapper.findings),
        "finding_count": sum(v for k, v in mapper.counts.items() if k in _FORENSIC or k == "implicit_free"),
    }


_FORENSIC = ("free_interior", "double_free", "free_raw")


def _op_name(code: int) -> str:
    from forensics.trace.records import OP_NAMES

    return OP_NAMES[code]


def _count(batch: list, op_counts: Counter, thread_counts: Counter) -> None:
    for e in batch:
        op_counts[e[0]] += 1
        thread_counts[e[1]] += 1


# ---------------------------------------------------------------------------- running a program
def output_name(output: Path, pid: int, generation: int, main: bool) -> Path:
    """The trace file for one process image: the output itself for the main one."""
    if main:
        return output
    tag = f"{pid}" if generation == 0 else f"{pid}-{generation}"
    suffix = "".join(output.suffixes[-1:])
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(f"{stem}.{tag}{suffix}")


def run_record(
    command: Sequence[str],
    output: str | os.PathLike[str],
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    symbolize: bool = True,
    cache_dir: Path | None = None,
    binary: bool | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    stdin=None,
    stdout=None,
    stderr=None,
) -> model.RecordResult:
    """Run command under the recorder and convert every process image it recorded.

    raw_dir: keep the raw logs there (created if needed); by default they go to a scratch
    directory next to the output and are removed after conversion."""
    if not command:
        raise BadInputError("record: no command given (usage: record -o TRACE -- CMD ARGS...)")
    lib = find_recorder()
    if not lib.exists():
        raise ForensicsError(f"the recorder {lib} is missing: rebuild the native code (`make -C csrc OUT=... all` or `pip install .`)")
    out = Path(output)
    if out.exists() and out.is_dir():
        raise BadInputError(f"{out}: is a directory; -o names the trace file to write")
    if not out.parent.exists():
        raise BadInputError(f"{out.parent}: no such directory")
    keep = raw_dir is not None
    if keep:
        work = Path(raw_dir)  # type: ignore[arg-type]
        work.mkdir(parents=True, exist_ok=True)
        for stale in list(work.glob(f"*{RAW_SUFFIX}")) + list(work.glob(f"*{MAPS_SUFFIX}")):
            stale.unlink()
    else:
        work = Path(tempfile.mkdtemp(prefix=".hfrecord-", dir=str(out.parent)))
    child_env = dict(os.environ if env is None else env)
    child_env["HFRECORD_DIR"] = str(work.resolve())
    preload = child_env.get("LD_PRELOAD", "")
    child_env["LD_PRELOAD"] = str(lib.resolve()) + (":" + preload if preload else "")
    try:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(list(command), env=child_env, stdin=stdin, stdout=stdout, stderr=stderr)
        except FileNotFoundError:
            raise BadInputError(f"{command[0]}: command not found") from None
        except PermissionError:
            raise BadInputError(f"{command[0]}: permission denied") from None
        hang = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            hang = True
        except KeyboardInterrupt:
            proc.wait()
        seconds = time.monotonic() - start
        rc = proc.returncode
        logs = sorted((read_raw_log(p) for p in work.glob(f"*{RAW_SUFFIX}")), key=lambda lg: (lg.start_ns, lg.pid, lg.generation))
        outputs: list[model.TraceOutput] = []
        main_done = False
        parents: dict[int, RawLog] = {}  # child pid -> the image that forked it
        for log in logs:
            for child in list_forks(log):
                parents.setdefault(child, log)
        for log in logs:
            is_main = log.pid == proc.pid and log.generation == 0
            target = output_name(out, log.pid, log.generation, is_main)
            inherited = None
            parent = parents.get(log.pid)
            if parent is not None and log.forked:
                inherited = inherited_blocks(parent, log.pid)
            outputs.append(convert_raw_log(log, target, symbolize=symbolize, cache_dir=cache_dir, binary=binary,
                                           inherited=inherited))
            main_done |= is_main
        if not main_done:  # the program never called the allocator (or could not start)
            header = TraceHeader.build(meta=[("source", "record"), ("command", sites.one_line(shlex.join(command))),
                                             ("pid", proc.pid), ("ending", "no allocator calls recorded")])
            with open_writer(out, header, binary=binary):
                pass
            outputs.insert(0, model.TraceOutput(path=str(out), pid=proc.pid, generation=0, events=0, objects=0,
                                                threads=0, note="no allocator calls recorded"))
        else:
            outputs.sort(key=lambda o: (o.path != str(out),))
        return model.RecordResult(
            command=list(command),
            exit_status=rc if rc is not None and rc >= 0 else None,
            exit_signal=-rc if rc is not None and rc < 0 else None,
            hang=hang,
            seconds=seconds,
            outputs=outputs,
            raw_dir=str(work) if keep else None,
        )
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
