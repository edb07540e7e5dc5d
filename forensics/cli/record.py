"""`hakmem-forensics record -o TRACE -- CMD ARGS...`: record a real program's malloc-family calls."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import record as recorder
from forensics import sites
from forensics.cli.common import write_json
from forensics.report import capture
from forensics.theme import make_console

EPILOG_NOTE = (
    "The program runs with libhfrecord.so preloaded; every process it starts (fork, exec) is "
    "recorded too. The main process's trace is TRACE, other processes' TRACE-stem.<pid>[-<gen>].suffix."
)


def record(
    command: Annotated[list[str], typer.Argument(metavar="CMD ARGS...", help="The program to record and its arguments, after -- (everything after the program's name is its own).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="TRACE", help="Trace to write: .htb is binary, anything else text.")],
    keep_raw: Annotated[Optional[Path], typer.Option("--keep-raw", metavar="DIR", help="Keep the recorder's raw logs in DIR (default: a scratch directory next to TRACE, removed).")] = None,
    symbolize: Annotated[bool, typer.Option("--symbolize/--no-symbolize", help="Symbolize call sites (function, file:line) while the binaries are there.")] = True,
    binary: Annotated[bool, typer.Option("--binary", help="Write the binary format whatever the file name.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Kill the program after this long (what it recorded is kept).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help=f"Do not use the symbol cache ({sites.default_cache_dir()}).")] = False,
    top: Annotated[int, typer.Option("--top", min=0, metavar="N", help="Call sites in the top-sites table.")] = 10,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {capture.RECORD_SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Record every malloc-family call of a program (all threads, forks and execs) into a trace.

    Captures malloc, calloc, realloc, reallocarray, free, memalign, posix_memalign,
    aligned_alloc, valloc, pvalloc and malloc_usable_size with thread, call site and the
    process's memory map; addresses become objects (bad frees become forensic ops), and the
    call sites are symbolized from DWARF. The program's exit status is reported, not returned.
    """
    result = recorder.run_record(
        command,
        output,
        raw_dir=keep_raw,
        symbolize=symbolize,
        cache_dir=None if no_cache else sites.default_cache_dir(),
        binary=binary or None,
        timeout=timeout,
        # with --json -, stdout is the JSON document's: the program writes to stderr instead
        stdout=_stderr_fd() if json_out == "-" else None,
    )
    site_maps, top_sites = _sites_of(result.outputs, top)
    if json_out is not None:
        write_json(capture.record_to_json(result, sites=site_maps, top_sites=top_sites), json_out)
        if json_out == "-":
            return
    capture.render_record(result, make_console(), sites=site_maps, top_sites=top_sites, top=top)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests): leave stdout alone
        return None


def _sites_of(outputs, top: int):
    site_maps = {}
    top_sites = {}
    for o in outputs:
        if not o.events:
            continue
        header, stats = sites.get_site_table(o.path)
        site_maps[o.path] = sites.get_sites(header)
        top_sites[o.path] = stats
    return site_maps, top_sites
