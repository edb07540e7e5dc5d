"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import typer

from forensics.errors import BadInputError


class ProbeChoice(str, Enum):
    """--probe: HAKMEM_HEADER_PROBE values."""

    off = "off"
    seed_mincore = "seed-mincore"
    seed_msync = "seed-msync"
    mincore = "mincore"
    safe = "safe"


class ModeChoice(str, Enum):
    """--mode: HAKMEM_MODE values."""

    direct = "direct"
    ldpreload = "ldpreload"


class AllocatorChoice(str, Enum):
    """--allocator: hakmem-ref (or --lib), or libc as the baseline."""

    hakmem = "hakmem"
    libc = "libc"


def parse_knobs(items: list[str] | None) -> dict[str, str]:
    """--knob NAME=VALUE options as a dict, checked like a trace header's `# knob` lines."""
    from forensics.trace import TraceFormatError, TraceHeader

    if not items:
        return {}
    try:
        return TraceHeader.parse(["# hakmem-trace v1", *(f"# knob {k}" for k in items)], "--knob", 0).knobs
    except TraceFormatError as exc:
        raise BadInputError(f"--knob: {exc.reason}") from None


def write_json(document: dict[str, Any], target: str) -> None:
    """Write a JSON report to target ('-' = stdout); a file that cannot be written is bad input."""
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if target == "-":
        typer.echo(text, nl=False)
        return
    try:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise BadInputError(f"{target}: cannot write JSON: {exc.strerror}") from None


def write_text(text: str, target) -> None:
    """Write a text report (HTML) to a file, atomically: a temporary file renamed into place."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=str(path.parent.resolve()))
    except OSError as exc:
        raise BadInputError(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BadInputError(f"{target}: cannot write: {exc.strerror or exc}") from None


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
