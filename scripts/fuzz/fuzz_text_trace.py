#!/usr/bin/env python3
"""Fuzz target: the text trace reader (forensics/trace/text.py), and text -> binary -> text.

Any input is either read or rejected with a TraceFormatError (file, line, reason); a trace the
reader accepts converts to binary and back to the same events. See _harness.py for options:

    python3 scripts/fuzz/fuzz_text_trace.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

NAME = "text_trace"


def instrument() -> None:
    global convert, iter_raw
    from forensics.trace import convert, iter_raw  # noqa: F401


def seeds() -> list[bytes]:
    root = _harness.ROOT
    out = [b"# hakmem-trace v1\n1 malloc 1 16\n1 free 1\n", b"# hakmem-trace v1\n# knob HAKMEM_MODE=direct\n# meta a=b\n"]
    for p in sorted((root / "fixtures" / "bad").glob("*.trace")):
        out.append(p.read_bytes())
    doc = (root / "docs" / "trace-format.md").read_text()
    start = doc.index("```\n# hakmem-trace v1") + 4
    out.append(doc[start : doc.index("```", start)].encode())
    big = (root / "fixtures" / "random-mixed.trace").read_bytes()
    out.append(big[:4000])
    return out


def one_input(data: bytes) -> None:
    src = _harness.scratch("in.trace")
    src.write_bytes(data)
    events = _harness.expect_bad_input(lambda: list(iter_raw(src)))
    if events is None:
        return
    binary, back = _harness.scratch("rt.htb"), _harness.scratch("rt.trace")
    convert(src, binary, to="binary")
    convert(binary, back, to="text")
    assert list(iter_raw(binary)) == events, "binary round trip changed the events"
    assert list(iter_raw(back)) == events, "text round trip changed the events"


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
