#!/usr/bin/env python3
"""Benchmark: import the whole Android surfaceflinger recording, then replay it.

Imports ../shared/data/android/surfaceflinger.zip (2,455,240 lines) in a fresh process per
run and prints lines/s, events/s and that process's peak RSS; then replays the trace on
hakmem-ref with the safe probe and on libc (the whole file: the test suite replays a prefix).
As a baseline in the same run it times a plain line count of the same stream (decompress +
split), so the importer's own share shows.

    python3 scripts/bench_import.py [--runs 3] [--file PATH] [--no-replay] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT = Path("/work/shared/data/android/surfaceflinger.zip")

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from forensics.importers import import_file
r = import_file('android', sys.argv[1], sys.argv[2])
o = r.outputs[0]
print(json.dumps({'lines': r.lines, 'events': r.events, 'seconds': r.seconds, 'objects': o.objects,
                  'threads': o.threads, 'ops': o.op_counts,
                  'rss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

_BASELINE = """
import sys, time
sys.path.insert(0, sys.argv[2])
from forensics.importers import iter_lines, open_source
t = time.monotonic()
stream, _ = open_source(sys.argv[1])
n = sum(1 for line in iter_lines(stream) if line.split())
print(n, time.monotonic() - t)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", type=Path, default=DEFAULT)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory")
    args = ap.parse_args()
    if not args.file.exists():
        print(f"bench_import: {args.file}: no such file", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        trace = workdir / "surfaceflinger.htb"
        out = subprocess.run([sys.executable, "-c", _BASELINE, str(args.file), str(ROOT)], capture_output=True,
                             text=True, check=True)
        n, base_s = out.stdout.split()
        print(f"baseline: decompress + split {int(n):,} lines in {float(base_s):.2f} s")
        runs = []
        for i in range(args.runs):
            t = time.monotonic()
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(args.file), str(trace), str(ROOT)],
                                  capture_output=True, text=True)
            wall = time.monotonic() - t
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 4
            doc = json.loads(proc.stdout)
            runs.append(doc)
            print(f"run {i + 1}: {doc['lines']:,} lines, {doc['events']:,} events in {doc['seconds']:.2f} s "
                  f"({doc['events'] / doc['seconds']:,.0f} events/s), peak RSS {doc['rss_kib'] / 1024:.1f} MiB, "
                  f"process wall {wall:.2f} s")
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        print(f"import: median {med:.2f} s = {runs[0]['events'] / med:,.0f} events/s "
              f"({med / float(base_s):.1f}x the plain line count); peak RSS max "
              f"{max(r['rss_kib'] for r in runs) / 1024:.1f} MiB; objects {runs[0]['objects']:,}, "
              f"threads {runs[0]['threads']}; ops {runs[0]['ops']}")
        if args.no_replay:
            return 0
        from forensics.replay import ReplayConfig, run_replay

        for label, config in (("hakmem-ref --probe safe", ReplayConfig(probe="safe", timeout=1200)),
                              ("libc", ReplayConfig(libc=True, timeout=1200))):
            r = run_replay(trace, config)
            print(f"replay on {label}: {r.events_done:,}/{r.num_events:,} events, {r.frees:,} frees, "
                  f"outcomes {r.outcomes}, crash {'none' if r.crash is None else r.crash.signal_name}, "
                  f"{r.seconds:.2f} s, {r.threads_used} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
