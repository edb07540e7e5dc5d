#!/usr/bin/env python3
"""Write fixtures/tui-sample.hfres: a saved replay the TUI snapshot tests open.

It is the registry-capacity scenario fixture replayed with the default probe (off): a few
invalid-magic frees, then the seed's SEGV. Saved once and committed, so the snapshot tests
see the same addresses on every machine (a fresh replay's addresses depend on the machine's
memory layout)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forensics.replay import ReplayConfig, run_replay  # noqa: E402
from forensics.saved import save_result  # noqa: E402


def main() -> int:
    trace = Path("fixtures/scenario-registry-capacity.trace")
    config = ReplayConfig()
    import os

    os.chdir(ROOT)
    result = run_replay(trace, config, keep_events=True)
    out = save_result(result, config, ROOT / "fixtures" / "tui-sample.hfres")
    print(f"wrote {out}: {result.num_events} events, crash at #{result.crash.event_index if result.crash else None}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
