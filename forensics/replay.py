"""Replay a trace against an allocator in a child process and collect what the oracle saw.

The replay itself is native: the `hfreplay` executable (csrc/hfreplay_main.c, the same loop
as the driver's hfd_replay) maps the binary trace and calls the allocator event by event.
It runs as a child process, writing one hfr_event per trace event into a result file this
process maps too (a memfd), so everything observed before a SIGSEGV, SIGBUS, SIGABRT or hang
is kept, and the toolkit never dies with the allocator. Nothing here formats output: the
result is a model.ReplayResult for the reporters.

The stepping path (step_events) replays the same trace one event at a time through ctypes
(hfd_step), in an isolated child; a test asserts both give identical records.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from forensics import abi, isolate, model, native
from forensics.errors import BadInputError, ForensicsError
from forensics.safeio import missing_message
from forensics.trace import TraceHeader, TraceOp, convert, read_header, sniff

HEADER_SIZE = ctypes.sizeof(native.HfrHeader)
EVENT_SIZE = ctypes.sizeof(native.HfrEvent)
RECORD_SIZE = ctypes.sizeof(native.HftRecord)
_OUTCOME_OFFSET = native.HfrEvent.outcome.offset
STDERR_TAIL = 40
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_ANOMALIES = 1000
# The replay child's memory limit: address space it may map beyond what it holds when the replay
# starts (hfreplay --max-memory: RLIMIT_AS). A trace that allocates more sees NULL returns,
# reported as "memory limit reached at event N", instead of pushing the machine into the OOM killer.
DEFAULT_MAX_MEMORY = 8 << 30

ProgressFn = Callable[[int, int], None]  # (events done, events in all)


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay: which allocator, which knobs on top of the trace's own, what to check."""

    lib: str | None = None  # allocator library; None: $HAKMEM_LIB or the bundled hakmem-ref
    libc: bool = False  # replay against libc malloc/free instead (the baseline)
    probe: str | None = None  # HAKMEM_HEADER_PROBE
    mode: str | None = None  # HAKMEM_MODE
    knobs: Mapping[str, str] = field(default_factory=dict)  # any other HAKMEM_* knob
    check_every: int = 0  # consistency check every N events (0: never)
    threads: bool = True  # one real thread per trace thread (when there are several)
    judge: bool = True  # the route oracle (owner at allocation vs route at free)
    timeout: float = DEFAULT_TIMEOUT
    max_anomalies: int = DEFAULT_MAX_ANOMALIES
    # With check_every, check only events check_from..check_to (hfreplay --check-from/--check-to):
    # every check_every-th event counted from check_from, and check_to itself. None: to the end.
    check_from: int = 0
    check_to: int | None = None
    max_memory: int | None = DEFAULT_MAX_MEMORY  # bytes (RLIMIT_AS headroom in the child); None: no limit

    def get_overrides(self) -> dict[str, str]:
        """The knobs the command line sets, which win over the trace header's."""
        out = {str(k): str(v) for k, v in self.knobs.items()}
        if self.probe is not None:
            out["HAKMEM_HEADER_PROBE"] = self.probe
        if self.mode is not None:
            out["HAKMEM_MODE"] = self.mode
        return out

    def get_allocator_path(self) -> str:
        return "libc" if self.libc else str(abi.find_allocator(self.lib))


def get_effective_knobs(header: TraceHeader, config: ReplayConfig) -> dict[str, str]:
    knobs = {} if config.libc else dict(header.knobs)
    if not config.libc:
        knobs.update(config.get_overrides())
    return knobs


class TraceFile:
    """A binary trace mapped read-only, for random access to records by event index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        head = self._map[:64]
        self.num_events = int.from_bytes(head[16:24], "little")
        self.num_objects = int.from_bytes(head[24:28], "little")
        self.num_threads = int.from_bytes(head[28:32], "little")
        self.records_offset = int.from_bytes(head[32:40], "little")

    def get_record(self, index: int) -> native.HftRecord:
        off = self.records_offset + index * RECORD_SIZE
        return native.HftRecord.from_buffer_copy(self._map[off : off + RECORD_SIZE])

    def get_records_bytes(self) -> bytes:
        """Every record, as one bytes object (num_events * 48 bytes)."""
        return self._map[self.records_offset : self.records_offset + self.num_events * RECORD_SIZE]

    def iter_records(self) -> Iterator[native.HftRecord]:
        for i in range(self.num_events):
            yield self.get_record(i)

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> TraceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _op_name(code: int) -> str:
    try:
        return TraceOp.from_code(code).value
    except (ValueError, KeyError):
        return f"op{code}"


def binary_trace(trace: Path, workdir: Path) -> Path:
    """The trace as a binary file: itself, or a conversion into workdir (checked as it converts)."""
    if sniff(trace) == "binary":
        return trace
    out = workdir / (trace.name + ".htb")
    convert(trace, out, to="binary")
    return out


def _tail(path: Path, n: int) -> list[str]:
    lines: deque[str] = deque(maxlen=n)
    with open(path, "rb") as fh:
        for raw in fh:
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
    return list(lines)


def _command(binary: Path, config: ReplayConfig, knobs: Mapping[str, str], fd: int) -> list[str]:
    exe = abi.find_replay_exe()
    if not exe.exists():
        raise ForensicsError(f"the replay executable {exe} is missing: reinstall the package (`pip install .`)")
    cmd = [str(exe), str(binary)]
    cmd += ["--libc"] if config.libc else ["--lib", str(abi.find_allocator(config.lib))]
    # The trace header's knobs are applied by hfreplay itself; pass only the overrides.
    for name, value in (config.get_overrides() if not config.libc else {}).items():
        cmd += ["--knob", f"{name}={value}"]
    if config.check_every:
        cmd += ["--check-every", str(config.check_every)]
        if config.check_from:
            cmd += ["--check-from", str(config.check_from)]
        if config.check_to is not None:
            cmd += ["--check-to", str(config.check_to)]
    if config.threads:
        cmd.append("--threads")
    if not config.judge:
        cmd.append("--no-judge")
    if config.max_memory:
        cmd += ["--max-memory", str(config.max_memory)]
    cmd += ["--results-fd", str(fd), "--quiet"]
    return cmd


def run_replay(trace: str | os.PathLike[str], config: ReplayConfig = ReplayConfig(), *, progress: ProgressFn | None = None, keep_events: bool = False, binary: Path | None = None,
               partial_on_interrupt: bool = False) -> model.ReplayResult:
    """Replay trace in a child process; a crash or hang in the allocator becomes part of the result.

    keep_events: also return every raw hfr_event record (result.raw_events), for saving the
    result (explain, diff) — num_events * 48 bytes. binary: trace already converted to a binary
    file (binary_trace), so that a caller that needs it again converts a text trace only once;
    the result still names trace. A KeyboardInterrupt while the child runs kills the child;
    then with partial_on_interrupt the result observed so far is returned (``interrupted``,
    status "interrupted"), else the interrupt goes on (a caller that replays many times, like
    minimize, must not take a cut-off replay for an answer)."""
    trace_path = Path(trace)
    if not trace_path.exists():
        raise BadInputError(missing_message(trace))
    if not config.libc:
        native.load_allocator(config.lib)  # a bad --lib is reported here, with the loader's reasons
    driver = native.Driver()
    header = read_header(trace_path)
    knobs = get_effective_knobs(header, config)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        workdir = Path(tmp)
        binary = binary if binary is not None else binary_trace(trace_path, workdir)
        with TraceFile(binary) as tf:
            n = tf.num_events
            size = HEADER_SIZE + max(n, 1) * EVENT_SIZE
            fd = os.memfd_create("hakmem-forensics-results")
            try:
                os.ftruncate(fd, size)
                results = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
                stderr_path = workdir / "stderr"
                with open(stderr_path, "wb") as err:
                    proc = subprocess.Popen(_command(binary, config, knobs, fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, pass_fds=(fd,))
                    interrupted = False
                    try:
                        hang = _wait(proc, results, n, config.timeout, progress)
                    except KeyboardInterrupt:
                        # Ctrl-C: stop the child (never leave it running), and keep what it observed
                        proc.kill()
                        proc.wait()
                        if not partial_on_interrupt:
                            raise
                        hang, interrupted = False, True
                try:
                    result = _collect(results, tf, trace_path, config, knobs, driver, proc, hang, _tail(stderr_path, STDERR_TAIL), time.monotonic() - start,
                                      binary=binary, interrupted=interrupted)
                    if keep_events:
                        result.raw_events = results[HEADER_SIZE : HEADER_SIZE + n * EVENT_SIZE]
                    return result
                finally:
                    results.close()
            finally:
                os.close(fd)


def _events_done(results: mmap.mmap) -> int:
    off = native.HfrHeader.events_done.offset
    return int.from_bytes(results[off : off + 8], "little")


def _wait_exit(proc: subprocess.Popen, pidfd: int | None, seconds: float) -> bool:
    """Wait up to `seconds` for the child to exit; True once it has (and is reaped). A pidfd
    wakes the moment it exits; Popen.wait's polling sleeps up to 50 ms past a short replay."""
    if pidfd is not None:
        ready, _, _ = select.select([pidfd], [], [], seconds)
        if not ready:
            return False
    try:
        proc.wait(timeout=0 if pidfd is not None else seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _wait(proc: subprocess.Popen, results: mmap.mmap, n: int, timeout: float, progress: ProgressFn | None) -> bool:
    """Wait for the child, reporting progress; kill it at the time limit. True if it hung."""
    deadline = time.monotonic() + timeout
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3 or not Linux
        pidfd = None
    try:
        while not _wait_exit(proc, pidfd, 0.05):
            if progress:
                progress(_events_done(results), n)
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                if progress:
                    progress(_events_done(results), n)
                return True
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if progress:
        progress(_events_done(results), n)
    return False


def _failure_message(hdr: native.HfrHeader, stderr_tail: list[str], trace_path: Path, binary: Path | None, config: ReplayConfig) -> str:
    """The child's one-line reason, naming the user's trace (not a temporary conversion of it)."""
    reason = hdr.error.decode("utf-8", "replace")
    line = next((t for t in reversed(stderr_tail) if t.startswith("hfreplay: ") and t.endswith(reason)), None) if reason else None
    if not reason:
        return stderr_tail[-1] if stderr_tail else "replay failed"
    subject = str(trace_path)
    if line is not None:
        named = line[len("hfreplay: "): len(line) - len(reason)].rstrip(": ")
        if named and named not in (str(binary), str(trace_path)):
            subject = named  # a library, a knob's origin
    message = f"{subject}: {reason}"
    if "threads, the most a threaded replay runs at once" in reason:
        message += " (replay it with --serial)"
    elif config.max_memory and ("cannot allocate" in reason or "out of memory" in reason):
        message += f" (within the replay's memory limit of {_size(config.max_memory)}; --max-memory raises it)"
    return message


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def _collect(results: mmap.mmap, tf: TraceFile, trace_path: Path, config: ReplayConfig, knobs: dict[str, str], driver: native.Driver, proc: subprocess.Popen, hang: bool, stderr_tail: list[str], seconds: float,
             *, binary: Path | None = None, interrupted: bool = False) -> model.ReplayResult:
    hdr = native.HfrHeader.from_buffer_copy(results[:HEADER_SIZE])
    rc = proc.returncode
    exit_signal = -rc if rc is not None and rc < 0 else None
    if hdr.magic != native.HFR_MAGIC:
        last = stderr_tail[-1] if stderr_tail else "(no output)"
        if exit_signal is None and not hang and not interrupted:
            raise ForensicsError(f"the replay child exited with status {rc} before it started: {last}")
    elif hdr.state == native.HFR_STATE_FAILED:
        raise BadInputError(_failure_message(hdr, stderr_tail, trace_path, binary, config))
    n = tf.num_events
    probe_kind = model.ProbeKind(knobs["HAKMEM_HEADER_PROBE"]) if knobs.get("HAKMEM_HEADER_PROBE") in {p.value for p in model.ProbeKind} else (None if config.libc else model.ProbeKind.OFF)

    view = ctypes.c_char.from_buffer(results, HEADER_SIZE)
    try:
        summary = driver.summarize(ctypes.addressof(view), n)
    finally:
        del view

    def event_at(index: int, outcome: model.Outcome | None = None) -> model.EventResult:
        off = HEADER_SIZE + index * EVENT_SIZE
        raw = native.HfrEvent.from_buffer_copy(results[off : off + EVENT_SIZE])
        if outcome is not None:
            raw.outcome = outcome.code
        rec = tf.get_record(index)
        return native.event_result(index, raw, op=_op_name(rec.op), tid=rec.tid, obj=rec.obj, probe_kind=probe_kind)

    crash = native.read_crash_record(memoryview(results)[native.HfrHeader.crash.offset :]) if hdr.magic == native.HFR_MAGIC else None
    crash_event = None
    if crash is not None and crash.event_index is not None and crash.event_index < n:
        crash_event = event_at(crash.event_index, model.Outcome.CRASHED)
    elif hang:
        # the event the child was in: the first one not done (serial replays), if any
        first_pending = _first_not_done(results, n)
        if first_pending is not None:
            crash_event = event_at(first_pending, model.Outcome.CRASHED)

    routes: dict[str, int] = {}
    for code, count in enumerate(summary.route_counts):
        if count:
            route = model.Route.from_code(code)
            routes[route.value if route else "(none)"] = count
    outcomes = {o.value: summary.outcome_counts[o.code] for o in model.Outcome if o is not model.Outcome.NONE and summary.outcome_counts[o.code]}
    if crash_event is not None and not outcomes.get(model.Outcome.CRASHED.value):
        # hfd_summarize counts events left STARTED as crashed; a hang's event may not be one
        outcomes[model.Outcome.CRASHED.value] = 1

    anomaly_idx = _anomaly_indices(results, n, config.max_anomalies)
    in_flight: list[int] = []
    if crash is None and not hang and hdr.magic == native.HFR_MAGIC and exit_signal is not None:
        # killed (SIGKILL, Ctrl-C) with no crash record: the events left STARTED did not crash,
        # they were cut off. hfd_summarize counts them as crashed; they are not anomalies.
        in_flight = _started(results, n)
        if in_flight:
            crashed = outcomes.get(model.Outcome.CRASHED.value, 0) - len(in_flight)
            if crashed > 0:
                outcomes[model.Outcome.CRASHED.value] = crashed
            else:
                outcomes.pop(model.Outcome.CRASHED.value, None)
            cut = set(in_flight)
            anomaly_idx = [i for i in anomaly_idx if i not in cut]
    if crash_event is not None and crash_event.index not in anomaly_idx:
        anomaly_idx = sorted(anomaly_idx + [crash_event.index])[: max(config.max_anomalies, 1)]
    anomalies = [crash_event if crash_event is not None and i == crash_event.index else event_at(i) for i in anomaly_idx]
    anomaly_count = sum(v for k, v in outcomes.items() if k != model.Outcome.CORRECT.value)

    check_failure = None
    if hdr.magic == native.HFR_MAGIC and hdr.first_check_failure != native.UINT64_MAX:
        check_failure = model.CheckFailure(hdr.first_check_failure, hdr.check_msg.decode("utf-8", "replace"))
    first_anomaly = min((a.index for a in anomalies), default=None)
    alloc_failure = _first_failed_alloc(results, tf, n, config.max_memory)
    return model.ReplayResult(
        trace=str(trace_path),
        allocator=config.get_allocator_path(),
        knobs=knobs,
        threads=config.threads,
        num_events=n,
        events_done=summary.events_done if hdr.magic == native.HFR_MAGIC else 0,
        threads_used=hdr.threads_used,
        frees=summary.frees,
        allocs=summary.allocs,
        routes=routes,
        outcomes=outcomes,
        crash=crash,
        crash_event=crash_event,
        hang=hang,
        exit_status=rc if rc is not None and rc >= 0 else None,
        exit_signal=exit_signal,
        anomalies=anomalies,
        anomaly_count=anomaly_count,
        first_anomaly=first_anomaly,
        check_every=config.check_every,
        first_check_failure=check_failure,
        stderr_tail=stderr_tail,
        note=hdr.error.decode("utf-8", "replace") if hdr.magic == native.HFR_MAGIC and hdr.state != native.HFR_STATE_FAILED else "",
        seconds=seconds,
        interrupted=interrupted,
        max_memory=config.max_memory or None,
        alloc_failure=alloc_failure,
        in_flight=in_flight,
    )


# Ops that return a block (hft_op codes), and the owner of a block that is NULL (HAK_OWNER_NONE).
_ALLOC_OPS = bytes(1 if b in (TraceOp.MALLOC.code, TraceOp.CALLOC.code, TraceOp.MEMALIGN.code, TraceOp.LIBC_MALLOC.code, TraceOp.REALLOC.code) else 0 for b in range(256))
_IS_ZERO = bytes([1]) + bytes(255)


def _first_failed_alloc(results: mmap.mmap, tf: TraceFile, n: int, limit: int | None) -> model.AllocFailure | None:
    """The first event that asked for a non-zero size and got NULL (the memory limit, or an
    impossible size). The oracle records owner NONE for a NULL block: candidates are found in
    bulk from the op and owner columns, then checked one by one."""
    if n == 0:
        return None
    ro = tf.records_offset
    ops = tf._map[ro : ro + n * RECORD_SIZE : RECORD_SIZE].translate(_ALLOC_OPS)
    off = HEADER_SIZE + native.HfrEvent.owner.offset
    owners = results[off : HEADER_SIZE + n * EVENT_SIZE : EVENT_SIZE].translate(_IS_ZERO)
    both = (int.from_bytes(ops, "little") & int.from_bytes(owners, "little")).to_bytes(n, "little")
    done = model.EventStatus.DONE.code
    i = both.find(1)
    while i != -1:
        ev = native.HfrEvent.from_buffer_copy(results, HEADER_SIZE + i * EVENT_SIZE)
        rec = tf.get_record(i)
        size = rec.size * rec.arg if rec.op == TraceOp.CALLOC.code else rec.size
        if ev.status == done and ev.ptr == 0 and size > 0:
            return model.AllocFailure(i, _op_name(rec.op), size, limit or None)
        i = both.find(1, i + 1)
    return None


# Outcomes that are not anomalies: NONE (0) and CORRECT (1).
_ANOMALY_TABLE = bytes(0 if b in (model.Outcome.NONE.code, model.Outcome.CORRECT.code) else 1 for b in range(256))


def _anomaly_indices(results: mmap.mmap, n: int, cap: int) -> list[int]:
    """Indices of the first `cap` events whose outcome is an anomaly (scanned in bulk)."""
    start = HEADER_SIZE + _OUTCOME_OFFSET
    flags = results[start : HEADER_SIZE + n * EVENT_SIZE : EVENT_SIZE].translate(_ANOMALY_TABLE)
    out: list[int] = []
    i = flags.find(1)
    while i != -1 and len(out) < cap:
        out.append(i)
        i = flags.find(1, i + 1)
    return out


def _started(results: mmap.mmap, n: int) -> list[int]:
    """Indices of the events left STARTED (running when the child died), in trace order."""
    start = HEADER_SIZE + native.HfrEvent.status.offset
    statuses = results[start : HEADER_SIZE + n * EVENT_SIZE : EVENT_SIZE]
    code = model.EventStatus.STARTED.code
    out: list[int] = []
    i = statuses.find(code)
    while i != -1 and len(out) < 1024:
        out.append(i)
        i = statuses.find(code, i + 1)
    return out


def _first_not_done(results: mmap.mmap, n: int) -> int | None:
    start = HEADER_SIZE + native.HfrEvent.status.offset
    statuses = results[start : HEADER_SIZE + n * EVENT_SIZE : EVENT_SIZE]
    done = model.EventStatus.DONE.code
    for i, s in enumerate(statuses):
        if s != done:
            return i
    return None


# ---------------------------------------------------------------- stepping path
def step_events(trace: str | os.PathLike[str], config: ReplayConfig = ReplayConfig(), *, stop: int | None = None) -> isolate.ChildResult:
    """Replay the trace one event at a time through ctypes (hfd_step) in an isolated child.

    The child's value is the list of raw hfr_event records (bytes), one per event replayed;
    a crash ends the list early and is in the ChildResult. Serial only (trace order)."""
    trace_path = Path(trace)
    header = read_header(trace_path)
    knobs = get_effective_knobs(header, config)
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        binary = binary_trace(trace_path, Path(tmp))
        with TraceFile(binary) as tf:
            records = [bytes(tf.get_record(i)) for i in range(tf.num_events if stop is None else min(stop, tf.num_events))]
            num_objects = tf.num_objects

        def body(ctx: isolate.ChildContext) -> list[bytes]:
            drv = ctx.driver
            if config.libc:
                drv.bind_libc()
            drv.step_reset(num_objects)
            out = []
            for i, raw in enumerate(records):
                rec = native.HftRecord.from_buffer_copy(raw)
                out.append(bytes(drv.step(rec, i)))
            return out

        return isolate.run_isolated(body, lib=config.lib, knobs=knobs, timeout=config.timeout)
