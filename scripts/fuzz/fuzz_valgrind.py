#!/usr/bin/env python3
"""Fuzz target: the Valgrind --trace-malloc=yes importer (forensics/importers/valgrind.py).

Any log is imported or rejected with FILE:LINE: reason; an imported log always makes traces
the trace reader accepts (the importer never writes an out-of-range number).

    python3 scripts/fuzz/fuzz_valgrind.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
import _importer  # noqa: E402

NAME = "valgrind"


def instrument() -> None:
    import forensics.importers  # noqa: F401
    import forensics.importers.addrmap  # noqa: F401
    import forensics.importers.valgrind  # noqa: F401


def seeds() -> list[bytes]:
    return [
        b"==42== Memcheck, a memory error detector\n==42== Command: ./prog\n--42-- malloc(100) = 0x4A8B040\n"
        b"--42-- calloc(4,32) = 0x4A8B0F0\n--42-- realloc(0x4A8B040,5000) = 0x4A8B1C0\n--42-- free(0x4A8B1C0)\n"
        b"--42-- memalign(al 64, size 200) = 0x4A8C600\n--42-- _Znwm(24) = 0x4A8D000\n--42-- _ZdlPv(0x4A8D008)\n"
        b"==42== Invalid free() / delete / delete[] / realloc()\n==42==  Address 0x4A8D008 is 8 bytes inside a block of size 24 alloc'd\n"
        b"--42-- realloc(0x4A8B0F0,0)free(0x4A8B0F0)\n--42--  = 0\n--43-- malloc(8)\n--43--  = 0x10\n",
        b"--00:00:00:00.486 4242-- malloc(10) = 0x1000\n--4242-- free(0x1000)\n--4242-- free(0x1000)\n",
    ]


def one_input(data: bytes) -> None:
    _importer.run("valgrind", data)


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
