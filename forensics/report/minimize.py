"""The `minimize` report: how far the trace shrank, the minimal trace, and the original and
minimal replays side by side (rich and JSON).

JSON schema "hakmem-forensics/minimize/1" (keys always present):

    {
      "schema": "hakmem-forensics/minimize/1",
      "source": str, "output": str,
      "signature": {"kind": "crash" | "outcome" | "route", "text": str,
                    "event_index": int,           # the original event it was taken from
                    "op": str, "owner": str,
                    "signal": str | null, "signo": int | null, "stage": str | null,   # crash
                    "outcome": str | null, "route": str | null},
      "original_events": int, "minimal_events": int,
      "minimal_matches": bool,                    # the written trace, replayed again, fails the same way
      "events": [str],                            # the minimal trace's events, text form
      "kept": [int],                              # each one's index in the original trace
      "objects": {"NEW": ORIGINAL},               # object ids: minimal -> original (keys are strings)
      "steps": [{"phase": "original" | "cut" | "units" | "events" | "written",
                 "events": int, "replays": int, "seconds": float}],
      "replays": int, "jobs": int, "seconds": float,
      "original": replay, "minimal": replay       # hakmem-forensics/replay/1 documents
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import FailureSignature, MinimizeResult, Outcome, ReplayResult
from forensics.report import replay as replay_report

SCHEMA = "hakmem-forensics/minimize/1"
SHOWN_EVENTS = 40


def signature_to_json(s: FailureSignature) -> dict[str, Any]:
    return {
        "kind": s.kind.value,
        "text": s.describe(),
        "event_index": s.event_index,
        "op": s.op,
        "owner": s.owner.value,
        "signal": s.signal,
        "signo": s.signo,
        "stage": s.stage,
        "outcome": s.outcome.value if s.outcome else None,
        "route": s.route.value if s.route else None,
    }


def to_json(result: MinimizeResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "source": result.source,
        "output": result.output,
        "signature": signature_to_json(result.signature),
        "original_events": result.original_events,
        "minimal_events": result.minimal_events,
        "minimal_matches": result.minimal_matches,
        "events": list(result.lines),
        "kept": list(result.kept),
        "objects": {str(k): v for k, v in result.objects.items()},
        "steps": [{"phase": s.phase, "events": s.events, "replays": s.replays, "seconds": round(s.seconds, 3)} for s in result.steps],
        "replays": result.replays,
        "jobs": result.jobs,
        "seconds": round(result.seconds, 3),
        "original": replay_report.to_json(result.original),
        "minimal": replay_report.to_json(result.minimal),
    }


# ------------------------------------------------------------------------ rich
def crash_words(r: ReplayResult) -> str:
    """One line: the crash of a replay and its event, or what happened instead."""
    if r.hang:
        return "hang" + (f" in #{r.crash_event.index} {r.crash_event.op}" if r.crash_event else "")
    if r.crash is None:
        return "completed" if r.completed else "no crash"
    text = f"{r.crash.signal_name} in {r.crash.stage_name}"
    e = r.crash_event
    if e is not None:
        text += f" at #{e.index} {e.op}" + (f" obj {e.obj}" if e.obj else "") + (f" ({e.owner.value} block)" if e.owner.value not in ("none", "unknown") else "")
    return text


def _side_by_side(title: str, rows: list[tuple[str, int, int]], unit: str) -> Table:
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column(unit)
    t.add_column("original", justify="right")
    t.add_column("minimal", justify="right")
    for name, a, b in rows:
        t.add_row(Text(name), f"{a:,}", f"{b:,}")
    return t


def _rows(a: dict[str, int], b: dict[str, int]) -> list[tuple[str, int, int]]:
    names = sorted(set(a) | set(b), key=lambda k: (-(a.get(k, 0) + b.get(k, 0)), k))
    return [(k, a.get(k, 0), b.get(k, 0)) for k in names]


def _outcome_rows(a: dict[str, int], b: dict[str, int]) -> list[tuple[str, int, int]]:
    order = [o.value for o in Outcome if o is not Outcome.NONE]
    return [(k, a.get(k, 0), b.get(k, 0)) for k in order if k in a or k in b]


def render(result: MinimizeResult, console: Console) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    # paths and knob values come from the user and the trace: Text, never markup
    head.add_row("Trace", Text(result.source))
    head.add_row("Minimal", Text(result.output))
    head.add_row("Signature", Text(f"{result.signature.describe()} (event #{result.signature.event_index} of the original)"))
    head.add_row("Knobs", Text(" ".join(f"{k}={v}" for k, v in result.minimal.knobs.items()) or "(none)"))
    steps = ", ".join(f"{s.phase} {s.events:,}" for s in result.steps if s.phase in ("cut", "units", "events"))
    head.add_row(
        "Shrunk",
        f"{result.original_events:,} → {result.minimal_events:,} events in {result.seconds:.2f} s, "
        f"{result.replays:,} replays ({result.jobs} job{'s' if result.jobs != 1 else ''}); {steps}",
    )
    console.print(head)
    console.print()

    t = Table(title="Minimal trace", title_justify="left", expand=False)
    t.add_column("#", justify="right")
    t.add_column("event")
    t.add_column("original", justify="right", style="muted")
    for i, (line, orig) in enumerate(zip(result.lines, result.kept)):
        if i == SHOWN_EVENTS:
            t.add_row("…", Text(f"({len(result.lines) - SHOWN_EVENTS:,} more in {result.output})"), "")
            break
        crashed = result.minimal.crash_event is not None and result.minimal.crash_event.index == i
        t.add_row(str(i), Text(line, style="outcome.crash" if crashed else ""), f"#{orig}")
    console.print(t)

    tables = [_side_by_side("Outcomes", _outcome_rows(result.original.outcomes, result.minimal.outcomes), "outcome")]
    if result.original.routes or result.minimal.routes:
        tables.insert(0, _side_by_side("Routes", _rows(result.original.routes, result.minimal.routes), "route"))
    grid = Table.grid(padding=(0, 4))
    grid.add_row(*tables)
    console.print(grid)
    crash = Table(title="Crash", title_justify="left", expand=False, show_header=True)
    crash.add_column("original")
    crash.add_column("minimal")
    crash.add_row(
        Text(crash_words(result.original), style="outcome.crash" if result.original.crash else ""),
        Text(crash_words(result.minimal), style="outcome.crash" if result.minimal.crash else ""),
    )
    console.print(crash)
    if result.minimal_matches:
        console.print(Text(f"The minimal trace fails the same way ({result.signature.describe()}).", style="outcome.ok"))
    else:
        console.print(Text(f"The written trace no longer shows {result.signature.describe()} when replayed again (a flaky failure?).", style="error"))
