#!/usr/bin/env python3
"""Benchmarks of issue 10 (SPEC §8): each figure the median of several runs with its spread, next to
a baseline run in the same invocation and the ratio between the two.

    python3 scripts/bench.py [--runs 5] [--events 10000000] [--json FILE] [--keep DIR]

Builds nothing: run `make -C csrc OUT=$PWD/forensics/_native all` first. Generates its inputs
once into a temporary directory (a 10,000,000-event random-mixed trace, a larson trace, a
smaller random-mixed trace, a route log), then measures, alternating each figure with its
baseline run by run so that machine noise hits both alike:

 1. native replay (hfreplay, the toolkit's replay child: oracle on, every free's decision
    recorded, results into a memfd) against the floor (`hfreplay --floor`: the same allocator
    calls from arrays decoded beforehand, nothing else), timed inside the process with
    clock_gettime (process start, mapping the trace and the result file not counted);
 2. hakmem-ref against glibc malloc in the same loops (`--libc`);
 3. batch replay (forensics.replay.run_replay) against the per-event ctypes path
    (forensics.replay.step_events), each timed inside its own Python process;
 4. `hakmem-forensics routes` against awk on the same log (lines/s);
 5. `hakmem-forensics import android` on the Android surfaceflinger recording, against
    decompressing and splitting the same file;
 6. `hakmem-forensics record` around an allocation-heavy program, against the program alone;
 7. `hakmem-forensics replay` on the bundled SEGV fixture (report included) against valgrind
    memcheck running hfreplay on the same trace until its first error;

and the peak RSS of every process measured (wait4's ru_maxrss: a process and the children it
waited for). Items whose command is not there yet print "not available yet". Figures and
targets are printed as they come and, with --json, written as one document.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
NATIVE = REPO / "forensics" / "_native"
HFREPLAY = NATIVE / "hfreplay"
LIBHAKMEM = NATIVE / "libhakmem.so"
ANDROID_ZIP = Path("/work/shared/data/android/surfaceflinger.zip")
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
ENV.pop("LD_PRELOAD", None)
PY = [sys.executable, "-m", "forensics"]
TIMING = re.compile(r"timing: phase=(\w+) events=(\d+) seconds=([0-9.]+) cpu_seconds=([0-9.]+)")
AWK_PROG = "{c[$3]++} END{for(k in c) print k, c[k]}"  # the route-log issue's pipeline


# ------------------------------------------------------------------------------ running
@dataclass
class Run:
    wall: float  # seconds around the child, from this process
    rc: int
    rss_kib: int  # peak RSS of the child and the children it waited for
    out: str
    err: str


# Peak RSS: a forked child's ru_maxrss starts at its parent's RSS (this script's, tens of MiB), and
# exec keeps that high-water mark. GNU time, a small process, forks the command itself and reports
# the command's own peak (%M, KiB); without it, wait4's figure is an upper bound.
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (), cwd: Path | None = None,
          watch: Callable[[subprocess.Popen], None] | None = None) -> Run:
    """Run cmd to the end: wall time, exit status, peak RSS (of it and the children it waited for),
    output. watch(proc) runs while it does, if given."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss:
        full = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if GNU_TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env or ENV,
                                pass_fds=pass_fds, cwd=cwd)
        if watch:
            watch(proc)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = ru.ru_maxrss
        if GNU_TIME:
            text = Path(rss.name).read_text()
            words = text.split()
            peak = int(words[-1]) if words and words[-1].isdigit() else peak
            # GNU time exits 128+N for a command killed by signal N ("Command terminated by signal N")
            m = re.search(r"terminated by signal (\d+)", text)
            if m:
                proc.returncode = -int(m.group(1))
        out.seek(0)
        err.seek(0)
        return Run(wall, proc.returncode, peak, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"))


def must(run: Run, what: str, ok: tuple[int, ...] = (0,)) -> Run:
    if run.rc not in ok:
        sys.exit(f"bench: {what} failed (exit {run.rc}):\n{run.err[-2000:]}")
    return run


def timing(run: Run, what: str) -> tuple[float, float, int]:
    """(wall, cpu, events) of hfreplay's timing line."""
    m = TIMING.search(run.out)
    if not m:
        sys.exit(f"bench: {what}: no timing line in {run.out[-500:]!r} {run.err[-500:]!r}")
    return float(m.group(3)), float(m.group(4)), int(m.group(2))


# ------------------------------------------------------------------------------ figures
@dataclass
class Series:
    """One measured quantity over the runs."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    def add(self, value: float, rss_kib: int = 0) -> None:
        self.values.append(value)
        if rss_kib:
            self.rss_kib.append(rss_kib)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self) -> str:
        lo, hi = min(self.values), max(self.values)
        pct = (hi - lo) / 2 / self.median * 100 if self.median else 0.0
        return f"[{fmt(lo, self.unit)} .. {fmt(hi, self.unit)}, ±{pct:.0f}%]"

    def peak_mib(self) -> float | None:
        return statistics.median(self.rss_kib) / 1024 if self.rss_kib else None

    def to_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "median": self.median, "min": min(self.values),
                "max": max(self.values), "runs": self.values, "peak_rss_mib": self.peak_mib()}


def fmt(v: float, unit: str) -> str:
    if unit == "ev/s" or unit == "lines/s":
        return f"{v / 1e6:.2f}M"
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:.2f}"


REPORT: dict = {"sections": []}


def section(title: str) -> dict:
    print(f"\n== {title}")
    sec = {"title": title, "series": [], "ratios": []}
    REPORT["sections"].append(sec)
    return sec


def show(sec: dict, s: Series) -> None:
    peak = s.peak_mib()
    mem = f"  peak {peak:,.0f} MiB" if peak is not None else ""
    print(f"   {s.name:<44} {fmt(s.median, s.unit):>8} {s.unit:<7} {s.spread()}{mem}")
    sec["series"].append(s.to_json())


def ratio(sec: dict, name: str, num: Series, den: Series, *, target: str | None = None,
          ok: Callable[[float], bool] | None = None, note: str = "") -> float:
    """median(num) / median(den), with the spread of the run-by-run ratios."""
    r = num.median / den.median
    pairs = [a / b for a, b in zip(num.values, den.values)]
    verdict = ""
    if target is not None and ok is not None:
        verdict = f"  target {target}: {'met' if ok(r) else 'MISSED'}"
    print(f"   {name:<44} {r:>8.2f}x        [{min(pairs):.2f}x .. {max(pairs):.2f}x by run]{verdict}"
          + (f"  ({note})" if note else ""))
    sec["ratios"].append({"name": name, "ratio": r, "by_run": pairs, "target": target,
                          "met": ok(r) if ok else None, "note": note})
    return r


def absolute(sec: dict, name: str, s: Series, target: str, ok: Callable[[float], bool]) -> None:
    met = ok(s.median)
    print(f"   {name:<44} {fmt(s.median, s.unit):>8} {s.unit:<7} target {target}: {'met' if met else 'MISSED'}")
    sec["ratios"].append({"name": name, "value": s.median, "target": target, "met": met})


def unavailable(title: str, why: str) -> None:
    print(f"\n== {title}\n   not available yet ({why})")
    REPORT["sections"].append({"title": title, "unavailable": why})


# ------------------------------------------------------------------------------ inputs
def generate(tmp: Path, events: int) -> dict[str, Path]:
    print(f"== inputs (generated once into {tmp})")
    made = {}
    specs = {
        "rm": ["gen", "random-mixed", str(events), "2048", "1234567"],
        "larson": ["gen", "larson", "50", "8", "128", "1024", "5", "12345", "4"],
        # step_events hands its records back through a 64 MiB pipe bound (forensics.isolate): ~1M events
        "rm_small": ["gen", "random-mixed", str(min(max(events // 10, 1000), 1_000_000)), "2048", "7"],
        "rm_tiny": ["gen", "random-mixed", "1000", "2048", "7"],
    }
    for key, args in specs.items():
        out = tmp / f"{key}.htb"
        r = must(spawn(PY + args + ["-o", str(out)]), f"gen {key}")
        made[key] = out
        print(f"   {key:<10} {r.out.strip().splitlines()[-1] if r.out.strip() else out} ({r.wall:.1f} s)")
    segv = tmp / "segv.htb"
    from forensics import fixtures

    must(spawn(PY + ["convert", str(fixtures.find_fixture()), str(segv)]), "convert the SEGV fixture")
    made["segv"] = segv
    return made


def memfd_results() -> int:
    return os.memfd_create("bench-results")


def hfreplay(trace: Path, *args: str) -> Run:
    """hfreplay with args, results into a memfd."""
    fd = memfd_results()
    try:
        return spawn([str(HFREPLAY), str(trace), *args, "--results-fd", str(fd)], pass_fds=(fd,))
    finally:
        os.close(fd)


def toolkit_replay(trace: Path, *, threads: bool, libc: bool = False) -> Run:
    """Exactly the replay child `hakmem-forensics replay` starts (forensics.replay's command line:
    its knobs, limits and result memfd), with --time added."""
    from forensics import replay

    config = replay.ReplayConfig(lib=None if libc else str(LIBHAKMEM), libc=libc, threads=threads)
    fd = memfd_results()
    try:
        cmd = replay._command(trace, config, {}, fd) + ["--time"]
        return spawn(cmd, pass_fds=(fd,))
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ 1 + 2
def bench_native(name: str, trace: Path, runs: int, *, threaded_too: bool) -> dict[str, Series]:
    lib = ["--lib", str(LIBHAKMEM)]
    # replay: the toolkit's own child command; a multi-threaded trace serially (trace order on one
    # thread, as the floor runs it), and on real threads as a figure of its own
    variants: dict[str, tuple[str, Callable[[], Run]]] = {
        "replay": ("replay, hakmem-ref, oracle on", lambda: toolkit_replay(trace, threads=not threaded_too)),
        "floor": ("floor, hakmem-ref (same calls, arrays)", lambda: hfreplay(trace, *lib, "--floor")),
        "replay_libc": ("replay, glibc (no oracle: no owners)", lambda: toolkit_replay(trace, threads=False, libc=True)),
        "floor_libc": ("floor, glibc", lambda: hfreplay(trace, "--libc", "--floor")),
    }
    if threaded_too:
        variants["replay_threads"] = ("replay on real threads, hakmem-ref, oracle", lambda: toolkit_replay(trace, threads=True))
    series = {k: Series(label, "ev/s") for k, (label, _) in variants.items()}
    secs = {k: Series(label, "s") for k, (label, _) in variants.items()}
    cpus = {k: Series(label, "s") for k, (label, _) in variants.items()}
    totals = {k: Series(label, "s") for k, (label, _) in variants.items()}
    for _ in range(runs):
        for k, (label, run) in variants.items():
            r = must(run(), f"hfreplay {name} {k}")
            wall, cpu, n = timing(r, f"{name} {k}")
            series[k].add(n / wall, r.rss_kib)
            secs[k].add(wall)
            cpus[k].add(cpu)
            totals[k].add(r.wall)
    sec = section(f"1-2. native replay vs floor, hakmem-ref vs glibc: {name} ({n:,} events, {runs} runs, "
                  "in-process clock)")
    for k in variants:
        show(sec, series[k])
    ratio(sec, "replay overhead: replay / floor (time)", secs["replay"], secs["floor"], target="<= 1.5x",
          ok=lambda r: r <= 1.5)
    ratio(sec, "  the same in CPU time", cpus["replay"], cpus["floor"])
    if name.startswith("random-mixed"):
        absolute(sec, "replay throughput", series["replay"], ">= 20M ev/s", lambda v: v >= 20e6)
        by_cpu = Series("  the same by CPU time (what other load cannot take)", "ev/s", [n / c for c in cpus["replay"].values])
        show(sec, by_cpu)
    ratio(sec, "hakmem-ref / glibc, floor loop (time)", secs["floor"], secs["floor_libc"], target="<= 1.5x",
          ok=lambda r: r <= 1.5)
    ratio(sec, "hakmem-ref+oracle / glibc, replay loop (time)", secs["replay"], secs["replay_libc"],
          note="glibc has no owners to ask")
    if threaded_too:
        ratio(sec, "replay on threads / serial replay (time)", secs["replay_threads"], secs["replay"],
              note="4 trace threads on 2 cores, one heap lock")
    ratio(sec, "whole hfreplay process: replay / floor", totals["replay"], totals["floor"],
          note="incl. start, mapping, validation, result file")
    return series


# ------------------------------------------------------------------------------ 3
_STEP_CHILD = """
import sys, time
from forensics import replay
cfg = replay.ReplayConfig(threads=False)
t = time.perf_counter()
if sys.argv[1] == "step":
    r = replay.step_events(sys.argv[2], cfg)
    n = len(r.value)
else:
    n = replay.run_replay(sys.argv[2], cfg).events_done
print(n, time.perf_counter() - t)
"""


def bench_batch(trace: Path, tiny: Path, runs: int) -> None:
    batch, step = Series("batch: run_replay (hfreplay child)", "ev/s"), Series("per event: step_events (ctypes)", "ev/s")
    bt, st, fixed = Series("batch", "s"), Series("step", "s"), Series("batch: one run_replay of 1,000 events", "s")
    for _ in range(runs):
        for kind, s, t in (("batch", batch, bt), ("step", step, st)):
            r = must(spawn([sys.executable, "-c", _STEP_CHILD, kind, str(trace)]), f"{kind} replay")
            n, secs = r.out.split()
            s.add(int(n) / float(secs), r.rss_kib)
            t.add(float(secs))
        r = must(spawn([sys.executable, "-c", _STEP_CHILD, "batch", str(tiny)]), "batch replay, tiny trace")
        fixed.add(float(r.out.split()[1]), r.rss_kib)
    sec = section(f"3. batch replay vs per-event ctypes stepping ({int(n):,} events, {runs} runs, timed in-process)")
    show(sec, batch)
    show(sec, step)
    show(sec, fixed)
    ratio(sec, "batch / per-event (events/s)", st, bt, target=">= 30x", ok=lambda r: r >= 30)
    marginal = Series("batch, its fixed cost taken off", "s", [max(b - fixed.median, 1e-9) for b in bt.values])
    ratio(sec, "  per event, without the batch's fixed cost", st, marginal,
          note="the child's start, result file and collection: the 1,000-event run")


# ------------------------------------------------------------------------------ 4
def bench_routes(tmp: Path, runs: int, size: int) -> None:
    title = "4. routes vs awk (lines/s)"
    if importlib.util.find_spec("forensics.routelog") is None or "routes" not in spawn(PY + ["--help"]).out:
        unavailable(title, "forensics/routelog.py and the routes command are not there")
        return
    sys.path.insert(0, str(REPO / "scripts"))
    log = tmp / "routes.log"
    try:
        import bench_routes  # the route-log issue's own generator: a log as `hakmem-forensics run` writes it

        lines, nbytes = bench_routes.generate(log, size, False)
    except (ImportError, AttributeError, TypeError) as exc:
        unavailable(title, f"scripts/bench_routes.py's log generator: {exc}")
        return
    routes, awk = Series("hakmem-forensics routes LOG", "lines/s"), Series("awk '{c[$3]++} ...' LOG", "lines/s")
    rt, at = Series("routes", "s"), Series("awk", "s")
    for _ in range(runs):
        r = must(spawn(PY + ["routes", str(log), "--json", str(tmp / "routes.json")]), "routes")
        routes.add(lines / r.wall, r.rss_kib)
        rt.add(r.wall)
        a = must(spawn(["awk", AWK_PROG, str(log)]), "awk")
        awk.add(lines / a.wall, a.rss_kib)
        at.add(a.wall)
    sec = section(f"{title}: {lines:,} lines, {nbytes / 2**20:.0f} MiB, {runs} runs")
    show(sec, routes)
    show(sec, awk)
    absolute(sec, "routes throughput", routes, ">= 2M lines/s", lambda v: v >= 2e6)
    ratio(sec, "routes / awk (time)", rt, at, target="<= 1.5x", ok=lambda r: r <= 1.5)
    log.unlink()


# ------------------------------------------------------------------------------ 5
_LINECOUNT = """
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open(z.namelist()[0]) as f:
        print(sum(1 for _ in f))
"""


def bench_import(tmp: Path, runs: int) -> None:
    title = "5. import android (surfaceflinger.zip)"
    if importlib.util.find_spec("forensics.importers.android") is None:
        unavailable(title, "forensics/importers/android.py is not there")
        return
    if not ANDROID_ZIP.exists():
        unavailable(title, f"{ANDROID_ZIP} is missing")
        return
    from forensics.trace import read_header  # noqa: F401 - the trace's event count comes from its header
    from forensics.replay import TraceFile

    imp, base = Series("hakmem-forensics import android FILE -o T", "s"), Series("baseline: unzip + split lines", "s")
    rate = Series("import", "ev/s")
    out = tmp / "android.htb"
    events = 0
    for _ in range(runs):
        r = must(spawn(PY + ["import", "android", str(ANDROID_ZIP), "-o", str(out)]), "import android")
        with TraceFile(out) as tf:
            events = tf.num_events
        imp.add(r.wall, r.rss_kib)
        rate.add(events / r.wall)
        b = must(spawn([sys.executable, "-c", _LINECOUNT, str(ANDROID_ZIP)]), "line count")
        base.add(b.wall, b.rss_kib)
    sec = section(f"{title}: {events:,} events, {runs} runs")
    show(sec, imp)
    show(sec, rate)
    show(sec, base)
    absolute(sec, "import time", imp, "< 5 s", lambda v: v < 5)
    ratio(sec, "import / unzip+split (time)", imp, base)
    out.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ 6
def bench_record(tmp: Path, runs: int, iterations: int) -> None:
    title = "6. recorder overhead (alloc_bench: malloc/calloc/realloc/free only)"
    if importlib.util.find_spec("forensics.record") is None or not (NATIVE / "libhfrecord.so").exists():
        unavailable(title, "forensics/record.py or libhfrecord.so is not there")
        return
    exe = tmp / "alloc_bench"
    must(spawn([os.environ.get("CC", "cc"), "-std=gnu11", "-O2", "-o", str(exe),
                str(REPO / "csrc" / "tests" / "alloc_bench.c"), "-lpthread"]), "build alloc_bench")
    cmd = [str(exe), "1", str(iterations)]
    raw = tmp / "raw"
    plain, preload, whole = (Series("program alone", "s"), Series("under libhfrecord.so (raw log only)", "s"),
                             Series("hakmem-forensics record -o T -- program", "s"))
    calls = 0
    for _ in range(runs):
        p = must(spawn(cmd), "alloc_bench")
        calls = int(p.out.split("calls=")[1].split()[0])
        plain.add(p.wall, p.rss_kib)
        shutil.rmtree(raw, ignore_errors=True)
        raw.mkdir()
        q = must(spawn(cmd, env=dict(ENV, LD_PRELOAD=str(NATIVE / "libhfrecord.so"), HFRECORD_DIR=str(raw))),
                 "alloc_bench under the recorder")
        preload.add(q.wall, q.rss_kib)
        w = must(spawn(PY + ["record", "-o", str(tmp / "rec.htb"), "--"] + cmd), "record")
        whole.add(w.wall, w.rss_kib)
    sec = section(f"{title}: {calls:,} calls, {runs} runs")
    for s in (plain, preload, whole):
        show(sec, s)
    ratio(sec, "record command / program alone (time)", whole, plain, target="<= 1.5x", ok=lambda r: r <= 1.5,
          note="recording, then converting the raw log to a trace")
    ratio(sec, "  recording alone / program alone", preload, plain)


# ------------------------------------------------------------------------------ 7
MEMCHECK_ERROR = re.compile(rb"^==\d+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched|"
                            rb"Source and destination|Process terminating)", re.M)


def bench_segv(traces: dict[str, Path], tmp: Path, runs: int) -> None:
    title = "7. SEGV fixture: hakmem-forensics replay (report included) vs valgrind memcheck"
    toolkit, first, total = (Series("hakmem-forensics replay (default fixture)", "s"),
                             Series("memcheck: time to its first error line", "s"), Series("memcheck: whole run", "s"))
    have_valgrind = shutil.which("valgrind") is not None
    log = tmp / "memcheck.log"
    for _ in range(runs):
        r = must(spawn(PY + ["replay"]), "hakmem-forensics replay")
        if "SIGSEGV" not in r.out:
            sys.exit("bench: the default replay did not report the SEGV")
        toolkit.add(r.wall, r.rss_kib)
        if not have_valgrind:
            continue
        log.unlink(missing_ok=True)
        seen: list[float] = []

        def watch(proc: subprocess.Popen, t0: float = time.perf_counter()) -> None:
            while proc.poll() is None:   # returns once the child exits; wait4 then reaps it
                if log.exists() and MEMCHECK_ERROR.search(log.read_bytes()):
                    seen.append(time.perf_counter() - t0)
                    return
                time.sleep(0.002)

        # --aslr: hfreplay otherwise re-executes itself, and the new image would run without memcheck
        m = spawn(["valgrind", "--tool=memcheck", "--error-exitcode=99", f"--log-file={log}", str(HFREPLAY),
                   str(traces["segv"]), "--lib", str(LIBHAKMEM), "--aslr", "--quiet"], watch=watch)
        if not seen and MEMCHECK_ERROR.search(log.read_bytes()):
            seen.append(m.wall)   # it finished between two looks at the log
        first.add(seen[0] if seen else m.wall, m.rss_kib)
        total.add(m.wall, m.rss_kib)
    sec = section(f"{title} ({runs} runs)")
    show(sec, toolkit)
    if not have_valgrind:
        print("   valgrind: not installed")
        return
    show(sec, first)
    show(sec, total)
    ratio(sec, "memcheck to first error / toolkit to report", first, toolkit, target=">= 10x", ok=lambda r: r >= 10)
    # The fixture crashes at its 45th event, so both sides above are mostly start-up. For scale:
    # the same two tools over a whole trace (no error to find).
    big = traces["rm_small"]
    tk, mc = Series("hakmem-forensics replay TRACE (report)", "s"), Series("memcheck running hfreplay TRACE", "s")
    for _ in range(runs):
        r = must(spawn(PY + ["replay", str(big)]), "hakmem-forensics replay (1M events)")
        tk.add(r.wall, r.rss_kib)
        m = must(spawn(["valgrind", "--tool=memcheck", "--error-exitcode=99", f"--log-file={log}", str(HFREPLAY),
                        str(big), "--lib", str(LIBHAKMEM), "--aslr", "--quiet"]), "memcheck (1M events)")
        mc.add(m.wall, m.rss_kib)
    from forensics.replay import TraceFile

    with TraceFile(big) as tf:
        nbig = tf.num_events
    sec = section(f"7b. for scale: the same two over a whole {nbig:,}-event random-mixed trace, no error to find "
                  f"({runs} runs)")
    show(sec, tk)
    show(sec, mc)
    ratio(sec, "memcheck / toolkit, whole trace", mc, tk)


# ------------------------------------------------------------------------------ main
def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (the slow ones use fewer)")
    ap.add_argument("--events", type=int, default=10_000_000, help="events of the random-mixed throughput trace")
    ap.add_argument("--routes-size", default="200M", help="bytes of route log for item 4")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--keep", metavar="DIR", help="generate the inputs into DIR and keep them")
    args = ap.parse_args()
    for need in (HFREPLAY, LIBHAKMEM):
        if not need.exists():
            print(f"bench: {need} is missing: make -C csrc OUT=$PWD/forensics/_native all", file=sys.stderr)
            return 3
    start = time.perf_counter()
    uname = platform.uname()
    header = (f"hakmem-forensics bench: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, "
              f"{uname.system} {uname.release}, Python {platform.python_version()}; "
              f"figures: median [min .. max, ±half-range] of {args.runs} runs unless said")
    print(header)
    REPORT.update(header=header, command=" ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]))
    runs = max(args.runs, 1)
    slow = max(min(runs, 3), 1)
    with tempfile.TemporaryDirectory(prefix="hakmem-bench-") as scratch:
        tmp = Path(args.keep) if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        traces = generate(tmp, args.events)
        bench_native(f"random-mixed {args.events:,} 2048 1234567", traces["rm"], runs, threaded_too=False)
        bench_native("larson 50 8 128 1024 5 12345 4", traces["larson"], runs, threaded_too=True)
        if not args.keep:
            traces["rm"].unlink()   # 480 MB less in the temporary directory from here on
        bench_batch(traces["rm_small"], traces["rm_tiny"], slow)
        bench_routes(tmp, slow, parse_size(args.routes_size))
        bench_import(tmp, slow)
        bench_record(tmp, slow, 1_000_000)
        bench_segv(traces, tmp, slow)
    took = time.perf_counter() - start
    print(f"\nbench: {took:.0f} s in all")
    REPORT["seconds"] = took
    if args.json:
        Path(args.json).write_text(json.dumps(REPORT, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
