"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import json
from typing import Any

import typer

from forensics.errors import BadInputError


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
