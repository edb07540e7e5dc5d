#!/usr/bin/env python3
"""Fuzz target: the binary trace reader (forensics/trace/binary.py), and binary -> text -> binary.

Any input is either read or rejected with a TraceFormatError (file, byte offset, reason); a
header claiming more events than the file holds is rejected before anything is allocated for
them. A trace the reader accepts converts to text and back to the same events.

    python3 scripts/fuzz/fuzz_binary_trace.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

NAME = "binary_trace"


def instrument() -> None:
    global convert, iter_raw, BinaryTraceReader
    from forensics.trace import BinaryTraceReader, convert, iter_raw  # noqa: F401


def _binary(text: bytes, records: list[tuple], num_events: int | None = None, num_objects: int = 4) -> bytes:
    ro = (64 + len(text) + 7) // 8 * 8
    head = struct.pack("<8sIIQIIQII16x", b"HKTRACE\0", 1, 48, len(records) if num_events is None else num_events,
                       num_objects, 1, ro, len(text), 0)
    return head + text + b"\0" * (ro - 64 - len(text)) + b"".join(struct.pack("<BBHIIIQqQQ", *r) for r in records)


def seeds() -> list[bytes]:
    text = b"# hakmem-trace v1\n"
    recs = [(1, 0, 0, 1, 1, 0, 16, 0, 0, 0), (3, 0, 0, 1, 2, 1, 32, 0, 0, 0), (9, 0, 0, 1, 0, 0, 0, -8, 0, 0),
            (12, 0, 0, 1, 2, 0, 4, -32, 0xdeadbeef, 0), (5, 0, 0, 1, 2, 0, 0, 0, 0, 0x401000)]
    out = [_binary(text, recs), _binary(text, []), _binary(text, recs[:1], num_events=10**12),
           _binary(text + b"# knob HAKMEM_MODE=direct\n", recs)]
    out += [p.read_bytes() for p in sorted((_harness.ROOT / "fixtures" / "bad").glob("*.htb"))]
    return out


def one_input(data: bytes) -> None:
    src = _harness.scratch("in.htb")
    src.write_bytes(data)

    def read() -> list:
        with BinaryTraceReader(src) as reader:
            return list(reader.iter_raw())

    events = _harness.expect_bad_input(read)
    if events is None:
        return
    text, back = _harness.scratch("rt.trace"), _harness.scratch("rt.htb")
    convert(src, text, to="text")
    convert(text, back, to="binary")
    assert list(iter_raw(text)) == events, "text round trip changed the events"
    assert list(iter_raw(back)) == events, "binary round trip changed the events"


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
