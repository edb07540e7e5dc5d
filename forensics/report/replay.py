"""The `replay` report: route table, outcome table, crash panel, first anomalies (rich and JSON).

JSON schema "hakmem-forensics/replay/1" (keys always present):

    {
      "schema": "hakmem-forensics/replay/1",
      "trace": str, "allocator": str,           # library path, or "libc"
      "knobs": {name: value},                   # effective: trace header, then command line
      "threads": bool, "threads_used": int,
      "events": int, "events_done": int, "completed": bool,
      "frees": int, "allocs": int,
      "routes": {route: count},                 # "(none)": frees with no route (libc)
      "outcomes": {outcome: count},             # correct, misrouted, leaked, invalid_magic,
                                                # crashed, detected_invalid (zero counts omitted)
      "crash": null | {
        "signal": "SIGSEGV", "signo": int, "si_code": int,
        "fault_address": int, "fault_address_hex": str,
        "ptr": int | null, "ptr_hex": str | null,
        "fault_minus_ptr": int | null,          # fault_address - ptr (-32: the header read)
        "stage": str, "free_seq": int, "tid": int,
        "event_index": int | null, "event": event | null,
        "hang": false,
        "maps": [str]                           # /proc/self/maps at the moment of the crash
      },
      "hang": bool,                             # killed at the time limit
      "anomalies": [event],                     # the first anomalies, in trace order
      "anomalies_total": int, "first_anomaly": int | null,
      "check_every": int,
      "first_check_failure": null | {"event_index": int, "message": str},
      "exit_status": int | null, "exit_signal": int | null,
      "stderr_tail": [str], "note": str, "seconds": float,
      "status": "completed" | "crashed" | "hang" | "killed" | "memory_limit" | "interrupted" | "exited" | "incomplete",
                                                # how the replay ended (model.ReplayResult.status):
                                                # killed = a signal and no crash record (SIGKILL from
                                                # the OOM killer or a user); interrupted = Ctrl-C
      "partial": bool,                          # not every event ran: the events above are those
                                                # observed before the end
      "interrupted": bool,
      "in_flight": [int],                       # killed or interrupted: the events the child was
                                                # running (cut off, not crashed)
      "max_memory": int | null,                 # the child's memory limit in bytes (replay --max-memory)
      "memory_limit": null | {                  # the first allocation that returned NULL for a
        "event_index": int, "op": str,          # non-zero size (under the limit: where it was reached)
        "size": int, "limit": int | null, "over_limit": bool
      }
    }

    event = {"event_index": int, "op": str, "tid": int, "obj": int, "ptr": int, "ptr_hex": str,
             "owner": str, "outcome": str, "status": str, "check_failed": bool,
             "route": str | null, "action": str | null, "stages_tried": [str], "stages_hit": [str],
             "probe": "-" | "readable" | "unreadable", "magic_found": int | null, "method": int | null,
             "seq": int | null}

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from forensics.model import CrashRecord, EventResult, Outcome, ReplayResult, Route
from forensics.theme import get_route_style

SCHEMA = "hakmem-forensics/replay/1"
SHOWN_ANOMALIES = 10
MAPS_CONTEXT = 3

_OUTCOME_STYLES = {
    Outcome.CORRECT: "outcome.ok",
    Outcome.MISROUTED: "outcome.misrouted",
    Outcome.LEAKED: "outcome.leak",
    Outcome.INVALID_MAGIC: "route.invalid",
    Outcome.CRASHED: "outcome.crash",
    Outcome.DETECTED_INVALID: "outcome.detected",
}


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def event_to_json(e: EventResult) -> dict[str, Any]:
    d = e.decision
    return {
        "event_index": e.index,
        "op": e.op,
        "tid": e.tid,
        "obj": e.obj,
        "ptr": e.ptr,
        "ptr_hex": _hex(e.ptr),
        "owner": e.owner.value,
        "outcome": e.outcome.value,
        "status": e.status.value,
        "check_failed": e.check_failed,
        "route": d.route.value if d and d.route else None,
        "action": d.action.value if d else None,
        "stages_tried": [s.value for s in d.tried] if d else [],
        "stages_hit": [s.value for s in d.hit] if d else [],
        "probe": d.probe.value if d else "-",
        "magic_found": d.magic_found if d else None,
        "method": d.method if d else None,
        "seq": d.seq if d else None,
    }


def _crash_to_json(result: ReplayResult) -> dict[str, Any] | None:
    c = result.crash
    if c is None:
        return None
    return {
        "signal": c.signal_name,
        "signo": c.signo,
        "si_code": c.si_code,
        "fault_address": c.fault_address,
        "fault_address_hex": _hex(c.fault_address),
        "ptr": c.ptr,
        "ptr_hex": _hex(c.ptr),
        "fault_minus_ptr": (c.fault_address - c.ptr) if c.ptr else None,
        "stage": c.stage_name,
        "free_seq": c.free_seq,
        "tid": c.tid,
        "event_index": c.event_index,
        "event": event_to_json(result.crash_event) if result.crash_event else None,
        "hang": False,
        "maps": c.maps.splitlines(),
    }


def to_json(result: ReplayResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "trace": result.trace,
        "allocator": result.allocator,
        "knobs": dict(result.knobs),
        "threads": result.threads,
        "threads_used": result.threads_used,
        "events": result.num_events,
        "events_done": result.events_done,
        "completed": result.completed,
        "frees": result.frees,
        "allocs": result.allocs,
        "routes": dict(result.routes),
        "outcomes": dict(result.outcomes),
        "crash": _crash_to_json(result),
        "hang": result.hang,
        "anomalies": [event_to_json(e) for e in result.anomalies],
        "anomalies_total": result.anomaly_count,
        "first_anomaly": result.first_anomaly,
        "check_every": result.check_every,
        "first_check_failure": (
            {"event_index": result.first_check_failure.event_index, "message": result.first_check_failure.message}
            if result.first_check_failure
            else None
        ),
        "exit_status": result.exit_status,
        "exit_signal": result.exit_signal,
        "stderr_tail": list(result.stderr_tail),
        "note": result.note,
        "seconds": round(result.seconds, 3),
        "status": result.status,
        "partial": result.partial,
        "interrupted": result.interrupted,
        "in_flight": list(result.in_flight),
        "max_memory": result.max_memory,
        "memory_limit": (
            {"event_index": f.event_index, "op": f.op, "size": f.size, "limit": f.limit, "over_limit": f.over_limit}
            if (f := result.alloc_failure) is not None
            else None
        ),
    }


def _bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:,} bytes"


def _signal_name(signo: int) -> str:
    import signal as _signal

    try:
        return _signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def ending_lines(result: ReplayResult) -> list[Text]:
    """What ended the replay when it is not a crash or hang panel: a kill, Ctrl-C, the memory
    limit; and whether the result is partial. Plain Text: nothing here is markup."""
    lines: list[Text] = []
    done = f"{result.events_done:,} of {result.num_events:,} events ran"
    if result.in_flight:
        running = ", ".join(f"#{i}" for i in result.in_flight[:5]) + (", ..." if len(result.in_flight) > 5 else "")
        done += f" (cut off in {running})"
    if result.interrupted:
        lines.append(Text(f"Interrupted (Ctrl-C): the replay child was stopped; {done}, the result is partial.", style="outcome.hang"))
    elif result.status == "killed":
        sig = _signal_name(result.exit_signal or 0)
        lines.append(Text(f"The replay child was killed by {sig} with no crash record (the OOM killer, a user, a time "
                          f"limit outside the toolkit): {done}, the result is partial.", style="outcome.crash"))
    elif result.status == "exited":
        lines.append(Text(f"The replay child exited with status {result.exit_status} mid-replay: {done}, the result is partial.",
                          style="outcome.crash"))
    f = result.alloc_failure
    if f is not None:
        asked = f"{f.op} of {f.size:,} bytes returned NULL"
        if f.limit is not None and not f.over_limit:
            lines.append(Text(f"Memory limit ({_bytes(f.limit)}) reached at event #{f.event_index}: {asked} "
                              "(--max-memory raises the limit).", style="warn"))
        elif f.limit is not None:
            lines.append(Text(f"Event #{f.event_index}: {asked}: more than the memory limit ({_bytes(f.limit)}) by itself.", style="warn"))
        else:
            lines.append(Text(f"Event #{f.event_index}: {asked}.", style="warn"))
    return lines


# ------------------------------------------------------------------------ rich
def _route_table(result: ReplayResult) -> Table:
    t = Table(title="Routes", title_justify="left", expand=False)
    t.add_column("route")
    t.add_column("frees", justify="right")
    t.add_column("share", justify="right")
    total = sum(result.routes.values()) or 1
    for name, count in sorted(result.routes.items(), key=lambda kv: -kv[1]):
        try:
            style = get_route_style(Route(name))
        except ValueError:
            style = "muted"
        t.add_row(Text(name, style=style), f"{count:,}", f"{100 * count / total:.1f}%")
    return t


def _outcome_table(result: ReplayResult) -> Table:
    t = Table(title="Outcomes", title_justify="left", expand=False)
    t.add_column("outcome")
    t.add_column("events", justify="right")
    for outcome in Outcome:
        count = result.outcomes.get(outcome.value, 0)
        if outcome is Outcome.NONE or (count == 0 and outcome is not Outcome.CORRECT):
            continue
        t.add_row(Text(outcome.value, style=_OUTCOME_STYLES.get(outcome, "")), f"{count:,}")
    return t


def _describe_event(e: EventResult) -> str:
    what = f"#{e.index} thread {e.tid}: {e.op}"
    if e.obj:
        what += f" obj {e.obj}"
    if e.ptr:
        what += f" ({e.ptr:#x}, {e.owner.value} block)" if e.owner.value not in ("none", "unknown") else f" ({e.ptr:#x})"
    return what


def _offset_words(fault: int, ptr: int | None) -> str:
    if not ptr:
        return ""
    delta = fault - ptr
    if delta == 0:
        return " (= ptr)"
    return f" (= ptr {'-' if delta < 0 else '+'} {abs(delta)})"


def _maps_excerpt(crash: CrashRecord) -> list[tuple[str, bool]]:
    """The mappings around the fault address, and where the fault falls among them."""
    rows: list[tuple[int, int, str]] = []
    for line in crash.maps.splitlines():
        try:
            span = line.split()[0]
            lo, hi = (int(x, 16) for x in span.split("-"))
        except (IndexError, ValueError):
            continue
        rows.append((lo, hi, line))
    if not rows:
        return []
    fault = crash.fault_address
    pos = next((i for i, (lo, hi, _) in enumerate(rows) if fault < hi), len(rows))
    inside = pos < len(rows) and rows[pos][0] <= fault
    out: list[tuple[str, bool]] = []
    for i in range(max(0, pos - MAPS_CONTEXT), min(len(rows), pos + MAPS_CONTEXT + 1)):
        if i == pos and not inside:
            out.append((f"{fault:#x}  <- fault address: in no mapping", True))
        out.append((rows[i][2], i == pos and inside))
    if pos == len(rows) and not inside:
        out.append((f"{fault:#x}  <- fault address: above every mapping", True))
    return out


def _crash_panel(result: ReplayResult) -> Panel:
    lines: list[Text] = []
    if result.hang:
        lines.append(Text("The replay child did not finish in time and was killed (hang).", style="outcome.hang"))
        if result.crash_event:
            lines.append(Text(f"It was in event {_describe_event(result.crash_event)}"))
        return Panel(Group(*lines), title="Hang", border_style="outcome.hang", expand=False)
    c = result.crash
    assert c is not None
    lines.append(Text.assemble(("signal      ", "label"), (c.signal_name, "outcome.crash")))
    lines.append(Text.assemble(("fault addr  ", "label"), (f"{c.fault_address:#x}", "value.addr"), _offset_words(c.fault_address, c.ptr)))
    if c.ptr:
        lines.append(Text.assemble(("freed ptr   ", "label"), (f"{c.ptr:#x}", "value.addr")))
    lines.append(Text.assemble(("stage       ", "label"), c.stage_name))
    if result.crash_event:
        lines.append(Text.assemble(("event       ", "label"), _describe_event(result.crash_event)))
    elif c.event_index is not None:
        lines.append(Text.assemble(("event       ", "label"), f"#{c.event_index}"))
    excerpt = _maps_excerpt(c)
    if excerpt:
        lines.append(Text("memory map at the crash:", style="label"))
        for text, mark in excerpt:
            lines.append(Text("  " + text, style="error" if mark else "muted"))
    return Panel(Group(*lines), title=Text(f"Crash: {c.signal_name} in {c.stage_name}"), border_style="outcome.crash", expand=False)


def _stages(e: EventResult) -> str:
    d = e.decision
    if d is None:
        return "-"
    tried = ",".join(s.value for s in d.tried) or "-"
    hit = ",".join(s.value for s in d.hit) or "-"
    probe = f"; probe: {d.probe.value}" if d.probe.value != "-" else ""
    return f"tried: {tried}; hit: {hit}{probe}"


def _anomaly_table(result: ReplayResult) -> Table:
    shown = result.anomalies[:SHOWN_ANOMALIES]
    title = f"First anomalies ({len(shown)} of {result.anomaly_count:,})"
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column("event", no_wrap=True)
    t.add_column("free", overflow="fold")
    t.add_column("route", overflow="fold")
    t.add_column("outcome", no_wrap=True)
    for e in shown:
        d = e.decision
        if d is None and e.outcome.value == "crashed":
            route = Text("(died before choosing a route)", style="outcome.crash")
        else:
            route = Text(d.route.value if d and d.route else "(no route)", style=get_route_style(d.route if d else None))
        if d is not None:
            route.append(f" → {d.action.value}\n{_stages(e)}", style="muted")
        what = f"t{e.tid} {e.op}" + (f" obj {e.obj}" if e.obj else "") + f"\n{e.ptr:#x} ({e.owner.value})"
        t.add_row(f"#{e.index}", Text(what), route, Text(e.outcome.value, style=_OUTCOME_STYLES.get(e.outcome, "")))
    return t


def render(result: ReplayResult, console: Console) -> None:
    knobs = " ".join(f"{k}={v}" for k, v in result.knobs.items()) or "(none)"
    done = f"{result.events_done:,} of {result.num_events:,} events"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    # paths and knob values come from the user and the trace: Text, never markup
    head.add_row("Trace", Text(result.trace))
    head.add_row("Allocator", Text(result.allocator))
    head.add_row("Knobs", Text(knobs))
    # a crash or hang has its own panel; other early ends are marked here
    partial = " (partial)" if result.partial and result.crash is None and not result.hang else ""
    head.add_row("Replayed", f"{done}{partial} on {result.threads_used or 1} thread{'s' if (result.threads_used or 1) != 1 else ''}, {result.frees:,} frees, {result.seconds:.2f} s")
    console.print(head)
    console.print()
    if result.routes:
        console.print(_route_table(result))
    console.print(_outcome_table(result))
    if result.crash is not None or result.hang:
        console.print(_crash_panel(result))
    for line in ending_lines(result):
        console.print(line)
    if result.first_check_failure:
        f = result.first_check_failure
        console.print(Text.assemble(("First broken invariant ", "label"), f"after event #{f.event_index}: ", (f.message, "error")))
    if result.anomalies:
        console.print(_anomaly_table(result))
    if result.note:
        console.print(Text(result.note, style="warn"))
    if result.completed:
        verdict = "completed, every free correct" if result.anomaly_count == 0 else f"completed with {result.anomaly_count:,} anomalies"
        console.print(Text(f"Replay {verdict}.", style="outcome.ok" if result.anomaly_count == 0 else "warn"))
