"""The `firstbad` report: the first event after which the consistency check fails, the bisection
that found it, and how far the crash (if any) came after it (rich and JSON).

JSON schema "hakmem-forensics/firstbad/1" (keys always present):

    {
      "schema": "hakmem-forensics/firstbad/1",
      "trace": str, "allocator": str, "knobs": {name: value},
      "events": int, "events_run": int,         # events_run: those that complete (up to a crash)
      "first_bad": null | {"event_index": int, "message": str, "event": event | null},
                                                # event as in hakmem-forensics/replay/1
      "levels": [{"first": int, "last": int, "every": int, "checks": int, "failed_at": int | null}],
      "checks": int, "replays": int,            # consistency checks and replays of the bisection
      "crash": null | {"signal": str, "stage": str, "event_index": int | null,
                       "events_after_first_bad": int | null},
      "verified": null | {"event_index": int | null, "message": str, "checks": int, "agrees": bool},
                                                # with --verify: what the check after every event names
      "note": str, "seconds": float
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import FirstBadResult
from forensics.report.replay import event_to_json

SCHEMA = "hakmem-forensics/firstbad/1"


def _crash_gap(result: FirstBadResult) -> int | None:
    if result.crash is None or result.crash.event_index is None or result.first is None:
        return None
    return result.crash.event_index - result.first.event_index


def to_json(result: FirstBadResult) -> dict[str, Any]:
    c = result.crash
    return {
        "schema": SCHEMA,
        "trace": result.trace,
        "allocator": result.allocator,
        "knobs": dict(result.knobs),
        "events": result.num_events,
        "events_run": result.events_run,
        "first_bad": None
        if result.first is None
        else {
            "event_index": result.first.event_index,
            "message": result.first.message,
            "event": event_to_json(result.event) if result.event else None,
        },
        "levels": [{"first": lv.first, "last": lv.last, "every": lv.every, "checks": lv.checks, "failed_at": lv.failed_at} for lv in result.levels],
        "checks": result.checks,
        "replays": result.replays,
        "crash": None if c is None else {"signal": c.signal_name, "stage": c.stage_name, "event_index": c.event_index, "events_after_first_bad": _crash_gap(result)},
        "verified": None
        if not result.verify_checks
        else {
            "event_index": result.verified.event_index if result.verified else None,
            "message": result.verified.message if result.verified else "",
            "checks": result.verify_checks,
            "agrees": (result.verified.event_index if result.verified else None) == (result.first.event_index if result.first else None),
        },
        "note": result.note,
        "seconds": round(result.seconds, 3),
    }


def render(result: FirstBadResult, console: Console) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    # paths and knob values come from the user and the trace: Text, never markup
    head.add_row("Trace", Text(result.trace))
    head.add_row("Allocator", Text(result.allocator))
    head.add_row("Knobs", Text(" ".join(f"{k}={v}" for k, v in result.knobs.items()) or "(none)"))
    run = f"{result.events_run:,} of {result.num_events:,} events complete"
    if result.crash is not None:
        run += f" (the replay dies in event #{result.crash.event_index})"
    head.add_row("Replayed", run)
    console.print(head)
    console.print()

    t = Table(title="Bisection", title_justify="left", expand=False)
    t.add_column("replay", justify="right")
    t.add_column("events checked")
    t.add_column("every", justify="right")
    t.add_column("checks", justify="right")
    t.add_column("first failing check")
    for i, lv in enumerate(result.levels, 1):
        failed = Text(f"after #{lv.failed_at:,}", style="error") if lv.failed_at is not None else Text("none", style="outcome.ok")
        t.add_row(str(i), f"{lv.first:,}..{lv.last:,}", f"{lv.every:,}", f"{lv.checks:,}", failed)
    console.print(t)
    cost = f"{result.checks:,} consistency checks in {result.replays} replays, {result.seconds:.2f} s"
    if result.verify_checks:
        cost += f" (the check after every event: {result.verify_checks:,} checks)"
    console.print(Text(cost, style="muted"))

    if result.first is None:
        console.print(Text(f"The consistency check never failed (checked up to event #{max(result.events_run - 1, 0):,}).", style="outcome.ok"))
    else:
        f = result.first
        line = Text.assemble(("First bad event ", "label"), (f"#{f.event_index:,}", "error"))
        e = result.event
        if e is not None:
            line.append(f": thread {e.tid} {e.op}" + (f" obj {e.obj}" if e.obj else "") + (f" ({e.ptr:#x}, {e.owner.value} block)" if e.ptr else ""))
        console.print(line)
        console.print(Text.assemble(("broken invariant ", "label"), (f.message, "error")))
        gap = _crash_gap(result)
        if gap is not None and result.crash is not None:
            console.print(
                Text(
                    f"The crash ({result.crash.signal_name} in {result.crash.stage_name} at #{result.crash.event_index:,}) comes {gap:,} event{'s' if gap != 1 else ''} later.",
                    style="warn",
                )
            )
    if result.verify_checks:
        v = result.verified
        same = (v.event_index if v else None) == (result.first.event_index if result.first else None)
        named = f"#{v.event_index:,}" if v else "no event"
        style = "outcome.ok" if same else "error"
        verdict = "the same event" if same else "a different event: the invariant was broken and repaired between two checks"
        console.print(Text(f"Verified: the check after every event names {named}: {verdict}.", style=style))
    if result.note:
        console.print(Text(result.note, style="warn"))
