#!/usr/bin/env python3
"""Fuzz target: the glibc mtrace importer (forensics/importers/mtrace.py).

    python3 scripts/fuzz/fuzz_mtrace.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
import _importer  # noqa: E402

NAME = "mtrace"


def instrument() -> None:
    import forensics.importers  # noqa: F401
    import forensics.importers.addrmap  # noqa: F401
    import forensics.importers.mtrace  # noqa: F401


def seeds() -> list[bytes]:
    return [
        b"= Start\n@ ./prog:[0x11b0] + 0x55ec00d614a0 0x64\n@ ./prog:[0x120e] - 0x55ec00d614a0\n"
        b"@ ./prog:[0x11d8] < 0x55ec00d614a0\n@ ./prog:[0x11d8] > 0x55ec00d615a0 0x1388\n"
        b"@ /lib/libc.so.6:(__libc_foo+0x12)[0x7f00] ! 0x55ec00d614a0 0x1388\n- 0x55ec00d615a8\n= End\n",
        b"+ 0x10 0x10\n- 0x10\n- 0x10\n- 0x18\n+ (nil) 0x0\n",
    ]


def one_input(data: bytes) -> None:
    _importer.run("mtrace", data)


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
