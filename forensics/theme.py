"""The toolkit's one rich Theme: semantic style names, never raw colours in report code."""

from __future__ import annotations

import os
from typing import IO

from rich.console import Console
from rich.theme import Theme

from forensics.model import Route

THEME = Theme(
    {
        "title": "bold",
        "muted": "dim",
        "label": "bold cyan",
        "value.addr": "magenta",
        "value.num": "cyan",
        "value.text": "default",
        "build.release": "green",
        "build.debug": "yellow",
        "sym.present": "green",
        "sym.missing": "bold red",
        "sym.optional_missing": "yellow",
        "route.normal": "green",
        "route.header": "cyan",
        "route.fallback": "yellow",
        "route.invalid": "bold red",
        "outcome.ok": "green",
        "outcome.misrouted": "bold yellow",
        "outcome.leak": "yellow",
        "outcome.crash": "bold white on red",
        "outcome.hang": "bold red",
        "outcome.detected": "cyan",
        "warn": "yellow",
        "warn.leak": "yellow",
        "error": "bold red",
    }
)

_ROUTE_STYLES = {
    Route.NULL: "route.normal",
    Route.SS_HIT: "route.normal",
    Route.MID_HIT: "route.normal",
    Route.L25_HIT: "route.normal",
    Route.UNMAPPED_HEADER_FALLBACK: "route.fallback",
    Route.INVALID_MAGIC_TINY_RECOVERY: "route.fallback",
    Route.INVALID_MAGIC_SKIP: "route.invalid",
    Route.INVALID_MAGIC_LIBC: "route.invalid",
    Route.POOL_HDR_DISABLED: "route.invalid",
    Route.UNKNOWN_METHOD: "route.invalid",
}


def get_route_style(route: Route | None) -> str:
    if route is None:
        return "muted"
    return _ROUTE_STYLES.get(route, "route.header")


def make_console(file: IO[str] | None = None, *, stderr: bool = False, width: int | None = None) -> Console:
    """A themed console; width from the argument, else $COLUMNS, else rich's own guess."""
    if width is None and os.environ.get("COLUMNS", "").isdigit():
        width = int(os.environ["COLUMNS"])
    return Console(theme=THEME, file=file, stderr=stderr, width=width, highlight=False)
