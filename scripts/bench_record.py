#!/usr/bin/env python3
"""Benchmark: the recorder's overhead on an allocation-heavy program.

Builds csrc/tests/alloc_bench.c (each thread mallocs/callocs/reallocs/frees 16..1039-byte
blocks in a working set and does nothing else), then runs it N times plain and N times
under libhfrecord.so (raw logs only, into a scratch directory; conversion is not timed) at
1 and 4 threads, alternating so that machine noise hits both alike. Prints the median wall
time of each and their ratio, the ns per call added, and the raw log's size per call. A
second figure is the whole `hakmem-forensics record` (run + conversion to a trace).

    python3 scripts/bench_record.py [--runs 5] [--iterations 2000000] [--threads 1,4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(workdir: Path) -> Path:
    exe = workdir / "alloc_bench"
    subprocess.run([os.environ.get("CC", "cc"), "-std=gnu11", "-O2", "-g", "-o", str(exe),
                    str(ROOT / "csrc" / "tests" / "alloc_bench.c"), "-lpthread"], check=True)
    return exe


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t
    calls = int(out.split("calls=")[1].split()[0])
    return wall, calls


PY_WORK = """
import json
data = [{"id": i, "name": "x" * (i % 50), "tags": list(range(i % 20))} for i in range(20000)]
for _ in range(15):
    data = json.loads(json.dumps(data))
"""


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def _records(path: Path) -> int:
    from forensics import record

    log = record.read_raw_log(path)
    chunks = record._Chunks(log)
    try:
        return sum(count for per in chunks.by_thread.values() for _i, _o, count, _t in per)
    finally:
        chunks.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=2_000_000)
    ap.add_argument("--threads", default="1,4")
    args = ap.parse_args()
    from forensics import record

    lib = record.find_recorder()
    if not lib.exists():
        print(f"bench_record: {lib} is missing: make -C csrc OUT=$PWD/forensics/_native all", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        exe = build(workdir)
        raw = workdir / "raw"
        for threads in (int(t) for t in args.threads.split(",")):
            cmd = [str(exe), str(threads), str(args.iterations)]
            plain_env = dict(os.environ)
            plain_env.pop("LD_PRELOAD", None)
            rec_env = dict(plain_env, LD_PRELOAD=str(lib), HFRECORD_DIR=str(raw))
            plain, recorded, sizes = [], [], []
            calls = 0
            for _ in range(args.runs):
                w, calls = run(cmd, plain_env)
                plain.append(w)
                shutil.rmtree(raw, ignore_errors=True)
                raw.mkdir()
                w, calls = run(cmd, rec_env)
                recorded.append(w)
                sizes.append(sum(p.stat().st_size for p in raw.iterdir()))
            p, r = statistics.median(plain), statistics.median(recorded)
            print(f"{threads} thread(s), {calls:,} calls: plain {p:.3f} s, recorded {r:.3f} s -> ratio {r / p:.2f}x, "
                  f"+{(r - p) / calls * 1e9:.0f} ns per call (wall), raw log "
                  f"{statistics.median(sizes) / calls:.1f} bytes/call")
        # a realistic program: CPython (pymalloc serves small objects; malloc sees the rest)
        script = workdir / "work.py"
        script.write_text(PY_WORK)
        plain, recorded = [], []
        for _ in range(args.runs):
            plain.append(_wall([sys.executable, str(script)], plain_env))
            shutil.rmtree(raw, ignore_errors=True)
            raw.mkdir()
            recorded.append(_wall([sys.executable, str(script)], rec_env))
        calls = sum(1 for p in raw.glob("*.hfrec") for _ in range(_records(p)))
        p, r = statistics.median(plain), statistics.median(recorded)
        print(f"python json workload (~{calls:,} malloc-family calls): plain {p:.3f} s, recorded {r:.3f} s "
              f"-> ratio {r / p:.2f}x")
        # the whole command: run + conversion into a binary trace (symbolized)
        trace = workdir / "bench.htb"
        t = time.monotonic()
        rec = record.run_record([str(exe), "2", str(args.iterations // 10)], trace, stdout=subprocess.DEVNULL)
        total = time.monotonic() - t
        out = rec.outputs[0]
        print(f"record command: {out.events:,} events in {total:.2f} s ({rec.seconds:.2f} s running, "
              f"{total - rec.seconds:.2f} s converting = {out.events / max(total - rec.seconds, 1e-9):,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
