#!/usr/bin/env python3
"""The bad-input corpus beyond the trace readers: fixtures/bad/<reader>/ (deterministic).

    python scripts/make_bad_inputs.py [OUT_DIR]     # default: the repo's fixtures/; make_fixtures.py calls it too

One directory per reader; the directory says which command reads its cases (fixtures/README.md):

    bad/*.trace, bad/*.htb   hakmem-forensics convert FILE OUT         (the trace readers; make_fixtures.py)
    bad/valgrind/            hakmem-forensics import valgrind FILE -o OUT
    bad/android/             hakmem-forensics import android FILE -o OUT   (plain, .gz and .zip)
    bad/mtrace/              hakmem-forensics import mtrace FILE -o OUT
    bad/routes/              hakmem-forensics routes FILE
    bad/tui-log/             hakmem-forensics tui FILE               (a route log for the TUI: browse.from_log)
    bad/saved/               hakmem-forensics explain FILE           (saved results, .hfres)
    bad/replay/              hakmem-forensics replay FILE --explain 0  (traces the reader accepts, the replay cannot run)

Sidecars: NAME.err is the one line the command prints after "hakmem-forensics: error: " (exit status 3,
nothing on stdout); NAME.ok lists KEY=VALUE facts of the `routes --json` report's file entry for a log
the reader must accept (exit status 0). The expected texts are written out here by hand, not computed by
the readers, so the tests that compare against them can fail. Big cases (10 MB lines, gzip and zip
bombs, 10,000 threads, symlinks, FIFOs, unreadable files) are made at test time
(tests/test_bad_inputs.py), never committed.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------- helpers
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive with fixed timestamps and attributes: the same bytes on every run."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            info.create_system = 3
            z.writestr(info, data)
    return buf.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _binary_trace(text: bytes, records: list[tuple], *, num_events: int | None = None, num_objects: int = 2,
                  num_threads: int = 1) -> bytes:
    """A binary trace built by hand from csrc/hftrace.h, independent of the writer."""
    ro = (64 + len(text) + 7) // 8 * 8
    head = struct.pack("<8sIIQIIQII16x", b"HKTRACE\0", 1, 48, len(records) if num_events is None else num_events,
                       num_objects, num_threads, ro, len(text), 0)
    return head + text + b"\0" * (ro - 64 - len(text)) + b"".join(struct.pack("<BBHIIIQqQQ", *r) for r in records)


# ----------------------------------------------------------------------------------- importers
VG = b"==42== Memcheck, a memory error detector\n==42== Command: ./prog\n"
VALGRIND: dict[str, tuple[bytes, str]] = {
    "not-valgrind.log": (b"hello world\nthis is not a valgrind log\n",
                         ":1: no valgrind output here (expected lines like '--PID-- malloc(100) = 0x...' from valgrind --trace-malloc=yes)"),
    "binary-junk.log": (bytes(range(256)) * 4,
                        ":1: no valgrind output here (expected lines like '--PID-- malloc(100) = 0x...' from valgrind --trace-malloc=yes)"),
    "size-2-64.log": (VG + b"--42-- malloc(18446744073709551616) = 0x4A8B040\n",
                      ":3: size 18446744073709551616 is out of range (max 18446744073709551615)"),
    "long-number.log": (VG + b"--42-- malloc(" + b"9" * 60 + b") = 0x4A8B040\n",
                        ":3: cannot read the arguments of malloc(999999999999999999999999999999999999999999999999999999999999)"),
    "huge-address.log": (VG + b"--42-- malloc(16) = 0x1" + b"0" * 24 + b"\n",
                         ":3: address 0x1000000000000000000000000 is out of range (max 0xffffffffffffffff)"),
    "no-result.log": (VG + b"--42-- malloc(16) = 0x4A8B040\n--42-- calloc(4,8)\n", ":4: calloc(...) has no result (the log ends first)"),
    "result-without-call.log": (VG + b"--42--  = 0x4A8B040\n", ":3: a result (0x4A8B040) with no call before it"),
    "nul-byte.log": (VG + b"--42-- malloc(16\x00) = 0x4A8B040\n", ":3: cannot read the arguments of malloc(16\\x00)"),
    "truncated.log.gz": (_gz(VG + b"--42-- malloc(16) = 0x4A8B040\n--42-- free(0x4A8B040)\n" * 40)[:60],
                         ":1: truncated compressed stream (the file ends inside it)"),
}

ANDROID: dict[str, tuple[bytes, str]] = {
    "negative-size.txt": (b"1000: malloc 0xb4000078b1c2d010 64\n1000: malloc 0xb4000078b1c2d110 -5\n", ":2: size -5 is negative"),
    "size-2-64.txt": (b"1000: malloc 0xb4000078b1c2d010 18446744073709551616\n",
                      ":1: size 18446744073709551616 is out of range (max 18446744073709551615)"),
    "tid-2-32.txt": (b"4294967296: malloc 0xb4000078b1c2d010 64\n", ":1: bad number in '4294967296: malloc 0xb4000078b1c2d010 64'"),
    "unknown-op.txt": (b"1000: mallocx 0x10 64\n", ":1: unknown op 'mallocx' (malloc, calloc, memalign, realloc, free, thread_done)"),
    "field-count.txt": (b"1000: malloc 0x10\n", ":1: malloc takes PTR SIZE [START END], got '1000: malloc 0x10'"),
    "garbage.txt": (b"\x00\x01\x02 binary \xff\xfe junk\n", ":1: expected 'TID: OP PTR ...', got '\\x00\\x01\\x02 binary \\xff\\xfe junk'"),
    "empty.zip": (b"PK\x05\x06" + b"\0" * 18, ": the zip archive is empty"),
    "two-members.zip": (_zip([("a.bin", b"1: free 0x0\n"), ("b.bin", b"1: free 0x0\n")]),
                        ": the zip archive holds 2 files; expected one log"),
    "not-a-zip.zip": (b"PK\x03\x04" + b"garbage" * 4, ": unreadable zip archive: File is not a zip file"),
    "truncated.zip": (_zip([("record_allocs.txt", b"1000: malloc 0x10 64\n" * 50)])[:70],
                      ": unreadable zip archive: File is not a zip file"),
}


def _crc_damaged_zip() -> bytes:
    data = bytearray(_zip([("record_allocs.txt", b"1000: malloc 0x10 64\n1000: free 0x10\n")], zipfile.ZIP_STORED))
    at = data.index(b"1000: malloc") + 6
    data[at : at + 6] = b"calloc"  # the bytes change, the CRC in the headers does not
    return bytes(data)


ANDROID_IN_ZIP: dict[str, tuple[bytes, str]] = {
    "bad-crc.zip": (_crc_damaged_zip(), "[record_allocs.txt]:1: damaged compressed stream: Bad CRC-32 for file 'record_allocs.txt'"),
    "negative-size.zip": (_zip([("record_allocs.txt", b"1000: malloc 0x10 -1\n")]), "[record_allocs.txt]:1: size -1 is negative"),
}

MTRACE: dict[str, tuple[bytes, str]] = {
    "garbage.txt": (b"= Start\nhello world\n", ":2: expected '@ CALLER OP PTR [SIZE]' (OP one of + - < > !), got 'hello world'"),
    "size-2-64.txt": (b"= Start\n@ ./prog:[0x11b0] + 0x55ec00d614a0 0x10000000000000000\n",
                      ":2: size 18446744073709551616 is out of range (max 18446744073709551615)"),
    "site-2-64.txt": (b"= Start\n@ ./prog:[0x10000000000000000] + 0x55ec00d614a0 0x10\n",
                      ":2: call site 0x10000000000000000 is out of range (max 0xffffffffffffffff)"),
    "missing-size.txt": (b"= Start\n@ ./prog:[0x11b0] + 0x55ec00d614a0\n", ":2: '+' takes PTR SIZE, got '@ ./prog:[0x11b0] + 0x55ec00d614a0'"),
    "unpaired-realloc.txt": (b"= Start\n@ ./prog:[0x11d8] < 0x55ec00d614a0\n",
                             ":2: a realloc '<' line is not followed by its '>' line (the file ends first)"),
    "orphan-realloc.txt": (b"= Start\n@ ./prog:[0x11d8] > 0x55ec00d615a0 0x1388\n", ":2: a realloc '>' line without the '<' line before it"),
}

# ----------------------------------------------------------------------------------- route logs
ROUTE = (b"[hakmem-route] seq=1 tid=42 ptr=0x7f0000100000 route=ss_hit action=tiny_free tried=ss hit=ss probe=- "
         b"magic=- method=-\n")
ROUTES_ERR: dict[str, tuple[bytes, str]] = {
    # the report of what came before the damage is printed first, then this line, exit status 3
    "truncated.log.gz": (_gz(ROUTE * 200)[:80], "damaged input: fixtures/bad/routes/truncated.log.gz: truncated gzip stream at compressed offset 80"),
}
ROUTES_OK: dict[str, tuple[bytes, str]] = {
    # logs the reader takes as they are: non-hakmem lines skipped and counted, hakmem-tagged ones that
    # do not parse counted as malformed (numbers longer than 20 digits included)
    "garbage.log": (b"hello\nworld\n" + ROUTE + b"not hakmem either\n", "lines=4 route_lines=1 other_lines=3 malformed_lines=0"),
    "binary-junk.log": (b"\x00\x01\x02\xff\xfe\n\x7fELF\x02\x01\x00\n" + ROUTE, "lines=3 route_lines=1 other_lines=2 binary_lines=2"),
    "malformed.log": (ROUTE + b"[hakmem-route] seq=" + b"9" * 30 + b" tid=1 ptr=0x10 route=ss_hit action=tiny_free tried=ss hit=ss "
                      b"probe=- magic=- method=-\n[hakmem-route] garbage\n[hakmem] CRASH: nonsense\n[hakmem-alloc] seq=-1\n",
                      "lines=5 route_lines=1 malformed_lines=4"),
    "no-newline.log": (ROUTE + ROUTE.rstrip(b"\n"), "lines=2 route_lines=2 truncated_last_line=true"),
    "markup.log": (ROUTE + b"[hakmem-route] [bold]not[/bold] a route [/]\n[hakmem] WARNING: ignoring HAKMEM_X=[/]\n",
                   "lines=3 route_lines=1 malformed_lines=1 message_lines=1"),
}
TUI_LOG: dict[str, tuple[bytes, str]] = {
    "garbage.log": (b"hello\nworld\n", ": no [hakmem-route] or [hakmem-alloc] lines (is HAKMEM_FREE_ROUTE_TRACE=1 set?)"),
    "numbers-too-big.log": (b"[hakmem-route] seq=1 tid=4294967296 ptr=0x10 route=ss_hit action=tiny_free tried=ss hit=ss "
                            b"probe=- magic=- method=-\n[hakmem-alloc] seq=1 free_seq=0 tid=1 ptr=0x10000000000000000 size=16 "
                            b"align=0 path=tiny\n",
                            ": no [hakmem-route] or [hakmem-alloc] lines (is HAKMEM_FREE_ROUTE_TRACE=1 set?)"),
    "truncated.log.gz": (_gz(ROUTE * 200)[:80], ": cannot read log: truncated gzip stream"),
}

# ----------------------------------------------------------------------------------- saved results
_TEXT = b"# hakmem-trace v1\n"
_TRACE2 = _binary_trace(_TEXT, [(1, 0, 0, 1, 1, 0, 16, 0, 0, 0), (5, 0, 0, 1, 1, 0, 0, 0, 0, 0)], num_objects=1)
_EVENTS2 = (struct.pack("<QQIIIIiIiBBBB", 0x7F0000100000, 0, 0, 0, 0, 0, -1, 0, -1, 1, 0, 2, 0)
            + struct.pack("<QQIIIIiIiBBBB", 0x7F0000100000, 1, 2, 1, 1, 1, -1, 0, -1, 1, 1, 2, 0))


def _doc(**replay) -> dict:
    doc = {
        "schema": "hakmem-forensics/result/1",
        "replay": {"schema": "hakmem-forensics/replay/1", "knobs": {}, "crash": None, "anomalies": [], **replay},
        "config": {"lib": None, "libc": False, "overrides": {}, "threads": False, "judge": True, "check_every": 0},
        "trace_source": "two.trace",
    }
    return doc


def _saved(doc: dict | bytes, events: bytes = _EVENTS2, trace: bytes = _TRACE2, drop: str = "") -> bytes:
    result = doc if isinstance(doc, bytes) else json.dumps(doc, indent=1).encode()
    members = [(n, d) for n, d in (("result.json", result), ("events.bin", events), ("trace.htb", trace)) if n != drop]
    return _zip(members)


def _negative_member_offset() -> bytes:
    """The central directory says it starts 1000 bytes later than it does: every member's header
    offset comes out negative (a seek that fails with EINVAL, found by fuzzing)."""
    data = bytearray(_saved(_doc()))
    eocd = data.rindex(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", data, eocd + 16)
    struct.pack_into("<I", data, eocd + 16, offset + 1000)
    return bytes(data)


SAVED: dict[str, tuple[bytes, str]] = {
    "not-a-zip.hfres": (b"PK\x03\x04" + b"garbage" * 8, ": not a saved result (not a zip archive; write one with `replay --save FILE`)"),
    "truncated.hfres": (_saved(_doc())[:200], ": not a saved result (not a zip archive; write one with `replay --save FILE`)"),
    "empty-zip.hfres": (b"PK\x05\x06" + b"\0" * 18, ": not a saved result (missing 'result.json')"),
    "missing-events.hfres": (_saved(_doc(), drop="events.bin"), ": not a saved result (missing 'events.bin')"),
    "corrupt-json.hfres": (_saved(b'{"schema": '), ": corrupt saved result: result.json: Expecting value: line 1 column 12 (char 11)"),
    "json-list.hfres": (_saved(b"[1, 2, 3]"), ": corrupt saved result: result.json is a JSON list, not an object"),
    "deep-json.hfres": (_saved(b"[" * 100_000), ": corrupt saved result: result.json: JSON nested too deeply"),
    "wrong-schema.hfres": (_saved({**_doc(), "schema": "hakmem-forensics/result/9"}),
                           ": not a saved result of this version (schema 'hakmem-forensics/result/9', expected 'hakmem-forensics/result/1')"),
    "no-replay.hfres": (_saved({"schema": "hakmem-forensics/result/1"}), ": corrupt saved result: result.replay is missing"),
    "bad-config.hfres": (_saved({**_doc(), "config": {"check_every": "x"}}),
                         ": corrupt saved result: config.check_every is 'x', not an integer"),
    "bad-crash.hfres": (_saved(_doc(crash={"stage": "[bold]magic_read[/]"})), ": corrupt saved result: replay.crash.signo is missing"),
    "events-size.hfres": (_saved(_doc(), events=_EVENTS2[:-1]),
                          ": corrupt saved result: 95 bytes of events for 2 trace events (expected 96)"),
    "bad-trace.hfres": (_saved(_doc(), trace=b"not a trace at all"),
                        ": corrupt saved result: trace.htb: offset 0: bad magic 'not a tr' (expected 'HKTRACE\\x00'): not a binary hakmem trace"),
    "trace-claims-1e12.hfres": (_saved(_doc(), trace=_binary_trace(_TEXT, [], num_events=10**12)),
                                ": corrupt saved result: trace.htb: offset 88: truncated: the header claims 1000000000000 events "
                                "ending at offset 48000000000088, but the file is 88 bytes"),
    "index-out-of-range.hfres": (_saved(_doc(anomalies=[{"event_index": 9, "outcome": "misrouted"}])),
                                 ": corrupt saved result: replay.anomalies[0].event_index is 9, but the trace has 2 events"),
    "negative-offset.hfres": (_negative_member_offset(), ": corrupt saved result: result.json: [Errno 22] Invalid argument"),
}

# ----------------------------------------------------------------------------------- replay
REPLAY: dict[str, tuple[bytes, str]] = {
    # a valid trace whose header asks for 2**32-1 objects: the replay's object table (16 bytes an
    # object) does not fit its memory limit, and says so
    "objects-4g.htb": (_binary_trace(_TEXT, [(1, 0, 0, 1, 1, 0, 16, 0, 0, 0)], num_objects=0xFFFFFFFF),
                       ": cannot allocate the object table for 4294967295 objects (within the replay's memory limit of 8 GiB; "
                       "--max-memory raises it)"),
}

GROUPS: dict[str, dict[str, tuple[bytes, str]]] = {
    "valgrind": VALGRIND,
    "android": {**ANDROID, **ANDROID_IN_ZIP},
    "mtrace": MTRACE,
    "routes": ROUTES_ERR,
    "tui-log": TUI_LOG,
    "saved": SAVED,
    "replay": REPLAY,
}


def make_bad_inputs(out: Path) -> list[Path]:
    """Write fixtures/bad/<reader>/ under out; returns the files written."""
    written: list[Path] = []
    for group, cases in GROUPS.items():
        d = out / "bad" / group
        d.mkdir(parents=True, exist_ok=True)
        for name, (data, error) in cases.items():
            rel = f"fixtures/bad/{group}/{name}"
            line = error if error.startswith("damaged input:") else rel + error
            (d / name).write_bytes(data)
            (d / f"{name}.err").write_text(line + "\n")
            written += [d / name, d / f"{name}.err"]
    d = out / "bad" / "routes"
    for name, (data, facts) in ROUTES_OK.items():
        (d / name).write_bytes(data)
        (d / f"{name}.ok").write_text(facts + "\n")
        written += [d / name, d / f"{name}.ok"]
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "fixtures"
    written = make_bad_inputs(out)
    print(f"wrote {len(written)} files in {out / 'bad'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
