#!/usr/bin/env python3
"""Fuzz target: route logs (forensics/routelog.py) through the `routes` report (JSON and rich,
markup included), and the TUI's reader of the same logs (browse.from_log). Plain or gzip (the
input's first byte picks).

Nothing in a log raises in `routes` (bad lines are counted); from_log accepts or raises
BadInputError. Rendering the report must not trip over markup in the log ('[/]' raises in
rich when it is taken for a tag).

    python3 scripts/fuzz/fuzz_routes.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

NAME = "routes"


def instrument() -> None:
    global routelog, routes_report, browse, make_console
    from forensics import browse, routelog  # noqa: F401
    from forensics.report import routes as routes_report  # noqa: F401
    from forensics.theme import make_console  # noqa: F401


def seeds() -> list[bytes]:
    lines = (
        b"[hakmem] PROCESS: pid=42 ppid=1 start=main free_seq=0 mode=direct probe=safe\n"
        b"[hakmem-alloc] seq=1 free_seq=0 tid=42 ptr=0x7f0000100000 size=64 align=0 path=tiny\n"
        b"[hakmem-reg] seq=1 free_seq=0 tid=42 op=register reg=ss base=0x7f0000100000 addr=0x7f0000100000 live=1\n"
        b"[hakmem-route] seq=1 tid=42 ptr=0x7f0000100000 route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-\n"
        b"[hakmem] ERROR: Invalid magic 0xABABABAB (expected 0x48414B4D)\n"
        b"[hakmem] reqtrace for 0x7f0000200000 (region 0x7f0000200000):\n"
        b"[hakmem-route] seq=2 tid=42 ptr=0x7f0000200000 route=invalid_magic_tiny_recovery action=tiny_free tried=ss,mid,l25,magic hit=- probe=- magic=0xABABABAB method=-\n"
        b"[hakmem] WARNING: Skipping free of invalid pointer 0x10 (may leak memory)\n"
        b"[hakmem] CRASH: SIGSEGV fault=0x7f00001fffe0 ptr=0x7f0000200000 stage=magic_read event=7 free_seq=3\n"
        b"[hakmem] STATS: pid=42 allocs=1 frees=2\n"
        b"[hakmem] WARNING: ignoring HAKMEM_X=[bold]\n"
    )
    return [b"p" + lines, b"g" + lines, b"p[hakmem-route] [/] [bold]\n\x00\xff\n"]


def one_input(data: bytes) -> None:
    kind, body = data[:1], data[1:]
    raw = gzip.compress(body, mtime=0) if kind == b"g" else body
    an = routelog.RouteLogAnalyzer(keep=8, max_pointers=64, max_regions=16)
    an.feed_stream(io.BytesIO(raw), "fuzz.log")
    result = an.result()
    json.dumps(routes_report.to_json(result))
    out = io.StringIO()
    routes_report.render(result, make_console(out, width=100))
    path = _harness.scratch("fuzz.log")
    path.write_bytes(raw)
    cols = _harness.expect_bad_input(lambda: browse.from_log(path))
    if cols is not None:
        for i in range(min(cols.n, 50)):
            cols.get_row(i)
            cols.get_event(i)


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
