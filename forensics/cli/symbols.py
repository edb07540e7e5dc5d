"""`hakmem-forensics symbols TRACE`: symbolize a recorded trace's call sites; top sites, bad frees by site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import model, sites
from forensics.cli.common import write_json
from forensics.errors import BadInputError
from forensics.report import capture
from forensics.theme import make_console
from forensics.trace import iter_raw, read_header
from forensics.trace.records import OP_NAMES

_FORENSIC = {"free_interior", "double_free", "free_raw", "free_libc", "corrupt"}
SHOWN_ANOMALIES = 50


def symbols(
    trace: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace made by `record` (its header holds the memory map).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Write the symbolized trace here instead of rewriting TRACE.")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Symbolize again even if the trace has site lines.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help=f"Do not use the symbol cache ({sites.default_cache_dir()}).")] = False,
    top: Annotated[int, typer.Option("--top", min=0, metavar="N", help="Call sites in the top-sites table.")] = 20,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {capture.SITES_SCHEMA}); '-' = stdout only.")] = None,
) -> None:
    """Call sites of a trace as function and file:line: a top-sites table and every forensic op by site.

    A recorded trace keeps its process's memory map (# meta map= lines); the sites are
    symbolized through it from the ELF symbols and DWARF of each mapped file (PIE and
    shared libraries alike) and written back as # meta site= lines. Results are cached per
    build id. Other traces (generated, imported) are shown with raw addresses.
    """
    if not trace.exists():
        raise BadInputError(f"{trace}: no such file")
    header = read_header(trace)
    maps, _ = sites.parse_map_meta(header)
    note = ""
    target = trace
    if maps and (refresh or output is not None or not sites.get_sites(header)):
        sites.symbolize_trace(trace, output, cache_dir=None if no_cache else sites.default_cache_dir())
        target = output or trace
    elif not maps:
        note = "no memory map in this trace (only `record` traces have one): addresses are shown as they are"
    header, stats = sites.get_site_table(target)
    known = sites.get_sites(header)
    anomalies = []
    for index, raw in enumerate(iter_raw(target, check=False)):
        op = OP_NAMES[raw[0]]
        if op in _FORENSIC:
            anomalies.append((index, op, raw[1], raw[2], raw[5], known.get(raw[7]) or model.SiteInfo(raw[7])))
            if len(anomalies) >= SHOWN_ANOMALIES:
                break
    symbolized = bool(known)
    if json_out is not None:
        write_json(capture.sites_to_json(str(target), stats, anomalies, symbolized=symbolized), json_out)
        if json_out == "-":
            return
    capture.render_sites(str(target), stats, anomalies, make_console(), symbolized=symbolized, top=top, note=note)
