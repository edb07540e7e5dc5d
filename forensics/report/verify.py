"""The `verify` report: the seed's claims, what was measured, the verdict, and how to reproduce it (rich and JSON).

JSON schema "hakmem-forensics/verify/1" (keys always present):

    {
      "schema": "hakmem-forensics/verify/1",
      "settings": {"quick": bool, "seeds": int, "runs": int, "rounds": int, "claims": [str],
                   "lib": str | null, "workers": int, "cpus": int, "stress_args": [int, int],
                   "audit_calls": int, "audit_batches": int, "slice_seconds": float},
      "seconds": float,
      "claims": [{
        "id": str,                              # cycles, no-false-positives, larson-works, ...
        "claim": str, "source": str,            # the seed's words, and where they are
        "measurement": str,
        "verdict": str,                         # "holds", "does not hold", "holds only for X, Y", "not measured"
        "status": "holds" | "does not hold" | "partly" | "not measured",
        "holds_for": [probe],
        "evidence": [str]                       # shell commands that reproduce the measurement
      }],
      "traces": {key: str},                     # what each generated trace is
      "runs": [{                                # judged replays (route oracle on every free)
        "trace": str, "probe": str, "completed": bool,
        "crash_signal": str | null, "crash_event": int | null, "crash_stage": str | null,
        "events": int, "events_done": int, "frees": int,
        "header_frees": int,                    # frees that missed every registry (the probe ran)
        "fallback": int,                        # unmapped_header_fallback
        "recovered": int,                       # invalid_magic_tiny_recovery
        "misrouted": int, "leaked": int, "invalid_magic": int,
        "first_misrouted": int | null, "first_leaked": int | null,
        "routes": {route: count}
      }],
      "stress": [{"fault": str, "probe": str, "seeds": int, "failed": [int], "wrong": [int],
                  "misrouted": int, "leaked": int, "header_frees": int}],
      "timings": [{"trace": str, "probe": str,    # probe "off-again": the A/A control
                   "seconds": [float | null],     # one per turn (run-major, then round): its fastest replay;
                                                  # null: the child crashed. Same index = same run and round.
                   "median": float | null}],
      "overheads": [{"trace": str, "probe": str, "baseline_trace": str, "baseline_probe": str,
                     "ratio": float | null,            # median(variant) / median(off baseline)
                     "ratio_lo": float | null, "ratio_hi": float | null,  # quartiles of run-by-run ratios
                     "noise": float}],                 # baseline's 2*MAD/median, at least 0.01
      "audit": null | {...}                     # a "hakmem-forensics/probe-audit/1" document
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import ClaimCheck, VerifyReport
from forensics.report.probe import audit_to_json

SCHEMA = "hakmem-forensics/verify/1"

_STATUS_STYLES = {"holds": "outcome.ok", "does not hold": "error", "partly": "warn", "not measured": "muted"}


def to_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "settings": dict(report.settings),
        "seconds": round(report.seconds, 2),
        "claims": [
            {
                "id": c.id,
                "claim": c.claim,
                "source": c.source,
                "measurement": c.measurement,
                "verdict": c.verdict,
                "status": c.status,
                "holds_for": list(c.holds_for),
                "evidence": list(c.evidence),
            }
            for c in report.claims
        ],
        "traces": dict(report.traces),
        "runs": [asdict(r) for r in report.runs],
        "stress": [{**asdict(t), "failed": list(t.failed), "wrong": list(t.wrong)} for t in report.stress],
        "timings": [{"trace": t.trace, "probe": t.probe, "seconds": list(t.seconds), "median": t.median} for t in report.timings],
        "overheads": [asdict(o) for o in report.overheads],
        "audit": audit_to_json(report.audit) if report.audit else None,
    }


# ------------------------------------------------------------------------ rich
def _claim_cell(c: ClaimCheck) -> Text:
    t = Text(f"“{c.claim}”")
    t.append(f"\n{c.source}", style="muted")
    return t


def _measured_cell(c: ClaimCheck) -> Text:
    t = Text(c.measurement)
    for cmd in c.evidence:
        t.append(f"\n$ {cmd}", style="muted")
    return t


def claims_table(report: VerifyReport) -> Table:
    t = Table(title="The seed's claims, measured", title_justify="left", expand=True, show_lines=True)
    t.add_column("#", no_wrap=True, justify="right")
    t.add_column("the seed's claim", ratio=2, overflow="fold")
    t.add_column("measured (and the command that shows it)", ratio=5, overflow="fold")
    t.add_column("verdict", width=17, overflow="fold")
    for i, c in enumerate(report.claims, 1):
        t.add_row(str(i), _claim_cell(c), _measured_cell(c), Text(c.verdict, style=_STATUS_STYLES.get(c.status, "")))
    return t


def _runs_table(report: VerifyReport) -> Table:
    t = Table(
        title="Judged replays (route oracle on every free; hdr: frees that reached the header path; recov: invalid magic, then tiny recovery)",
        title_justify="left",
        expand=False,
    )
    for name, justify in (("trace", "left"), ("probe", "left"), ("result", "left"), ("frees", "right"), ("hdr", "right"), ("fallback", "right"), ("recov", "right"), ("misrouted", "right"), ("leaked", "right")):
        t.add_column(name, justify=justify, no_wrap=True)
    for r in report.runs:
        if r.completed:
            result = Text("completed", style="outcome.ok")
        else:
            result = Text(f"{r.crash_signal} #{r.crash_event}", style="outcome.crash")
        t.add_row(
            r.trace,
            r.probe,
            result,
            f"{r.frees:,}",
            f"{r.header_frees:,}",
            f"{r.fallback:,}",
            f"{r.recovered:,}",
            Text(f"{r.misrouted:,}", style="outcome.misrouted" if r.misrouted else ""),
            Text(f"{r.leaked:,}", style="outcome.leak" if r.leaked else ""),
        )
    return t


def _stress_table(report: VerifyReport) -> Table:
    t = Table(title="Stress loop (failure = crash or hang)", title_justify="left", expand=False)
    for name in ("fault", "probe", "failed", "completed with wrong frees", "misrouted", "leaked", "header path"):
        t.add_column(name, overflow="fold")
    for s in report.stress:
        failed = Text(f"{len(s.failed)}/{s.seeds}", style="outcome.crash" if s.failed else "outcome.ok")
        if s.failed:
            failed.append(" (seeds " + ", ".join(map(str, s.failed[:5])) + (", …" if len(s.failed) > 5 else "") + ")", style="muted")
        t.add_row(s.fault, s.probe, failed, f"{len(s.wrong)}/{s.seeds}", f"{s.misrouted:,}", f"{s.leaked:,}", f"{s.header_frees:,}")
    return t


def _timing_table(report: VerifyReport) -> Table:
    t = Table(title="Replay time (variants take turns in one child; each turn its fastest replay)", title_justify="left", expand=False)
    for name, justify in (("trace", "left"), ("probe", "left"), ("turns", "right"), ("median", "right"), ("vs off (paired)", "right")):
        t.add_column(name, justify=justify, no_wrap=True)
    by = {(o.trace, o.probe): o for o in report.overheads}
    for c in report.timings:
        o = by.get((c.trace, c.probe))
        if o is None:
            vs = "baseline" if c.probe == "off" else ("A/A control" if c.probe == "off-again" else "-")
        elif o.ratio is None:
            vs = "crashed"
        else:
            base = "" if o.baseline_trace == o.trace else f" (vs {o.baseline_trace})"
            vs = f"{o.ratio:.2f}x [{o.ratio_lo:.2f}–{o.ratio_hi:.2f}]{base}"
        t.add_row(c.trace, c.probe, str(sum(s is not None for s in c.seconds)), "-" if c.median is None else f"{c.median * 1e3:.2f} ms", vs)
    return t


def render(report: VerifyReport, console: Console, *, details: bool = False) -> None:
    s = report.settings
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    mode = "quick (scaled-down traces)" if s.get("quick") else "full"
    n = len(report.claims)
    head.add_row("Verify", f"{n} claim{'s' if n != 1 else ''} of FALSE_POSITIVE_SEGV_FIX.md, {mode}, {report.seconds:.1f} s")
    head.add_row("Variants", "off (pre-fix: reads the header), seed-mincore and seed-msync (the seed's code as written), mincore and safe (corrected)")
    measured = [f"{len(report.runs)} judged replays"] if report.runs else []
    if report.stress:
        measured.append(f"{sum(t.seeds for t in report.stress)} stress replays (seeds 1..{s.get('seeds')})")
    if report.timings:
        measured.append(f"{len({t.trace for t in report.timings}) * int(s.get('runs') or 0)} timing children")
    if report.audit:
        measured.append(f"the probe audit ({len(report.audit.rows)} bed rows)")
    head.add_row("Measured with", ", ".join(measured))
    if s.get("lib"):
        head.add_row("Allocator", Text(str(s["lib"])))  # a user's path: never markup
    console.print(head)
    console.print()
    if details:
        if report.traces:
            legend = Table(title="Traces", title_justify="left", expand=False, show_header=False)
            legend.add_column(no_wrap=True)
            legend.add_column(overflow="fold")
            for k, v in report.traces.items():
                legend.add_row(k, v)
            console.print(legend)
        if report.runs:
            console.print(_runs_table(report))
        if report.stress:
            console.print(_stress_table(report))
        if report.timings:
            console.print(_timing_table(report))
    console.print(claims_table(report))
    counts = {st: sum(1 for c in report.claims if c.status == st) for st in _STATUS_STYLES}
    summary = Text("Verdicts: ")
    summary.append(", ".join(f"{n} {st}" for st, n in counts.items() if n))
    console.print(summary)
