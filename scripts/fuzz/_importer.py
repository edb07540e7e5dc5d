"""The body shared by the importer targets: import, then the written trace must read back."""

from __future__ import annotations

import _harness


def run(fmt: str, data: bytes, suffix: str = ".log", lenient: bool | None = None) -> None:
    from forensics.importers import import_file
    from forensics.trace import iter_raw

    if lenient is None:
        lenient = bool(data[-1:]) and data[-1] & 1 == 1  # half the inputs lenient
    src = _harness.scratch(f"in-{fmt}{suffix}")
    src.write_bytes(data)
    out = _harness.scratch(f"out-{fmt}.trace")
    result = _harness.expect_bad_input(lambda: import_file(fmt, src, out, lenient=lenient, max_processes=64))
    if result is None:
        return
    for o in result.outputs:
        # whatever the log said, what the importer wrote is a valid trace
        n = sum(1 for _ in iter_raw(o.path))
        assert n == o.events, f"{o.path}: {n} events read back, {o.events} written"
