"""`hakmem-forensics info`: describe a library file (read with pyelftools, never loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from forensics import abi, elf
from forensics.cli.common import write_json
from forensics.report import info as info_report
from forensics.theme import make_console


def info(
    lib: Annotated[
        Optional[Path],
        typer.Option("--lib", metavar="PATH", help="Allocator library to describe (default: $HAKMEM_LIB, else the bundled libhakmem.so)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Describe the bundled debug build (libhakmem_debug.so).")] = False,
    json_out: Annotated[
        Optional[str],
        typer.Option("--json", metavar="FILE|-", help=f"Also write the report as JSON (schema {info_report.SCHEMA}); '-' = stdout only."),
    ] = None,
) -> None:
    """Describe an allocator library file: ABI version, build mode, geometry constants, ABI symbols.

    The file is read with pyelftools and never loaded, so a broken or foreign build is safe to inspect.
    """
    path = abi.find_allocator(lib, debug=debug)
    record = elf.read_library_info(path)
    if json_out is not None:
        write_json(info_report.to_json(record), json_out)
        if json_out == "-":
            return
    info_report.render(record, make_console())
