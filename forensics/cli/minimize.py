"""`hakmem-forensics minimize`: delta-debug a failing trace down to a minimal one that fails the same way."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from forensics import model
from forensics.cli.common import write_json
from forensics.cli.replay import AllocatorChoice, ModeChoice, ProbeChoice, _parse_knobs
from forensics.errors import BadInputError
from forensics.minimize import MinimizeOptions, minimize as run_minimize
from forensics.replay import ReplayConfig
from forensics.report import minimize as minimize_report
from forensics.theme import make_console


class SignatureChoice(str, Enum):
    crash = "crash"
    outcome = "outcome"
    route = "route"


def minimize(
    trace: Annotated[Path, typer.Argument(help="The failing trace (text or binary).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="OUT", help="Where to write the minimal trace (canonical text; binary if it ends in .htb).", show_default=False)],
    signature: Annotated[
        Optional[SignatureChoice],
        typer.Option(
            "--signature",
            help="What to keep: 'crash' (same signal, stage and op of the crashing event), 'outcome' (an anomaly of the same class "
            "on the same owner kind of block), 'route' (a free taking the same route on the same owner kind). "
            "Default: crash if the replay crashes, else outcome.",
        ),
    ] = None,
    event: Annotated[Optional[int], typer.Option("--event", min=0, metavar="N", help="Take the outcome/route signature from event N (default: the first anomaly).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Replay up to N candidates at once.")] = 1,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library (default: $HAKMEM_LIB, else the bundled hakmem-ref).")] = None,
    allocator: Annotated[AllocatorChoice, typer.Option("--allocator", help="'libc' replays against glibc malloc/free.")] = AllocatorChoice.hakmem,
    probe: Annotated[Optional[ProbeChoice], typer.Option("--probe", help="Header readability probe (HAKMEM_HEADER_PROBE); default: the trace's knob, else off.")] = None,
    mode: Annotated[Optional[ModeChoice], typer.Option("--mode", help="HAKMEM_MODE; default: the trace's knob, else direct.")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="Any other HAKMEM_* knob; repeatable; wins over the trace header.")] = None,
    threads: Annotated[bool, typer.Option("--threads", help="Replay each trace thread on a real thread (default: serially, in trace order, which is deterministic).")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Time limit per candidate (default: 10x the original replay, at least 5 s).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {minimize_report.SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Shrink a failing trace to a minimal one with the same failure signature (delta debugging).

    Every candidate is replayed natively in a child. The search cuts everything after the
    failing event, then removes whole allocation units (a block's allocation with its frees),
    then single events, always keeping each thread's order. The result is written with the
    original's knobs and a comment header saying how it was made; the report shows the
    original and minimal replays side by side.
    """
    if lib is not None and allocator is AllocatorChoice.libc:
        raise BadInputError("--lib and --allocator libc exclude each other")
    config = ReplayConfig(
        lib=str(lib) if lib else None,
        libc=allocator is AllocatorChoice.libc,
        probe=probe.value if probe else None,
        mode=mode.value if mode else None,
        knobs=_parse_knobs(knob or []),
        threads=threads,
    )
    options = MinimizeOptions(
        signature=model.SignatureKind(signature.value) if signature else None,
        event=event,
        jobs=jobs,
        timeout=timeout,
    )
    err = make_console(stderr=True)
    quiet = json_out == "-"
    columns = (
        TextColumn("minimizing {task.fields[phase]:<6}"),
        BarColumn(),
        TextColumn("{task.fields[size]:>8,} events"),
        TextColumn("{task.fields[replays]:>5,} replays"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("minimize", total=None, phase="replay", size=0, replays=0)
        first: list[int] = []

        def progress(phase: str, size: int, replays: int) -> None:
            if not first:
                first.append(size)
            bar.update(task, total=max(first[0] - 1, 1), completed=first[0] - size, phase=phase, size=size, replays=replays)

        result = run_minimize(trace, output, config, options, progress=progress)
    if json_out is not None:
        write_json(minimize_report.to_json(result), json_out)
        if quiet:
            return
    minimize_report.render(result, make_console())
