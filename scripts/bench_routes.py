#!/usr/bin/env python3
"""Benchmark of `hakmem-forensics routes` on a generated log (default 1 GiB), against awk.

    python3 scripts/bench_routes.py                 # 1 GiB plain log in a temporary directory
    python3 scripts/bench_routes.py --size 200M --gzip --keep /tmp/bench.log

Generates a log as `hakmem-forensics run` writes one (alloc, route and registry lines of a
working allocator, an invalid magic now and then, program noise), then times

    hakmem-forensics routes LOG --json OUT        (in a child; peak RSS from getrusage)
    awk '{c[$3]++} END{for(k in c) print k, c[k]}' LOG     (zcat LOG | awk ... for --gzip)

and prints lines/s of both, their ratio, and the peak RSS against the issue's 200 MiB bound.
Not part of the test suite (it takes minutes); the suite checks memory on smaller logs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RSS_BOUND_MIB = 200

# (path, route, action, tried, hit, probe, magic, method) of a correct free of each path
FREES = {
    "tiny": b"route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-",
    "mid": b"route=mid_hit action=pool_free tried=ss,mid hit=mid probe=- magic=- method=-",
    "l25": b"route=l25_hit action=l25_free tried=ss,mid,l25 hit=l25 probe=- magic=- method=-",
    "mmap": b"route=mmap_munmap action=munmap tried=ss,mid,l25,probe,magic,method hit=probe,magic,method "
            b"probe=readable magic=0x48414B4D method=2",
}
PATHS = [b"tiny"] * 80 + [b"mid"] * 14 + [b"l25"] * 5 + [b"mmap"]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def generate(path: Path, size: int, gz: bool, seed: int = 1) -> tuple[int, int]:
    """Write about `size` uncompressed bytes; return (lines, bytes)."""
    rng = random.Random(seed)
    out = gzip.open(path, "wb", compresslevel=1) if gz else open(path, "wb")
    live: list[tuple[int, bytes]] = []
    aseq = fseq = rseq = 0
    written = lines = 0
    next_ptr = 0x7F0000000000
    batch: list[bytes] = []
    with out:
        while written < size:
            for _ in range(4096):
                if live and (len(live) > 50_000 or rng.random() < 0.5):
                    i = rng.randrange(len(live))
                    ptr, path_b = live[i]
                    live[i] = live[-1]
                    live.pop()
                    fseq += 1
                    if fseq % 100_003 == 0:
                        batch.append(b"[hakmem] ERROR: Invalid magic 0x0 (expected 0x48414B4D)\n")
                        batch.append(b"[hakmem-route] seq=%d tid=%d ptr=0x%x route=invalid_magic_skip action=none "
                                     b"tried=ss,mid,l25,probe,magic hit=probe probe=readable magic=0x0 method=-\n"
                                     % (fseq, 4711 + (fseq & 3), ptr))
                        lines += 1
                    else:
                        batch.append(b"[hakmem-route] seq=%d tid=%d ptr=0x%x %s\n" % (fseq, 4711 + (fseq & 3), ptr,
                                                                                     FREES[path_b.decode()]))
                else:
                    aseq += 1
                    path_b = PATHS[rng.randrange(100)]
                    next_ptr += 64
                    ptr = next_ptr
                    live.append((ptr, path_b))
                    batch.append(b"[hakmem-alloc] seq=%d free_seq=%d tid=%d ptr=0x%x size=%d align=0 path=%s\n"
                                 % (aseq, fseq, 4711 + (aseq & 3), ptr, 24 + (aseq & 1023), path_b))
                    if aseq % 16384 == 0:
                        rseq += 1
                        base = ptr & ~0xFFFFF
                        batch.append(b"[hakmem-reg] seq=%d free_seq=%d tid=4711 op=register reg=ss base=0x%x addr=0x%x "
                                     b"live=0\n" % (rseq, fseq, base, base))
                        batch.append(b"program output line %d\n" % aseq)
                        lines += 2
                lines += 1
            data = b"".join(batch)
            batch.clear()
            out.write(data)
            written += len(data)
    return lines, written


def time_routes(log: Path, out_json: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of `routes` in a child (RUSAGE_CHILDREN holds only it:
    this script is small when it forks)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "forensics", "routes", str(log), "--json", str(out_json)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"routes failed ({res.returncode}): {res.stderr.decode(errors='replace')[-2000:]}")
    return dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024


def time_awk(log: Path, gz: bool) -> float:
    prog = "{c[$3]++} END{for(k in c) print k, c[k]}"
    t0 = time.perf_counter()
    if gz:
        zcat = subprocess.Popen(["zcat", str(log)], stdout=subprocess.PIPE)
        subprocess.run(["awk", prog], stdin=zcat.stdout, stdout=subprocess.DEVNULL, check=True)
        zcat.stdout.close()
        zcat.wait()
    else:
        subprocess.run(["awk", prog, str(log)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="uncompressed log size (default 1G; K/M/G suffixes)")
    ap.add_argument("--gzip", action="store_true", help="write the log gzip-compressed (level 1)")
    ap.add_argument("--keep", metavar="PATH", help="write the log here and keep it")
    args = ap.parse_args()
    size = parse_size(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-routes-"))
    try:
        log = Path(args.keep) if args.keep else tmp / ("bench.log.gz" if args.gzip else "bench.log")
        t0 = time.perf_counter()
        lines, nbytes = generate(log, size, args.gzip)
        gen = time.perf_counter() - t0
        print(f"log: {log} ({'gzip, ' if args.gzip else ''}{nbytes / 2**20:,.0f} MiB uncompressed, "
              f"{log.stat().st_size / 2**20:,.0f} MiB on disk, {lines:,} lines; generated in {gen:.1f} s)")
        out_json = tmp / "routes.json"
        t_routes, rss = time_routes(log, out_json)
        doc = json.loads(out_json.read_text())
        assert doc["lines"] == lines, (doc["lines"], lines)
        have_awk = shutil.which("awk") is not None and (not args.gzip or shutil.which("zcat") is not None)
        t_awk = time_awk(log, args.gzip) if have_awk else None
        print(f"routes: {t_routes:8.2f} s  {lines / t_routes:>12,.0f} lines/s  peak RSS {rss} MiB "
              f"({'within' if rss < RSS_BOUND_MIB else 'OVER'} the {RSS_BOUND_MIB} MiB bound)")
        if t_awk is not None:
            print(f"awk:    {t_awk:8.2f} s  {lines / t_awk:>12,.0f} lines/s")
            print(f"ratio:  routes takes {t_routes / t_awk:.1f}x awk's time "
                  f"(awk only counts field 3; routes parses and checks every field)")
        print(f"routes found: {doc['route_lines']:,} route lines, {doc['invalid_magic_total']:,} invalid magics, "
              f"verdicts {doc['verdicts']}")
        if rss >= RSS_BOUND_MIB:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
