"""`hakmem-forensics diff`: two replays side by side, and the first event they decided differently."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, Sequence, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensics.cli.common import write_json
from forensics.cli.replay import AllocatorChoice, ModeChoice, ProbeChoice, _parse_knobs
from forensics.diff import SideConfig, detect, diff_files, diff_trace
from forensics.errors import BadInputError
from forensics.replay import DEFAULT_TIMEOUT, ReplayConfig
from forensics.report import diff as diff_report
from forensics.theme import make_console

T = TypeVar("T")


def _pair(values: Sequence[T] | None, option: str) -> tuple[T | None, T | None]:
    """An option given once applies to both sides; twice, to side A then side B."""
    values = list(values or [])
    if len(values) > 2:
        raise BadInputError(f"{option} given {len(values)} times: give it once (both sides) or twice (side A, then side B)")
    if not values:
        return None, None
    return values[0], values[-1]


def _side_configs(
    probe: list[ProbeChoice] | None,
    lib: list[Path] | None,
    mode: list[ModeChoice] | None,
    allocator: list[AllocatorChoice] | None,
    knob: list[str],
    knob_a: list[str],
    knob_b: list[str],
    threads: bool,
    timeout: float,
) -> tuple[SideConfig, SideConfig]:
    probes, libs, modes, allocs = _pair(probe, "--probe"), _pair(lib, "--lib"), _pair(mode, "--mode"), _pair(allocator, "--allocator")
    common = _parse_knobs(knob)
    side_knobs = (_parse_knobs(knob_a), _parse_knobs(knob_b))
    labels: list[list[str]] = [[], []]
    if probes[0] != probes[1]:
        for k in (0, 1):
            labels[k].append(f"probe={probes[k].value if probes[k] else '(trace)'}")
    if modes[0] != modes[1]:
        for k in (0, 1):
            labels[k].append(f"mode={modes[k].value if modes[k] else '(trace)'}")
    if allocs[0] != allocs[1]:
        for k in (0, 1):
            labels[k].append((allocs[k] or AllocatorChoice.hakmem).value)
    if libs[0] != libs[1]:
        names = [p.name if p else "(default)" for p in libs]
        if names[0] == names[1]:
            names = [str(p) if p else "(default)" for p in libs]
        for k in (0, 1):
            labels[k].append(f"lib={names[k]}")
    if side_knobs[0] != side_knobs[1]:
        for k in (0, 1):
            labels[k].append(" ".join(f"{n}={v}" for n, v in side_knobs[k].items()) or "(no extra knobs)")
    if not labels[0]:
        raise BadInputError("both sides would replay the same configuration: give an option twice, e.g. --probe off --probe safe")
    sides = []
    for k in (0, 1):
        libc = allocs[k] is AllocatorChoice.libc
        if libc and libs[k] is not None:
            raise BadInputError(f"side {'AB'[k]}: --lib and --allocator libc exclude each other")
        config = ReplayConfig(
            lib=str(libs[k]) if libs[k] else None,
            libc=libc,
            probe=probes[k].value if probes[k] else None,
            mode=modes[k].value if modes[k] else None,
            knobs={**common, **side_knobs[k]},
            threads=threads,
            timeout=timeout,
        )
        sides.append(SideConfig(" ".join(labels[k]), config))
    return sides[0], sides[1]


def diff(
    a: Annotated[Path, typer.Argument(help="A trace (then give the two configurations), or a saved replay result (JSON from replay --json, or replay --save).", show_default=False)],
    b: Annotated[Optional[Path], typer.Argument(help="The second saved replay result, when A is one.", show_default=False)] = None,
    probe: Annotated[Optional[list[ProbeChoice]], typer.Option("--probe", help="Header probe: once for both sides, twice for A then B.")] = None,
    lib: Annotated[Optional[list[Path]], typer.Option("--lib", metavar="PATH", help="Allocator library: once for both sides, twice for A then B.")] = None,
    mode: Annotated[Optional[list[ModeChoice]], typer.Option("--mode", help="HAKMEM_MODE: once for both sides, twice for A then B.")] = None,
    allocator: Annotated[Optional[list[AllocatorChoice]], typer.Option("--allocator", help="hakmem or libc: once for both sides, twice for A then B.")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="A HAKMEM_* knob for both sides; repeatable.")] = None,
    knob_a: Annotated[Optional[list[str]], typer.Option("--knob-a", metavar="NAME=VALUE", help="A knob for side A only; repeatable.")] = None,
    knob_b: Annotated[Optional[list[str]], typer.Option("--knob-b", metavar="NAME=VALUE", help="A knob for side B only; repeatable.")] = None,
    threads: Annotated[bool, typer.Option("--threads", help="Replay each trace thread on a real thread (default: serially, so that both sides run the events in the same order).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, metavar="SECONDS", help="Kill a replay after this long and report a hang.")] = DEFAULT_TIMEOUT,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {diff_report.SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Compare two replays: route and outcome tables with deltas, and the first divergence.

    Either one trace under two configurations (`diff TRACE --probe off --probe safe`,
    `--lib X --lib Y`, `--mode direct --mode ldpreload`, `--allocator hakmem --allocator libc`,
    `--knob-a ... --knob-b ...`), compared event by event; or two saved results (`diff A B`).
    The first divergence is the first event whose decision differs (route, action, stages,
    probe, outcome) or where one side crashed, shown with what each side did.
    """
    quiet = json_out == "-"
    if b is not None:
        if any((probe, lib, mode, allocator, knob, knob_a, knob_b)):
            raise BadInputError("configuration options (--probe, --lib, --mode, --allocator, --knob...) go with one trace, not with two results")
        result = diff_files(a, b)
    else:
        if detect(a) != "trace":
            raise BadInputError(f"{a}: a replay result; give a second one (diff A B), or give a trace with two configurations")
        side_a, side_b = _side_configs(probe, lib, mode, allocator, knob or [], knob_a or [], knob_b or [], threads, timeout)
        err = make_console(stderr=True)
        with Progress(TextColumn("replaying {task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal) as bar:
            tasks = {s.label: bar.add_task(s.label, total=None) for s in (side_a, side_b)}

            def progress(label: str, done: int, total: int) -> None:
                bar.update(tasks[label], completed=done, total=total)

            result = diff_trace(a, side_a, side_b, progress=progress)
    if json_out is not None:
        write_json(diff_report.to_json(result), json_out)
        if quiet:
            return
    diff_report.render(result, make_console())
