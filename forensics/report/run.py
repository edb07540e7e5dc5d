"""The `run` report: how the program ended, and what its trace log says (rich and JSON).

JSON schema "hakmem-forensics/run/1" (keys always present):

    {
      "schema": "hakmem-forensics/run/1",
      "command": [str], "library": str,
      "env": {name: value},                 # what run set: LD_PRELOAD and the HAKMEM_* knobs
      "pid": int,
      "exit_status": int | null,            # null when a signal ended the program
      "exit_signal": str | null, "exit_signo": int | null,
      "hang": bool,                         # killed at --timeout
      "seconds": float,
      "log": str | null, "child_logs": [str],   # the logs kept with --log
      "crash": null | {"signal", "fault", "fault_hex", "ptr", "ptr_hex", "stage", "free_seq", "source"},
                                            # source "handler" (the preload library's CRASH line) or
                                            # "signal" (only the exit signal is known)
      "route_lines": int,                   # route lines in the main process's log
      "route_lines_at_stats": int | null,   # of them, those before their image's STATS line
      "frees_seen_by_allocator": int | null,    # from the allocator's STATS line at exit
      "routes_consistent": bool | null,     # every free the allocator counted has its route line
      "main": routes,                       # schema hakmem-forensics/routes/1 of the main log
      "children": routes | null             # the other processes' logs, together
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import ProgramRun, RouteLogResult
from forensics.report import routes as routes_report

SCHEMA = "hakmem-forensics/run/1"
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE")


def consistent(r: RouteLogResult) -> bool | None:
    """True when every process image that printed STATS has one route line per free it counted."""
    verdicts = [p.consistent for p in r.processes if p.consistent is not None]
    return all(verdicts) if verdicts else None


def lines_at_stats(r: RouteLogResult) -> int | None:
    """Route lines printed before their image's STATS line, over the images that printed one."""
    vals = [p.route_lines_at_stats for p in r.processes if p.route_lines_at_stats is not None]
    return sum(vals) if vals else None


def crash_info(run: ProgramRun) -> dict[str, Any] | None:
    c = run.main.crashes[0] if run.main.crashes else None
    if c is not None:
        return {"signal": c.signal, "fault": c.fault, "fault_hex": f"{c.fault:#x}", "ptr": c.ptr,
                "ptr_hex": f"{c.ptr:#x}", "stage": c.stage, "free_seq": c.free_seq, "source": "handler"}
    name = run.signal_name
    if name in CRASH_SIGNALS:
        return {"signal": name, "fault": None, "fault_hex": None, "ptr": None, "ptr_hex": None, "stage": None,
                "free_seq": None, "source": "signal"}
    return None


def to_json(run: ProgramRun) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": list(run.command),
        "library": run.library,
        "env": dict(run.env),
        "pid": run.pid,
        "exit_status": run.exit_status,
        "exit_signal": run.signal_name,
        "exit_signo": run.exit_signal,
        "hang": run.hang,
        "seconds": round(run.seconds, 3),
        "log": run.log,
        "child_logs": list(run.child_logs),
        "crash": crash_info(run),
        "route_lines": run.main.num_route_lines(),
        "route_lines_at_stats": lines_at_stats(run.main),
        "frees_seen_by_allocator": run.main.num_frees_seen_by_allocator(),
        "routes_consistent": consistent(run.main),
        "main": routes_report.to_json(run.main),
        "children": routes_report.to_json(run.children) if run.children is not None else None,
    }


def _ended(run: ProgramRun) -> Text:
    if run.hang:
        return Text(f"killed after {run.seconds:.1f} s (time limit)", style="outcome.hang")
    if run.exit_signal is not None:
        style = "outcome.crash" if run.signal_name in CRASH_SIGNALS else "warn"
        return Text(f"killed by {run.signal_name}", style=style)
    return Text(f"exit status {run.exit_status}", style="outcome.ok" if run.exit_status == 0 else "warn")


def render(run: ProgramRun, console: Console) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column(overflow="fold")
    head.add_row("Program", Text(shlex.join(run.command)))
    head.add_row("Ended", Text.assemble(_ended(run), f" after {run.seconds:.2f} s (pid {run.pid})"))
    head.add_row("Allocator", Text(run.library))
    knobs = " ".join(f"{k}={v}" for k, v in run.env.items() if k.startswith("HAKMEM_") and k != "HAKMEM_TRACE_FILE")
    head.add_row("Knobs", Text(knobs))
    head.add_row("Log", Text(run.log) if run.log else Text("(not kept: --log FILE keeps it)", style="muted"))
    if run.child_logs:
        head.add_row("Child logs", Text(f"{len(run.child_logs)}: {run.child_logs[0]} …" if len(run.child_logs) > 1
                                        else run.child_logs[0]))
    console.print(head)
    m = run.main
    lines = m.num_route_lines()
    seen = m.num_frees_seen_by_allocator()
    ok = consistent(m)
    if seen is None:
        check = Text(f"{lines:,} route lines; the allocator printed no STATS line (the program ended without "
                     "exit(): _exit, exec failure, or a signal)", style="warn")
    else:
        counted = lines_at_stats(m) or 0
        rest = f" (+{lines - counted:,} in images without STATS or after it)" if lines != counted else ""
        if ok:
            check = Text(f"{counted:,} route lines = {seen:,} frees counted by the allocator{rest}", style="outcome.ok")
        else:
            check = Text(f"{counted:,} route lines, but the allocator counted {seen:,} frees{rest}", style="error")
    console.print(Text.assemble(("Frees  ", "label"), check))
    c = crash_info(run)
    if c is not None:
        if c["source"] == "handler":
            console.print(Text.assemble(("CRASH  ", "outcome.crash"),
                                        f"{c['signal']} fault={c['fault_hex']} ptr={c['ptr_hex']} stage={c['stage']}"
                                        + (f" in free seq {c['free_seq']}" if c["free_seq"] else "")))
        else:
            console.print(Text.assemble(("CRASH  ", "outcome.crash"), f"{c['signal']} (no crash line in the log)"))
    console.print()
    routes_report.render(m, console, title="Main process")
    ch = run.children
    if ch is not None:
        anomalies = sum(ch.anomaly_kinds.values())
        console.print()
        console.print(Text.assemble(
            ("Other processes  ", "label"),
            f"{ch.processes_total:,} process images, {ch.num_route_lines():,} frees, "
            f"{ch.invalid_magic_total:,} invalid magic, {anomalies:,} anomalies, {ch.crash_total:,} crashes "
            "(--json has their full report)",
        ))
