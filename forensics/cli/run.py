"""`hakmem-forensics run`: run a program on hakmem-ref (LD_PRELOAD) with tracing, and report."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from forensics import preload, routelog
from forensics.cli.common import ModeChoice, ProbeChoice, parse_knobs, write_json
from forensics.report import run as run_report
from forensics.theme import make_console


def run(
    command: Annotated[list[str], typer.Argument(metavar="-- CMD [ARGS]...", help="The program and its arguments (after --).", show_default=False)],
    lib: Annotated[Optional[str], typer.Option("--lib", metavar="PATH", help="Preload library (default: the bundled libhakmem_preload.so).")] = None,
    probe: Annotated[Optional[ProbeChoice], typer.Option("--probe", help="Header readability probe (HAKMEM_HEADER_PROBE); the preload library's default is safe.")] = None,
    mode: Annotated[Optional[ModeChoice], typer.Option("--mode", help="HAKMEM_MODE; default ldpreload (LD_PRELOAD names libhakmem).")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="Any other HAKMEM_* knob; repeatable.")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {run_report.SCHEMA}); '-' = stdout (after the program's own output).")] = None,
    log: Annotated[Optional[str], typer.Option("--log", metavar="FILE", help="Keep the main process's trace log in FILE (other processes' in FILE.<pid>).")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Kill the program after this long and report a hang.")] = None,
    no_alloc_trace: Annotated[bool, typer.Option("--no-alloc-trace", help="No allocation lines in the log (smaller; frees cannot be judged against their allocation).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No report on the terminal (use with --json).")] = False,
    max_pointers: Annotated[int, typer.Option("--max-pointers", min=1, metavar="N", help="Pointers whose allocation the log reader remembers.")] = routelog.DEFAULT_MAX_POINTERS,
) -> None:
    """Run CMD on hakmem-ref (libhakmem_preload.so) with route, registry and allocation tracing on.

    The program keeps its stdin, stdout and stderr: hakmem's lines go to a log of their own
    (one per process), and the report is printed on stderr after the program ended. Reports
    how it ended (exit status, signal, crash line, hang), the route mix, whether every free
    the allocator counted has its route line, invalid magics, escapes and other anomalies.
    The exit status is 0 whenever the analysis completed, whatever the program did.
    """
    config = preload.RunConfig(
        lib=lib,
        probe=probe.value if probe else None,
        mode=mode.value if mode else None,
        knobs=parse_knobs(knob or []),
        log=log,
        timeout=timeout,
        alloc_trace=not no_alloc_trace,
        max_pointers=max_pointers,
    )
    result = preload.run_program(list(command), config)
    if json_out is not None:
        write_json(run_report.to_json(result), json_out)
    if not quiet:
        run_report.render(result, make_console(stderr=True))
