"""`hakmem-forensics convert IN OUT`: text <-> binary trace conversion, lossless, checked as it streams."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from forensics.cli.gen import progress_reporter
from forensics.errors import EXIT_BAD_INPUT
from forensics.trace import BinaryTraceReader, convert as convert_trace, sniff
from forensics.trace.io import BINARY_SUFFIX, TEXT_SUFFIXES, Format

EPILOG = (
    f"Exit status: 0 converted; 2 usage error; {EXIT_BAD_INPUT} bad input (missing or malformed trace, "
    "with file and line or byte offset; unwritable output)."
)
PROGRESS_MIN_BYTES = 16 << 20


def _target_format(out: Path) -> Format | None:
    if out.suffix == BINARY_SUFFIX:
        return "binary"
    if out.suffix in TEXT_SUFFIXES:
        return "text"
    return None


def convert(
    src: Annotated[Path, typer.Argument(metavar="IN", help="Trace to read, text or binary (sniffed from its first bytes).")],
    dst: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Trace to write: .htb binary, .trace/.txt text, any other name the other encoding."),
    ],
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="Do not check object semantics (ids live when used); the format is always checked."),
    ] = False,
) -> None:
    """Convert a trace between the text and binary formats (docs/trace-format.md).

    The input's encoding is sniffed; the output's comes from OUT's name, else it is the other one. Text -> binary -> text gives back canonical text byte for byte; same-encoding output is a canonical rewrite.

    The input is checked as it streams: the first problem stops the conversion with its file and line (text) or byte offset (binary), and OUT is not left behind.
    """
    to = _target_format(dst)
    size = os.path.getsize(src) if src.is_file() else 0
    total = None
    if size and sniff(src) == "binary":
        with BinaryTraceReader(src) as reader:
            total = reader.num_events
    with progress_reporter(f"convert {src.name}", total, enabled=size >= PROGRESS_MIN_BYTES) as progress:
        result = convert_trace(src, dst, to=to, check=not no_check, progress=progress)
    typer.echo(
        f"converted {src} ({result.src_format}) -> {dst} ({result.dst_format}): {result.stats.describe(result.header)}"
    )
