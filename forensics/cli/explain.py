"""`hakmem-forensics explain`: explain events or addresses of a saved replay result."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import explain as explain_mod
from forensics.cli.common import write_json, write_text
from forensics.errors import BadInputError
from forensics.replay import ReplayConfig, run_replay
from forensics.report import explain as explain_report
from forensics.report import html as html_report
from forensics.safeio import open_input
from forensics.saved import open_result, save_result
from forensics.theme import make_console


def parse_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise BadInputError(f"--ptr {text!r}: not an address (write it as 0x7f... or in decimal)") from None
    if not 0 <= value < 1 << 64:
        raise BadInputError(f"--ptr {text!r}: out of range for a 64-bit address")
    return value


def explain(
    result: Annotated[Path, typer.Argument(help="A saved result (`replay --save FILE`), or a trace: it is replayed first.", show_default=False)],
    event: Annotated[Optional[list[int]], typer.Option("--event", "-e", metavar="N", help="Explain event N (repeatable). Default: the crash and the first anomaly of each kind.")] = None,
    ptr: Annotated[Optional[list[str]], typer.Option("--ptr", metavar="ADDR", help="Explain an address (repeatable): provenance, owner, probe verdicts, mapping.")] = None,
    at: Annotated[Optional[int], typer.Option("--at", metavar="N", help="With --ptr: as the heap stood just before event N (default: the end, or the crash).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE|-", help=f"Also write the explanations as JSON (schema {explain_report.SCHEMA}); '-' = stdout only.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", help="Also write a self-contained HTML page.")] = None,
) -> None:
    """Explain an event or an address: what Valgrind would say, then the route, the stages and why
    each lookup missed, the header bytes and who owns them, the crash and its chain of causes.

    Each event is inspected on a fresh replay stopped just before it (serial, ASLR off, so the
    addresses are the saved result's)."""
    addrs = [parse_address(p) for p in (ptr or [])]
    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-") as tmp:
        path = result
        if not _is_saved_result(result):
            # a trace: replay it with its own knobs, save, explain
            config = ReplayConfig()
            res = run_replay(result, config, keep_events=True)
            path = save_result(res, config, Path(tmp) / "result.hfres")
        with open_result(path) as saved:
            explanations = explain_mod.explain_result(saved, events=event or (), addrs=addrs, at=at)
    if not explanations:
        typer.echo("nothing to explain: the replay has no crash and no anomaly (name an event with --event N)", err=True)
    if html_out is not None:
        write_text(html_report.explain_page(str(result), explanations), html_out)
    if json_out is not None:
        write_json(explain_report.to_json(str(result), explanations), json_out)
        if json_out == "-":
            return
    explain_report.render(explanations, make_console())


def _is_saved_result(path: Path) -> bool:
    with open_input(path, "saved result or trace") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive, an empty one too
