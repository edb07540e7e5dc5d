"""Look at the live heap of a replay child just before one event: owners, probe verdicts, registry history.

`inspect_event(trace, event, addrs)` runs the native replay (`hfreplay --stop-before EVENT`)
in a child process: it replays events 0..EVENT-1 one by one, serially and with ASLR off (so a
serial trace puts every block where the saved replay saw it), then prints one JSON document
(schema "hfreplay/inspect/1", csrc/hfinspect.c) describing the heap as event EVENT is about to
see it. This module runs it, turns a crash before EVENT into an InspectCrashed error naming the
crashing event, and returns a model.Inspection; the raw document stays in `Inspection.facts`.

What the document holds, all read from the live child: the pointer event EVENT frees (if
any), its header address and the bytes around it (read through the kernel: unreadable bytes
are None, never a fault), the owner (hak_owner) of the header, of the pointer and of every
address asked about, every readability probe's verdict with /proc/self/maps ground truth
(for the header: HEADER_SIZE bytes; for an address asked about: 1 byte), the registry change
history of the pointer's region, a few knobs, allocator statistics, the consistency check and
the memory map.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

from forensics import abi, model, native
from forensics.errors import BadInputError, ForensicsError
from forensics.probeaudit import PROBES
from forensics.replay import EVENT_SIZE, HEADER_SIZE, ReplayConfig, TraceFile, binary_trace
from forensics.trace import TraceOp

MAX_ADDRS = 64  # hfreplay's limit on --inspect-addr
DEFAULT_TIMEOUT = 120.0
SCHEMA = "hfreplay/inspect/1"


class InspectCrashed(BadInputError):
    """The replay died before reaching the event to inspect (the event is past the crash)."""

    def __init__(self, message: str, crash: model.CrashRecord | None) -> None:
        super().__init__(message)
        self.crash = crash


def _command(binary: Path, event: int, addrs: list[int], config: ReplayConfig, fd: int) -> list[str]:
    exe = abi.find_replay_exe()
    if not exe.exists():
        raise ForensicsError(f"the replay executable {exe} is missing: reinstall the package (`pip install .`)")
    cmd = [str(exe), str(binary)]
    cmd += ["--libc"] if config.libc else ["--lib", str(abi.find_allocator(config.lib))]
    if not config.libc:  # the trace header's knobs are hfreplay's own business; these win over them
        for name, value in config.get_overrides().items():
            cmd += ["--knob", f"{name}={value}"]
    if not config.judge:
        cmd.append("--no-judge")
    if config.threads:
        # the inspection itself runs serially up to the event; --threads only makes the replay
        # prepare exactly as the inspected run did (same allocations, same addresses)
        cmd.append("--threads")
    cmd += ["--stop-before", str(event)]
    for a in addrs:
        cmd += ["--inspect-addr", str(a)]
    cmd += ["--results-fd", str(fd), "--quiet"]
    return cmd


def inspect_event(trace: str | os.PathLike[str], event: int, addrs: Iterable[int] = (), config: ReplayConfig = ReplayConfig()) -> model.Inspection:
    """The heap of a replay of `trace` as event `event` is about to run (events 0..event-1 done).

    addrs: extra addresses to report owners and probe verdicts for (at most 64). The replay is
    serial whatever config.threads says. Raises BadInputError for a missing trace, an event past
    the end, or a bad library; InspectCrashed if the replay dies before `event`; ForensicsError
    if the child hangs (config.timeout) or prints something unreadable."""
    trace_path = Path(trace)
    if not trace_path.exists():
        raise BadInputError(f"{trace}: no such file")
    addr_list = [int(a) for a in addrs]
    if len(addr_list) > MAX_ADDRS:
        raise BadInputError(f"at most {MAX_ADDRS} addresses per inspection, got {len(addr_list)}")
    if any(a < 0 or a >= 1 << 64 for a in addr_list):
        raise BadInputError("addresses must be in 0 .. 2**64-1")
    if event < 0:
        raise BadInputError(f"event {event}: events are numbered from 0")
    if not config.libc:
        native.load_allocator(config.lib)  # a bad --lib is reported with the loader's reasons
    timeout = config.timeout or DEFAULT_TIMEOUT
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        binary = binary_trace(trace_path, Path(tmp))
        with TraceFile(binary) as tf:
            n = tf.num_events
        if event > n:
            raise BadInputError(f"event {event}: {trace} has {n} events (0..{n - 1}; {n} = after the last)")
        fd = os.memfd_create("hakmem-forensics-inspect")
        try:
            size = HEADER_SIZE + max(n, 1) * EVENT_SIZE
            os.ftruncate(fd, size)
            try:
                proc = subprocess.run(_command(binary, event, addr_list, config, fd), stdin=subprocess.DEVNULL, capture_output=True, pass_fds=(fd,), timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ForensicsError(f"the inspection child did not reach event {event} in {timeout:.0f} s and was killed") from None
            with mmap.mmap(fd, size, flags=mmap.MAP_SHARED) as results:
                crash = native.read_crash_record(memoryview(results)[native.HfrHeader.crash.offset :])
        finally:
            os.close(fd)
    stderr = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode < 0 or crash is not None:
        where = f" at event #{crash.event_index}" if crash and crash.event_index is not None else ""
        what = f"{crash.signal_name} in {crash.stage_name}" if crash else f"signal {-proc.returncode}"
        raise InspectCrashed(f"{trace}: the replay died ({what}){where} before reaching event {event}; inspect an event up to the crashing one", crash)
    if proc.returncode != 0:
        reason = stderr[-1] if stderr else f"exit status {proc.returncode}"
        raise BadInputError(reason.removeprefix("hfreplay: "))
    try:
        facts = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ForensicsError(f"the inspection child printed unreadable JSON ({exc})") from None
    if facts.get("schema") != SCHEMA:
        raise ForensicsError(f"the inspection child printed schema {facts.get('schema')!r}, expected {SCHEMA!r}")
    return from_facts(str(trace_path), facts)


# ------------------------------------------------------------------ conversions
def _owner(o: dict[str, Any]) -> model.OwnerInfo:
    def enum(cls, name):
        try:
            return cls(name)
        except ValueError:
            return None

    try:
        method = model.Method(o.get("method", 0))
    except ValueError:
        method = None
    return model.OwnerInfo(
        addr=o["addr"],
        kind=enum(model.OwnerKind, o.get("kind") or "none") or model.OwnerKind.NONE,
        state=enum(model.BlockState, o.get("state") or "none") or model.BlockState.NONE,
        block_ptr=o.get("block_ptr") or None,
        block_size=o.get("block_size", 0),
        class_bytes=o.get("class_bytes", 0),
        region_base=o.get("region_base") or None,
        region_size=o.get("region_size", 0),
        class_index=o["class_index"] if o.get("class_index", -1) >= 0 else None,
        registered=bool(o.get("registered")),
        method=method,
    )


def _probes(p: dict[str, Any]) -> model.ProbeVerdicts:
    # "off" is not in the document: it never looks, so it always says "readable".
    verdicts = {name: (True if name == "off" else bool(p.get(name))) for name in PROBES}
    return model.ProbeVerdicts(addr=p["addr"], length=p.get("len", 1), verdicts=verdicts, readable=bool(p.get("maps")))


def _reqtrace(r: dict[str, Any]) -> model.ReqtraceRecord:
    def enum(cls, name):
        try:
            return cls(name)
        except ValueError:
            return None

    return model.ReqtraceRecord(
        seq=r.get("seq", 0),
        free_seq=r.get("free_seq", 0),
        base=r.get("base", 0),
        addr=r.get("addr", 0),
        op=enum(model.ReqtraceOp, r.get("op", "")),
        reg=enum(model.RegKind, r.get("reg", "")),
        live=r.get("live", 0),
        tid=r.get("tid", 0),
    )


def _dump(d: dict[str, Any] | None) -> tuple[int | None, tuple[int | None, ...]]:
    if not d:
        return None, ()
    hx = d.get("hex", "")
    data = tuple(None if hx[i : i + 2] == "??" else int(hx[i : i + 2], 16) for i in range(0, len(hx) - 1, 2))
    return d.get("base"), data


def _op_name(code: int) -> str | None:
    if not code:
        return None
    try:
        return TraceOp.from_code(code).value
    except (KeyError, ValueError):
        return f"op{code}"


def from_facts(trace: str, facts: dict[str, Any]) -> model.Inspection:
    """An Inspection from an "hfreplay/inspect/1" document (e.g. one saved earlier)."""
    base, data = _dump(facts.get("dump"))
    return model.Inspection(
        trace=trace,
        event=facts.get("event", 0),
        op=_op_name(facts.get("op", 0)),
        target=facts.get("target") or None,
        header_addr=facts.get("header_addr") or None,
        dump_base=base,
        dump=data,
        owners=[_owner(o) for o in facts.get("owners", [])],
        probes=[_probes(p) for p in facts.get("probes", [])],
        reqtrace=[_reqtrace(r) for r in facts.get("reqtrace", [])],
        reqtrace_header_region=[_reqtrace(r) for r in facts.get("reqtrace_header_region", [])],
        knobs=dict(facts.get("knobs", {})),
        stats=facts.get("stats"),
        check=facts.get("check"),
        maps=facts.get("maps", ""),
        facts=facts,
    )
