#!/usr/bin/env python3
"""Regenerate the trace fixtures in fixtures/ (deterministic: two runs give identical files).

    python scripts/make_fixtures.py [OUT_DIR]     # default: the repo's fixtures/

Writes the generated traces (all canonical text), and fixtures/bad/: malformed inputs, each with
a sidecar NAME.err holding the one-line error the readers must give for it (read as
fixtures/bad/NAME from the repo root). The expected messages are written out here by hand, not
computed by the readers, so the tests that compare against them can fail.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from forensics.trace.generators import Workload, larson, random_mixed  # noqa: E402
from forensics.trace.scenarios import Scenario  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_bad_inputs import make_bad_inputs  # noqa: E402

PROBE_VARIANTS = ("seed-mincore", "seed-msync", "mincore", "safe")
SCENARIO_ARGS = (3000, 256, 1234567)  # random_mixed ITERATIONS WORKING_SET SEED for scenario-*.trace

# name -> (what it is, how to make it)
GENERATED: dict[str, tuple[str, object]] = {
    "larson-tiny.trace": (
        "larson 1 8 128 256 2 12345 4: small, 4 threads, cross-thread frees",
        lambda: larson(1, 8, 128, 256, 2, 12345, 4),
    ),
    "random-mixed.trace": (
        "random_mixed 5000 512 1234567, no scenario",
        lambda: random_mixed(5000, 512, 1234567),
    ),
    "segv-registry-escape.trace": (
        "random_mixed 50000 2048 1234567 + registry-capacity: the default fixture, the seed's SEGV "
        "(Tiny blocks escape the SuperSlab registry; with HAKMEM_HEADER_PROBE=off the header read faults)",
        lambda: random_mixed(50000, 2048, 1234567, scenario=Scenario.REGISTRY_CAPACITY),
    ),
}
for _variant in PROBE_VARIANTS:
    GENERATED[f"probe-{_variant}.trace"] = (
        f"random_mixed 5000 512 1234567 + registry-capacity + HAKMEM_HEADER_PROBE={_variant}",
        lambda v=_variant: random_mixed(5000, 512, 1234567, scenario=Scenario.REGISTRY_CAPACITY,
                                        knobs={"HAKMEM_HEADER_PROBE": v}),
    )
for _sc in Scenario:
    GENERATED[f"scenario-{_sc.value}.trace"] = (
        f"random_mixed {' '.join(map(str, SCENARIO_ARGS))} + scenario {_sc.value}",
        lambda s=_sc: random_mixed(*SCENARIO_ARGS, scenario=s),
    )


# ------------------------------------------------------------------------------- bad inputs
TEXT_HEAD = "# hakmem-trace v1\n# meta fixture=bad input\n"
BAD_TEXT: dict[str, tuple[str, str]] = {
    # name -> (content, expected error after "fixtures/bad/NAME")
    "unknown-op.trace": (
        TEXT_HEAD + "1 malloc 1 16\n1 malloc 2 32\n1 free 1\n1 mallok 3 64\n1 free 2\n",
        ":6: unknown op 'mallok'",
    ),
    "never-allocated.trace": (
        TEXT_HEAD + "1 malloc 1 16\n1 free 1\n\n# a comment between events\n2 free 7\n",
        ":7: free of object 7, which was never allocated",
    ),
    "freed-twice.trace": (
        TEXT_HEAD + "1 malloc 1 16\n1 free 1\n1 free 1\n",
        ":5: free of object 1, which is not live (freed at line 4)",
    ),
    "field-count.trace": (
        TEXT_HEAD + "1 malloc 1 16\n1 calloc 2 4\n",
        ":4: calloc takes 3 fields (OBJ NMEMB SIZE), got 2",
    ),
    "bad-number.trace": (
        TEXT_HEAD + "1 malloc 1 16k\n",
        ":3: bad SIZE '16k': not a number",
    ),
    "negative-size.trace": (
        TEXT_HEAD + "1 malloc 1 -16\n",
        ":3: SIZE -16 is negative",
    ),
    "first-line.trace": (
        "# hakmem trace\n1 malloc 1 16\n",
        ":1: first line must be '# hakmem-trace v1', got '# hakmem trace'",
    ),
    "double-free-live.trace": (
        TEXT_HEAD + "1 malloc 1 16\n1 double_free 1\n",
        ":4: double_free of object 1, which is live (allocated at line 3): only a freed object can be freed again",
    ),
    # hostile input (issue 11): garbage, NUL bytes, numbers at and past their limits, object misuse
    "empty.trace": ("", ":1: empty file: the first line must be '# hakmem-trace v1'"),
    "garbage.trace": ("hello world\n", ":1: first line must be '# hakmem-trace v1', got 'hello world'"),
    "wrong-version.trace": ("# hakmem-trace v2\n1 malloc 1 16\n", ":1: unsupported trace version 'v2' (this reader knows v1)"),
    "nul-byte.trace": (TEXT_HEAD + "1 malloc 1 16\x00\n", ":3: bad SIZE '16\\x00': not a number"),
    "truncated-line.trace": (TEXT_HEAD + "1 malloc 1 16\n1 fr", ":4: unknown op 'fr'"),
    "size-2-64.trace": (TEXT_HEAD + "1 malloc 1 18446744073709551616\n",
                        ":3: SIZE 18446744073709551616 is out of range (max 18446744073709551615)"),
    "long-number.trace": (TEXT_HEAD + "1 malloc 1 " + "9" * 60 + "\n",
                          ":3: SIZE '9999999999999999999999999999999999999999...' is out of range"),
    "negative-obj.trace": (TEXT_HEAD + "1 malloc 1 16\n1 free -1\n", ":4: OBJ -1 is negative"),
    "obj-2-32.trace": (TEXT_HEAD + "1 malloc 4294967296 16\n", ":3: OBJ 4294967296 is out of range (max 4294967295)"),
    "tid-2-32.trace": (TEXT_HEAD + "4294967296 malloc 1 16\n", ":3: TID 4294967296 is out of range (max 4294967295)"),
    "calloc-negative.trace": (TEXT_HEAD + "1 calloc 1 -1 16\n", ":3: NMEMB -1 is negative"),
    "offset-overflow.trace": (TEXT_HEAD + "1 malloc 1 16\n1 free_interior 1 9223372036854775808\n",
                              ":4: OFFSET 9223372036854775808 is out of range (max 9223372036854775807)"),
    "malloc-live.trace": (TEXT_HEAD + "1 malloc 1 16\n2 malloc 1 32\n",
                          ":4: malloc of object 1, which is already live (allocated at line 3)"),
    "realloc-chain.trace": (TEXT_HEAD + "1 malloc 1 16\n1 realloc 2 1 32\n1 realloc 3 2 64\n1 realloc 4 1 128\n",
                            ":6: realloc of object 1, which is not live (freed at line 4)"),
    "realloc-to-live.trace": (TEXT_HEAD + "1 malloc 1 16\n1 malloc 2 16\n1 realloc 2 1 32\n",
                              ":5: realloc to object 2, which is already live (allocated at line 4)"),
    "double-free-unknown.trace": (TEXT_HEAD + "1 double_free 5\n", ":3: double_free of object 5, which was never allocated"),
    "corrupt-value.trace": (TEXT_HEAD + "1 malloc 1 16\n1 corrupt 1 -32 2 0x10000\n",
                            ":4: VALUE 0x10000 does not fit in LEN 2 bytes"),
    "knob-malformed.trace": ("# hakmem-trace v1\n# knob NOEQUALS\n",
                             ":2: malformed knob line '# knob NOEQUALS': expected '# knob NAME=VALUE'"),
    "header-not-utf8.trace": ("# hakmem-trace v1\n# meta x=\udcff\n", ":2: header line is not valid UTF-8"),
}


def _binary(header_text: bytes, records: list[tuple[int, ...]], *, magic: bytes = b"HKTRACE\0", version: int = 1,
            num_events: int | None = None, num_objects: int = 2, num_threads: int = 1) -> bytes:
    """A binary trace built by hand from csrc/hftrace.h, independent of the writer."""
    records_offset = (64 + len(header_text) + 7) // 8 * 8
    head = struct.pack("<8sIIQIIQII16x", magic, version, 48, len(records) if num_events is None else num_events,
                       num_objects, num_threads, records_offset, len(header_text), 0)
    body = b"".join(struct.pack("<BBHIIIQqQQ", *r) for r in records)
    return head + header_text + b"\0" * (records_offset - 64 - len(header_text)) + body


BIN_TEXT = b"# hakmem-trace v1\n# meta fixture=bad input\n"  # 43 bytes: records start at 112
BIN_RECORDS = [(1, 0, 0, 1, 1, 0, 16, 0, 0, 0), (1, 0, 0, 1, 2, 0, 32, 0, 0, 0), (5, 0, 0, 1, 1, 0, 0, 0, 0, 0)]
_VALID = _binary(BIN_TEXT, BIN_RECORDS)
BAD_BINARY: dict[str, tuple[bytes, str]] = {
    "truncated.htb": (
        _VALID[:-20],  # the third record cut short
        ": offset 236: truncated: the header claims 3 events ending at offset 256, but the file is 236 bytes",
    ),
    "wrong-magic.htb": (
        b"HKTRACX\0" + _VALID[8:],
        ": offset 0: bad magic 'HKTRACX\\x00' (expected 'HKTRACE\\x00'): not a binary hakmem trace",
    ),
    "wrong-version.htb": (
        _binary(BIN_TEXT, BIN_RECORDS, version=2),
        ": offset 8: unsupported version 2 (this reader knows 1)",
    ),
    "unknown-op.htb": (
        _binary(BIN_TEXT, BIN_RECORDS[:2] + [(13, 0, 0, 1, 1, 0, 0, 0, 0, 0)]),
        ": offset 208: unknown op 13 in event 2",
    ),
    "object-count.htb": (
        _binary(BIN_TEXT, BIN_RECORDS, num_objects=1),
        ": offset 168: event 1: object id 2 is above the header's object count 1",
    ),
    # hostile input (issue 11): headers that claim what the file does not hold, damaged fields
    "empty.htb": (b"", ": offset 0: truncated: the file is 0 bytes, shorter than the 64-byte header"),
    "short-header.htb": (_VALID[:20], ": offset 20: truncated: the file is 20 bytes, shorter than the 64-byte header"),
    "claims-1e12-events.htb": (
        _binary(BIN_TEXT, [], num_events=10**12),
        ": offset 112: truncated: the header claims 1000000000000 events ending at offset 48000000000112, but the file is 112 bytes",
    ),
    "claims-2-63-events.htb": (
        _binary(BIN_TEXT, BIN_RECORDS, num_events=1 << 63),
        ": offset 256: truncated: the header claims 9223372036854775808 events ending at offset 442721857769029238896, "
        "but the file is 256 bytes",
    ),
    "record-size.htb": (_VALID[:12] + struct.pack("<I", 64) + _VALID[16:], ": offset 12: record size 64 (expected 48)"),
    "reserved.htb": (_VALID[:60] + b"\x01\0\0\0" + _VALID[64:], ": offset 44: reserved header bytes are not zero"),
    "text-len-huge.htb": (_VALID[:40] + struct.pack("<I", 1 << 31) + _VALID[44:],
                          ": offset 40: header text length 2147483648 is more than 16777216"),
    "records-offset.htb": (_VALID[:32] + struct.pack("<Q", 109) + _VALID[40:],
                           ": offset 32: records offset 109 is not a multiple of 8 at or after the header text's end (107)"),
    "trailing-bytes.htb": (_VALID + b"\0" * 7, ": offset 256: 7 bytes after the last of the 3 events the header claims"),
    "flags.htb": (_binary(BIN_TEXT, [BIN_RECORDS[0], (1, 4, 0, 1, 2, 0, 32, 0, 0, 0), BIN_RECORDS[2]]),
                  ": offset 161: event 1: flags 0x4 are not zero"),
    "thread-count.htb": (_binary(BIN_TEXT, BIN_RECORDS, num_threads=5), ": offset 28: the header claims 5 threads, the events use 1"),
    "free-unknown.htb": (_binary(BIN_TEXT, [BIN_RECORDS[0], (5, 0, 0, 1, 2, 0, 0, 0, 0, 0)]),
                         ": offset 160: event 1: free of object 2, which was never allocated"),
    "calloc-negative.htb": (_binary(BIN_TEXT, [(2, 0, 0, 1, 1, 0, 16, -1, 0, 0)]),
                            ": offset 112: event 0: calloc NMEMB -1 is negative"),
    "header-text.htb": (_binary(b"hello\n", BIN_RECORDS),
                        ": offset 64: header line 1: first line must be '# hakmem-trace v1', got 'hello'"),
}


def _readme() -> str:
    lines = [
        "# Trace fixtures",
        "",
        "Generated by `python scripts/make_fixtures.py` (deterministic; a test checks these files equal a fresh run).",
        "Format: docs/trace-format.md. All generated traces are canonical text; `hakmem-forensics convert` makes .htb.",
        "",
    ]
    lines += [f"- `{name}`: {what}" for name, (what, _make) in GENERATED.items()]
    lines += [
        "",
        "`bad/`: malformed and hostile inputs, one case a file, made by `scripts/make_fixtures.py` (the traces) and",
        "`scripts/make_bad_inputs.py` (the other readers). `NAME.err` is the one line the command prints after",
        "`hakmem-forensics: error: ` for `fixtures/bad/.../NAME` (path as seen from the repo root), with exit",
        "status 3 and nothing on stdout; `NAME.ok` (route logs) lists facts of the `routes --json` file entry of",
        "a log that must be accepted (exit status 0). The directory says which command reads the case:",
        "",
        "- `bad/*.trace`, `bad/*.htb`: `hakmem-forensics convert FILE OUT` (the text and binary trace readers)",
        "- `bad/valgrind/`, `bad/android/` (plain and `.zip`), `bad/mtrace/`: `hakmem-forensics import FORMAT FILE -o OUT`",
        "- `bad/routes/`: `hakmem-forensics routes FILE`",
        "- `bad/tui-log/`: `hakmem-forensics tui FILE` (a route log opened in the TUI: the error comes before the app starts)",
        "- `bad/saved/`: `hakmem-forensics explain FILE` (saved results; `tui` and `diff` open them the same way)",
        "- `bad/replay/`: `hakmem-forensics replay FILE --explain 0` (traces the reader accepts and the replay cannot run)",
        "",
        "Big cases (lines of 10 MB, gzip and zip bombs, 10,000 threads) and file-system cases (symlinks, FIFOs,",
        "directories, unreadable files) are made at test time by `tests/test_bad_inputs.py`, never committed.",
        "",
    ]
    return "\n".join(lines)


def make_fixtures(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bad").mkdir(exist_ok=True)
    written = []
    for name, (_what, make) in GENERATED.items():
        workload: Workload = make()  # type: ignore[operator]
        workload.write(out / name, binary=False)
        written.append(out / name)
    for name, (content, error) in BAD_TEXT.items():
        (out / "bad" / name).write_bytes(content.encode("utf-8", "surrogateescape"))
        (out / "bad" / f"{name}.err").write_text(f"fixtures/bad/{name}{error}\n")
        written += [out / "bad" / name, out / "bad" / f"{name}.err"]
    for name, (data, error) in BAD_BINARY.items():
        (out / "bad" / name).write_bytes(data)
        (out / "bad" / f"{name}.err").write_text(f"fixtures/bad/{name}{error}\n")
        written += [out / "bad" / name, out / "bad" / f"{name}.err"]
    written += make_bad_inputs(out)  # the other readers' corpus: bad/<reader>/
    (out / "README.md").write_text(_readme())
    written.append(out / "README.md")
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "fixtures"
    written = make_fixtures(out)
    print(f"wrote {len(written)} files in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
