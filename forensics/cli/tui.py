"""`hakmem-forensics tui`: browse a replay interactively (Textual)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensics import fixtures
from forensics.browse import from_saved
from forensics.replay import ReplayConfig, run_replay
from forensics.safeio import open_input
from forensics.saved import open_result, save_result
from forensics.theme import make_console


def _kind(path: Path) -> str:
    """"result" (a saved result), "trace", or "log" (anything else: hakmem's stderr, plain or gzip)."""
    with open_input(path, "saved result, trace or log") as fh:
        head = fh.read(64)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (an empty one too: open_result says what is wrong)
        return "result"
    if head[:8] == b"HKTRACE\0" or head.startswith(b"# hakmem-trace v1"):
        return "trace"
    return "log"


def tui(
    source: Annotated[Optional[Path], typer.Argument(help="A saved result (`replay --save`), a trace (replayed first, in a child), or a route log (hakmem's stderr with HAKMEM_FREE_ROUTE_TRACE=1, plain or gzip). Default: the bundled SEGV fixture.", show_default=False)] = None,
    probe: Annotated[Optional[str], typer.Option("--probe", help="With a trace: HAKMEM_HEADER_PROBE for the replay.")] = None,
    no_inspect: Annotated[bool, typer.Option("--no-inspect", help="Never replay to explain an event in depth (the saved records only).")] = False,
) -> None:
    """Browse a replay: a virtual event table (fast on a million events), filters, jump keys
    (next anomaly, the crash, the allocation, the previous free), a detail pane with the full
    explanation, and a summary pane that follows the filter. `?` lists the keys."""
    from forensics.tui import ExplorerApp

    path = source if source is not None else fixtures.find_fixture()
    kind = _kind(path)
    if kind == "log":
        from forensics.browse import from_log

        ExplorerApp(from_log(path), source=str(path), saved=None, inspect=False).run()
        return
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        if kind == "trace":
            config = ReplayConfig(probe=probe)
            err = make_console(stderr=True)
            with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
                task = bar.add_task("replay", total=None)
                result = run_replay(path, config, progress=lambda d, t: bar.update(task, completed=d, total=t), keep_events=True)
            saved_path = save_result(result, config, Path(tmp) / "result.hfres")
        else:
            saved_path = path
        with open_result(saved_path) as saved:
            app = ExplorerApp(from_saved(saved), source=str(path), saved=saved, inspect=not no_inspect)
            app.run()
