#!/usr/bin/env python3
"""Fuzz target: the Android malloc_debug record_allocs importer (forensics/importers/android.py),
plain, gzip and zip (the input's first byte picks the container).

    python3 scripts/fuzz/fuzz_android.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
import _importer  # noqa: E402

NAME = "android"


def instrument() -> None:
    import forensics.importers  # noqa: F401
    import forensics.importers.addrmap  # noqa: F401
    import forensics.importers.android  # noqa: F401


def seeds() -> list[bytes]:
    log = (b"1000: malloc 0xb4000078b1c2d010 64 100 200\n1000: calloc 0xb4000078b1c2d110 4 16\n"
           b"1001: realloc 0xb4000078b1c2d210 0xb4000078b1c2d010 128 300 400 5\n1001: free 0xb4000078b1c2d210 10 20 3\n"
           b"1000: memalign 0xb4000078b1c2e000 4096 100\n1000: free 0xb4000078b1c2e008\n1001: thread_done 0x0 500\n")
    return [b"p" + log, b"g" + log, b"z" + log, b"p1: free 0x0\n"]


def one_input(data: bytes) -> None:
    kind, body = data[:1], data[1:]
    lenient = bool(body[-1:]) and body[-1] & 1 == 1
    if kind == b"z":  # a zip holding the log (what Android's bugreports hold)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("record_allocs.txt", body)
        _importer.run("android", buf.getvalue(), ".zip", lenient)
    elif kind == b"g":
        _importer.run("android", gzip.compress(body, mtime=0), ".gz", lenient)
    elif kind == b"r":  # raw bytes as the file: broken containers too
        _importer.run("android", body, ".zip", lenient)
    else:
        _importer.run("android", body, ".log", lenient)


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
