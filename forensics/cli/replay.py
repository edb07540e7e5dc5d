"""`hakmem-forensics replay`: replay a trace in a child process and report routes, outcomes, crash."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from forensics import explain as explain_mod
from forensics import fixtures
from forensics.cli.common import AllocatorChoice, ModeChoice, ProbeChoice, parse_size, write_json, write_text
from forensics.cli.common import parse_knobs as _parse_knobs  # noqa: F401 - other commands import it from here
from forensics.errors import EXIT_INTERRUPTED, BadInputError
from forensics.replay import DEFAULT_TIMEOUT, ReplayConfig, binary_trace, run_replay
from forensics.report import explain as explain_report
from forensics.report import html as html_report
from forensics.report import replay as replay_report
from forensics.saved import open_result, save_result
from forensics.theme import make_console


def replay(
    trace: Annotated[
        Optional[Path],
        typer.Argument(help=f"Trace to replay (text or binary). Default: the bundled {fixtures.DEFAULT_TRACE}, which reproduces the seed's SEGV.", show_default=False),
    ] = None,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library (default: $HAKMEM_LIB, else the bundled hakmem-ref).")] = None,
    allocator: Annotated[AllocatorChoice, typer.Option("--allocator", help="'libc' replays against glibc malloc/free: the baseline.")] = AllocatorChoice.hakmem,
    probe: Annotated[Optional[ProbeChoice], typer.Option("--probe", help="Header readability probe (HAKMEM_HEADER_PROBE); default: the trace's knob, else off.")] = None,
    mode: Annotated[Optional[ModeChoice], typer.Option("--mode", help="HAKMEM_MODE; default: the trace's knob, else direct.")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="Any other HAKMEM_* knob; repeatable; wins over the trace header.")] = None,
    check_every: Annotated[int, typer.Option("--check-every", min=0, metavar="N", help="Run the allocator's consistency check every N events and name the first event after which it fails (0: never).")] = 0,
    serial: Annotated[bool, typer.Option("--serial", help="Replay every thread's events on one thread, in trace order.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, metavar="SECONDS", help="Kill the replay after this long and report a hang.")] = DEFAULT_TIMEOUT,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {replay_report.SCHEMA}); '-' = stdout only.")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", metavar="FILE", help="Save the whole result (every event, the trace) for `explain`, `diff` and the TUI.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", help="Also write a self-contained HTML report (route mix, address-space map, explanations).")] = None,
    explain_n: Annotated[int, typer.Option("--explain", min=0, metavar="N", help="Explain the crash and the first anomalies, up to N events (each is one more replay up to that event).")] = 2,
    max_memory: Annotated[str, typer.Option("--max-memory", metavar="SIZE", help="The replay child's memory limit (address space beyond what it holds at the start; setrlimit RLIMIT_AS): 8G, 512M, ... or none. Past it allocations return NULL, reported as 'memory limit reached at event N'.")] = "8G",
) -> None:
    """Replay a trace against the allocator in a child process: route table, outcome table, crash panel.

    Every free is judged by the route oracle (the owner recorded at allocation against the
    route the free took): correct, misrouted, leaked, invalid_magic, crashed, detected_invalid.
    A crash or hang in the allocator is part of the report, never the end of the toolkit; so is
    a child killed by a signal (status killed) or the memory limit. Ctrl-C stops the child and
    still reports (and --save/--json/--html writes) the partial result, then exits with 130.
    """
    path = trace if trace is not None else fixtures.find_fixture()
    if lib is not None and allocator is AllocatorChoice.libc:
        raise BadInputError("--lib and --allocator libc exclude each other")
    config = ReplayConfig(
        lib=str(lib) if lib else None,
        libc=allocator is AllocatorChoice.libc,
        probe=probe.value if probe else None,
        mode=mode.value if mode else None,
        knobs=_parse_knobs(knob or []),
        check_every=check_every,
        threads=not serial,
        timeout=timeout,
        max_memory=parse_size(max_memory, "--max-memory"),
    )
    err = make_console(stderr=True)
    quiet = json_out == "-"
    explanations = []
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        need_events = save is not None or explain_n > 0 or html_out is not None
        # A text trace is converted once, for the replay and the saved result both (the bundled
        # SEGV fixture is text: converting it twice was half the time to the report).
        binary = binary_trace(path, Path(tmp)) if need_events and path.exists() else None
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
            task = bar.add_task("replay", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run_replay(path, config, progress=progress, keep_events=need_events, binary=binary, partial_on_interrupt=True)
        explain = bool(explain_n and not result.interrupted and (result.crashed or result.anomaly_count))
        # the temporary saved result only serves the explanations: a clean replay of a big trace
        # would spend seconds deflating its events and trace into an archive nobody opens
        if need_events and (save is not None or explain):
            saved_path = save_result(result, config, save if save is not None else Path(tmp) / "result.hfres", binary=binary)
            if explain:
                with open_result(saved_path) as saved:
                    explanations = explain_mod.explain_result(saved, limit=explain_n)
    if html_out is not None:
        write_text(html_report.replay_page(result, explanations), html_out)
    if json_out is not None:
        doc = replay_report.to_json(result)
        doc["explanations"] = [explain_report.explanation_to_json(e) for e in explanations]
        write_json(doc, json_out)
        if quiet:
            _exit_if_interrupted(result)
            return
    console = make_console()
    replay_report.render(result, console)
    explain_report.render(explanations, console)
    if save is not None:
        console.print(Text(f"Saved to {save}{' (partial)' if result.partial else ''}: `hakmem-forensics explain {save} --event N` explains any event.", style="muted"))
    _exit_if_interrupted(result)


def _exit_if_interrupted(result) -> None:
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
