"""Workload generators mirroring the seed's benchmarks: larson and bench_random_mixed.

Both are deterministic functions of their arguments (random.Random(seed)), and both stream:
a Workload holds the header and a recipe; iterating it produces events one at a time, with
memory bounded by the workload's own live set (the larson arrays, the random_mixed slots).
Object ids are slot numbers, reused as slots are refilled, so the binary header's object
count stays at the working-set size however long the trace.

larson (``larson SECONDS MIN MAX CHUNKS ROUNDS SEED THREADS``, e.g. the seed's
``10 8 128 1024 1 12345 4``) maps the real benchmark's arguments as follows. Real larson
fills THREADS arrays of CHUNKS blocks (sizes in [MIN, MAX]), then each thread replaces random
blocks (free a random slot, malloc a random size) ROUNDS * CHUNKS times, after which a new
thread takes over the same array (freeing blocks the old thread allocated: cross-thread frees);
this repeats until SECONDS have passed. Wall-clock time has no place in a deterministic trace,
so here:

* SECONDS scales the work per round: each thread does SECONDS * CHUNKS replacements per round;
* ROUNDS is the number of rounds (thread generations). After every round, thread t's array
  is handed to thread (t+1) % THREADS. At the start of the next round the receiver frees every
  block of that array (all allocated by another thread) and refills it; after the last round
  it frees them for good. So even ROUNDS = 1 has cross-thread frees (THREADS > 1).
* Threads are trace tids 1..THREADS, interleaved operation by operation (round robin: one
  malloc, or one replacement = free + malloc, per thread in turn). Each ends with thread_end.
* Sizes are uniform in [MIN, MAX] (both inclusive); array a's slot i is object a*CHUNKS+i+1.

random_mixed (``bench_random_mixed ITERATIONS WORKING_SET SEED``, e.g. ``50000 2048 1234567``)
follows hakmem's bench_random_mixed.c: each iteration draws r (32 random bits), picks slot
r % WORKING_SET, frees it if occupied, else mallocs 16 + (r & 0x3FF) bytes (16..1039) into it;
at the end every remaining block is freed. One thread (tid 1); slot i is object i+1. The bench
uses one r for both choices, so with a power-of-two working set a slot always gets the same
size; kept, to stay faithful. The draws come from Python's Mersenne Twister rather than the
bench's xorshift32, so the sequence differs from the C bench's while the distribution is the same.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from forensics.trace.records import (
    OP_FREE,
    OP_MALLOC,
    OP_THREAD_END,
    U32_MAX,
    Event,
    RawEvent,
    TraceHeader,
    TraceStats,
)
from forensics.trace.io import write_trace
from forensics.trace.scenarios import SPECS, Scenario, get_scenario, inject

MAX_SIZE = (1 << 64) - 1


@dataclass(frozen=True)
class Workload:
    """A generated trace: its header and a way to stream its events (raw tuples or Events).

    expected_events: the exact event count without a scenario (a scenario adds a few)."""

    name: str
    header: TraceHeader
    expected_events: int
    _make: Callable[[], Iterator[RawEvent]]

    def iter_raw(self) -> Iterator[RawEvent]:
        return self._make()

    def __iter__(self) -> Iterator[Event]:
        from_raw = Event.from_raw
        for raw in self._make():
            yield from_raw(raw)

    def write(self, path: str | os.PathLike[str], *, binary: bool | None = None,
              progress: Callable[[int], None] | None = None) -> TraceStats:
        """Stream the workload into a trace file (binary=None: by the name, .htb is binary)."""
        return write_trace(path, self.header, self.iter_raw(), binary=binary, progress=progress)


def _header(generator: str, scenario: Scenario | None, knobs: Mapping[str, object]) -> TraceHeader:
    all_knobs: dict[str, object] = {}
    meta: list[tuple[str, object]] = [("generator", generator)]
    comments: list[str] = []
    if scenario is not None:
        spec = SPECS[scenario]
        all_knobs.update(spec.knobs)
        meta.append(("scenario", scenario.value))
        comments.append(f"{scenario.value}: {spec.description}")
    all_knobs.update(knobs)
    return TraceHeader.build(all_knobs, meta, comments)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def larson(
    seconds: int,
    min_size: int,
    max_size: int,
    chunks_per_thread: int,
    rounds: int,
    seed: int,
    threads: int,
    *,
    scenario: Scenario | str | None = None,
    knobs: Mapping[str, object] | None = None,
) -> Workload:
    """The larson workload (arguments in larson's order); see the module docstring.

    ValueError for arguments that make no workload."""
    _check(seconds >= 0, f"larson: SECONDS must be >= 0, got {seconds}")
    _check(0 <= min_size <= max_size <= MAX_SIZE, f"larson: need 0 <= MIN_SIZE <= MAX_SIZE, got {min_size} and {max_size}")
    _check(chunks_per_thread >= 1, f"larson: CHUNKS_PER_THREAD must be >= 1, got {chunks_per_thread}")
    _check(rounds >= 1, f"larson: ROUNDS must be >= 1, got {rounds}")
    _check(seed >= 0, f"larson: SEED must be >= 0, got {seed}")
    _check(1 <= threads <= 4096, f"larson: THREADS must be in 1..4096, got {threads}")
    _check(threads * chunks_per_thread <= U32_MAX // 2,
           f"larson: THREADS * CHUNKS_PER_THREAD = {threads * chunks_per_thread} object ids is too many")
    sc = get_scenario(scenario) if scenario is not None else None
    args = f"{seconds} {min_size} {max_size} {chunks_per_thread} {rounds} {seed} {threads}"
    header = _header(f"larson {args}", sc, knobs or {})
    t, c = threads, chunks_per_thread
    main = t * c + (rounds - 1) * 2 * t * c + rounds * 2 * t * seconds * c
    expected = main + t * c + t

    def make() -> Iterator[RawEvent]:
        base = _larson_events(seconds, min_size, max_size, c, rounds, seed, t)
        if sc is None:
            return base
        return inject(sc, base, seed=seed, span=main, first_free_id=t * c + 1)

    return Workload("larson", header, expected, make)


def _larson_events(seconds: int, min_size: int, max_size: int, chunks: int, rounds: int, seed: int,
                   threads: int) -> Iterator[RawEvent]:
    rng = random.Random(seed)
    rand = rng.random
    span = max_size - min_size + 1
    if span <= 1 << 52:
        def draw_size() -> int:
            return min_size + int(rand() * span)
    else:  # beyond a double's precision
        def draw_size() -> int:
            return min_size + rng.randrange(span)
    tids = range(1, threads + 1)
    # array_of[t]: which array thread t holds; array a's slot i is object a*chunks + i + 1.
    array_of = list(range(threads))
    M, F = OP_MALLOC, OP_FREE
    for rnd in range(rounds):
        if rnd == 0:
            for i in range(chunks):
                for t in tids:
                    yield (M, t, array_of[t - 1] * chunks + i + 1, 0, draw_size(), 0, 0, 0)
        else:  # the array came from the previous thread: free its blocks, refill
            for i in range(chunks):
                for t in tids:
                    obj = array_of[t - 1] * chunks + i + 1
                    yield (F, t, obj, 0, 0, 0, 0, 0)
                    yield (M, t, obj, 0, draw_size(), 0, 0, 0)
        for _ in range(seconds * chunks):
            for t in tids:
                obj = array_of[t - 1] * chunks + int(rand() * chunks) + 1
                yield (F, t, obj, 0, 0, 0, 0, 0)
                yield (M, t, obj, 0, draw_size(), 0, 0, 0)
        array_of = [array_of[(t - 1) % threads] for t in range(threads)]  # t's array goes to t+1
    for i in range(chunks):
        for t in tids:
            yield (F, t, array_of[t - 1] * chunks + i + 1, 0, 0, 0, 0, 0)
    for t in tids:
        yield (OP_THREAD_END, t, 0, 0, 0, 0, 0, 0)


def random_mixed(
    iterations: int,
    working_set: int,
    seed: int,
    *,
    scenario: Scenario | str | None = None,
    knobs: Mapping[str, object] | None = None,
) -> Workload:
    """The bench_random_mixed workload; see the module docstring. ValueError for bad arguments."""
    _check(iterations >= 0, f"random-mixed: ITERATIONS must be >= 0, got {iterations}")
    _check(1 <= working_set <= U32_MAX // 2, f"random-mixed: WORKING_SET must be in 1..{U32_MAX // 2}, got {working_set}")
    _check(seed >= 0, f"random-mixed: SEED must be >= 0, got {seed}")
    sc = get_scenario(scenario) if scenario is not None else None
    header = _header(f"random-mixed {iterations} {working_set} {seed}", sc, knobs or {})
    # Exact count needs the run; the final frees are at most the working set.
    expected = iterations + _leftover_estimate(iterations, working_set)

    def make() -> Iterator[RawEvent]:
        base = _random_mixed_events(iterations, working_set, seed)
        if sc is None:
            return base
        return inject(sc, base, seed=seed, span=iterations, first_free_id=working_set + 1)

    return Workload("random-mixed", header, expected, make)


def _leftover_estimate(iterations: int, ws: int) -> int:
    # A slot flips on each visit; after many visits about half the slots are occupied.
    return min(ws // 2, iterations)


def _random_mixed_events(iterations: int, ws: int, seed: int) -> Iterator[RawEvent]:
    bits = random.Random(seed).getrandbits
    occupied = bytearray(ws)
    for _ in range(iterations):
        r = bits(32)
        idx = r % ws
        if occupied[idx]:
            occupied[idx] = 0
            yield (OP_FREE, 1, idx + 1, 0, 0, 0, 0, 0)
        else:
            occupied[idx] = 1
            yield (OP_MALLOC, 1, idx + 1, 0, 16 + (r & 0x3FF), 0, 0, 0)
    for idx in range(ws):
        if occupied[idx]:
            yield (OP_FREE, 1, idx + 1, 0, 0, 0, 0, 0)
