"""`hakmem-forensics import valgrind|android|mtrace FILE -o TRACE`: a foreign allocation log to a trace."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import importers, sites
from forensics.cli.common import write_json
from forensics.report import capture
from forensics.theme import make_console


class Format(str, Enum):
    valgrind = "valgrind"
    android = "android"
    mtrace = "mtrace"


def import_log(
    fmt: Annotated[Format, typer.Argument(metavar="FORMAT", help="valgrind (--trace-malloc=yes log), android (malloc_debug record_allocs, plain or .zip), mtrace (glibc MALLOC_TRACE output).", show_default=False)],
    source: Annotated[Path, typer.Argument(metavar="FILE", help="The log (plain, .gz, or .zip holding one file).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="TRACE", help="Trace to write: .htb is binary, anything else text. Other processes in the log: TRACE-stem.<pid>.suffix.")],
    lenient: Annotated[bool, typer.Option("--lenient", help="Count and report malformed lines instead of stopping at the first.")] = False,
    binary: Annotated[bool, typer.Option("--binary", help="Write the binary format whatever the file name.")] = False,
    max_lines: Annotated[Optional[int], typer.Option("--max-lines", min=1, metavar="N", help="Import only the first N lines.")] = None,
    max_live: Annotated[int, typer.Option("--max-live", min=1, metavar="N", help="Memory bound: at most N blocks live at once (about 250 bytes each); past it the import stops with FILE:LINE.")] = importers.DEFAULT_MAX_LIVE,
    max_processes: Annotated[int, typer.Option("--max-processes", min=1, metavar="N", help="At most N processes in one log (a trace file each).")] = importers.DEFAULT_MAX_PROCESSES,
    top: Annotated[int, typer.Option("--top", min=0, metavar="N", help="Call sites in the top-sites table (mtrace logs have sites).")] = 10,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {capture.IMPORT_SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Import a Valgrind, Android or glibc mtrace log: addresses become objects, bad frees forensic ops.

    A free of an address inside a live block becomes free_interior, of a block already freed
    double_free, of an address never allocated free_raw, so the replay reproduces them. The
    log streams: memory follows the live set, not the file. Reports counts per op and per
    thread, the bad frees (for valgrind, next to memcheck's own verdict), and the import speed.
    Memory is bounded whatever the log says: lines of 64 KiB at most, --max-live blocks, the last
    262,144 freed blocks, --max-processes processes; a number that does not fit a trace field is a
    malformed line.
    """
    result = importers.import_file(fmt.value, source, output, lenient=lenient, binary=binary or None,
                                   max_lines=max_lines, max_live=max_live, max_processes=max_processes)
    top_sites = {}
    if top and fmt is Format.mtrace:
        for o in result.outputs:
            if o.events:
                top_sites[o.path] = sites.get_site_table(o.path)[1]
    if json_out is not None:
        write_json(capture.import_to_json(result, top_sites=top_sites), json_out)
        if json_out == "-":
            return
    capture.render_import(result, make_console(), top_sites=top_sites, top=top)
