"""`hakmem-forensics tui`: browse a replay interactively (Textual)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forensics import fixtures
from forensics.browse import from_saved
from forensics.errors import BadInputError
from forensics.replay import ReplayConfig, run_replay
from forensics.saved import open_result, save_result
from forensics.theme import make_console


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def tui(
    source: Annotated[Optional[Path], typer.Argument(help="A saved result (`replay --save`), or a trace (replayed first, in a child). Default: the bundled SEGV fixture.", show_default=False)] = None,
    probe: Annotated[Optional[str], typer.Option("--probe", help="With a trace: HAKMEM_HEADER_PROBE for the replay.")] = None,
    no_inspect: Annotated[bool, typer.Option("--no-inspect", help="Never replay to explain an event in depth (the saved records only).")] = False,
) -> None:
    """Browse a replay: a virtual event table (fast on a million events), filters, jump keys
    (next anomaly, the crash, the allocation, the previous free), a detail pane with the full
    explanation, and a summary pane that follows the filter. `?` lists the keys."""
    from forensics.tui import ExplorerApp

    path = source if source is not None else fixtures.find_fixture()
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        if not _is_zip(path):
            config = ReplayConfig(probe=probe)
            with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=make_console(stderr=True), transient=True) as bar:
                task = bar.add_task("replay", total=None)
                result = run_replay(path, config, progress=lambda d, t: bar.update(task, completed=d, total=t), keep_events=True)
            saved_path = save_result(result, config, Path(tmp) / "result.hfres")
        else:
            saved_path = path
        with open_result(saved_path) as saved:
            app = ExplorerApp(from_saved(saved), source=str(path), saved=saved, inspect=not no_inspect)
            app.run()
