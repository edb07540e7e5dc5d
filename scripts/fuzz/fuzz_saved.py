#!/usr/bin/env python3
"""Fuzz target: saved results (forensics/saved.py open_result), and what reads them without a
replay: the event columns (browse.from_saved), the events, the crash, explain's choice of events.

The input is either a whole archive (first byte 'a': raw bytes, broken zips included) or a
recipe applied to a small valid archive: replace one member with the input, or splice the input
into result.json. Any of them opens, or is rejected with BadInputError.

    python3 scripts/fuzz/fuzz_saved.py [CORPUS] -max_total_time=600 -rss_limit_mb=2048
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

NAME = "saved"
_MEMBERS = ("result.json", "events.bin", "trace.htb")


def instrument() -> None:
    global saved, browse, explain
    from forensics import browse, explain, saved  # noqa: F401


def _trace(n: int) -> bytes:
    text = b"# hakmem-trace v1\n"
    ro = (64 + len(text) + 7) // 8 * 8
    recs = [(1, 0, 0, 1, 1, 0, 16, 0, 0, 0), (5, 0, 0, 1, 1, 0, 0, 0, 0, 0)][:n]
    head = struct.pack("<8sIIQIIQII16x", b"HKTRACE\0", 1, 48, len(recs), 1, 1, ro, len(text), 0)
    return head + text + b"\0" * (ro - 64 - len(text)) + b"".join(struct.pack("<BBHIIIQqQQ", *r) for r in recs)


def _events() -> bytes:
    ev = struct.Struct("<QQIIIIiIiBBBB")
    return ev.pack(0x1000, 0, 0, 0, 0, 0, -1, 0, -1, 1, 0, 2, 0) + ev.pack(0x1000, 1, 2, 1, 1, 1, -1, 0, -1, 1, 1, 2, 0)


def _doc() -> dict:
    return {
        "schema": "hakmem-forensics/result/1",
        "replay": {"knobs": {"HAKMEM_HEADER_PROBE": "safe"}, "anomalies": [{"event_index": 1, "outcome": "misrouted"}],
                   "crash": {"signo": 11, "si_code": 1, "fault_address": 4064, "ptr": 4096, "stage": "magic_read",
                             "free_seq": 1, "event_index": 1, "tid": 1, "maps": ["00400000-00401000 r-xp 0 0:0 0 /x"]}},
        "config": {"lib": None, "libc": False, "overrides": {}, "threads": False, "judge": True, "check_every": 0},
        "trace_source": "x.trace",
    }


def _archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def _good() -> dict[str, bytes]:
    return {"result.json": json.dumps(_doc()).encode(), "events.bin": _events(), "trace.htb": _trace(2)}


def seeds() -> list[bytes]:
    good = _good()
    return [b"a" + _archive(good), b"j" + good["result.json"], b"e" + good["events.bin"], b"t" + good["trace.htb"],
            b"j" + json.dumps({**_doc(), "replay": {"crash": {"x": 1}}}).encode(), b"a" + b"PK\x05\x06" + b"\0" * 18]


def one_input(data: bytes) -> None:
    kind, body = data[:1], data[1:]
    if kind == b"a":
        archive = body
    else:
        members = _good()
        if kind == b"j":
            members["result.json"] = body
        elif kind == b"e":
            members["events.bin"] = body
        elif kind == b"t":
            members["trace.htb"] = body
        elif kind == b"d" and body:
            members.pop(_MEMBERS[body[0] % 3])
        archive = _archive(members)
    path = _harness.scratch("in.hfres")
    path.write_bytes(archive)
    s = _harness.expect_bad_input(lambda: saved.open_result(path))
    if s is None:
        return
    with s:
        cols = browse.from_saved(s)
        for i in range(min(s.num_events, 20)):
            s.get_event(i)
            cols.get_row(i)
        s.get_crash()
        explain.pick_events(s)


if __name__ == "__main__":
    _harness.main(sys.argv, NAME, seeds, one_input, instrument)
