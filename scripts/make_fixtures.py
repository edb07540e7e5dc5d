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
        "`bad/`: malformed inputs; `bad/NAME.err` is the one-line error a reader gives for `fixtures/bad/NAME`",
        "(path as seen from the repo root).",
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
        (out / "bad" / name).write_bytes(content.encode())
        (out / "bad" / f"{name}.err").write_text(f"fixtures/bad/{name}{error}\n")
        written += [out / "bad" / name, out / "bad" / f"{name}.err"]
    for name, (data, error) in BAD_BINARY.items():
        (out / "bad" / name).write_bytes(data)
        (out / "bad" / f"{name}.err").write_text(f"fixtures/bad/{name}{error}\n")
        written += [out / "bad" / name, out / "bad" / f"{name}.err"]
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
