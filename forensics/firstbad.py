"""The first bad operation: the first event after which the allocator's consistency check fails,
found by bisection with far fewer checks than `replay --check-every 1`.

hak_debug_check walks the whole heap, so a check after every event costs events x heap. Here
each replay checks a window of events (hfreplay --check-every K --check-from A --check-to B):
the first replay every ~N/fanout events over the whole trace, then every ~W/fanout events over
the window W between the last check that passed and the first that failed, down to single
events. The replays are serial (trace order), so "after event i" means the same thing in each;
they run up to a crash, and a crash's own event never completes, so it is never checked.

The bisection assumes what the check-every-1 replay would also show: an invariant, once
broken, stays broken until the next checked event. A breakage repaired within one window
(say, a corrupted header that is freed and forgotten before the next check) can slip through
a coarse window; `verify` replays with the check after every event and reports both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from forensics import model
from forensics.errors import BadInputError
from forensics.minimize import decode_event, probe_kind_of
from forensics.replay import ReplayConfig, TraceFile, run_replay
from forensics.trace import convert, sniff

DEFAULT_FANOUT = 16
ProgressFn = Callable[[str], None]  # a line saying what the bisection does now


def _checkpoints(first: int, last: int, every: int) -> list[int]:
    """The events checked with --check-every `every` --check-from first --check-to last."""
    points = list(range(first + every - 1, last + 1, every))
    if not points or points[-1] != last:
        points.append(last)
    return points


def find_first_bad(
    trace: str | os.PathLike[str],
    config: ReplayConfig = ReplayConfig(),
    *,
    fanout: int = DEFAULT_FANOUT,
    verify: bool = False,
    progress: ProgressFn | None = None,
) -> model.FirstBadResult:
    """Bisect for the first event after which the consistency check fails."""
    if fanout < 2:
        raise BadInputError(f"--fanout {fanout}: needs at least 2")
    path = Path(trace)
    if not path.exists():
        raise BadInputError(f"{trace}: no such file")
    start = time.monotonic()
    base = dataclasses.replace(config, threads=False, check_every=0, check_from=0, check_to=None)
    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-firstbad-") as tmp:
        binary = path
        if sniff(path) != "binary":
            binary = Path(tmp) / (path.name + ".htb")
            convert(path, binary, to="binary")
        with TraceFile(binary) as tf:
            n = tf.num_events
            threads = tf.num_threads
        levels: list[model.CheckLevel] = []
        lo = 0  # the state after event lo - 1 is good (or lo is 0)
        bad: int | None = None  # the first event known bad (its check failed)
        limit = n - 1  # the last event that completes (lowered by a crash)
        last: model.ReplayResult | None = None
        crash_result: model.ReplayResult | None = None
        message = ""
        while True:
            end = bad - 1 if bad is not None else limit
            if end < lo:
                break
            every = max(1, math.ceil((end - lo + 1) / fanout))
            points = _checkpoints(lo, end, every)
            say(f"checking events {lo:,}..{end:,} every {every:,} ({len(points):,} checks at most)")
            r = run_replay(binary, dataclasses.replace(base, check_every=every, check_from=lo, check_to=end), keep_events=True)
            last = r
            if r.note and "no consistency check" in r.note:
                raise BadInputError(f"{r.allocator}: {r.note}")
            if r.crash is not None or r.hang:
                crash_result = crash_result or r
                stop = r.crash_event.index if r.crash_event is not None else r.events_done
                limit = min(limit, stop - 1)
            ran = [p for p in points if p <= limit]
            f = r.first_check_failure
            if f is not None:
                checks = sum(1 for p in ran if p <= f.event_index)
                levels.append(model.CheckLevel(lo, end, every, checks, f.event_index))
                prev = [p for p in points if p < f.event_index]
                lo = prev[-1] + 1 if prev else lo
                bad, message = f.event_index, f.message
                if every == 1:
                    break
            else:
                levels.append(model.CheckLevel(lo, end, every, len(ran), None))
                if ran:
                    lo = ran[-1] + 1
                if bad is None and limit >= end:
                    break  # every check up to the last completed event passed
                # else: a crash cut the window short (check what is left before it), or the
                # window before the known bad event passed (so that event is the first)
        first = model.CheckFailure(bad, message) if bad is not None else None
        event = None
        if first is not None and last is not None and last.raw_events is not None:
            with TraceFile(binary) as tf:
                rec = tf.get_record(first.event_index)
            event = decode_event(last.raw_events, first.event_index, (rec.op, rec.tid, rec.obj), probe_kind_of(last.allocator, last.knobs))
        verified, verify_checks = None, 0
        if verify:
            say("verifying: the check after every event")
            v = run_replay(binary, dataclasses.replace(base, check_every=1))
            verified = v.first_check_failure
            ran_to = v.crash_event.index - 1 if v.crash_event is not None else v.events_done - 1
            verify_checks = (verified.event_index if verified else ran_to) + 1
    source = crash_result or last
    assert source is not None or n == 0
    note = ""
    if threads > 1:
        note = f"the trace has {threads} threads; the bisection replays it serially, in trace order"
    return model.FirstBadResult(
        trace=str(path),
        allocator=source.allocator if source else config.get_allocator_path(),
        knobs=dict(source.knobs) if source else {},
        num_events=n,
        events_run=limit + 1,
        first=first,
        event=event,
        levels=levels,
        checks=sum(level.checks for level in levels),
        replays=len(levels),
        crash=crash_result.crash if crash_result else None,
        crash_event=crash_result.crash_event if crash_result else None,
        verified=verified,
        verify_checks=verify_checks,
        seconds=time.monotonic() - start,
        note=note,
    )
