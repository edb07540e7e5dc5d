"""Scenario presets: knobs and forensic ops added to a generated workload so that a replay of
the trace reproduces one failure mode of the free path with no command-line flags.

Each scenario sets its knobs in the header (``# knob ...``), records itself as
``# meta scenario=NAME``, and may inject forensic ops into the workload's event stream. The
injections are deterministic (their own random.Random, seeded from the workload seed and the
scenario name) and spread evenly over the workload's main phase; the workload's own events are
unchanged, so a scenario trace is the plain trace plus its additions.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Iterator

from forensics.trace.records import (
    OP_CORRUPT,
    OP_DOUBLE_FREE,
    OP_FREE,
    OP_FREE_INTERIOR,
    OP_FREE_LIBC,
    OP_FREE_RAW,
    OP_LIBC_MALLOC,
    OP_MALLOC,
    OP_THREAD_END,
    RawEvent,
)

MIB = 1 << 20

# hakmem-ref (csrc/hakmem_ref.c): Tiny classes 8..1024 (one SuperSlab per class while the
# working set is small), Mid up to 32736 user bytes, L25 up to 1 MiB - 32, larger blocks are
# mmap'd with a header; the AllocHeader is 32 bytes in front of the block.
HEADER_OFFSET = -32
CORRUPT_MAGIC = 0xDEADBEEF
WILD_ADDRESSES = (0x10000, 0xDEAD0000, 0x20000, 0xDEAD1000)
SS_REG_CAPACITY = 4
SS_REG_DROP_EVERY = 2


class Scenario(str, Enum):
    REGISTRY_CAPACITY = "registry-capacity"
    REGISTRY_DROP = "registry-drop"
    EARLY_RELEASE = "early-release"
    MIXED_LIBC = "mixed-libc"
    DOUBLE_FREE = "double-free"
    INTERIOR_FREE = "interior-free"
    WILD_FREE = "wild-free"
    HEADER_CORRUPTION = "header-corruption"


@dataclass(frozen=True)
class ScenarioSpec:
    knobs: tuple[tuple[str, str], ...]
    description: str
    injections: int = 0  # forensic ops added ("a few")


SPECS: dict[Scenario, ScenarioSpec] = {
    Scenario.REGISTRY_CAPACITY: ScenarioSpec(
        (("HAKMEM_MODE", "direct"), ("HAKMEM_SS_REG_CAPACITY", str(SS_REG_CAPACITY))),
        f"SuperSlab registry capacity {SS_REG_CAPACITY} (SP_META_CAPACITY_ERROR): later SuperSlabs are used "
        "unregistered, so their blocks miss SS-first lookup and reach the header path",
    ),
    Scenario.REGISTRY_DROP: ScenarioSpec(
        (("HAKMEM_MODE", "direct"), ("HAKMEM_SS_REG_DROP_EVERY", str(SS_REG_DROP_EVERY))),
        f"every {SS_REG_DROP_EVERY}nd SuperSlab registration is dropped: those SuperSlabs' blocks escape the registry",
    ),
    Scenario.EARLY_RELEASE: ScenarioSpec(
        (("HAKMEM_MODE", "direct"), ("HAKMEM_SS_EARLY_RELEASE", "1")),
        "a SuperSlab is released (unregistered, unmapped) when one block is still live: freeing that block "
        "reads a header in unmapped memory",
    ),
    Scenario.MIXED_LIBC: ScenarioSpec(
        (("HAKMEM_MODE", "ldpreload"),),
        "LD_PRELOAD mode with libc_malloc objects freed through the allocator (free_libc): mixed libc/hakmem pointers",
        injections=6,
    ),
    Scenario.DOUBLE_FREE: ScenarioSpec(
        (("HAKMEM_MODE", "direct"),),
        "a few blocks are freed a second time right after their free (double_free)",
        injections=4,
    ),
    Scenario.INTERIOR_FREE: ScenarioSpec(
        (("HAKMEM_MODE", "direct"),),
        "a few live blocks of at least 32 bytes get free_interior OBJ 16 before their real free",
        injections=4,
    ),
    Scenario.WILD_FREE: ScenarioSpec(
        (("HAKMEM_MODE", "direct"),),
        "a few free_raw of addresses nobody allocated: " + ", ".join(f"{a:#x}" for a in WILD_ADDRESSES),
        injections=len(WILD_ADDRESSES),
    ),
    Scenario.HEADER_CORRUPTION: ScenarioSpec(
        (("HAKMEM_MODE", "direct"),),
        f"large 2-3 MiB blocks (header path) and a Mid block get 'corrupt OBJ {HEADER_OFFSET} 4 {CORRUPT_MAGIC:#x}' "
        "(the AllocHeader magic) before their free",
        injections=4,
    ),
}
assert set(SPECS) == set(Scenario)


def get_scenario(name: str | Scenario) -> Scenario:
    """The scenario of that name; ValueError naming the choices otherwise."""
    try:
        return Scenario(name)
    except ValueError:
        choices = ", ".join(s.value for s in Scenario)
        raise ValueError(f"unknown scenario {name!r} (choose from: {choices})") from None


def inject(
    scenario: Scenario,
    events: Iterator[RawEvent],
    *,
    seed: int,
    span: int,
    first_free_id: int,
) -> Iterator[RawEvent]:
    """The workload's events with the scenario's forensic ops added.

    span: number of events of the workload's main phase (injection points are spread over it);
    first_free_id: the lowest object id the workload never uses (injected objects take ids from
    there). Memory: the sizes of live objects (for interior-free) and the few pending ops."""
    spec = SPECS[scenario]
    if spec.injections == 0:
        yield from events
        return
    rng = random.Random((seed << 32) ^ zlib.crc32(scenario.value.encode()))
    k = spec.injections
    points = [max(1, span * (i + 1) // (k + 1)) for i in range(k)]
    next_id = first_free_id
    pending: list[tuple[int, int, list[RawEvent]]] = []  # (due index, tid, events)
    gap = max(1, span // (4 * k))
    sizes: dict[int, int] = {}  # live object -> size (interior-free only)
    track_sizes = scenario is Scenario.INTERIOR_FREE
    done = 0  # injections made
    armed = False  # the next point is reached, waiting for an eligible event
    index = 0

    for ev in events:
        code = ev[0]
        if pending and (code == OP_THREAD_END or pending[0][0] <= index):
            keep = []
            for due, tid, extra in pending:
                if due <= index or (code == OP_THREAD_END and tid == ev[1]):
                    yield from extra
                else:
                    keep.append((due, tid, extra))
            pending = keep
        if not armed and done < k and index >= points[done]:
            armed = True
        if armed:
            tid = ev[1]
            if scenario is Scenario.DOUBLE_FREE:
                if code == OP_FREE and ev[2]:
                    yield ev
                    yield (OP_DOUBLE_FREE, tid, ev[2], 0, 0, 0, 0, 0)
                    done, armed, index = done + 1, False, index + 1
                    continue
            elif scenario is Scenario.INTERIOR_FREE:
                if code == OP_FREE and sizes.get(ev[2], 0) >= 32:
                    yield (OP_FREE_INTERIOR, tid, ev[2], 0, 0, 16, 0, 0)
                    done, armed = done + 1, False
            elif scenario is Scenario.WILD_FREE:
                yield (OP_FREE_RAW, tid, 0, 0, 0, WILD_ADDRESSES[done], 0, 0)
                done, armed = done + 1, False
            elif scenario is Scenario.MIXED_LIBC:
                obj, next_id = next_id, next_id + 1
                yield (OP_LIBC_MALLOC, tid, obj, 0, 16 + rng.getrandbits(10), 0, 0, 0)
                pending.append((index + gap, tid, [(OP_FREE_LIBC, tid, obj, 0, 0, 0, 0, 0)]))
                done, armed = done + 1, False
            elif scenario is Scenario.HEADER_CORRUPTION:
                obj, next_id = next_id, next_id + 1
                if done == k - 1:
                    size = 3000 + rng.getrandbits(9)  # a Mid block
                else:
                    size = 2 * MIB + rng.getrandbits(20)  # 2-3 MiB: mmap'd, header path
                yield (OP_MALLOC, tid, obj, 0, size, 0, 0, 0)
                pending.append((index + gap, tid, [
                    (OP_CORRUPT, tid, obj, 0, 4, HEADER_OFFSET, CORRUPT_MAGIC, 0),
                    (OP_FREE, tid, obj, 0, 0, 0, 0, 0),
                ]))
                done, armed = done + 1, False
        if track_sizes:
            if code == OP_MALLOC:
                sizes[ev[2]] = ev[4]
            elif code == OP_FREE:
                sizes.pop(ev[2], None)
        yield ev
        index += 1
    for _due, _tid, extra in pending:
        yield from extra
