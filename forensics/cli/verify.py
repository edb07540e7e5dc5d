"""`hakmem-forensics verify`: the seed's verification steps and benchmark predictions, measured."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensics import verify as verify_mod
from forensics.cli.common import write_json
from forensics.report import verify as verify_report
from forensics.theme import make_console


def verify(
    seeds: Annotated[Optional[int], typer.Option("--seeds", min=0, metavar="N", help=f"Seeds of the stress loop (random_mixed ITER WS $i for i = 1..N); default {verify_mod.DEFAULT_SEEDS}, {verify_mod.QUICK_SEEDS} with --quick.")] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", min=1, metavar="R", help=f"Fresh timing children per timing trace; default {verify_mod.DEFAULT_RUNS}, {verify_mod.QUICK_RUNS} with --quick.")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", min=1, metavar="K", help=f"Rounds per timing child, every variant taking one turn per round next to off; default {verify_mod.DEFAULT_ROUNDS}, {verify_mod.QUICK_ROUNDS} with --quick.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Scaled-down traces and fewer seeds and runs: a fast subset (seconds).")] = False,
    claim: Annotated[Optional[list[str]], typer.Option("--claim", metavar="ID", help="Measure only this claim (repeatable): " + ", ".join(verify_mod.CLAIM_IDS) + ".")] = None,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library (default: $HAKMEM_LIB, else the bundled hakmem-ref).")] = None,
    details: Annotated[bool, typer.Option("--details", help="Also print the traces, every judged replay, the stress tallies and the timings.")] = False,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {verify_report.SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Run the seed's verification steps for real, under every probe variant, and judge each claim.

    The seed's commands (larson 10 8 128 1024 1 12345 4 and 2 8 128 1024 1 12345 4;
    random_mixed 50000 2048 1234567 and 100000 2048 1234567; the 100-seed loop of
    random_mixed 10000 2048 $i) become generated traces, replayed under off, seed-mincore,
    seed-msync, mincore and safe — as written, and under the faults that make frees miss the
    registries (registry-capacity, registry-drop, early-release, header-corruption,
    mixed-libc, a PROT_NONE guard below SuperSlabs, pools switched off). The route oracle
    judges every free; replay time gives each variant's overhead against off (ratios, never
    absolute times); the probe audit gives the cost per call. The table shows claim by
    claim the measurement, the verdict and the commands that reproduce it.
    """
    base = verify_mod.VerifyOptions.make_quick() if quick else verify_mod.VerifyOptions()
    opts = dataclasses.replace(
        base,
        seeds=base.seeds if seeds is None else seeds,
        runs=base.runs if runs is None else runs,
        rounds=base.rounds if rounds is None else rounds,
        claims=tuple(claim or ()),
        lib=str(lib) if lib else None,
    )
    err = make_console(stderr=True)
    quiet = json_out == "-"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("verify", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what[:60], completed=done, total=total)

        report = verify_mod.run_verify(opts, progress=progress)
    if json_out is not None:
        write_json(verify_report.to_json(report), json_out)
        if quiet:
            return
    verify_report.render(report, make_console(), details=details)
