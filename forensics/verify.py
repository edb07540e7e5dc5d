"""`verify`: the seed's verification steps and benchmark predictions, run for real under every probe variant.

The seed (FALSE_POSITIVE_SEGV_FIX.md) proposes a readability check before the header read
and claims: "mincore(): ~50-100 cycles", "No false positives (mincore is reliable)", "Routes
to correct handler", "Larson: no impact", "Random Mixed: +0-2% overhead", "Worst case (all
miss): +5-10%", and that its verification steps pass (larson, random_mixed 50000 2048 1234567,
a 100-seed stress loop, a performance check). This module measures each claim:

* the probe audit (forensics.probeaudit) for the cost per call and the wrong verdicts;
* judged replays (forensics.replay.run_replay: the route oracle on every free) of generated
  traces — the seed's own commands, and the same workload under the fault scenarios that make
  frees miss the registries, which is where the fix matters — under `off` (the pre-fix path)
  and the four fix variants: which crash, at which event; how many frees are misrouted or
  leaked; how many reach the header path and take the fallback;
* the stress loop: `random_mixed ITER WS $i` for seeds 1..N, as written and under faults;
* replay time: each timing trace is replayed (hfd_replay, serial, no oracle) in `runs` fresh
  isolated children. Inside a child the variants take turns: the probe knob is switched
  between replays (the free path reads it on every free), `rounds` rounds in rotating order,
  each turn ("slice") timed as the fastest of the replays made in `slice_seconds`. So each
  variant's slice has an `off` slice next to it in time, and interference from the rest of
  the machine hits both alike. The overhead of a variant is the median of its paired ratios
  (slice / the same round's `off` slice), with their quartiles; the noise floor comes from an
  A/A control, `off` timed twice per round (twice the median distance of that ratio from 1,
  at least 1%). A trace on which `off` crashes (registry-capacity) is compared with `off` on the
  same events without the fault, from the baseline trace's child of the same run.

Verdicts on speed treat the seed's percentages as upper bounds on the cost (a variant that is
cheaper than predicted does not refute it); a variant that misroutes, leaks or crashes on the
timing trace does not get "holds" whatever its speed, since its time is that of a wrong path.
Nothing here formats output: the result is a model.VerifyReport for forensics.report.verify.
"""

from __future__ import annotations

import mmap
import os
import shlex
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from forensics import isolate, model, probeaudit
from forensics.errors import BadInputError
from forensics.replay import EVENT_SIZE, HEADER_SIZE, ReplayConfig, TraceFile, get_effective_knobs, run_replay
from forensics.trace import read_header
from forensics.trace.generators import Workload, larson, random_mixed

VARIANTS: tuple[str, ...] = probeaudit.PROBES
FIXES: tuple[str, ...] = probeaudit.FIX_PROBES
DEFAULT_SEEDS = 100
DEFAULT_RUNS = 3
DEFAULT_ROUNDS = 5
QUICK_SEEDS = 5
QUICK_RUNS = 1
QUICK_ROUNDS = 2
AA = "off-again"  # the A/A control: off timed a second time in every round
CYCLES_CLAIM_MAX = 100  # "~50-100 cycles"
CYCLES_TOLERANCE = 1.5  # "~": up to 150 cycles still counts as holding
MIN_NOISE = 0.01
DEFAULT_SLICE_SECONDS = 0.03  # each variant's turn replays the trace for at least this long
QUICK_SLICE_SECONDS = 0.005
MAX_REPS = 200
TIMING_TIMEOUT = 300.0
REGISTRY_ROUTES = {"ss_hit", "mid_hit", "l25_hit", "null", "(none)"}

ProgressFn = Callable[[str, int, int], None]  # (what is running, steps done, steps in all)


# ------------------------------------------------------------------------ traces
@dataclass(frozen=True)
class Fault:
    name: str
    scenario: str | None
    knobs: tuple[tuple[str, str], ...]
    what: str


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("registry-capacity", "registry-capacity", (), "SuperSlab registry capacity 4: later SuperSlabs are unregistered, their frees miss SS lookup"),
        Fault("registry-drop", "registry-drop", (), "every 2nd SuperSlab registration dropped"),
        Fault("early-release", "early-release", (), "a SuperSlab released (unmapped) while a block is still live"),
        Fault("header-corruption", "header-corruption", (), "the magic of a few headers overwritten before their free"),
        Fault("mixed-libc", "mixed-libc", (), "LD_PRELOAD mode with libc blocks freed through the allocator"),
        Fault("protnone-guard", "registry-capacity", (("HAKMEM_SS_GUARD", "protnone"),), "registry-capacity, with a PROT_NONE guard page below each SuperSlab"),
        Fault("pool-off", None, (("HAKMEM_POOL", "0"),), "Mid pool off: Mid-sized blocks take the MALLOC method; their frees reach the header path with a valid header"),
        Fault("all-miss", None, (("HAKMEM_TINY", "0"), ("HAKMEM_POOL", "0"), ("HAKMEM_L25", "0")), "every pool off: every block takes the MALLOC method, every free misses every registry and reads a valid header"),
    )
}
STEP3_FAULTS = ("registry-capacity", "registry-drop", "early-release", "header-corruption", "mixed-libc", "protnone-guard", "pool-off", "all-miss")
CRASH_FAULTS = ("registry-capacity", "registry-drop", "early-release", "header-corruption", "mixed-libc", "protnone-guard")
STEP4_FAULTS = ("pool-off", "registry-capacity", "all-miss")
STRESS_FAULTS = (None, "registry-capacity", "protnone-guard")


@dataclass(frozen=True)
class TraceSpec:
    """A generated verify trace: generator arguments plus an optional fault."""

    key: str
    generator: str  # "larson" or "random-mixed"
    args: tuple[int, ...]
    fault: str | None = None

    def get_workload(self) -> Workload:
        f = FAULTS[self.fault] if self.fault else None
        scenario = f.scenario if f else None
        knobs = dict(f.knobs) if f else {}
        if self.generator == "larson":
            return larson(*self.args, scenario=scenario, knobs=knobs)
        return random_mixed(*self.args, scenario=scenario, knobs=knobs)

    @property
    def filename(self) -> str:
        return f"{self.key}.htb"

    def describe(self) -> str:
        out = f"{self.generator} {' '.join(map(str, self.args))}"
        if self.fault:
            f = FAULTS[self.fault]
            out += f" + {self.fault} ({f.what})"
        return out

    def get_gen_command(self) -> str:
        cmd = ["hakmem-forensics", "gen", self.generator, *map(str, self.args), "-o", self.filename]
        if self.fault:
            f = FAULTS[self.fault]
            if f.scenario:
                cmd += ["--scenario", f.scenario]
            for k, v in f.knobs:
                cmd += ["--knob", f"{k}={v}"]
        return shlex.join(cmd)


@dataclass(frozen=True)
class Scale:
    larson_step3: tuple[int, ...]
    larson_step4: tuple[int, ...]
    rm_step3: tuple[int, ...]
    rm_step4: tuple[int, ...]
    stress: tuple[int, int]  # iterations, working set (the seed is the loop variable)


FULL = Scale((10, 8, 128, 1024, 1, 12345, 4), (2, 8, 128, 1024, 1, 12345, 4), (50000, 2048, 1234567), (100000, 2048, 1234567), (10000, 2048))
QUICK = Scale((1, 8, 128, 256, 1, 12345, 4), (1, 8, 128, 128, 1, 12345, 4), (5000, 512, 1234567), (10000, 512, 1234567), (2000, 512))


def get_traces(scale: Scale) -> dict[str, TraceSpec]:
    specs = [
        TraceSpec("larson-step3", "larson", scale.larson_step3),
        TraceSpec("larson-step4", "larson", scale.larson_step4),
        TraceSpec("rm-step3", "random-mixed", scale.rm_step3),
        *[TraceSpec(f"rm-step3+{f}", "random-mixed", scale.rm_step3, f) for f in STEP3_FAULTS],
        TraceSpec("rm-step4", "random-mixed", scale.rm_step4),
        *[TraceSpec(f"rm-step4+{f}", "random-mixed", scale.rm_step4, f) for f in STEP4_FAULTS],
    ]
    return {s.key: s for s in specs}


# (timing trace, baseline trace for `off`)
TIMINGS: dict[str, str] = {
    "larson-step4": "larson-step4",
    "rm-step4": "rm-step4",
    "rm-step4+pool-off": "rm-step4+pool-off",
    "rm-step4+registry-capacity": "rm-step4",
    "rm-step4+all-miss": "rm-step4+all-miss",
}


# ------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class ClaimDef:
    id: str
    claim: str
    source: str
    audit: bool = False
    matrix: tuple[str, ...] = ()
    timing: tuple[str, ...] = ()
    stress: bool = False


CLAIMS: tuple[ClaimDef, ...] = (
    ClaimDef("cycles", "mincore(): ~50-100 cycles (system call)", "Performance Impact: Overhead Analysis", audit=True),
    ClaimDef("no-false-positives", "No false positives (mincore is reliable)", "Summary: Why This Works", audit=True, matrix=("rm-step3+protnone-guard",)),
    ClaimDef("larson-works", "./larson_hakmem 10 8 128 1024 1 12345 4 — should still work", "Verification Steps: Step 3, Test 1", matrix=("larson-step3",)),
    ClaimDef("random-mixed-no-segv", "./bench_random_mixed_hakmem 50000 2048 1234567 — completes without SEGV", "Verification Steps: Step 3, Test 2", matrix=("rm-step3", *[f"rm-step3+{f}" for f in CRASH_FAULTS])),
    ClaimDef("stress", "for i in {1..100}: bench_random_mixed_hakmem 10000 2048 $i — all pass", "Verification Steps: Step 3, Test 3", stress=True),
    ClaimDef("correct-handler", "Routes to correct handler (tiny_free or libc_free)", "Summary: Why This Works", matrix=("rm-step3", *[f"rm-step3+{f}" for f in STEP3_FAULTS])),
    ClaimDef("larson-perf", "Larson (all Tiny): no impact (SS-first catches all); larson 2 8 128 1024 1 12345 4 similar to baseline", "Benchmark Predictions; Step 4", matrix=("larson-step4",), timing=("larson-step4",)),
    ClaimDef("step4-random-mixed", "bench_random_mixed_hakmem 100000 2048 1234567 — completes successfully with reasonable performance", "Verification Steps: Step 4", matrix=("rm-step4",), timing=("rm-step4",)),
    ClaimDef("random-mixed-perf", "Random Mixed (varied): +0-2% overhead (rare fallback)", "Benchmark Predictions", matrix=("rm-step4", "rm-step4+pool-off", "rm-step4+registry-capacity"), timing=("rm-step4", "rm-step4+pool-off", "rm-step4+registry-capacity")),
    ClaimDef("worst-case", "Worst case (all miss): +5-10% (but prevents SEGV)", "Benchmark Predictions", matrix=("rm-step4+all-miss",), timing=("rm-step4+all-miss",)),
)
CLAIM_IDS: tuple[str, ...] = tuple(c.id for c in CLAIMS)


@dataclass(frozen=True)
class VerifyOptions:
    seeds: int = DEFAULT_SEEDS
    runs: int = DEFAULT_RUNS
    rounds: int = DEFAULT_ROUNDS
    quick: bool = False
    claims: tuple[str, ...] = ()  # empty: all
    lib: str | None = None
    workers: int = 0  # parallel replays for the correctness runs (0: one per CPU, at most 4)
    audit_calls: int = probeaudit.DEFAULT_CALLS
    audit_batches: int = probeaudit.DEFAULT_BATCHES
    slice_seconds: float = DEFAULT_SLICE_SECONDS

    @classmethod
    def make_quick(cls, **kw) -> VerifyOptions:
        base = dict(seeds=QUICK_SEEDS, runs=QUICK_RUNS, rounds=QUICK_ROUNDS, quick=True, audit_calls=100, audit_batches=5, slice_seconds=QUICK_SLICE_SECONDS)
        base.update(kw)
        return cls(**base)


# ------------------------------------------------------------------------ running
class _Progress:
    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn = fn
        self.total = total
        self.done = 0
        self.lock = threading.Lock()

    def step(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.done += n
            if self.fn:
                self.fn(what, self.done, self.total)

    def show(self, what: str) -> None:
        if self.fn:
            self.fn(what, self.done, self.total)


def _verify_run(key: str, probe: str, r: model.ReplayResult) -> model.VerifyRun:
    def first(outcome: model.Outcome) -> int | None:
        return next((a.index for a in r.anomalies if a.outcome is outcome), None)

    crash_event = r.crash_event.index if r.crash_event else (r.crash.event_index if r.crash else None)
    return model.VerifyRun(
        trace=key,
        probe=probe,
        completed=r.completed,
        crash_signal=r.crash.signal_name if r.crash else ("hang" if r.hang else None),
        crash_event=crash_event,
        crash_stage=r.crash.stage_name if r.crash else None,
        events=r.num_events,
        events_done=r.events_done,
        frees=r.frees,
        header_frees=sum(n for route, n in r.routes.items() if route not in REGISTRY_ROUTES),
        fallback=r.routes.get(model.Route.UNMAPPED_HEADER_FALLBACK.value, 0),
        recovered=r.routes.get(model.Route.INVALID_MAGIC_TINY_RECOVERY.value, 0),
        misrouted=r.outcomes.get(model.Outcome.MISROUTED.value, 0),
        leaked=r.outcomes.get(model.Outcome.LEAKED.value, 0),
        invalid_magic=r.outcomes.get(model.Outcome.INVALID_MAGIC.value, 0),
        first_misrouted=first(model.Outcome.MISROUTED),
        first_leaked=first(model.Outcome.LEAKED),
        routes=dict(r.routes),
    )


def _timed_child(path: str, num_events: int, variants: list[str], rounds: int, slice_seconds: float) -> Callable[[isolate.ChildContext], dict[str, list[float]]]:
    """The child's work: a warm-up replay per variant, then `rounds` rounds in which every
    variant takes a turn (rotating order); returns variant -> seconds of each turn's fastest replay."""

    def body(ctx: isolate.ChildContext) -> dict[str, list[float]]:
        # The allocator's stderr (one "Invalid magic" line per recovered free) goes to /dev/null,
        # as a benchmark's would to a file: its write()s are timed, a pipe's back-pressure is not.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        with open(path, "rb") as fh:
            trace = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        results = mmap.mmap(-1, HEADER_SIZE + max(num_events, 1) * EVENT_SIZE)

        def use(variant: str) -> None:
            ctx.allocator.set_knob("HAKMEM_HEADER_PROBE", "off" if variant == AA else variant)

        def once() -> int:
            t0 = time.perf_counter_ns()
            ctx.driver.replay(trace, results, threads=False, judge=False)
            return time.perf_counter_ns() - t0

        def turn() -> int:
            best = spent = once()
            for _ in range(MAX_REPS - 1):
                if spent >= slice_seconds * 1e9:
                    break
                t = once()
                best, spent = min(best, t), spent + t
            return best

        for v in variants:
            use(v)
            once()
        out: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                use(v)
                out[v].append(turn() / 1e9)
        return out

    return body


def _workers(opts: VerifyOptions) -> int:
    return opts.workers or max(1, min(4, os.cpu_count() or 1))


def run_verify(opts: VerifyOptions = VerifyOptions(), *, progress: ProgressFn | None = None) -> model.VerifyReport:
    """Run the measurements the selected claims need and judge the claims."""
    start = time.monotonic()
    unknown = [c for c in opts.claims if c not in CLAIM_IDS]
    if unknown:
        raise BadInputError(f"unknown claim {', '.join(unknown)} (choose from: {', '.join(CLAIM_IDS)})")
    selected = [c for c in CLAIMS if not opts.claims or c.id in opts.claims]
    scale = QUICK if opts.quick else FULL
    traces = get_traces(scale)
    need_audit = any(c.audit for c in selected)
    matrix_keys = sorted({k for c in selected for k in c.matrix}, key=list(traces).index)
    timing_keys = [k for k in TIMINGS if any(k in c.timing for c in selected)]
    need_stress = any(c.stress for c in selected) and opts.seeds > 0
    gen_keys = sorted(set(matrix_keys) | set(timing_keys) | {TIMINGS[k] for k in timing_keys}, key=list(traces).index)
    timing_children = _timing_children(timing_keys)

    stress_units = [(seed, fault) for seed in range(1, opts.seeds + 1) for fault in STRESS_FAULTS] if need_stress else []
    total = len(gen_keys) + int(need_audit) + len(matrix_keys) * len(VARIANTS) + len(stress_units) * len(VARIANTS) + len(timing_children) * opts.runs
    bar = _Progress(progress, total)
    config = ReplayConfig(lib=opts.lib)

    with tempfile.TemporaryDirectory(prefix="hakmem-forensics-verify-") as tmp:
        workdir = Path(tmp)
        paths: dict[str, Path] = {}
        for key in gen_keys:
            bar.show(f"generating {key}")
            paths[key] = workdir / traces[key].filename
            traces[key].get_workload().write(paths[key])
            bar.step(f"generated {key}")

        audit = None
        if need_audit:
            bar.show("probe audit")
            audit = probeaudit.run_audit(calls=opts.audit_calls, batches=opts.audit_batches, lib=opts.lib)
            bar.step("probe audit")

        runs: list[model.VerifyRun] = []
        jobs = [(k, v) for k in matrix_keys for v in VARIANTS]

        def matrix_job(job: tuple[str, str]) -> model.VerifyRun:
            key, probe = job
            r = run_replay(paths[key], ReplayConfig(lib=config.lib, probe=probe))
            bar.step(f"replay {key} --probe {probe}")
            return _verify_run(key, probe, r)

        with ThreadPoolExecutor(_workers(opts)) as ex:
            runs = list(ex.map(matrix_job, jobs))

        stress = _run_stress(stress_units, scale, opts, workdir, bar) if stress_units else []
        timings = _run_timings(timing_children, paths, opts, bar)

    overheads = _overheads(timings)
    report = model.VerifyReport(
        claims=[],
        traces={k: traces[k].describe() for k in gen_keys},
        runs=runs,
        stress=stress,
        timings=timings,
        overheads=overheads,
        audit=audit,
        settings={
            "quick": opts.quick,
            "seeds": opts.seeds if need_stress else 0,
            "runs": opts.runs,
            "rounds": opts.rounds,
            "claims": [c.id for c in selected],
            "lib": opts.lib,
            "workers": _workers(opts),
            "cpus": os.cpu_count(),
            "stress_args": list(scale.stress),
            "audit_calls": opts.audit_calls,
            "audit_batches": opts.audit_batches,
            "slice_seconds": opts.slice_seconds,
        },
    )
    report.claims = judge(report, opts, [c.id for c in selected])
    report.seconds = time.monotonic() - start
    return report


def judge(report: model.VerifyReport, opts: VerifyOptions, claim_ids: Iterable[str] | None = None) -> list[model.ClaimCheck]:
    """The claim checks for the measurements in report (runs, stress, overheads, audit); each
    claim needs the measurements its ClaimDef names."""
    traces = get_traces(QUICK if opts.quick else FULL)
    j = _Judge(report, traces, opts)
    wanted = set(claim_ids) if claim_ids is not None else set(CLAIM_IDS)
    return [j.evaluate(c) for c in CLAIMS if c.id in wanted]


def _timing_children(timing_keys: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(trace, variants timed in its child): off, the A/A control and the fixes where off
    completes the trace; the fixes alone where it is compared with another trace's off."""
    out: list[tuple[str, list[str]]] = []
    keys = list(timing_keys)
    for base in [TIMINGS[k] for k in keys]:  # every baseline trace gets its own child
        if base not in [k for k, _ in out]:
            out.append((base, ["off", AA, *FIXES]))
    for key in keys:
        if key not in [k for k, _ in out]:
            out.append((key, list(FIXES)))
    return out


def _run_timings(children: list[tuple[str, list[str]]], paths: dict[str, Path], opts: VerifyOptions, bar: _Progress) -> list[model.TimingCell]:
    """Each trace's child once per run (fresh each time); the order of the children rotates."""
    got: dict[tuple[str, str], list[float | None]] = {(k, v): [] for k, vs in children for v in vs}
    sizes = {}
    for key, _ in children:
        with TraceFile(paths[key]) as tf:
            sizes[key] = tf.num_events
    rounds = max(opts.rounds, 1)
    for run in range(opts.runs):
        shift = run % max(len(children), 1)
        for key, variants in children[shift:] + children[:shift]:
            bar.show(f"timing {key} (run {run + 1}/{opts.runs})")
            knobs = get_effective_knobs(read_header(paths[key]), ReplayConfig(lib=opts.lib, probe="off"))
            body = _timed_child(str(paths[key]), sizes[key], variants, rounds, opts.slice_seconds)
            res = isolate.run_isolated(body, lib=opts.lib, knobs=knobs, timeout=TIMING_TIMEOUT)
            for v in variants:
                got[(key, v)].extend(res.value[v] if res.outcome == "ok" else [None] * rounds)
            bar.step(f"timing {key}")
    return [model.TimingCell(k, v, tuple(t)) for (k, v), t in got.items()]


def _overheads(timings: list[model.TimingCell]) -> list[model.Overhead]:
    by = {(t.trace, t.probe): t for t in timings}
    out = []
    for key, base in TIMINGS.items():
        b = by.get((base, "off"))
        if b is None:
            continue
        noise = MIN_NOISE
        aa = by.get((base, AA))
        if aa is not None:
            dev = [abs(x / y - 1) for x, y in zip(aa.seconds, b.seconds) if x is not None and y]
            if dev:
                noise = max(MIN_NOISE, 2 * statistics.median(dev))
        if base != key:  # different children: their run-to-run spread adds to it
            done = [s for s in b.seconds if s is not None]
            if done:
                med = statistics.median(done)
                noise = max(noise, 2 * statistics.median(abs(s - med) for s in done) / med)
        for v in FIXES:
            c = by.get((key, v))
            if c is None:
                continue
            pairs = [x / y for x, y in zip(c.seconds, b.seconds) if x is not None and y]
            if not (c.completed and b.completed) or not pairs:
                out.append(model.Overhead(key, v, base, "off", None, None, None, noise))
                continue
            lo, hi = model.quartiles_of(tuple(pairs))
            out.append(model.Overhead(key, v, base, "off", statistics.median(pairs), lo, hi, noise))
    return out


def _run_stress(units: list[tuple[int, str | None]], scale: Scale, opts: VerifyOptions, workdir: Path, bar: _Progress) -> list[model.StressTally]:
    iters, ws = scale.stress

    def unit(u: tuple[int, str | None]) -> list[tuple[str, str, int, bool, bool, int, int, int]]:
        seed, fault = u
        spec = TraceSpec(f"stress-{seed}" + (f"+{fault}" if fault else ""), "random-mixed", (iters, ws, seed), fault)
        path = workdir / spec.filename
        spec.get_workload().write(path)
        rows = []
        try:
            for v in VARIANTS:
                r = run_replay(path, ReplayConfig(lib=opts.lib, probe=v))
                mis = r.outcomes.get(model.Outcome.MISROUTED.value, 0)
                leak = r.outcomes.get(model.Outcome.LEAKED.value, 0)
                header = sum(n for route, n in r.routes.items() if route not in REGISTRY_ROUTES)
                rows.append((fault or "none", v, seed, not r.completed, r.completed and mis + leak > 0, mis, leak, header))
                bar.step(f"stress seed {seed}" + (f" + {fault}" if fault else "") + f" --probe {v}")
        finally:
            path.unlink(missing_ok=True)
        return rows

    with ThreadPoolExecutor(_workers(opts)) as ex:
        results = [row for rows in ex.map(unit, units) for row in rows]
    tallies = []
    for fault in STRESS_FAULTS:
        name = fault or "none"
        for v in VARIANTS:
            mine = [r for r in results if r[0] == name and r[1] == v]
            if not mine:
                continue
            tallies.append(
                model.StressTally(
                    fault=name,
                    probe=v,
                    seeds=len(mine),
                    failed=tuple(sorted(r[2] for r in mine if r[3])),
                    wrong=tuple(sorted(r[2] for r in mine if r[4])),
                    misrouted=sum(r[5] for r in mine),
                    leaked=sum(r[6] for r in mine),
                    header_frees=sum(r[7] for r in mine),
                )
            )
    return tallies


# ------------------------------------------------------------------------ judging
def _n(value: int) -> str:
    return f"{value:,}"


def _list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def verdict_for(holds_for: list[str], among: tuple[str, ...] = FIXES) -> tuple[str, str]:
    """(verdict text, status) from the variants a claim holds for."""
    if not among:
        return "not measured", "not measured"
    if set(among) <= set(holds_for):
        return "holds", "holds"
    if not holds_for:
        return "does not hold", "does not hold"
    return f"holds only for {', '.join(p for p in among if p in holds_for)}", "partly"


def _ratio(o: model.Overhead) -> str:
    if o.ratio is None:
        return "crashed"
    return f"{o.ratio:.2f}x [{o.ratio_lo:.2f}–{o.ratio_hi:.2f}]"


class _Judge:
    """Turns the measurements into ClaimChecks, one method per claim."""

    def __init__(self, report: model.VerifyReport, traces: dict[str, TraceSpec], opts: VerifyOptions) -> None:
        self.r = report
        self.traces = traces
        self.opts = opts

    # -- helpers
    def run(self, key: str, probe: str) -> model.VerifyRun:
        run = self.r.get_run(key, probe)
        assert run is not None, (key, probe)
        return run

    def overhead(self, key: str, probe: str) -> model.Overhead | None:
        return next((o for o in self.r.overheads if o.trace == key and o.probe == probe), None)

    def lib_opt(self) -> list[str]:
        return ["--lib", self.opts.lib] if self.opts.lib else []

    def replay_cmd(self, key: str, probes: Iterable[str]) -> str:
        spec = self.traces[key]
        probes = list(probes)
        lib = " " + shlex.join(self.lib_opt()) if self.opts.lib else ""
        if len(probes) == 1:
            return f"{spec.get_gen_command()} && hakmem-forensics replay {shlex.quote(spec.filename)} --probe {probes[0]}{lib}"
        return f"{spec.get_gen_command()} && for p in {' '.join(probes)}; do hakmem-forensics replay {shlex.quote(spec.filename)} --probe $p{lib}; done"

    def verify_cmd(self, claim: str, **extra: object) -> str:
        cmd = ["hakmem-forensics", "verify", "--claim", claim]
        if self.opts.quick:
            cmd.append("--quick")
        for k, v in extra.items():
            cmd += [f"--{k}", str(v)]
        return shlex.join(cmd + self.lib_opt())

    def audit_cmd(self) -> str:
        return shlex.join(["hakmem-forensics", "probe", "audit", *self.lib_opt()])

    @staticmethod
    def crash_text(run: model.VerifyRun) -> str:
        if run.crash_signal == "hang":
            return f"hangs at event #{run.crash_event}"
        stage = f" in {run.crash_stage}" if run.crash_stage else ""
        return f"{run.crash_signal}{stage} at event #{run.crash_event}"

    def make(self, d: ClaimDef, measurement: str, holds_for: list[str], evidence: list[str], among: tuple[str, ...] = FIXES) -> model.ClaimCheck:
        verdict, status = verdict_for(holds_for, among)
        return model.ClaimCheck(d.id, d.claim, d.source, measurement, verdict, status, tuple(p for p in among if p in holds_for), tuple(evidence))

    def evaluate(self, d: ClaimDef) -> model.ClaimCheck:
        return getattr(self, "claim_" + d.id.replace("-", "_"))(d)

    # -- the claims
    def claim_cycles(self, d: ClaimDef) -> model.ClaimCheck:
        a = self.r.audit
        assert a is not None
        full = a.get_cost("seed-mincore", probeaudit.COST_ALIGNED_ROW)
        einval = a.get_cost("seed-mincore", probeaudit.COST_HEADER_ROW)
        if full is None or einval is None or not a.has_tsc:
            return model.ClaimCheck(d.id, d.claim, d.source, "not measured: no timing (or no TSC on this machine)", "not measured", "not measured", (), (self.audit_cmd(),))
        others = []
        for p in ("mincore", "seed-msync", "safe", "off"):
            c = a.get_cost(p, probeaudit.COST_HEADER_ROW)
            if c is not None:
                label = {"off": "the timing loop alone (off)", "safe": "safe (process_vm_readv)", "mincore": "corrected mincore"}.get(p, p)
                others.append(f"{label} {c.cycles_median:,.0f}")
        lo, hi = full.cycles_quartiles
        text = (
            f"mincore() costs {full.cycles_median:,.0f} TSC cycles ({full.ns_median:,.0f} ns; quartiles {lo:,.0f}–{hi:,.0f}) per call when it does its job "
            f"(page-aligned mapped address, bed row {full.row}) — {full.cycles_median / CYCLES_CLAIM_MAX:.0f}x the claim's upper end. "
            f"The seed's literal call on a real header (row {einval.row}, unaligned) fails with EINVAL and still costs {einval.cycles_median:,.0f} cycles "
            f"({einval.ns_median:,.0f} ns). Per call on a real header: {'; '.join(others)} cycles."
        )
        limit = CYCLES_CLAIM_MAX * CYCLES_TOLERANCE
        holds = [p for p in ("seed-mincore", "mincore") if (c := a.get_cost(p, probeaudit.COST_ALIGNED_ROW)) is not None and c.cycles_median <= limit]
        return self.make(d, text, holds, [self.audit_cmd()], among=("seed-mincore", "mincore"))

    def claim_no_false_positives(self, d: ClaimDef) -> model.ClaimCheck:
        a = self.r.audit
        assert a is not None
        parts = []
        holds = []
        for p in FIXES:
            fr = a.get_false_readable(p)
            fu = a.get_false_unreadable(p)
            if not fr and not fu:
                holds.append(p)
                parts.append(f"{p}: none")
                continue
            bits = []
            if fr:
                bits.append(f"{len(fr)} false \"readable\" ({', '.join(r.name for r in fr)})")
            if fu:
                bits.append(f"{len(fu)} false \"unreadable\" ({', '.join(r.name for r in fu)})")
            parts.append(f"{p}: {'; '.join(bits)}")
        text = (
            f"Wrong verdicts on the {len(a.rows)}-row bed (false \"readable\": the header read crashes; false \"unreadable\": "
            f"a good free goes to the fallback) — " + ". ".join(parts) + "."
        )
        evidence = [self.audit_cmd()]
        key = "rm-step3+protnone-guard"
        crashed = [p for p in FIXES if (run := self.r.get_run(key, p)) is not None and run.crash_signal]
        if crashed:
            first = self.run(key, crashed[0])
            text += f" In a replay ({key}): " + "; ".join(f"{p} {self.crash_text(self.run(key, p))}" for p in crashed) + " — the header sits in the PROT_NONE guard page below a SuperSlab."
            holds = [p for p in holds if p not in crashed]
            evidence.append(self.replay_cmd(key, crashed))
            evidence.append(shlex.join(["hakmem-forensics", "probe", "--trace", self.traces[key].filename, "--event", str(first.crash_event), *self.lib_opt()]))
        return self.make(d, text, holds, evidence)

    def claim_larson_works(self, d: ClaimDef) -> model.ClaimCheck:
        key = "larson-step3"
        runs = {p: self.run(key, p) for p in VARIANTS}
        ok = [p for p, r in runs.items() if r.completed and r.wrong == 0 and r.invalid_magic == 0]
        any_run = runs["off"]
        if len(ok) == len(VARIANTS):
            text = (
                f"Every variant, off included, completes all {_n(any_run.events)} events ({self.traces[key].describe()}): "
                f"{_n(any_run.frees)} frees, all correct; {_n(any_run.header_frees)} reach the header path, so the probe never runs."
            )
        else:
            bad = [f"{p}: {self.crash_text(r) if not r.completed else f'{_n(r.misrouted)} misrouted, {_n(r.leaked)} leaked'}" for p, r in runs.items() if p not in ok]
            text = f"{self.traces[key].describe()}: " + "; ".join(bad) + "."
        return self.make(d, text, ok, [self.replay_cmd(key, VARIANTS)])

    def claim_random_mixed_no_segv(self, d: ClaimDef) -> model.ClaimCheck:
        plain = {p: self.run("rm-step3", p) for p in VARIANTS}
        parts = []
        if all(r.completed for r in plain.values()):
            parts.append(
                f"As written ({self.traces['rm-step3'].describe()}) every variant completes, off included: "
                f"{_n(plain['off'].header_frees)} of {_n(plain['off'].frees)} frees miss the registries in hakmem-ref, so there is nothing to fix."
            )
        else:
            parts.append("As written: " + "; ".join(f"{p} {self.crash_text(r)}" for p, r in plain.items() if not r.completed) + ".")
        keys = [f"rm-step3+{f}" for f in CRASH_FAULTS]
        crash_lines = []
        evidence = []
        for p in VARIANTS:
            crashes = [(k, self.run(k, p)) for k in keys if not self.run(k, p).completed]
            if crashes:
                crash_lines.append(f"{p} on " + ", ".join(f"{k.split('+', 1)[1]} ({self.crash_text(r)})" for k, r in crashes))
        holds = [p for p in FIXES if all(self.run(k, p).completed for k in ["rm-step3", *keys])]
        parts.append(f"With frees that miss the registries ({', '.join(CRASH_FAULTS)}): crashes — " + ("; ".join(crash_lines) if crash_lines else "none") + ".")
        if holds:
            parts.append(f"{_list(holds)} complete every trace.")
        first_off = next((k for k in keys if not self.run(k, "off").completed), None)
        evidence.append(self.replay_cmd("rm-step3", VARIANTS))
        if first_off:
            evidence.append(self.replay_cmd(first_off, ["off"]))
        bad_fix = next(((k, p) for p in FIXES for k in keys if not self.run(k, p).completed), None)
        if bad_fix:
            evidence.append(self.replay_cmd(bad_fix[0], [bad_fix[1]]))
        return self.make(d, " ".join(parts), holds, evidence)

    def claim_stress(self, d: ClaimDef) -> model.ClaimCheck:
        tallies = self.r.stress
        if not tallies:
            return model.ClaimCheck(d.id, d.claim, d.source, "not measured (--seeds 0)", "not measured", "not measured", (), (self.verify_cmd("stress"),))
        iters, ws = self.r.settings["stress_args"]  # type: ignore[misc]
        seeds = tallies[0].seeds
        parts = []
        for fault in [f or "none" for f in STRESS_FAULTS]:
            mine = {t.probe: t for t in tallies if t.fault == fault}
            if not mine:
                continue
            fails = [f"{p} {len(t.failed)}/{t.seeds}" + (f" (first: seed {t.failed[0]})" if t.failed else "") for p, t in mine.items() if t.failed]
            passing = [p for p, t in mine.items() if not t.failed]
            label = "As written" if fault == "none" else f"+ {fault}"
            if not fails:
                line = f"{label}: every variant passes {seeds}/{seeds}"
            else:
                line = f"{label}: fail — " + ", ".join(fails)
                if passing:
                    line += f"; pass {seeds}/{seeds} — {', '.join(passing)}"
            wrong = [f"{p} {len(t.wrong)} seeds ({_n(t.misrouted)} misrouted, {_n(t.leaked)} leaked)" for p, t in mine.items() if t.wrong]
            if wrong:
                line += "; completed with wrong frees: " + ", ".join(wrong)
            parts.append(line)
        holds = [p for p in FIXES if all(not t.failed for t in tallies if t.probe == p)]
        text = f"random_mixed {iters} {ws} $i for i = 1..{seeds}, each seed replayed under every variant (failure = crash or hang). " + ". ".join(parts) + "."
        plain_off = next((t for t in tallies if t.fault == "none" and t.probe == "off"), None)
        if plain_off is not None and not plain_off.failed and plain_off.header_frees == 0:
            text += " As written, no free of any seed misses the registries (0 reach the header path), so the loop cannot fail in hakmem-ref, not even without the fix."
        evidence = [self.verify_cmd("stress", seeds=seeds)]
        first_fail = next((t for t in tallies if t.fault != "none" and t.failed and t.probe == "off"), None)
        if first_fail:
            spec = TraceSpec(f"stress-{first_fail.failed[0]}+{first_fail.fault}", "random-mixed", (iters, ws, first_fail.failed[0]), first_fail.fault)
            evidence.append(f"{spec.get_gen_command()} && hakmem-forensics replay {shlex.quote(spec.filename)} --probe off")
        return self.make(d, text, holds, evidence)

    def claim_correct_handler(self, d: ClaimDef) -> model.ClaimCheck:
        keys = ["rm-step3", *[f"rm-step3+{f}" for f in STEP3_FAULTS]]
        skip = model.Route.INVALID_MAGIC_SKIP.value

        def name(k: str) -> str:
            return k.split("+", 1)[1] if "+" in k else "as written"

        # Leaks every variant shares are the fault's (a block whose SuperSlab is gone), not a
        # routing choice: reported, not held against a variant.
        common = {k: min((self.run(k, p).leaked for p in FIXES if self.run(k, p).completed), default=0) for k in keys}
        parts = []
        holds = []
        evidence = []
        for p in FIXES:
            bad = []
            for k in keys:
                run = self.run(k, p)
                if run.misrouted:
                    bad.append(f"{_n(run.misrouted)} misrouted on {name(k)} (first: event #{run.first_misrouted})")
                if run.routes.get(skip):
                    bad.append(f"{_n(run.routes[skip])} skipped with a warning ({skip}: never freed) on {name(k)}")
                if run.leaked > common[k]:
                    bad.append(f"{_n(run.leaked - common[k])} more leaked than the other variants on {name(k)} (first: event #{run.first_leaked})")
                if not run.completed:
                    bad.append(f"{self.crash_text(run)} on {name(k)}")
            if bad:
                parts.append(f"{p}: " + ", ".join(bad))
            else:
                holds.append(p)
                parts.append(f"{p}: no free sent to a wrong handler")
        shared = [f"{_n(n)} on {name(k)} (first: event #{next(self.run(k, p).first_leaked for p in FIXES if self.run(k, p).leaked)})" for k, n in common.items() if n]
        fallback = {p: sum(self.run(k, p).fallback for k in keys) for p in FIXES}
        recovered = {p: sum(self.run(k, p).recovered for k in keys) for p in FIXES}
        text = (
            f"Over the {len(keys)} random_mixed traces (as written and {', '.join(STEP3_FAULTS)}) — " + ". ".join(parts) + ". "
            + (f"Leaked under every variant alike (nothing left to free it from): {', '.join(shared)}. " if shared else "")
            + "Fallback (unmapped_header_fallback) taken: " + ", ".join(f"{p} {_n(fallback[p])}" for p in FIXES) + "; "
            "invalid magic, then tiny recovery: " + ", ".join(f"{p} {_n(recovered[p])}" for p in FIXES) + "."
        )
        worst = max(((k, p) for k in keys for p in FIXES), key=lambda kp: self.run(*kp).misrouted)
        if self.run(*worst).misrouted:
            evidence.append(self.replay_cmd(worst[0], [worst[1]]))
        skipped = next(((k, p) for k in keys for p in FIXES if self.run(k, p).routes.get(skip)), None)
        if skipped:
            evidence.append(self.replay_cmd(skipped[0], FIXES))
        if not evidence:
            evidence.append(self.replay_cmd(keys[1], FIXES))
        return self.make(d, text, holds, evidence)

    def _speed(self, key: str, hi: float, p: str) -> tuple[bool, str]:
        """(holds, text) for variant p on timing trace key against an upper bound hi (fraction)."""
        o = self.overhead(key, p)
        run = self.run(key, p)
        if o is None:
            return False, f"{p} not timed"
        if not run.completed or o.ratio is None:
            return False, f"{p} {self.crash_text(run)}"
        text = f"{p} {_ratio(o)}"
        if run.wrong:
            return False, text + f" but misroutes/leaks {_n(run.wrong)} of {_n(run.frees)} frees (first: event #{run.first_misrouted if run.first_misrouted is not None else run.first_leaked})"
        return o.ratio - 1 <= hi + o.noise, text

    def _noise(self, key: str) -> str:
        o = next((o for o in self.r.overheads if o.trace == key), None)
        return f"noise ±{o.noise * 100:.1f}%" if o else "noise unknown"


    def _timing_intro(self) -> str:
        return (
            f"Replay time vs off (serial, no oracle; the variants take turns in one child, {max(self.opts.rounds, 1)} rounds × "
            f"{self.opts.runs} fresh child{'ren' if self.opts.runs != 1 else ''}; median of the paired ratios [quartiles]; "
            "noise from an off-vs-off control)"
        )

    def claim_larson_perf(self, d: ClaimDef) -> model.ClaimCheck:
        key = "larson-step4"
        results = [self._speed(key, 0.0, p) for p in FIXES]
        holds = [p for p, (ok, _) in zip(FIXES, results) if ok]
        run = self.run(key, "off")
        text = (
            f"{self.traces[key].describe()}: {_n(run.header_frees)} of {_n(run.frees)} frees reach the header path. "
            f"{self._timing_intro()}: " + ", ".join(t for _, t in results) + f" ({self._noise(key)})."
        )
        return self.make(d, text, holds, [self.verify_cmd(d.id), self.replay_cmd(key, VARIANTS)])

    def claim_step4_random_mixed(self, d: ClaimDef) -> model.ClaimCheck:
        key = "rm-step4"
        runs = {p: self.run(key, p) for p in VARIANTS}
        ok = [p for p in FIXES if runs[p].completed and runs[p].wrong == 0]
        speeds = [self._speed(key, 0.0, p)[1] for p in FIXES]
        done = "every variant completes" if all(r.completed for r in runs.values()) else "; ".join(f"{p} {self.crash_text(r)}" for p, r in runs.items() if not r.completed)
        text = (
            f"{self.traces[key].describe()}: {done}; {_n(runs['off'].header_frees)} of {_n(runs['off'].frees)} frees reach the header path. "
            f"{self._timing_intro()}: " + ", ".join(speeds) + f" ({self._noise(key)})."
        )
        return self.make(d, text, ok, [self.verify_cmd(d.id), self.replay_cmd(key, VARIANTS)])

    def claim_random_mixed_perf(self, d: ClaimDef) -> model.ClaimCheck:
        hi = 0.02
        parts = []
        holds = set(FIXES)
        plain = self.run("rm-step4", "off")
        plain_speeds = [self._speed("rm-step4", hi, p)[1] for p in FIXES]
        parts.append(f"As written ({self.traces['rm-step4'].describe()}): {_n(plain.header_frees)} frees reach the probe; " + ", ".join(plain_speeds) + f" ({self._noise('rm-step4')})")
        for key, what in (
            ("rm-step4+pool-off", "valid headers: Mid pool off"),
            ("rm-step4+registry-capacity", "registry escapes: registry-capacity, against off on the same events with the registry intact (a separate child)"),
        ):
            run = self.run(key, "mincore")
            results = [self._speed(key, hi, p) for p in FIXES]
            holds &= {p for p, (ok, _) in zip(FIXES, results) if ok}
            share = f"{_n(run.header_frees)} of {_n(run.frees)} frees ({100 * run.header_frees / max(run.frees, 1):.1f}%) reach the header path"
            if run.recovered:
                share += f"; mincore reads a neighbour's bytes as the header for {_n(run.recovered)} of them (\"Invalid magic\" error, then tiny recovery)"
            parts.append(f"Rare fallback, {what} — {share}: " + ", ".join(t for _, t in results) + f" ({self._noise(key)})")
        text = f"{self._timing_intro()}. " + ". ".join(parts) + "."
        return self.make(d, text, [p for p in FIXES if p in holds], [self.verify_cmd(d.id), self.replay_cmd("rm-step4+registry-capacity", FIXES)])

    def claim_worst_case(self, d: ClaimDef) -> model.ClaimCheck:
        key = "rm-step4+all-miss"
        results = [self._speed(key, 0.10, p) for p in FIXES]
        holds = [p for p, (ok, _) in zip(FIXES, results) if ok]
        run = self.run(key, "off")
        text = (
            f"{self.traces[key].describe()}: {_n(run.header_frees)} of {_n(run.frees)} frees miss every registry; off completes them all correctly. "
            f"{self._timing_intro()}: " + ", ".join(t for _, t in results) + f" ({self._noise(key)})."
        )
        return self.make(d, text, holds, [self.verify_cmd(d.id), self.replay_cmd(key, VARIANTS)])
