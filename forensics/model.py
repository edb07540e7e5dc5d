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


@dataclass(frozen=True)
class AllocFailure:
    """The first allocation of a replay that returned NULL for a non-zero size: under a memory
    limit (replay --max-memory, RLIMIT_AS in the child), where the limit was reached."""

    event_index: int
    op: str
    size: int  # bytes asked for (nmemb * size for calloc)
    limit: int | None  # the replay's memory limit in bytes, None if it had none

    @property
    def over_limit(self) -> bool:
        """The request alone is larger than the limit (rather than the heap having grown to it)."""
        return self.limit is not None and self.size > self.limit


# How a replay ended (ReplayResult.status), most telling first.
REPLAY_STATUSES = ("interrupted", "hang", "crashed", "killed", "memory_limit", "exited", "completed", "incomplete")


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
    raw_events: bytes | None = None  # every hfr_event record (run_replay(keep_events=True)), else None
    interrupted: bool = False  # the user interrupted the replay (Ctrl-C): the child was killed
    max_memory: int | None = None  # the child's memory limit in bytes (RLIMIT_AS headroom), None: none
    alloc_failure: AllocFailure | None = None  # the first allocation that returned NULL
    in_flight: list[int] = field(default_factory=list)  # killed with no crash record: the events it was running

    @property
    def completed(self) -> bool:
        return self.crash is None and not self.hang and not self.interrupted and self.events_done == self.num_events

    @property
    def partial(self) -> bool:
        """Not every event ran: the result holds what was observed before the end."""
        return self.events_done < self.num_events or self.interrupted or self.hang or self.crash is not None

    @property
    def status(self) -> str:
        """How the replay ended, one of REPLAY_STATUSES: interrupted (Ctrl-C), hang (time limit),
        crashed (a crash record), killed (a signal and no crash record: SIGKILL from the OOM
        killer or a user), memory_limit (an allocation returned NULL under the memory limit),
        exited (the child exited with an error status mid-replay), completed, incomplete."""
        if self.interrupted:
            return "interrupted"
        if self.hang:
            return "hang"
        if self.crash is not None:
            return "crashed"
        if self.exit_signal is not None:
            return "killed"
        if self.alloc_failure is not None and self.max_memory is not None and not self.alloc_failure.over_limit:
            return "memory_limit"
        if self.exit_status:
            return "exited"
        if self.events_done == self.num_events:
            return "completed"
        return "incomplete"

    @property
    def crashed(self) -> bool:
        return self.crash is not None or self.hang


# ------------------------------------------------------------------------ explain
@dataclass(frozen=True)
class BlockRef:
    """A block of the trace: one allocation of an object, and its free if it was freed."""

    obj: int
    ptr: int
    size: int  # requested bytes
    alloc_event: int
    alloc_op: str
    tid: int
    site: int
    free_event: int | None = None
    libc: bool = False  # a libc_malloc object (not the allocator's)


@dataclass(frozen=True)
class Provenance:
    """Where an address stands among the trace's blocks, as Valgrind and ASan phrase it."""

    addr: int
    relation: str  # "inside", "before", "after", "none"
    offset: int  # bytes inside / before / after the block
    block: BlockRef | None
    as_of_event: int  # the history up to (not including) this event
    text: str


@dataclass(frozen=True)
class Finding:
    """One proved statement and the evidence it stands on."""

    text: str
    evidence: str = ""
    event_index: int | None = None  # the event it happened at, when there is one
    severity: str = "info"  # "info", "ok", "warn", "bad"


@dataclass(frozen=True)
class HeaderDump:
    """The bytes at ptr - HEADER_SIZE as the free found them (read through the kernel)."""

    base: int  # address of data[0]
    data: tuple[int | None, ...]  # None: the byte could not be read
    header_addr: int
    header_size: int
    magic_expected: int
    magic_found: int | None  # from the free's decision, None if never read
    owner_text: str  # who owns the header bytes
    provenance: Provenance | None  # of the header address


@dataclass(frozen=True)
class CrashPlacement:
    """The faulting address placed among the pointer and the mappings of the moment."""

    signal: str
    fault_address: int
    ptr: int | None
    stage: str
    text: str  # e.g. "fault at ptr-32, in the unmapped gap just below SuperSlab 0x…"
    maps_excerpt: tuple[tuple[int, int, str, bool], ...]  # (lo, hi, line, contains the fault)


@dataclass
class Explanation:
    """Everything the toolkit can say about one event (or one address at one event)."""

    event: EventResult | None
    addr: int
    provenance: Provenance
    expected: str  # what the owner needs ("hak_tiny_free via ss_hit", ...)
    stages: list[Finding]
    header: HeaderDump | None
    crash: CrashPlacement | None
    causes: list[Finding]  # the chain the toolkit can prove, oldest first
    verdict: str  # one line
    facts: dict | None = None  # the raw inspection document (hfreplay --stop-before)


# ------------------------------------------------------------- minimize, diff, firstbad
class SignatureKind(str, Enum):
    """What `minimize` keeps of a failure."""

    CRASH = "crash"  # the same signal, in the same stage, during the same op
    OUTCOME = "outcome"  # an anomaly of the same outcome class on the same owner kind of block
    ROUTE = "route"  # a free taking the same route on the same owner kind of block

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FailureSignature:
    """The failure a minimization keeps, taken from one event of the original replay."""

    kind: SignatureKind
    event_index: int  # the event of the original trace it was taken from
    op: str
    owner: OwnerKind
    signo: int | None = None  # crash
    signal: str | None = None  # crash, e.g. "SIGSEGV"
    stage: str | None = None  # crash, e.g. "magic_read"
    outcome: Outcome | None = None  # outcome
    route: Route | None = None  # route

    def describe(self) -> str:
        if self.kind is SignatureKind.CRASH:
            return f"crash: {self.signal} in {self.stage} during {self.op}"
        if self.kind is SignatureKind.OUTCOME:
            return f"outcome: {self.outcome.value if self.outcome else '?'} on a {self.owner.value} block"
        return f"route: {self.route.value if self.route else '?'} on a {self.owner.value} block"


@dataclass(frozen=True)
class MinimizeStep:
    """Where a minimization stood after one of its phases."""

    phase: str  # "original", "cut", "units", "events"
    events: int
    replays: int  # replays so far
    seconds: float  # since the start


@dataclass
class MinimizeResult:
    """A minimized trace: how it was made, and the original and minimal replays."""

    source: str
    output: str
    signature: FailureSignature
    original: ReplayResult
    minimal: ReplayResult
    minimal_matches: bool  # the written trace, replayed again, fails the same way
    original_events: int
    minimal_events: int
    kept: list[int]  # for each event of the minimal trace, its index in the original
    objects: dict[int, int]  # minimal object id -> original object id
    lines: list[str]  # the minimal trace's events, in the text form
    steps: list[MinimizeStep]
    replays: int  # candidate replays (the original and the final check included)
    seconds: float
    jobs: int


@dataclass(frozen=True)
class DiffSide:
    """One side of a diff: what one replay did, summed up."""

    label: str  # e.g. "probe=off", or the file name
    source: str  # trace or result file
    allocator: str
    knobs: dict[str, str]
    num_events: int
    events_done: int
    completed: bool
    routes: dict[str, int]
    outcomes: dict[str, int]
    crash: CrashRecord | None
    crash_event: EventResult | None
    hang: bool


@dataclass(frozen=True)
class Divergence:
    """The first event the two replays decided differently."""

    index: int
    what: tuple[str, ...]  # what differs: "crash", "status", "outcome", "route", "action", "stages", "probe"
    a: EventResult | None  # None: the side has no record of it (a saved JSON lists anomalies only)
    b: EventResult | None
    a_crashed: bool  # the side died in this event
    b_crashed: bool


@dataclass
class DiffResult:
    """Two replays side by side: routes, outcomes, the first divergence."""

    a: DiffSide
    b: DiffSide
    routes: list[tuple[str, int, int]]  # (route, count in a, count in b)
    outcomes: list[tuple[str, int, int]]
    divergence: Divergence | None
    events_compared: int  # events compared one by one before the divergence (or all of them)
    exact: bool  # every event was compared (False: only the anomalies a JSON report lists)
    first_owner_difference: int | None = None  # first event whose block has another owner kind
    note: str = ""


@dataclass(frozen=True)
class CheckLevel:
    """One replay of a bisection: the check every `every` events over first..last."""

    first: int
    last: int
    every: int
    checks: int  # consistency checks that ran
    failed_at: int | None  # the first checked event after which the check failed


@dataclass
class FirstBadResult:
    """The first event after which the allocator's consistency check fails, found by bisection."""

    trace: str
    allocator: str
    knobs: dict[str, str]
    num_events: int
    events_run: int  # events the replay completes (up to a crash)
    first: CheckFailure | None
    event: EventResult | None  # the first bad event's record
    levels: list[CheckLevel]
    checks: int  # checks in all the bisection's replays
    replays: int
    crash: CrashRecord | None
    crash_event: EventResult | None
    verified: CheckFailure | None = None  # --verify: what --check-every 1 names
    verify_checks: int = 0
    seconds: float = 0.0
    note: str = ""


# -------------------------------------------------------------------- probe audit
def median_of(values: tuple[float, ...]) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def quartiles_of(values: tuple[float, ...]) -> tuple[float, float]:
    """(first, third) quartile by the median-of-halves rule; (v, v) for one value."""
    s = sorted(values)
    if len(s) < 2:
        return (s[0], s[0]) if s else (0.0, 0.0)
    half = len(s) // 2
    return median_of(tuple(s[:half])), median_of(tuple(s[len(s) - half :]))


@dataclass(frozen=True)
class ProbeBedRow:
    """One address of the probe audit's test bed and what each probe said about it.

    readable is the ground truth (/proc/self/maps: every byte in a mapping with 'r');
    verdicts maps a probe name ("off", "seed-mincore", ...) to True when it said "readable"."""

    name: str  # short id shown in the matrix, e.g. "rw+8"
    description: str
    addr: int
    length: int  # bytes asked about (the header size for header-sized rows)
    readable: bool
    expected: bool | None  # what the bed was built to be; None when not known in advance
    verdicts: dict[str, bool]

    def is_false_readable(self, probe: str) -> bool:
        """The probe said "readable" for unreadable memory: the header read that follows crashes."""
        return self.verdicts[probe] and not self.readable

    def is_false_unreadable(self, probe: str) -> bool:
        """The probe said "unreadable" for readable memory: a good free is sent to a fallback."""
        return not self.verdicts[probe] and self.readable


@dataclass(frozen=True)
class ProbeCost:
    """Cost of one probe on one bed row: per-call figures of each timed batch."""

    probe: str
    row: str
    calls: int  # calls per batch
    ns: tuple[float, ...]  # nanoseconds per call, one value per batch
    cycles: tuple[float, ...]  # TSC cycles per call, one value per batch (all 0 without a TSC)

    @property
    def ns_median(self) -> float:
        return median_of(self.ns)

    @property
    def ns_quartiles(self) -> tuple[float, float]:
        return quartiles_of(self.ns)

    @property
    def cycles_median(self) -> float:
        return median_of(self.cycles)

    @property
    def cycles_quartiles(self) -> tuple[float, float]:
        return quartiles_of(self.cycles)


@dataclass
class ProbeAudit:
    """The probe audit: every probe against every bed row, and what each call costs."""

    probes: tuple[str, ...]  # column order: "off", the seed's two, the corrected two
    rows: list[ProbeBedRow]
    costs: list[ProbeCost]
    page_size: int
    header_size: int
    has_tsc: bool
    notes: list[str] = field(default_factory=list)

    def get_false_readable(self, probe: str) -> list[ProbeBedRow]:
        return [r for r in self.rows if r.is_false_readable(probe)]

    def get_false_unreadable(self, probe: str) -> list[ProbeBedRow]:
        return [r for r in self.rows if r.is_false_unreadable(probe)]

    def get_row(self, name: str) -> ProbeBedRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def get_cost(self, probe: str, row: str) -> ProbeCost | None:
        return next((c for c in self.costs if c.probe == probe and c.row == row), None)


# ---------------------------------------------------------------------- inspection
@dataclass(frozen=True)
class ProbeVerdicts:
    """Every probe's verdict on one live address (hfreplay --stop-before), with ground truth."""

    addr: int
    length: int
    verdicts: dict[str, bool]  # probe name -> said "readable" ("off" always does)
    readable: bool  # /proc/self/maps of the replay child

    def get_wrong(self) -> list[str]:
        """The probes whose verdict disagrees with the ground truth."""
        return [p for p, v in self.verdicts.items() if v != self.readable]


@dataclass
class Inspection:
    """The heap of a replay child as event `event` is about to run (events 0..event-1 done).

    Owners, probe verdicts and registry history are read from the live process; `facts`
    keeps the whole JSON document hfreplay printed (schema "hfreplay/inspect/1")."""

    trace: str
    event: int
    op: str | None  # the op of event `event`, None past the end of the trace
    target: int | None  # the pointer that event hands to free (None: it frees nothing)
    header_addr: int | None  # target - HEADER_SIZE
    dump_base: int | None  # address of dump[0]
    dump: tuple[int | None, ...]  # bytes around the target; None: unreadable
    owners: list[OwnerInfo]
    probes: list[ProbeVerdicts]
    reqtrace: list[ReqtraceRecord]  # registry history of the target's region
    reqtrace_header_region: list[ReqtraceRecord]  # of the header's region, when it differs
    knobs: dict[str, str]
    stats: dict[str, int] | None
    check: str | None  # the consistency check's finding, None if the heap is sound
    maps: str
    facts: dict

    def get_owner(self, addr: int) -> OwnerInfo | None:
        return next((o for o in self.owners if o.addr == addr), None)

    def get_probes(self, addr: int) -> ProbeVerdicts | None:
        return next((p for p in self.probes if p.addr == addr), None)


# ------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyRun:
    """One judged replay of one verify trace under one probe variant."""

    trace: str  # trace key, e.g. "rm-50k+registry-capacity"
    probe: str
    completed: bool
    crash_signal: str | None  # "SIGSEGV", "hang", None
    crash_event: int | None
    crash_stage: str | None
    events: int
    events_done: int
    frees: int
    header_frees: int  # frees that missed every registry and reached the header path (probe calls)
    fallback: int  # unmapped_header_fallback
    recovered: int  # invalid_magic_tiny_recovery
    misrouted: int
    leaked: int
    invalid_magic: int
    first_misrouted: int | None  # event index
    first_leaked: int | None
    routes: dict[str, int]

    @property
    def wrong(self) -> int:
        """Frees that went wrong without a crash: misrouted or leaked."""
        return self.misrouted + self.leaked


@dataclass(frozen=True)
class StressTally:
    """The seed's 100-seed loop under one fault and one probe variant."""

    fault: str
    probe: str
    seeds: int
    failed: tuple[int, ...]  # seeds whose replay crashed or hung (the loop's "FAIL: $i")
    wrong: tuple[int, ...]  # seeds that completed with misrouted or leaked frees
    misrouted: int  # over all seeds
    leaked: int
    header_frees: int = 0  # over all seeds: frees that missed every registry (reached the probe)


@dataclass(frozen=True)
class TimingCell:
    """Replay time of one trace under one probe variant: one value per turn (run-major, then
    round), the fastest replay of that turn; None where the child crashed. The same index in
    two cells of one trace is the same child and round, so the two are neighbours in time."""

    trace: str
    probe: str
    seconds: tuple[float | None, ...]

    @property
    def completed(self) -> bool:
        return bool(self.seconds) and all(s is not None for s in self.seconds)

    @property
    def median(self) -> float | None:
        return median_of(tuple(s for s in self.seconds if s is not None)) if self.completed else None


@dataclass(frozen=True)
class Overhead:
    """A variant's replay time against a baseline's: median ratio, and the spread of run-by-run ratios."""

    trace: str
    probe: str
    baseline_trace: str
    baseline_probe: str
    ratio: float | None  # median of the paired ratios (turn i / baseline turn i); None if either crashed
    ratio_lo: float | None  # quartiles of the paired ratios
    ratio_hi: float | None
    noise: float  # from the off-vs-off control: 2 * median |ratio - 1|, at least 1% (plus cross-child spread)


@dataclass(frozen=True)
class ClaimCheck:
    """One claim of the seed, what was measured, and the verdict."""

    id: str
    claim: str  # the seed's words
    source: str  # where in the seed
    measurement: str
    verdict: str  # "holds", "does not hold", "holds only for mincore, safe", "not measured"
    status: str  # "holds", "does not hold", "partly", "not measured"
    holds_for: tuple[str, ...]  # probe variants the claim holds for
    evidence: tuple[str, ...]  # shell commands that reproduce the measurement


@dataclass
class VerifyReport:
    """Everything `verify` measured, and the claim table built from it."""

    claims: list[ClaimCheck]
    traces: dict[str, str]  # trace key -> what it is (generator arguments, scenario, knobs)
    runs: list[VerifyRun]
    stress: list[StressTally]
    timings: list[TimingCell]
    overheads: list[Overhead]
    audit: ProbeAudit | None
    settings: dict[str, object]
    seconds: float = 0.0

    def get_run(self, trace: str, probe: str) -> VerifyRun | None:
        return next((r for r in self.runs if r.trace == trace and r.probe == probe), None)

    def get_claim(self, claim_id: str) -> ClaimCheck:
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(claim_id)


# ----------------------------------------------------------------- route logs (routes, run)
# What `routes` reads from hakmem's stderr lines (docs/route-trace.md) and `run` reports for
# a program under libhakmem_preload.so. Built by forensics/routelog.py in bounded memory: every
# list here is capped, and its *_total counter says how many there were.
@dataclass(frozen=True)
class RegistryLine:
    """One `[hakmem-reg]` line: a registry request."""

    seq: int
    free_seq: int
    tid: int
    op: str  # register, unregister, lookup_hit, lookup_miss, capacity_error, dropped
    reg: str  # ss, mid, l25
    base: int
    addr: int
    live: int


@dataclass(frozen=True)
class PointerEvent:
    """One event of a pointer's life as the log tells it: its allocation or a free of it."""

    kind: str  # "alloc", "free", "crash"
    seq: int | None  # alloc: the allocation's seq; free: the free's seq
    tid: int | None
    path: str | None  # alloc: tiny, mid, l25, mmap, malloc
    size: int | None  # alloc: requested size
    route: str | None  # free: the route taken
    action: str | None
    magic: int | None  # free: the magic read, if the header was read
    verdict: str | None  # free: correct, misrouted, leaked, invalid_magic, unjudged
    file: str
    line: int


@dataclass
class PointerLifecycle:
    """The history of a pointer involved in an anomaly (its allocation, then every event)."""

    ptr: int
    anomalies: list[str]  # kinds, in the order they first happened
    allocs: int
    frees: int
    events: list[PointerEvent]
    events_dropped: int = 0


@dataclass(frozen=True)
class InvalidMagicEvent:
    """An invalid magic: the route line, the seed's ERROR line and the allocator's reqtrace dump."""

    seq: int | None  # None: the ERROR line had no route line after it (the process died?)
    tid: int | None
    ptr: int | None
    magic: int
    route: str | None
    action: str | None
    path: str | None  # what the pointer was allocated as, when the log says (alloc trace)
    dump: tuple[RegistryLine, ...]  # the allocator's own reqtrace dump of the pointer's region
    history: tuple[RegistryLine, ...]  # registry changes of the region seen earlier in the log
    file: str
    line: int


@dataclass
class EscapedRegion:
    """A region (SuperSlab or pool chunk) whose pointers reached the header path."""

    base: int  # the pointer's 1 MiB region (SuperSlab-size aligned)
    escapes: int
    first_seq: int | None
    first_ptr: int
    first_route: str
    path: str | None  # what the first escaped pointer was allocated as (None: not in the log)
    routes: dict[str, int]
    history: tuple[RegistryLine, ...]  # registry changes for the regions covering it, before the first escape
    file: str
    line: int


@dataclass(frozen=True)
class UnknownMethodEvent:
    seq: int | None
    ptr: int
    method: int | None
    file: str
    line: int


@dataclass(frozen=True)
class LogCrash:
    """A `[hakmem] CRASH:` line (the driver's, or the preload library's handler)."""

    signal: str
    fault: int
    ptr: int
    stage: str
    event: int | None  # replay event index (driver), None in a real program
    free_seq: int | None  # the free in progress (preload library)
    file: str
    line: int
    history: tuple[RegistryLine, ...] = ()  # registry changes for the regions covering ptr, before the crash


@dataclass
class ProcessImage:
    """One process image in a log: from its `[hakmem] PROCESS:` line (or the file start) on."""

    file: str
    pid: int | None
    ppid: int | None
    start: str  # "exec", "fork", "-" (no PROCESS line: the file's first image)
    free_seq_base: int  # frees counted before the image's first line (a fork continues its parent's)
    mode: str | None
    probe: str | None
    route_lines: int = 0
    alloc_lines: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seq_gaps: int = 0  # route lines whose seq is not the previous one + 1
    stats_allocs: int | None = None  # from `[hakmem] STATS:` at exit
    stats_frees: int | None = None
    route_lines_at_stats: int | None = None

    @property
    def expected_route_lines(self) -> int | None:
        return None if self.stats_frees is None else self.stats_frees - self.free_seq_base

    @property
    def consistent(self) -> bool | None:
        """Route lines up to the STATS line == frees the allocator counted (None: no STATS line)."""
        expected = self.expected_route_lines
        return None if expected is None else expected == self.route_lines_at_stats


@dataclass
class TimelineSlice:
    first_line: int  # ordinal (0-based) of the slice's first route line
    lines: int
    seq_min: int | None
    seq_max: int | None
    routes: dict[str, int]
    anomalies: int


@dataclass
class LogFileStats:
    path: str
    compressed: bool
    bytes: int = 0  # bytes read (uncompressed)
    lines: int = 0
    route_lines: int = 0
    alloc_lines: int = 0
    reg_lines: int = 0
    message_lines: int = 0  # [hakmem] lines
    pattern_lines: int = 0  # route lines read with --pattern
    other_lines: int = 0  # not hakmem's: skipped
    binary_lines: int = 0  # of the other lines: NUL bytes or not UTF-8
    malformed_lines: int = 0  # hakmem's tag, but not a line hakmem prints
    overlong_lines: int = 0  # longer than the line limit: skipped
    truncated_last_line: bool = False  # the file does not end with a newline
    error: str | None = None  # damaged input (a truncated or corrupt gzip stream), with the offset


@dataclass(frozen=True)
class MalformedLine:
    file: str
    line: int
    reason: str
    text: str  # the start of the line, printable


@dataclass(frozen=True)
class TraceJoin:
    """A free in the log joined to its trace event (the Nth free of a serial replay is seq N)."""

    seq: int
    event_index: int
    op: str
    tid: int
    obj: int
    site: int
    alloc_index: int | None  # the event that allocated obj, if any
    alloc_op: str | None
    alloc_size: int | None
    alloc_site: int | None
    agrees: bool | None  # the facts both sides state agree (free_raw address, free(NULL)); None: nothing to check


@dataclass
class Correlation:
    trace: str
    trace_events: int
    trace_frees: int  # events that run the free path (see routelog.FREE_OPS)
    trace_threads: int
    joins: dict[int, TraceJoin]  # seq -> join, for the seqs the report shows
    crash_event: TraceJoin | None  # the driver's crash line names its event index directly
    checked: int
    disagreements: int
    note: str = ""


@dataclass
class RouteLogResult:
    """Everything `routes` found in one or more logs."""

    files: list[LogFileStats]
    routes: dict[str, int]
    actions: dict[str, int]
    probes: dict[str, int]
    alloc_paths: dict[str, int]
    lifecycle: dict[str, dict[str, int]]  # allocation path ("?" unknown) -> free route -> frees
    verdicts: dict[str, int]  # correct, misrouted, leaked, invalid_magic, unjudged
    pointers_tracked: int
    pointers_evicted: int
    double_frees: int
    allocated_twice: int  # a live pointer handed out again
    failed_allocs: int
    reuse: dict[str, int]  # allocations per pointer (bucketed), over the pointers tracked
    anomalous_pointers: list[PointerLifecycle]
    anomalous_pointers_total: int
    anomaly_kinds: dict[str, int]
    invalid_magic: list[InvalidMagicEvent]
    invalid_magic_total: int
    unknown_methods: list[UnknownMethodEvent]
    unknown_method_total: int
    skip_warnings: list[int]  # pointers named by the one-time skip warning
    skip_warning_total: int
    knob_warnings: list[str]
    escapes: list[EscapedRegion]
    escapes_total: int
    escaped_regions_total: int
    registry_ops: dict[str, dict[str, int]]  # reg -> op -> count (live lines, not dumps)
    registry_events: list[tuple[RegistryLine, str, int]]  # notable changes, with file and line
    registry_events_total: int
    crashes: list[LogCrash]
    crash_total: int
    messages: dict[str, int]  # [hakmem] lines by kind
    processes: list[ProcessImage]
    processes_total: int
    timeline: list[TimelineSlice]
    timeline_width: int
    malformed: list[MalformedLine]
    pattern: str | None
    region_sizes: dict[str, int]  # registry -> region size used for the registry history
    caps: dict[str, int]
    correlation: Correlation | None = None
    seconds: float = 0.0

    def num_lines(self) -> int:
        return sum(f.lines for f in self.files)

    def num_route_lines(self) -> int:
        return sum(f.route_lines + f.pattern_lines for f in self.files)

    def get_errors(self) -> list[str]:
        return [f"{f.path}: {f.error}" for f in self.files if f.error]

    def num_frees_seen_by_allocator(self) -> int | None:
        """Sum of the STATS lines' frees less each image's base; None if no image has one."""
        vals = [p.expected_route_lines for p in self.processes if p.expected_route_lines is not None]
        return sum(vals) if vals else None


@dataclass
class ProgramRun:
    """`run`: a program run under libhakmem_preload.so, and what its logs say."""

    command: list[str]
    library: str
    env: dict[str, str]  # the HAKMEM_* variables and LD_PRELOAD given to the program
    pid: int | None
    exit_status: int | None  # None if killed by a signal
    exit_signal: int | None
    hang: bool  # killed at the time limit
    seconds: float
    log: str | None  # the main process's log, if kept
    child_logs: list[str]  # logs of processes the program started (kept next to the log)
    main: RouteLogResult  # the main process's log
    children: RouteLogResult | None  # every other process's log, together (None: there were none)

    @property
    def signal_name(self) -> str | None:
        if self.exit_signal is None:
            return None
        try:
            return _signal.Signals(self.exit_signal).name
        except ValueError:
            return f"signal {self.exit_signal}"


# ------------------------------------------------------------ recordings, imports, call sites
# Issue 5: traces from real programs (forensics.record, forensics.importers) and their
# symbolized call sites (forensics.sites, forensics.elf).


@dataclass(frozen=True)
class CodeLocation:
    """What an address in an ELF file is: its function and source line (None when unknown)."""

    vaddr: int  # link-time virtual address in the file
    function: str | None
    file: str | None
    line: int | None


@dataclass(frozen=True)
class MappedFile:
    """One executable, file-backed line of a process's memory map (/proc/PID/maps)."""

    start: int
    end: int
    offset: int  # file offset of `start`
    path: str

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass(frozen=True)
class SiteInfo:
    """A call site (a return address in the recorded process) and what it symbolizes to."""

    address: int
    module: str | None = None  # the mapped file it falls in
    vaddr: int | None = None  # its address inside that file (link-time)
    function: str | None = None
    file: str | None = None
    line: int | None = None

    def describe(self) -> str:
        """'func (file.c:12)', 'func (libc.so.6+0x2a1b)', 'libfoo.so+0x10' or the hex address."""
        where = None
        if self.file and self.line:
            where = f"{self.file.rsplit('/', 1)[-1]}:{self.line}"
        elif self.module is not None and self.vaddr is not None:
            where = f"{self.module.rsplit('/', 1)[-1]}+{self.vaddr:#x}"
        if self.function and where:
            return f"{self.function} ({where})"
        return self.function or where or f"{self.address:#x}"


@dataclass(frozen=True)
class AddressFinding:
    """A forensic op an importer or the recorder produced, or an anomaly it repaired.

    kind: free_interior, double_free, free_raw, or implicit_free (an allocation returned an
    address still live: the source never showed its free, so the old object was freed)."""

    event_index: int  # the event in the output trace
    kind: str
    tid: int
    address: int
    obj: int  # 0 for free_raw
    offset: int  # free_interior: bytes into the block
    block_size: int  # the block the address falls in (0 if none)
    site: int
    where: int  # source line (importers) or record number (recorder)
    call: str  # "free", "realloc" or "alloc"

    def explain(self) -> str:
        """One line in the terms memcheck uses."""
        if self.kind == "free_interior":
            return (f"{self.call}({self.address:#x}): {self.offset} bytes inside a {self.block_size}-byte block "
                    f"(object {self.obj}) that is live")
        if self.kind == "double_free":
            return f"{self.call}({self.address:#x}): the {self.block_size}-byte block (object {self.obj}) was already freed"
        if self.kind == "free_raw":
            return f"{self.call}({self.address:#x}): not allocated, not (recently) freed"
        return (f"allocation returned {self.address:#x}, still live as object {self.obj} "
                f"({self.block_size} bytes): its free was never seen")


@dataclass(frozen=True)
class MemcheckCheck:
    """Memcheck's own verdict on a bad free in a valgrind log, next to the importer's."""

    event_index: int  # the importer's event for that free
    ours: str  # the trace op: free_interior, double_free, free_raw (or free, realloc)
    our_offset: int
    memcheck: str  # "inside_live", "inside_freed", "unknown", "other"
    memcheck_offset: int | None
    block_size: int | None
    line: int  # where memcheck's report starts

    @property
    def agrees(self) -> bool:
        if self.memcheck == "inside_live":
            return self.ours == "free_interior" and self.our_offset == self.memcheck_offset
        if self.memcheck == "inside_freed":
            return self.ours == ("double_free" if self.memcheck_offset == 0 else "free_raw")
        if self.memcheck == "unknown":
            return self.ours == "free_raw"
        return False


@dataclass
class TraceOutput:
    """One trace an import or a recording wrote, and what went into it."""

    path: str
    pid: int | None
    generation: int = 0  # exec() generation (recordings)
    events: int = 0
    objects: int = 0  # highest object id
    threads: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)  # trace op -> events
    thread_counts: dict[int, int] = field(default_factory=dict)  # trace tid -> events
    repairs: dict[str, int] = field(default_factory=dict)  # e.g. failed_alloc, implicit_free
    findings: list[AddressFinding] = field(default_factory=list)  # the first ones
    finding_count: int = 0
    memcheck: list[MemcheckCheck] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # recorder: calls per function
    note: str = ""
    symbolized: int = 0  # sites with a function name
    sites: int = 0  # distinct call sites
    inherited: int = 0  # recorder: blocks a forked child got from its parent (malloc events first)


@dataclass
class ImportResult:
    """`import`: a foreign log turned into traces (one per process in it)."""

    format: str
    source: str
    lines: int
    malformed: int  # lines skipped with --lenient
    malformed_samples: list[str]  # "file:line: reason", the first few
    outputs: list[TraceOutput]
    seconds: float
    peak_rss_kib: int
    timing: dict[str, tuple[int, int]] = field(default_factory=dict)  # android: op -> (calls timed, total ns)

    @property
    def events(self) -> int:
        return sum(o.events for o in self.outputs)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RecordResult:
    """`record`: a program run under the recorder, and the traces of its processes."""

    command: list[str]
    exit_status: int | None
    exit_signal: int | None
    hang: bool
    seconds: float
    outputs: list[TraceOutput]  # the main process first
    raw_dir: str | None  # where the raw logs were kept (None: removed)

    @property
    def signal_name(self) -> str | None:
        if self.exit_signal is None:
            return None
        try:
            return _signal.Signals(self.exit_signal).name
        except ValueError:
            return f"signal {self.exit_signal}"
