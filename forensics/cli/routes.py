"""`hakmem-forensics routes`: read route-trace, registry-trace and [hakmem] lines from logs and report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import preload, routelog
from forensics.cli.common import write_json
from forensics.errors import BadInputError
from forensics.report import routes as routes_report
from forensics.theme import make_console


def routes(
    logs: Annotated[list[str], typer.Argument(metavar="LOG...", help="Logs to read, plain or gzip (sniffed); '-' = standard input.", show_default=False)],
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the result as JSON (schema {routes_report.SCHEMA}); '-' = stdout only.")] = None,
    pattern: Annotated[Optional[str], typer.Option("--pattern", metavar="REGEX", help="Also read route lines in another format: a regex with named groups route and ptr (optional: seq, tid, action, magic, method), searched in lines that are not hakmem-ref's own.")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", metavar="TRACE", help="The trace this log's run replayed (serially): joins each reported free to its trace event (the Nth free of the trace is seq N).")] = None,
    max_pointers: Annotated[int, typer.Option("--max-pointers", min=1, metavar="N", help="Pointers whose allocation is remembered (oldest allocation evicted first).")] = routelog.DEFAULT_MAX_POINTERS,
    max_regions: Annotated[int, typer.Option("--max-regions", min=1, metavar="N", help="Regions whose registry changes are remembered.")] = routelog.DEFAULT_MAX_REGIONS,
    keep: Annotated[int, typer.Option("--keep", min=1, metavar="N", help="Events kept of each kind (invalid magics, escapes, anomalous pointers...); the totals stay exact.")] = routelog.DEFAULT_KEEP,
    lib: Annotated[Optional[Path], typer.Option("--lib", metavar="PATH", help="Allocator library whose geometry (region sizes) the log's registry history uses (default: $HAKMEM_LIB, else the bundled hakmem-ref; if it cannot be loaded, the sizes are learned from the log).")] = None,
) -> None:
    """Route histogram, pointer lifecycles, invalid magics, registry history of escaped pointers, timeline.

    Streams any size of log in bounded memory. Lines that are not hakmem's are skipped and
    counted; hakmem-tagged lines that do not parse are counted as malformed. A damaged gzip
    stream is reported with its offset and makes the exit status 3, after the report of
    everything before the damage.
    """
    analyzer = routelog.RouteLogAnalyzer(pattern=pattern, max_pointers=max_pointers, max_regions=max_regions, keep=keep,
                                         region_sizes=preload.get_region_sizes(lib))
    for log in logs:
        analyzer.feed_path(log)
    result = analyzer.result()
    if trace is not None:
        if not trace.exists():
            raise BadInputError(f"{trace}: no such trace")
        result.correlation = routelog.correlate(result, trace)
    if json_out is not None:
        write_json(routes_report.to_json(result), json_out)
    if json_out != "-":
        routes_report.render(result, make_console())
    errors = result.get_errors()
    if errors:
        raise BadInputError("damaged input: " + "; ".join(errors))
