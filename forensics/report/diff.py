"""The `diff` report: two replays' route and outcome tables side by side with deltas, their
crashes, and the first event they decided differently, explained on both sides (rich and JSON).

JSON schema "hakmem-forensics/diff/1" (keys always present):

    {
      "schema": "hakmem-forensics/diff/1",
      "a": side, "b": side,
      "routes": [{"route": str, "a": int, "b": int, "delta": int}],        # delta = b - a
      "outcomes": [{"outcome": str, "a": int, "b": int, "delta": int}],
      "divergence": null | {
        "event_index": int,
        "what": [str],                  # "crash", "status", "outcome", "route", "action", "stages", "probe"
        "a": event | null, "b": event | null,    # as in hakmem-forensics/replay/1; null: no record
                                                 # (a JSON report lists anomalies only)
        "a_crashed": bool, "b_crashed": bool
      },
      "events_compared": int,           # events before the divergence (all of them if none)
      "exact": bool,                    # every event compared (false: anomaly lists of JSON reports)
      "first_owner_difference": int | null,      # first event whose block has another owner kind
      "note": str
    }
    side = {"label": str, "source": str, "allocator": str, "knobs": {name: value},
            "events": int, "events_done": int, "completed": bool, "hang": bool,
            "routes": {route: count}, "outcomes": {outcome: count},
            "crash": null | {"signal": str, "signo": int, "stage": str, "event_index": int | null,
                             "fault_address": int, "fault_address_hex": str,
                             "ptr": int | null, "ptr_hex": str | null}}

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from forensics.model import DiffResult, DiffSide, EventResult, Outcome, Route
from forensics.report.replay import event_to_json
from forensics.theme import get_route_style

SCHEMA = "hakmem-forensics/diff/1"

_OUTCOME_STYLES = {
    Outcome.CORRECT.value: "outcome.ok",
    Outcome.MISROUTED.value: "outcome.misrouted",
    Outcome.LEAKED.value: "outcome.leak",
    Outcome.INVALID_MAGIC.value: "route.invalid",
    Outcome.CRASHED.value: "outcome.crash",
    Outcome.DETECTED_INVALID.value: "outcome.detected",
}


def _side_to_json(s: DiffSide) -> dict[str, Any]:
    c = s.crash
    return {
        "label": s.label,
        "source": s.source,
        "allocator": s.allocator,
        "knobs": dict(s.knobs),
        "events": s.num_events,
        "events_done": s.events_done,
        "completed": s.completed,
        "hang": s.hang,
        "routes": dict(s.routes),
        "outcomes": dict(s.outcomes),
        "crash": None
        if c is None
        else {
            "signal": c.signal_name,
            "signo": c.signo,
            "stage": c.stage_name,
            "event_index": c.event_index,
            "fault_address": c.fault_address,
            "fault_address_hex": f"{c.fault_address:#x}",
            "ptr": c.ptr,
            "ptr_hex": f"{c.ptr:#x}" if c.ptr is not None else None,
        },
    }


def to_json(result: DiffResult) -> dict[str, Any]:
    d = result.divergence
    return {
        "schema": SCHEMA,
        "a": _side_to_json(result.a),
        "b": _side_to_json(result.b),
        "routes": [{"route": k, "a": a, "b": b, "delta": b - a} for k, a, b in result.routes],
        "outcomes": [{"outcome": k, "a": a, "b": b, "delta": b - a} for k, a, b in result.outcomes],
        "divergence": None
        if d is None
        else {
            "event_index": d.index,
            "what": list(d.what),
            "a": event_to_json(d.a) if d.a else None,
            "b": event_to_json(d.b) if d.b else None,
            "a_crashed": d.a_crashed,
            "b_crashed": d.b_crashed,
        },
        "events_compared": result.events_compared,
        "exact": result.exact,
        "first_owner_difference": result.first_owner_difference,
        "note": result.note,
    }


# ------------------------------------------------------------------------ rich
def _delta(a: int, b: int) -> Text:
    if a == b:
        return Text("·", style="muted")
    return Text(f"{b - a:+,}", style="warn")


def _table(title: str, unit: str, rows: list[tuple[str, int, int]], la: str, lb: str, style_of) -> Table:
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column(unit)
    t.add_column(Text(la), justify="right")  # labels are file names: never markup
    t.add_column(Text(lb), justify="right")
    t.add_column("Δ", justify="right")
    for name, a, b in rows:
        t.add_row(Text(name, style=style_of(name)), f"{a:,}", f"{b:,}", _delta(a, b))
    return t


def _route_style(name: str) -> str:
    try:
        return get_route_style(Route(name))
    except ValueError:
        return "muted"


def _crash_text(s: DiffSide) -> Text:
    if s.hang:
        return Text("hang" + (f" in #{s.crash_event.index}" if s.crash_event else ""), style="outcome.hang")
    if s.crash is None:
        return Text("no crash" + (", completed" if s.completed else ""), style="outcome.ok" if s.completed else "")
    where = f" at #{s.crash.event_index}" if s.crash.event_index is not None else ""
    return Text(f"{s.crash.signal_name} in {s.crash.stage_name}{where}", style="outcome.crash")


def describe_event(e: EventResult) -> str:
    what = f"#{e.index} thread {e.tid}: {e.op}"
    if e.obj:
        what += f" obj {e.obj}"
    if e.owner.value not in ("none", "unknown"):
        what += f", a {e.owner.value} block"
    return what


def _decision_lines(e: EventResult | None, crashed: bool, side: DiffSide, exact: bool) -> list[Text]:
    """What one side did with the diverging event."""
    if e is None:
        return [Text("not an anomaly here (a JSON report lists anomalies only)" if not exact else "no record", style="muted")]
    lines: list[Text] = []
    if crashed:
        c = side.crash
        if c is not None:
            off = ""
            if c.ptr:
                delta = c.fault_address - c.ptr
                off = f" (= ptr {'-' if delta < 0 else '+'} {abs(delta)})" if delta else " (= ptr)"
            lines.append(Text(f"died: {c.signal_name} in {c.stage_name}", style="outcome.crash"))
            lines.append(Text(f"fault address {c.fault_address:#x}{off}"))
        else:
            lines.append(Text("died in this event" + (" (hang)" if side.hang else ""), style="outcome.crash"))
        lines.append(Text("no route chosen", style="muted"))
    d = e.decision
    if d is not None:
        lines.append(Text.assemble(("route   ", "label"), (d.route.value if d.route else "(none)", get_route_style(d.route)), f" → {d.action.value}"))
        tried = ",".join(s.value for s in d.tried) or "-"
        hit = ",".join(s.value for s in d.hit) or "-"
        lines.append(Text.assemble(("stages  ", "label"), f"tried {tried}; hit {hit}"))
        if d.probe.value != "-":
            lines.append(Text.assemble(("probe   ", "label"), f"{d.probe.value}" + (f" ({d.probe_kind.value})" if d.probe_kind else "")))
        if d.magic_found is not None:
            lines.append(Text.assemble(("magic   ", "label"), f"{d.magic_found:#x}"))
    elif not crashed:
        lines.append(Text("no route (not a free, or freed by libc)", style="muted"))
    if not crashed:
        lines.append(Text.assemble(("outcome ", "label"), (e.outcome.value, _OUTCOME_STYLES.get(e.outcome.value, ""))))
    lines.append(Text.assemble(("owner   ", "label"), e.owner.value, (f"  ptr {e.ptr:#x}" if e.ptr else "", "value.addr")))
    return lines


def _divergence_panel(result: DiffResult) -> Panel:
    d = result.divergence
    assert d is not None
    e = d.a or d.b
    assert e is not None
    head = Text.assemble(("event  ", "label"), describe_event(e))
    what = Text.assemble(("differs ", "label"), ", ".join(d.what))
    agree = Text(
        f"events 0..{d.index - 1:,} were decided the same way on both sides" if d.index else "it is the first event",
        style="muted",
    )
    t = Table(show_header=True, expand=False, box=None, padding=(0, 3))
    t.add_column(Text(result.a.label), overflow="fold")
    t.add_column(Text(result.b.label), overflow="fold")
    t.add_row(Group(*_decision_lines(d.a, d.a_crashed, result.a, result.exact)), Group(*_decision_lines(d.b, d.b_crashed, result.b, result.exact)))
    return Panel(Group(head, what, agree, Text(), t), title=f"First divergence: event #{d.index}", border_style="warn", expand=False)


def render(result: DiffResult, console: Console) -> None:
    a, b = result.a, result.b
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    head.add_column()
    head.add_row("", Text(a.label, style="title"), Text(b.label, style="title"))
    # paths, libraries and knob values come from the user and from the reports read: Text, never markup
    head.add_row("Source", Text(a.source), Text(b.source))
    head.add_row("Allocator", Text(a.allocator), Text(b.allocator))
    head.add_row("Knobs", Text(" ".join(f"{k}={v}" for k, v in a.knobs.items()) or "(none)"), Text(" ".join(f"{k}={v}" for k, v in b.knobs.items()) or "(none)"))
    head.add_row("Replayed", f"{a.events_done:,} of {a.num_events:,} events", f"{b.events_done:,} of {b.num_events:,} events")
    head.add_row("Crash", _crash_text(a), _crash_text(b))
    console.print(head)
    console.print()
    if result.routes:
        console.print(_table("Routes", "route", result.routes, a.label, b.label, _route_style))
    console.print(_table("Outcomes", "outcome", result.outcomes, a.label, b.label, lambda k: _OUTCOME_STYLES.get(k, "")))
    if result.divergence is not None:
        console.print(_divergence_panel(result))
    elif result.exact:
        console.print(Text(f"No divergence: all {result.events_compared:,} events were decided the same way on both sides.", style="outcome.ok"))
    else:
        console.print(Text(f"No divergence among the anomalies both reports list (up to event {max(result.events_compared - 1, 0):,}).", style="outcome.ok"))
    if result.first_owner_difference is not None:
        console.print(Text(f"First event whose block has another owner kind: #{result.first_owner_difference:,}.", style="muted"))
    if result.note:
        console.print(Text(result.note, style="warn"))
