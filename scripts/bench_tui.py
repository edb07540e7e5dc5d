#!/usr/bin/env python3
"""Benchmark: open a 1,000,000-event saved result in the TUI and jump to the last anomaly.

Prints the time of each of N runs (open the .hfres, build the columns, start the app headless,
press L, wait until the table shows the last anomaly), then the median and spread. The target
(issue 8) is a median under 3 s on the 2-core machine. As a baseline in the same invocation it
also times opening the result without the app (load + columns), so the app's own share shows.

    python3 scripts/bench_tui.py [--events 1000000] [--runs 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_result(workdir: Path, events: int) -> Path:
    trace = workdir / "big.htb"
    saved = workdir / "big.hfres"
    if saved.exists():
        return saved
    iters = events  # random-mixed makes about one event per iteration (plus the final frees)
    subprocess.run([sys.executable, "-m", "forensics", "gen", "random-mixed", str(iters), "4096", "42", "--scenario", "registry-capacity", "-o", str(trace)], check=True)
    subprocess.run([sys.executable, "-m", "forensics", "replay", str(trace), "--probe", "safe", "--explain", "0", "--save", str(saved), "--json", "/dev/null"], check=True, stdout=subprocess.DEVNULL)
    return saved


async def one_run(saved_path: Path) -> tuple[float, float, int]:
    from forensics.browse import from_saved
    from forensics.saved import open_result
    from forensics.tui import EventTable, ExplorerApp

    t0 = time.perf_counter()
    with open_result(saved_path) as saved:
        cols = from_saved(saved)
        t_open = time.perf_counter() - t0
        target = cols.find_last_anomaly()
        app = ExplorerApp(cols, source=str(saved_path), saved=saved, inspect=False)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("L")
            await pilot.pause()
            table = app.query_one(EventTable)
            assert table.selected == target, (table.selected, target)
        total = time.perf_counter() - t0
        return total, t_open, cols.n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="keep the generated trace and result in DIR (reused next time)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-tui-")
        workdir = Path(tmp.name)
    saved = make_result(workdir, args.events)
    totals, opens = [], []
    n = 0
    for i in range(args.runs):
        total, t_open, n = asyncio.run(one_run(saved))
        totals.append(total)
        opens.append(t_open)
        print(f"run {i + 1}: open+jump {total:.3f} s (of which load+columns {t_open:.3f} s)")
    med = statistics.median(totals)
    print(f"events: {n:,}")
    print(f"open + jump to last anomaly: median {med:.3f} s, min {min(totals):.3f}, max {max(totals):.3f} (target < 3 s)")
    print(f"baseline load + columns:     median {statistics.median(opens):.3f} s; app share {med / statistics.median(opens):.2f}x of it")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
