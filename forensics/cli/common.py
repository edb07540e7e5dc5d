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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str, option: str) -> int | None:
    """A size option ('8G', '512M', '1048576', '0' or 'none' for no limit) in bytes; None: no limit."""
    import re

    t = text.strip().lower()
    if t in ("0", "none", "off", "unlimited"):
        return None
    m = re.fullmatch(r"(\d{1,15}(?:\.\d{1,6})?)\s*([a-z]*)", t)
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise BadInputError(f"{option} {text!r}: not a size (write it as 8G, 512M, 65536 or none)")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value < 1 << 20:
        raise BadInputError(f"{option} {text!r}: less than 1 MiB leaves the replay no room to start")
    return value


def write_json(document: dict[str, Any], target: str) -> None:
    """Write a JSON report to target ('-' = stdout); a file that cannot be written is bad input."""
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if target == "-":
        typer.echo(text, nl=False)
        return
    # a temporary file renamed into place: an interrupted write never leaves half a document
    from forensics.safeio import AtomicOutput

    try:
        out = AtomicOutput(target, text=True)
    except BadInputError as exc:
        raise BadInputError(str(exc).replace(": cannot write:", ": cannot write JSON:", 1)) from None
    with out:
        out.write(text)


def write_text(text: str, target) -> None:
    """Write a text report (HTML) to a file, atomically: a temporary file renamed into place."""
    from forensics.safeio import write_text_atomic

    write_text_atomic(target, text)
