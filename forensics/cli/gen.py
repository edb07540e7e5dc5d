"""`hakmem-forensics gen larson|random-mixed`: write a generated workload trace, optionally with a scenario.

Registered in the app as a sub-command group: ``app.add_typer(gen.app, name="gen")``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from forensics.cli.common import parse_knobs
from forensics.errors import EXIT_BAD_INPUT, BadInputError
from forensics.trace import open_writer
from forensics.trace.generators import Workload
from forensics.trace.generators import larson as make_larson
from forensics.trace.generators import random_mixed as make_random_mixed
from forensics.trace.scenarios import Scenario

EPILOG = (
    f"Exit status: 0 trace written; 2 usage error; {EXIT_BAD_INPUT} bad input (a bad value, an unknown scenario, "
    "an unwritable output)."
)
PROGRESS_MIN_EVENTS = 500_000  # below this a run takes about a second: no progress bar
_SCENARIO_HELP = "Scenario preset (knobs and forensic ops in the trace): " + ", ".join(s.value for s in Scenario) + "."

app = typer.Typer(
    name="gen",
    help="Generate a trace from a workload mirroring the seed's benchmarks (larson, bench_random_mixed).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@contextlib.contextmanager
def progress_reporter(label: str, total: int | None, *, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr fed by a callback(events_done); None when not worth showing
    (short run, or stderr not a terminal)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done if total is None else min(done, total))

        yield update


def write_workload(make: Callable[[], Workload], output: Path, binary: bool) -> None:
    try:
        workload = make()
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    writer = open_writer(output, workload.header, binary=binary or None)
    with writer:
        with progress_reporter(f"gen {workload.name}", workload.expected_events,
                               enabled=workload.expected_events >= PROGRESS_MIN_EVENTS) as progress:
            writer.write_many(workload.iter_raw(), progress)
    assert writer.stats is not None
    typer.echo(f"wrote {output} ({writer.format}): {writer.stats.describe(workload.header)}")


OutputOpt = Annotated[
    Path,
    typer.Option("-o", "--output", metavar="FILE", help="Trace to write: .htb is binary, anything else text."),
]
ScenarioOpt = Annotated[Optional[str], typer.Option("--scenario", metavar="NAME", help=_SCENARIO_HELP)]
BinaryOpt = Annotated[bool, typer.Option("--binary", help="Write the binary format whatever the file name.")]
KnobOpt = Annotated[
    Optional[list[str]],
    typer.Option("--knob", metavar="NAME=VALUE", help="Extra '# knob' header line (repeatable), after the scenario's."),
]


def _scenario(name: str | None) -> Scenario | None:
    if name is None:
        return None
    try:
        return Scenario(name)
    except ValueError:
        raise BadInputError(f"unknown scenario {name!r} (choose from: {', '.join(s.value for s in Scenario)})") from None


@app.command("larson", epilog=EPILOG)
def larson(
    seconds: Annotated[int, typer.Argument(metavar="SECONDS", help="Work per round: each thread does SECONDS * CHUNKS replacements.")],
    min_size: Annotated[int, typer.Argument(metavar="MIN_SIZE", help="Smallest block size (bytes).")],
    max_size: Annotated[int, typer.Argument(metavar="MAX_SIZE", help="Largest block size (bytes, inclusive).")],
    chunks: Annotated[int, typer.Argument(metavar="CHUNKS", help="Blocks per thread's array.")],
    rounds: Annotated[int, typer.Argument(metavar="ROUNDS", help="Rounds; after each, every array moves to the next thread.")],
    seed: Annotated[int, typer.Argument(metavar="SEED", help="Random seed.")],
    threads: Annotated[int, typer.Argument(metavar="THREADS", help="Threads (trace tids 1..THREADS).")],
    output: OutputOpt,
    scenario: ScenarioOpt = None,
    binary: BinaryOpt = False,
    knob: KnobOpt = None,
) -> None:
    """Generate a larson trace, arguments in larson's order (the seed's: 10 8 128 1024 1 12345 4).

    Threads fill arrays of CHUNKS blocks, replace random blocks, and hand their arrays to the next thread, which frees them: cross-thread frees. Deterministic from SEED.
    """
    sc = _scenario(scenario)
    knobs = parse_knobs(knob)
    write_workload(lambda: make_larson(seconds, min_size, max_size, chunks, rounds, seed, threads,
                                       scenario=sc, knobs=knobs), output, binary)


@app.command("random-mixed", epilog=EPILOG)
def random_mixed(
    iterations: Annotated[int, typer.Argument(metavar="ITERATIONS", help="Iterations (one malloc or free each).")],
    working_set: Annotated[int, typer.Argument(metavar="WORKING_SET", help="Slots in the working set.")],
    seed: Annotated[int, typer.Argument(metavar="SEED", help="Random seed.")],
    output: OutputOpt,
    scenario: ScenarioOpt = None,
    binary: BinaryOpt = False,
    knob: KnobOpt = None,
) -> None:
    """Generate a bench_random_mixed trace (the seed's: 50000 2048 1234567).

    Each iteration picks a random slot: frees it if occupied, else mallocs 16..1039 bytes into it; everything left is freed at the end. Deterministic from SEED.
    """
    sc = _scenario(scenario)
    knobs = parse_knobs(knob)
    write_workload(lambda: make_random_mixed(iterations, working_set, seed, scenario=sc, knobs=knobs), output, binary)

