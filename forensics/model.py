"""Plain records of what the allocator did: enums named as the C side prints them, dataclasses.

No ctypes here: native.py converts C structs into these, and reporters, the CLI and tests
only ever see these. Each C-backed enum lists its members in the C enum's order, so a
member's `code` is the C value; native.py checks that order against the library's own
name functions (hak_route_name, ...) when it loads a library.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from functools import cache
from typing import TypeVar

E = TypeVar("E", bound="CEnum")


class CEnum(str, Enum):
    """A (str, Enum) mirroring a C enum: members in C order, value = the name C prints."""

    @classmethod
    def code_base(cls) -> int:
        """C value of the first member (1 for enums whose 0 has no member here)."""
        return 0

    @property
    def code(self) -> int:
        return _members(type(self)).index(self) + type(self).code_base()

    @classmethod
    def from_code(cls: type[E], code: int) -> E | None:
        """Member for a C value, None for a value outside the enum (e.g. HAK_ROUTE_NONE)."""
        idx = code - cls.code_base()
        members = _members(cls)
        return members[idx] if 0 <= idx < len(members) else None

    def __str__(self) -> str:
        return self.value


@cache
def _members(cls: type[CEnum]) -> tuple:
    return tuple(cls)


class Route(CEnum):
    """enum hak_route (hakmem.h); HAK_ROUTE_NONE (0, no free yet) has no member."""

    NULL = "null"
    SS_HIT = "ss_hit"
    MID_HIT = "mid_hit"
    L25_HIT = "l25_hit"
    UNMAPPED_HEADER_FALLBACK = "unmapped_header_fallback"
    INVALID_MAGIC_TINY_RECOVERY = "invalid_magic_tiny_recovery"
    INVALID_MAGIC_SKIP = "invalid_magic_skip"
    INVALID_MAGIC_LIBC = "invalid_magic_libc"
    BIGCACHE = "bigcache"
    BIGCACHE_L25 = "bigcache_l25"
    POOL_HDR = "pool_hdr"
    POOL_HDR_DISABLED = "pool_hdr_disabled"
    L25_HDR = "l25_hdr"
    MALLOC_HDR = "malloc_hdr"
    MMAP_BATCH = "mmap_batch"
    MMAP_WHALE = "mmap_whale"
    MMAP_MUNMAP = "mmap_munmap"
    UNKNOWN_METHOD = "unknown_method"

    @classmethod
    def code_base(cls) -> int:
        return 1


# C value of HAK_ROUTE_COUNT: route_counts[] in hak_stats has this many entries.
ROUTE_COUNT = len(Route) + 1


class Action(CEnum):
    """enum hak_action (hakmem.h): what the chosen route finally called."""

    NONE = "none"
    TINY_FREE = "tiny_free"
    POOL_FREE = "pool_free"
    L25_FREE = "l25_free"
    LIBC_FREE_PTR = "libc_free_ptr"
    LIBC_FREE_RAW = "libc_free_raw"
    BIGCACHE_PUT = "bigcache_put"
    BATCH_ADD = "batch_add"
    WHALE_PUT = "whale_put"
    MUNMAP = "munmap"


class Stage(CEnum):
    """enum hak_stage (hakmem.h): where a thread is in the allocator (crash reports)."""

    IDLE = "idle"
    ALLOC = "alloc"
    SS_LOOKUP = "ss_lookup"
    MID_LOOKUP = "mid_lookup"
    L25_LOOKUP = "l25_lookup"
    PROBE = "probe"
    MAGIC_READ = "magic_read"
    DISPATCH = "dispatch"
    TINY_FREE = "tiny_free"
    POOL_FREE = "pool_free"
    L25_FREE = "l25_free"
    LIBC_FREE = "libc_free"
    BIGCACHE = "bigcache"
    BATCH = "batch"
    WHALE = "whale"
    MUNMAP = "munmap"
    REALLOC = "realloc"
    USABLE_SIZE = "usable_size"
    CHECK = "check"


class FreeStep(CEnum):
    """enum hak_stage_bit (hakmem.h): steps of the free path, as in the trace's tried=/hit=.

    `code` is the bit index; `bit` is the mask bit.
    """

    SS = "ss"
    MID = "mid"
    L25 = "l25"
    PROBE = "probe"
    MAGIC = "magic"
    METHOD = "method"

    @property
    def bit(self) -> int:
        return 1 << self.code

    @classmethod
    def from_mask(cls, mask: int) -> tuple[FreeStep, ...]:
        return tuple(s for s in cls if mask & s.bit)


class ProbeKind(CEnum):
    """enum hak_probe_kind (hakmem.h), the HAKMEM_HEADER_PROBE values."""

    OFF = "off"
    SEED_MINCORE = "seed-mincore"
    SEED_MSYNC = "seed-msync"
    MINCORE = "mincore"
    SAFE = "safe"


class ProbeVerdict(str, Enum):
    """hak_free_decision.probe, spelled as the route trace's probe= field."""

    NOT_RUN = "-"
    UNREADABLE = "unreadable"
    READABLE = "readable"

    @classmethod
    def from_code(cls, code: int) -> ProbeVerdict:
        return {1: cls.READABLE, 0: cls.UNREADABLE}.get(code, cls.NOT_RUN)

    def __str__(self) -> str:
        return self.value


class OwnerKind(CEnum):
    """enum hak_owner_kind (hakmem.h): which path owns an address (ground truth)."""

    NONE = "none"
    TINY = "tiny"
    MID = "mid"
    L25 = "l25"
    MMAP = "mmap"
    MALLOC = "malloc"
    # Replay-only owners (HFR_OWNER_* in csrc/hftrace.h), never returned by hak_owner():
    LIBC = "libc"  # the object came from libc malloc (libc_malloc op, or the libc baseline)
    UNKNOWN = "unknown"  # the allocator has no hak_owner(): routes cannot be judged by owner


class BlockState(CEnum):
    """enum hak_block_state (hakmem.h)."""

    NONE = "none"
    LIVE = "live"
    FREE = "free"
    CACHED = "cached"


class ReqtraceOp(CEnum):
    """enum hak_reqtrace_op (hakmem.h)."""

    REGISTER = "register"
    UNREGISTER = "unregister"
    LOOKUP_HIT = "lookup_hit"
    LOOKUP_MISS = "lookup_miss"
    CAPACITY_ERROR = "capacity_error"
    DROPPED = "dropped"


class RegKind(CEnum):
    """enum hak_reg_kind (hakmem.h): which registry."""

    SS = "ss"
    MID = "mid"
    L25 = "l25"


class Method(IntEnum):
    """enum hak_method (hakmem.h): AllocHeader.method. The trace prints it as a number."""

    MALLOC = 1
    MMAP = 2
    POOL = 3
    L25_POOL = 4


@dataclass(frozen=True)
class FreeDecision:
    """One free's route decision (hak_free_decision)."""

    seq: int
    ptr: int
    route: Route | None  # None: HAK_ROUTE_NONE
    action: Action
    tried: tuple[FreeStep, ...]
    hit: tuple[FreeStep, ...]
    probe: ProbeVerdict
    probe_kind: ProbeKind | None
    magic_found: int | None  # None unless the magic was read
    method: int | None  # header method read, None if the header was not read
    tid: int

    def was_tried(self, step: FreeStep) -> bool:
        return step in self.tried

    def has_hit(self, step: FreeStep) -> bool:
        return step in self.hit


@dataclass(frozen=True)
class OwnerInfo:
    """hak_owner(): who owns an address according to the allocator's own bookkeeping."""

    addr: int
    kind: OwnerKind
    state: BlockState
    block_ptr: int | None
    block_size: int
    class_bytes: int
    region_base: int | None
    region_size: int
    class_index: int | None
    registered: bool
    method: Method | None  # None for Tiny (no header) and unowned addresses


@dataclass(frozen=True)
class Geometry:
    """hak_get_geometry(): the allocator's sizes, read at run time, never hard-coded."""

    abi_version: int
    header_size: int
    magic: int
    page_size: int
    superslab_size: int
    mid_chunk_size: int
    l25_chunk_size: int
    build_release: bool
    tiny_class_sizes: tuple[int, ...]
    mid_class_bytes: tuple[int, ...]  # block bytes incl. header
    l25_class_bytes: tuple[int, ...]  # block bytes incl. header
    tiny_max: int
    mid_max: int
    l25_max: int
    bigcache_min: int
    bigcache_l25_min: int
    batch_min_size: int

    @property
    def mid_class_user_sizes(self) -> tuple[int, ...]:
        return tuple(b - self.header_size for b in self.mid_class_bytes)

    @property
    def l25_class_user_sizes(self) -> tuple[int, ...]:
        return tuple(b - self.header_size for b in self.l25_class_bytes)


@dataclass(frozen=True)
class ReqtraceRecord:
    """One registry request (hak_reqtrace_rec)."""

    seq: int
    free_seq: int
    base: int
    addr: int
    op: ReqtraceOp | None
    reg: RegKind | None
    live: int
    tid: int


@dataclass(frozen=True)
class Stats:
    """hak_get_stats()."""

    allocs: int
    frees: int
    superslabs: int
    superslabs_registered: int
    superslabs_released_live: int
    mid_chunks: int
    l25_chunks: int
    mmap_live: int
    mmap_cached: int
    malloc_live: int
    route_counts: dict[Route, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CrashRecord:
    """What the driver's signal handler saw before the process died (hfd_crash_record)."""

    signo: int
    si_code: int
    fault_address: int
    ptr: int | None  # pointer being freed, None if unknown
    stage: Stage | None  # None if unknown
    stage_name: str
    has_state: bool
    free_seq: int
    event_index: int | None  # None if hfd_set_event_index() was never called
    tid: int
    maps: str
    maps_truncated: bool

    @property
    def signal_name(self) -> str:
        try:
            return _signal.Signals(self.signo).name
        except ValueError:
            return f"signal {self.signo}"


@dataclass(frozen=True)
class SymbolStatus:
    name: str
    required: bool
    present: bool
    feature: str
    kind: str  # "function" or "data"


@dataclass(frozen=True)
class LibraryInfo:
    """What a library file says about itself, read from the ELF without loading it."""

    path: str
    library_kind: str  # "allocator", "driver" or "unknown"
    machine: str  # ELF e_machine, e.g. "EM_X86_64"
    elf_class: int  # 32 or 64
    abi_version: int | None
    build_mode: str | None  # "release", "debug", None if the library does not say
    header_size: int | None
    magic: int | None
    superslab_size: int | None
    tiny_class_sizes: tuple[int, ...] | None
    has_debug_info: bool
    symbols: tuple[SymbolStatus, ...]

    @property
    def missing_required(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.symbols if s.required and not s.present)

    @property
    def missing_optional(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.symbols if not s.required and not s.present)


@dataclass(frozen=True)
class StructLayout:
    """A struct's layout from DWARF: member name -> (offset, size)."""

    name: str
    byte_size: int
    members: dict[str, tuple[int, int]]

    def get_offset(self, member: str) -> int:
        return self.members[member][0]


# ------------------------------------------------------------------------- replay
class Outcome(CEnum):
    """enum hfr_outcome (csrc/hftrace.h): the oracle's verdict on one event."""

    NONE = "none"  # not a free
    CORRECT = "correct"
    MISROUTED = "misrouted"
    LEAKED = "leaked"
    INVALID_MAGIC = "invalid_magic"
    CRASHED = "crashed"
    DETECTED_INVALID = "detected_invalid"


class EventStatus(CEnum):
    """enum hfr_status (csrc/hftrace.h)."""

    PENDING = "pending"  # never reached
    STARTED = "started"  # begun, not finished: the process died in it
    DONE = "done"


@dataclass(frozen=True)
class EventResult:
    """One replayed event: what the trace asked, what the allocator did, what the oracle says."""

    index: int
    op: str  # trace op name (forensics.trace.TraceOp value)
    tid: int
    obj: int
    ptr: int  # returned by an allocation, passed to a free
    owner: OwnerKind  # who made the object (at its allocation)
    outcome: Outcome
    status: EventStatus
    check_failed: bool
    decision: FreeDecision | None  # None for allocations and frees with no route (libc)

    @property
    def is_anomaly(self) -> bool:
        return self.outcome not in (Outcome.NONE, Outcome.CORRECT)


@dataclass(frozen=True)
class CheckFailure:
    """The first event after which the allocator's consistency check failed."""

    event_index: int
    message: str


@dataclass
class ReplayResult:
    """Everything one replay observed (kept up to a crash)."""

    trace: str
    allocator: str  # library path, or "libc"
    knobs: dict[str, str]  # effective knobs: the trace header's, then the command line's
    threads: bool  # replayed on one thread per trace thread
    num_events: int
    events_done: int
    threads_used: int
    frees: int
    allocs: int
    routes: dict[str, int]  # route name -> frees; "(none)" for frees without a route
    outcomes: dict[str, int]  # outcome name -> events (frees, and a crashing event)
    crash: CrashRecord | None
    crash_event: EventResult | None
    hang: bool  # killed after the time limit
    exit_status: int | None  # child exit code, None if killed by a signal
    exit_signal: int | None
    anomalies: list[EventResult]  # the first anomalies, in trace order
    anomaly_count: int  # all of them
    first_anomaly: int | None
    check_every: int
    first_check_failure: CheckFailure | None
    stderr_tail: list[str] = field(default_factory=list)  # the allocator's last stderr lines
    note: str = ""  # e.g. "no consistency check: the allocator has no hak_debug_check"
    seconds: float = 0.0

    @property
    def completed(self) -> bool:
        return self.crash is None and not self.hang and self.events_done == self.num_events

    @property
    def crashed(self) -> bool:
        return self.crash is not None or self.hang
