"""`hakmem-forensics firstbad`: the first event after which the consistency check fails, by bisection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.status import Status

from forensics import fixtures
from forensics.cli.common import write_json
from forensics.cli.replay import ModeChoice, ProbeChoice, _parse_knobs
from forensics.firstbad import DEFAULT_FANOUT, find_first_bad
from forensics.replay import DEFAULT_TIMEOUT, ReplayConfig
from forensics.report import firstbad as firstbad_report
from forensics.theme import make_console


def firstbad(
    trace: Annotated[
        Optional[Path],
        typer.Argument(help=f"Trace to replay (text or binary). Default: the bundled {fixtures.DEFAULT_TRACE}.", show_default=False),
    ] = None,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library (default: $HAKMEM_LIB, else the bundled hakmem-ref); it needs hak_debug_check.")] = None,
    probe: Annotated[Optional[ProbeChoice], typer.Option("--probe", help="Header readability probe (HAKMEM_HEADER_PROBE); default: the trace's knob, else off.")] = None,
    mode: Annotated[Optional[ModeChoice], typer.Option("--mode", help="HAKMEM_MODE; default: the trace's knob, else direct.")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", metavar="NAME=VALUE", help="Any other HAKMEM_* knob; repeatable; wins over the trace header.")] = None,
    fanout: Annotated[int, typer.Option("--fanout", min=2, metavar="K", help="Checks per window: each replay narrows the window about K times.")] = DEFAULT_FANOUT,
    verify: Annotated[bool, typer.Option("--verify", help="Also replay with the check after every event and say whether it names the same event.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, metavar="SECONDS", help="Kill a replay after this long.")] = DEFAULT_TIMEOUT,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {firstbad_report.SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Name the first event after which the allocator's consistency check fails, with few checks.

    The same answer as `replay --check-every 1`, found by bisection: each replay checks a
    window of events (hfreplay --check-every K --check-from A --check-to B) and the next one
    narrows it, so a trace of N events needs about K x log_K(N) checks instead of N. Useful
    when the crash comes long after the operation that broke the heap. Replays are serial.
    """
    path = trace if trace is not None else fixtures.find_fixture()
    config = ReplayConfig(
        lib=str(lib) if lib else None,
        probe=probe.value if probe else None,
        mode=mode.value if mode else None,
        knobs=_parse_knobs(knob or []),
        threads=False,
        timeout=timeout,
    )
    quiet = json_out == "-"
    err = make_console(stderr=True)
    status = Status("bisecting", console=err)
    if not quiet:
        status.start()
    try:
        result = find_first_bad(path, config, fanout=fanout, verify=verify, progress=lambda line: status.update(line))
    finally:
        if not quiet:
            status.stop()
    if json_out is not None:
        write_json(firstbad_report.to_json(result), json_out)
        if quiet:
            return
    firstbad_report.render(result, make_console())
