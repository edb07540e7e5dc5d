"""The one module that loads native code: hakmem-ref (or a user's build), libhfdriver, libc.

Style borrowed from llvmlite's binding/ffi.py: each library is CDLL'd once per path, its
ABI version is checked right after loading, every C function is declared (argtypes/restype)
in one block per header, and one helper turns negative status codes into exceptions.
Everything above this module sees model.py records, never ctypes objects.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
    sizeof,
)
from pathlib import Path
from typing import Any, Callable

from forensics import abi, model
from forensics.errors import (
    BadInputError,
    BufferTooSmallError,
    CheckFailedError,
    ClosedError,
    FeatureUnavailable,
    InvalidValueError,
    LibraryError,
    NativeError,
    NotBoundError,
    OpenFailedError,
    SymbolMissingError,
    SystemCallError,
    UnknownKnobError,
)

c_uintptr = c_size_t  # uintptr_t: the same width as size_t on every target we build for

# Sizes that shape the mirrored structs (hakmem.h / hfdriver.h); the DWARF test guards them.
HAK_TINY_NUM_CLASSES = 8
HAK_MID_NUM_CLASSES = 5
HAK_L25_NUM_CLASSES = 5
HAK_ROUTE_COUNT = model.ROUTE_COUNT
HAK_REQTRACE_RING = 8192
HAK_ROUTE_RING = 4096
HFD_CRASH_MAGIC = 0x48464443
HFD_CRASH_MAPS_MAX = 65536
HFD_PROBE_MAPS = 100  # hfd_probe kind: /proc/self/maps ground truth
HFD_STAGE_UNKNOWN = 0xFFFFFFFF
HAK_OWNER_LIVE_BLOCK = 0x100  # hak_owner_kind: the address starts a live block
HAK_OWNER_KIND_MASK = 0xFF
UINT64_MAX = (1 << 64) - 1


# --------------------------------------------------------------------------- structures
class AllocHeader(Structure):
    """Mirror of ``AllocHeader`` in csrc/hakmem.h::

        typedef struct AllocHeader {
            uint32_t magic;        /* HAKMEM_MAGIC */
            uint32_t method;       /* enum hak_method */
            size_t size;           /* requested user size */
            uintptr_t alloc_site;  /* caller-supplied call site */
            size_t class_bytes;    /* bytes of the whole block including the header */
        } AllocHeader;
    """

    _fields_ = [
        ("magic", c_uint32),
        ("method", c_uint32),
        ("size", c_size_t),
        ("alloc_site", c_uintptr),
        ("class_bytes", c_size_t),
    ]


class HakOwnerInfo(Structure):
    """Mirror of ``hak_owner_info`` in csrc/hakmem.h::

        typedef struct hak_owner_info {
            uint32_t kind;          /* enum hak_owner_kind */
            uint32_t state;         /* enum hak_block_state */
            uintptr_t block_ptr;    /* user pointer of the block containing addr (0 if none) */
            size_t block_size;      /* usable bytes of that block (class size for Tiny) */
            size_t class_bytes;     /* bytes of the block including header */
            uintptr_t region_base;  /* SuperSlab / pool chunk / mapping / libc block */
            size_t region_size;
            int32_t class_index;    /* size class within its pool, -1 if none */
            uint32_t registered;    /* 1 if region_base is in its registry */
            uint32_t method;        /* enum hak_method the block needs at free (0 for Tiny) */
            uint32_t pad;
        } hak_owner_info;
    """

    _fields_ = [
        ("kind", c_uint32),
        ("state", c_uint32),
        ("block_ptr", c_uintptr),
        ("block_size", c_size_t),
        ("class_bytes", c_size_t),
        ("region_base", c_uintptr),
        ("region_size", c_size_t),
        ("class_index", c_int32),
        ("registered", c_uint32),
        ("method", c_uint32),
        ("pad", c_uint32),
    ]


class HakGeometry(Structure):
    """Mirror of ``hak_geometry`` in csrc/hakmem.h::

        typedef struct hak_geometry {
            uint32_t abi_version;
            uint32_t header_size;
            uint32_t magic;
            uint32_t page_size;
            uint64_t superslab_size;
            uint64_t mid_chunk_size;
            uint64_t l25_chunk_size;
            uint32_t num_tiny_classes;
            uint32_t num_mid_classes;
            uint32_t num_l25_classes;
            uint32_t build_release;
            uint32_t tiny_class_sizes[HAK_TINY_NUM_CLASSES];
            uint32_t mid_class_bytes[HAK_MID_NUM_CLASSES];
            uint32_t l25_class_bytes[HAK_L25_NUM_CLASSES];
            uint64_t tiny_max;
            uint64_t mid_max;
            uint64_t l25_max;
            uint64_t bigcache_min;
            uint64_t bigcache_l25_min;
            uint64_t batch_min_size;
        } hak_geometry;
    """

    _fields_ = [
        ("abi_version", c_uint32),
        ("header_size", c_uint32),
        ("magic", c_uint32),
        ("page_size", c_uint32),
        ("superslab_size", c_uint64),
        ("mid_chunk_size", c_uint64),
        ("l25_chunk_size", c_uint64),
        ("num_tiny_classes", c_uint32),
        ("num_mid_classes", c_uint32),
        ("num_l25_classes", c_uint32),
        ("build_release", c_uint32),
        ("tiny_class_sizes", c_uint32 * HAK_TINY_NUM_CLASSES),
        ("mid_class_bytes", c_uint32 * HAK_MID_NUM_CLASSES),
        ("l25_class_bytes", c_uint32 * HAK_L25_NUM_CLASSES),
        ("tiny_max", c_uint64),
        ("mid_max", c_uint64),
        ("l25_max", c_uint64),
        ("bigcache_min", c_uint64),
        ("bigcache_l25_min", c_uint64),
        ("batch_min_size", c_uint64),
    ]


class HakFreeDecision(Structure):
    """Mirror of ``hak_free_decision`` in csrc/hakmem.h::

        typedef struct hak_free_decision {
            uint64_t seq;           /* global free sequence number, 1-based */
            uintptr_t ptr;
            uint32_t route;         /* enum hak_route */
            uint32_t action;        /* enum hak_action */
            uint32_t stages_tried;  /* enum hak_stage_bit mask */
            uint32_t stages_hit;    /* enum hak_stage_bit mask */
            int32_t probe;          /* HAK_PROBE_NOT_RUN / _UNREADABLE / _READABLE */
            uint32_t probe_kind;    /* enum hak_probe_kind in force */
            uint32_t magic_found;   /* valid when stages_tried & HAK_STAGE_MAGIC */
            int32_t method;         /* header method read, -1 if the header was not read */
            uint64_t tid;           /* gettid() of the freeing thread */
        } hak_free_decision;
    """

    _fields_ = [
        ("seq", c_uint64),
        ("ptr", c_uintptr),
        ("route", c_uint32),
        ("action", c_uint32),
        ("stages_tried", c_uint32),
        ("stages_hit", c_uint32),
        ("probe", c_int32),
        ("probe_kind", c_uint32),
        ("magic_found", c_uint32),
        ("method", c_int32),
        ("tid", c_uint64),
    ]


class HakReqtraceRec(Structure):
    """Mirror of ``hak_reqtrace_rec`` in csrc/hakmem.h::

        typedef struct hak_reqtrace_rec {
            uint64_t seq;          /* reqtrace sequence number, 1-based */
            uint64_t free_seq;     /* hak_free_decision.seq of the last free begun */
            uintptr_t base;        /* region base (SuperSlab / chunk) */
            uintptr_t addr;        /* address looked up (== base for register/unregister) */
            uint32_t op;           /* enum hak_reqtrace_op */
            uint32_t reg;          /* enum hak_reg_kind */
            uint32_t live;         /* live blocks in the region at that moment */
            uint32_t pad;
            uint64_t tid;
        } hak_reqtrace_rec;
    """

    _fields_ = [
        ("seq", c_uint64),
        ("free_seq", c_uint64),
        ("base", c_uintptr),
        ("addr", c_uintptr),
        ("op", c_uint32),
        ("reg", c_uint32),
        ("live", c_uint32),
        ("pad", c_uint32),
        ("tid", c_uint64),
    ]


class HakFreeState(Structure):
    """Mirror of ``hak_free_state`` in csrc/hakmem.h::

        typedef struct hak_free_state {
            volatile uintptr_t ptr;     /* pointer being freed / reallocated / queried */
            volatile uint32_t stage;    /* enum hak_stage */
            volatile uint32_t pad;
            volatile uint64_t seq;      /* free seq in progress */
        } hak_free_state;
    """

    _fields_ = [
        ("ptr", c_uintptr),
        ("stage", c_uint32),
        ("pad", c_uint32),
        ("seq", c_uint64),
    ]


class HakStats(Structure):
    """Mirror of ``hak_stats`` in csrc/hakmem.h::

        typedef struct hak_stats {
            uint64_t allocs, frees;
            uint64_t superslabs, superslabs_registered, superslabs_released_live;
            uint64_t mid_chunks, l25_chunks;
            uint64_t mmap_live, mmap_cached;
            uint64_t malloc_live;
            uint64_t route_counts[HAK_ROUTE_COUNT];
        } hak_stats;
    """

    _fields_ = [
        ("allocs", c_uint64),
        ("frees", c_uint64),
        ("superslabs", c_uint64),
        ("superslabs_registered", c_uint64),
        ("superslabs_released_live", c_uint64),
        ("mid_chunks", c_uint64),
        ("l25_chunks", c_uint64),
        ("mmap_live", c_uint64),
        ("mmap_cached", c_uint64),
        ("malloc_live", c_uint64),
        ("route_counts", c_uint64 * HAK_ROUTE_COUNT),
    ]


class HfdVtable(Structure):
    """Mirror of ``hfd_vtable`` in csrc/hfdriver.h (function pointers held as void*)::

        typedef struct hfd_vtable {
            void *(*alloc)(size_t size, uintptr_t site);
            void (*free)(void *ptr, size_t size, uintptr_t site);
            void *(*calloc)(size_t nmemb, size_t size, uintptr_t site);
            void *(*realloc)(void *ptr, size_t size, uintptr_t site);
            void *(*memalign)(size_t alignment, size_t size, uintptr_t site);
            void *(*debug_free_state)(void);
            const char *(*stage_name)(uint32_t stage);
            int (*last_free_decision)(void *out);
            int (*owner)(const void *addr, void *out);
            int (*debug_check)(char *msg, size_t cap);
        } hfd_vtable;
    """

    _fields_ = [
        ("alloc", c_void_p),
        ("free", c_void_p),
        ("calloc", c_void_p),
        ("realloc", c_void_p),
        ("memalign", c_void_p),
        ("debug_free_state", c_void_p),
        ("stage_name", c_void_p),
        ("last_free_decision", c_void_p),
        ("owner", c_void_p),
        ("debug_check", c_void_p),
    ]


# hfd_vtable member -> allocator symbol that fills it.
_VTABLE_SYMBOLS = {
    "alloc": "hak_alloc_at",
    "free": "hak_free_at",
    "calloc": "hak_calloc_at",
    "realloc": "hak_realloc_at",
    "memalign": "hak_memalign_at",
    "debug_free_state": "hak_debug_free_state",
    "stage_name": "hak_stage_name",
    "last_free_decision": "hak_last_free_decision",
    "owner": "hak_owner",
    "debug_check": "hak_debug_check",
}


class HfdCrashRecord(Structure):
    """Mirror of ``hfd_crash_record`` in csrc/hfdriver.h::

        typedef struct hfd_crash_record {
            uint32_t magic;          /* HFD_CRASH_MAGIC once the handler has filled the record */
            uint32_t version;        /* HFD_ABI_VERSION */
            int32_t signo;           /* SIGSEGV, SIGBUS, SIGABRT, ... */
            int32_t si_code;
            uintptr_t fault_addr;    /* siginfo si_addr (0 for SIGABRT) */
            uintptr_t ptr;           /* pointer being freed (hak_free_state.ptr), 0 if unknown */
            uint32_t stage;          /* hak_stage in force, 0xffffffff if unknown */
            uint32_t has_state;      /* 1 if ptr/stage came from the allocator's free state */
            uint64_t free_seq;       /* hak_free_state.seq */
            uint64_t event_index;    /* hfd_set_event_index() value; UINT64_MAX if never set */
            uint64_t tid;
            char stage_name[32];
            uint32_t maps_len;       /* bytes of /proc/self/maps copied below */
            uint32_t maps_truncated;
            char maps[HFD_CRASH_MAPS_MAX];
        } hfd_crash_record;
    """

    _fields_ = [
        ("magic", c_uint32),
        ("version", c_uint32),
        ("signo", c_int32),
        ("si_code", c_int32),
        ("fault_addr", c_uintptr),
        ("ptr", c_uintptr),
        ("stage", c_uint32),
        ("has_state", c_uint32),
        ("free_seq", c_uint64),
        ("event_index", c_uint64),
        ("tid", c_uint64),
        ("stage_name", c_char * 32),
        ("maps_len", c_uint32),
        ("maps_truncated", c_uint32),
        ("maps", c_char * HFD_CRASH_MAPS_MAX),
    ]


class HftRecord(Structure):
    """Mirror of ``hft_record`` in csrc/hftrace.h (one binary trace event)::

        typedef struct hft_record {
            uint8_t op; uint8_t flags; uint16_t reserved;
            uint32_t tid; uint32_t obj; uint32_t obj2;
            uint64_t size; int64_t arg; uint64_t value; uint64_t site;
        } hft_record;                 /* 48 bytes */
    """

    _fields_ = [
        ("op", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("reserved", ctypes.c_uint16),
        ("tid", c_uint32),
        ("obj", c_uint32),
        ("obj2", c_uint32),
        ("size", c_uint64),
        ("arg", ctypes.c_int64),
        ("value", c_uint64),
        ("site", c_uint64),
    ]


class HfrEvent(Structure):
    """Mirror of ``hfr_event`` in csrc/hftrace.h (one replayed event's result)::

        typedef struct hfr_event {
            uint64_t ptr; uint64_t seq;
            uint32_t route; uint32_t action; uint32_t stages_tried; uint32_t stages_hit;
            int32_t probe; uint32_t magic_found; int32_t method;
            uint8_t owner; uint8_t outcome; uint8_t status; uint8_t check_failed;
        } hfr_event;                  /* 48 bytes */
    """

    _fields_ = [
        ("ptr", c_uint64),
        ("seq", c_uint64),
        ("route", c_uint32),
        ("action", c_uint32),
        ("stages_tried", c_uint32),
        ("stages_hit", c_uint32),
        ("probe", c_int32),
        ("magic_found", c_uint32),
        ("method", c_int32),
        ("owner", ctypes.c_uint8),
        ("outcome", ctypes.c_uint8),
        ("status", ctypes.c_uint8),
        ("check_failed", ctypes.c_uint8),
    ]


class HfrHeader(Structure):
    """Mirror of ``hfr_header`` in csrc/hftrace.h (the start of a replay result file)::

        typedef struct hfr_header {
            char magic[8]; uint32_t version; uint32_t event_size;
            uint64_t num_events;
            volatile uint64_t events_done; volatile uint32_t state; uint32_t threads_used;
            uint64_t first_check_failure;
            char check_msg[256]; char error[256];
            hfd_crash_record crash;
        } hfr_header;
    """

    _fields_ = [
        ("magic", c_char * 8),
        ("version", c_uint32),
        ("event_size", c_uint32),
        ("num_events", c_uint64),
        ("events_done", c_uint64),
        ("state", c_uint32),
        ("threads_used", c_uint32),
        ("first_check_failure", c_uint64),
        ("check_msg", c_char * 256),
        ("error", c_char * 256),
        ("crash", HfdCrashRecord),
    ]


class HfrOptions(Structure):
    """Mirror of ``hfr_options`` in csrc/hftrace.h::

        typedef struct hfr_options {
            uint64_t check_every; uint32_t threads; uint32_t judge; uint64_t limit;
        } hfr_options;
    """

    _fields_ = [("check_every", c_uint64), ("threads", c_uint32), ("judge", c_uint32), ("limit", c_uint64)]


HFR_OUT_COUNT = len(model.Outcome)


class HfrSummary(Structure):
    """Mirror of ``hfr_summary`` in csrc/hftrace.h::

        typedef struct hfr_summary {
            uint64_t events_done, frees, allocs;
            uint64_t route_counts[32];
            uint64_t outcome_counts[HFR_OUT_COUNT];
            uint64_t first_anomaly;
        } hfr_summary;
    """

    _fields_ = [
        ("events_done", c_uint64),
        ("frees", c_uint64),
        ("allocs", c_uint64),
        ("route_counts", c_uint64 * 32),
        ("outcome_counts", c_uint64 * HFR_OUT_COUNT),
        ("first_anomaly", c_uint64),
    ]


HFR_MAGIC = b"HKRESLT"
HFR_STATE_INIT, HFR_STATE_RUNNING, HFR_STATE_DONE, HFR_STATE_FAILED = range(4)


# Mirrored structs by C name, per library; the DWARF test walks these.
ALLOCATOR_STRUCTS: dict[str, type[Structure]] = {
    "AllocHeader": AllocHeader,
    "hak_owner_info": HakOwnerInfo,
    "hak_geometry": HakGeometry,
    "hak_free_decision": HakFreeDecision,
    "hak_reqtrace_rec": HakReqtraceRec,
    "hak_free_state": HakFreeState,
    "hak_stats": HakStats,
}
DRIVER_STRUCTS: dict[str, type[Structure]] = {
    "hfd_crash_record": HfdCrashRecord,
    "hfd_vtable": HfdVtable,
    "hft_record": HftRecord,
    "hfr_event": HfrEvent,
    "hfr_header": HfrHeader,
    "hfr_options": HfrOptions,
    "hfr_summary": HfrSummary,
}


# ---------------------------------------------------------------- declared C surfaces
# hakmem.h, every function: name -> (argtypes, restype).
_HAKMEM_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "hak_init": ([], c_int),
    "hak_abi_version": ([], c_uint32),
    "hak_alloc_at": ([c_size_t, c_uintptr], c_void_p),
    "hak_free_at": ([c_void_p, c_size_t, c_uintptr], None),
    "hak_calloc_at": ([c_size_t, c_size_t, c_uintptr], c_void_p),
    "hak_realloc_at": ([c_void_p, c_size_t, c_uintptr], c_void_p),
    "hak_memalign_at": ([c_size_t, c_size_t, c_uintptr], c_void_p),
    "hak_usable_size": ([c_void_p], c_size_t),
    "hak_tiny_free": ([c_void_p], None),
    "hak_set_knob": ([c_char_p, c_char_p], c_int),
    "hak_get_knob": ([c_char_p, c_char_p, c_size_t], c_int),
    "hak_knob_names": ([c_char_p, c_size_t], c_size_t),
    "hak_last_error": ([], c_char_p),
    "hak_get_geometry": ([POINTER(HakGeometry)], None),
    "hak_last_free_decision": ([POINTER(HakFreeDecision)], c_int),
    "hak_route_ring_get": ([POINTER(HakFreeDecision), c_size_t], c_size_t),
    "hak_route_ring_clear": ([], None),
    "hak_route_name": ([c_uint32], c_char_p),
    "hak_action_name": ([c_uint32], c_char_p),
    "hak_stage_name": ([c_uint32], c_char_p),
    "hak_probe_name": ([c_uint32], c_char_p),
    "hak_reqtrace_op_name": ([c_uint32], c_char_p),
    "hak_owner": ([c_void_p, POINTER(HakOwnerInfo)], c_int),
    "hak_owner_kind": ([c_void_p], c_uint32),
    "hak_alloc_owner_kind": ([c_void_p], c_uint32),
    "hak_free_owner_kind_at": ([c_void_p, c_size_t, c_uintptr], c_uint32),
    "hak_debug_free_state": ([], POINTER(HakFreeState)),
    "hak_get_stats": ([POINTER(HakStats)], None),
    "hak_debug_check": ([c_char_p, c_size_t], c_int),
    "hak_super_reg_reqtrace_dump": ([c_void_p], None),
    "hak_super_reg_reqtrace_get": ([c_void_p, POINTER(HakReqtraceRec), c_size_t], c_size_t),
    "hak_super_reg_reqtrace_clear": ([], None),
}

# hfdriver.h, every function.
_HFDRIVER_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "hfd_abi_version": ([], c_uint32),
    "hfd_last_error": ([], c_char_p),
    "hfd_bind_library": ([c_char_p], c_int),
    "hfd_bind_libc": ([], c_int),
    "hfd_bind_table": ([POINTER(HfdVtable)], c_int),
    "hfd_binding": ([], c_int),
    "hfd_missing_symbols": ([c_char_p, c_size_t], c_size_t),
    "hfd_alloc": ([c_size_t, c_uintptr], c_void_p),
    "hfd_free": ([c_void_p, c_size_t, c_uintptr], None),
    "hfd_install_crash_handler": ([POINTER(HfdCrashRecord)], c_int),
    "hfd_uninstall_crash_handler": ([], None),
    "hfd_set_event_index": ([c_uint64], None),
    "hfd_probe": ([c_int, c_void_p, c_size_t], c_int),
    "hfd_probe_time": ([c_int, c_void_p, c_size_t, c_uint64, POINTER(c_uint64)], c_uint64),
    # hftrace.h
    "hfd_replay": ([c_void_p, c_uint64, POINTER(HfrHeader), POINTER(HfrEvent), POINTER(HfrOptions)], c_int),
    "hfd_replay_ex": ([c_void_p, c_uint64, POINTER(HfrHeader), POINTER(HfrEvent), POINTER(HfrOptions), c_uint32], c_int),
    "hfd_step_reset": ([c_uint32], c_int),
    "hfd_step": ([POINTER(HftRecord), c_uint64, POINTER(HfrEvent)], c_int),
    "hfd_summarize": ([POINTER(HfrEvent), c_uint64, POINTER(HfrSummary)], None),
}

# libc, for the probe test bed and raw memory access.
_LIBC_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "mmap": ([c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long], c_void_p),
    "munmap": ([c_void_p, c_size_t], c_int),
    "mprotect": ([c_void_p, c_size_t, c_int], c_int),
    "getpagesize": ([], c_int),
}

# Both tables must cover exactly the functions abi.py lists (the data symbols are read by elf.py).
assert set(_HAKMEM_FUNCTIONS) == {s.name for s in abi.HAKMEM_SYMBOLS if s.kind == "function"}
assert set(_HFDRIVER_FUNCTIONS) == {s.name for s in abi.HFDRIVER_SYMBOLS}


# ------------------------------------------------------------------------ errors
_HAK_ERRORS: dict[int, type[NativeError]] = {
    -1: InvalidValueError,  # HAK_EINVAL
    -2: UnknownKnobError,  # HAK_ENOKNOB
    -3: BufferTooSmallError,  # HAK_ERANGE
    -4: CheckFailedError,  # HAK_ECHECK
}
_HFD_ERRORS: dict[int, type[NativeError]] = {
    -1: InvalidValueError,  # HFD_EINVAL
    -2: SymbolMissingError,  # HFD_ENOSYM
    -3: OpenFailedError,  # HFD_EDLOPEN
    -4: NotBoundError,  # HFD_ENOTBOUND
    -5: SystemCallError,  # HFD_ESYS
}


def _check(rc: int, function: str, last_error: Callable[[], bytes | None], errors: dict) -> int:
    """Return rc if >= 0, else raise the exception for that status with the C message."""
    if rc >= 0:
        return rc
    raw = last_error()
    message = raw.decode("utf-8", "replace") if raw else "(no message)"
    raise errors.get(rc, NativeError)(function, rc, message)


# ------------------------------------------------------------------------ loading
_LOAD_LOCK = threading.Lock()
_ALLOCATORS: dict[str, _LoadedAllocator] = {}
_DRIVERS: dict[str, _LoadedDriver] = {}
_LIBC: ctypes.CDLL | None = None


def _load_error(path: Path, what: str, err: str, build_hint: bool) -> LibraryError:
    causes = []
    if not path.exists():
        if build_hint:
            causes.append(
                "not built: run `pip install .` in the source tree (it compiles csrc/), or "
                "`make -C csrc OUT=forensics/_native` for a source checkout"
            )
        else:
            causes.append("no such file: check the path given with --lib or $HAKMEM_LIB")
    elif "wrong ELF class" in err or "ELF" in err or "architecture" in err:
        causes.append("wrong architecture or not a shared library (check `file " + str(path) + "`)")
    elif "undefined symbol" in err:
        causes.append("a symbol the library needs is missing from its dependencies")
    else:
        causes.append("unreadable file, missing dependency, or not a shared library")
    return LibraryError(f"cannot load {what} {path}: {err}; likely cause: {'; '.join(causes)}")


def _cdll(path: Path, what: str, build_hint: bool) -> ctypes.CDLL:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # the loader says what is wrong
    if mode is not None and not stat.S_ISREG(mode):  # dlopen of a FIFO would wait for a writer forever
        raise _load_error(path, what, "not a regular file (a directory, a FIFO or a device)", build_hint)
    try:
        return ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as exc:
        raise _load_error(path, what, str(exc), build_hint) from None


def _declare(cdll: ctypes.CDLL, table: dict, symbols: tuple[abi.AbiSymbol, ...], path: Path, what: str):
    """Declare every function of `table` that the library has; return the missing symbol names."""
    missing: list[str] = []
    for sym in symbols:
        try:
            if sym.kind == "function":
                fn = getattr(cdll, sym.name)
                fn.argtypes, fn.restype = table[sym.name]
            else:
                c_void_p.in_dll(cdll, sym.name)
        except (AttributeError, ValueError):
            missing.append(sym.name)
    required = [n for n in missing if abi.get_symbol(n).required]
    if required:
        raise LibraryError(
            f"cannot use {what} {path}: missing required symbol(s) {', '.join(required)}; "
            f"likely cause: not a hakmem-style build, or an incompatible ABI"
        )
    return tuple(missing)


def _name_table(fn, count: int) -> list[str]:
    return [(fn(i) or b"").decode("ascii", "replace") for i in range(count)]


class _LoadedAllocator:
    """A loaded allocator library: declared functions, missing symbols, checked enums."""

    def __init__(self, path: Path) -> None:
        self.path = path
        build_hint = abi.is_bundled(path)
        self.cdll = _cdll(path, "allocator library", build_hint)
        self.missing = _declare(self.cdll, _HAKMEM_FUNCTIONS, abi.HAKMEM_SYMBOLS, path, "allocator library")
        version = self.cdll.hak_abi_version()
        if version != abi.HAK_ABI_VERSION:
            raise LibraryError(
                f"cannot use allocator library {path}: it speaks ABI version {version}, this "
                f"toolkit speaks {abi.HAK_ABI_VERSION}; likely cause: a stale build (rebuild with "
                f"`pip install .` or `make -C csrc`)"
            )
        self.abi_version = version
        self._check_names()

    def _check_names(self) -> None:
        # The model's enums list members in the header's order; the library must agree, or
        # every decoded route would be silently wrong.
        checks = [
            ("hak_route_name", model.Route),
            ("hak_action_name", model.Action),
            ("hak_stage_name", model.Stage),
            ("hak_probe_name", model.ProbeKind),
            ("hak_reqtrace_op_name", model.ReqtraceOp),
        ]
        for fname, enum in checks:
            if fname in self.missing:
                continue
            fn = getattr(self.cdll, fname)
            base = enum.code_base()
            expected = [m.value for m in enum]
            got = [(fn(base + i) or b"").decode("ascii", "replace") for i in range(len(expected))]
            if got != expected:
                raise LibraryError(
                    f"cannot use allocator library {self.path}: {fname}() disagrees with the "
                    f"toolkit's enum order (library {got}, expected {expected}); likely cause: "
                    f"an incompatible hakmem.h"
                )

    def fn(self, name: str):
        if name in self.missing:
            sym = abi.get_symbol(name)
            names = tuple(s.name for s in abi.iter_feature_symbols(abi.HAKMEM_SYMBOLS, sym.feature))
            raise FeatureUnavailable(sym.feature, names, str(self.path))
        return getattr(self.cdll, name)

    def last_error(self) -> bytes | None:
        return self.cdll.hak_last_error()


class _LoadedDriver:
    def __init__(self, path: Path) -> None:
        self.path = path
        build_hint = abi.is_bundled(path)
        self.cdll = _cdll(path, "driver library", build_hint)
        _declare(self.cdll, _HFDRIVER_FUNCTIONS, abi.HFDRIVER_SYMBOLS, path, "driver library")
        version = self.cdll.hfd_abi_version()
        if version != abi.HFD_ABI_VERSION:
            raise LibraryError(
                f"cannot use driver library {path}: it speaks ABI version {version}, this "
                f"toolkit speaks {abi.HFD_ABI_VERSION}; likely cause: a stale build"
            )
        self.abi_version = version

    def last_error(self) -> bytes | None:
        return self.cdll.hfd_last_error()


def _canonical(path: Path) -> str:
    try:
        return str(path.resolve(strict=True))
    except OSError:
        return str(path.absolute())


def load_allocator(lib: str | os.PathLike[str] | None = None, *, debug: bool = False) -> _LoadedAllocator:
    """Load (once per path) and check the allocator library."""
    path = abi.find_allocator(lib, debug=debug)
    key = _canonical(path)
    with _LOAD_LOCK:
        loaded = _ALLOCATORS.get(key)
        if loaded is None:
            loaded = _ALLOCATORS[key] = _LoadedAllocator(Path(key))
        return loaded


def load_driver(lib: str | os.PathLike[str] | None = None) -> _LoadedDriver:
    path = abi.find_driver(lib)
    key = _canonical(path)
    with _LOAD_LOCK:
        loaded = _DRIVERS.get(key)
        if loaded is None:
            loaded = _DRIVERS[key] = _LoadedDriver(Path(key))
        return loaded


def _libc() -> ctypes.CDLL:
    global _LIBC
    with _LOAD_LOCK:
        if _LIBC is None:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            for name, (argtypes, restype) in _LIBC_FUNCTIONS.items():
                fn = getattr(libc, name)
                fn.argtypes, fn.restype = argtypes, restype
            _LIBC = libc
        return _LIBC


# ------------------------------------------------------------------ conversions
def _decision(d: HakFreeDecision) -> model.FreeDecision:
    tried = model.FreeStep.from_mask(d.stages_tried)
    return model.FreeDecision(
        seq=d.seq,
        ptr=d.ptr or 0,
        route=model.Route.from_code(d.route),
        action=model.Action.from_code(d.action) or model.Action.NONE,
        tried=tried,
        hit=model.FreeStep.from_mask(d.stages_hit),
        probe=model.ProbeVerdict.from_code(d.probe),
        probe_kind=model.ProbeKind.from_code(d.probe_kind),
        magic_found=d.magic_found if model.FreeStep.MAGIC in tried else None,
        method=d.method if d.method >= 0 else None,
        tid=d.tid,
    )


def event_result(index: int, e: HfrEvent, *, op: str, tid: int, obj: int, probe_kind: model.ProbeKind | None) -> model.EventResult:
    """An hfr_event record as a model record; op/tid/obj come from the trace event."""
    decision = None
    if e.route or e.seq:
        tried = model.FreeStep.from_mask(e.stages_tried)
        decision = model.FreeDecision(
            seq=e.seq,
            ptr=e.ptr,
            route=model.Route.from_code(e.route),
            action=model.Action.from_code(e.action) or model.Action.NONE,
            tried=tried,
            hit=model.FreeStep.from_mask(e.stages_hit),
            probe=model.ProbeVerdict.from_code(e.probe),
            probe_kind=probe_kind,
            magic_found=e.magic_found if model.FreeStep.MAGIC in tried else None,
            method=e.method if e.method >= 0 else None,
            tid=tid,
        )
    return model.EventResult(
        index=index,
        op=op,
        tid=tid,
        obj=obj,
        ptr=e.ptr,
        owner=model.OwnerKind.from_code(e.owner) or model.OwnerKind.NONE,
        outcome=model.Outcome.from_code(e.outcome) or model.Outcome.NONE,
        status=model.EventStatus.from_code(e.status) or model.EventStatus.PENDING,
        check_failed=bool(e.check_failed),
        decision=decision,
    )


def _method(value: int) -> model.Method | None:
    try:
        return model.Method(value)
    except ValueError:
        return None


def _owner(addr: int, o: HakOwnerInfo) -> model.OwnerInfo:
    return model.OwnerInfo(
        addr=addr,
        kind=model.OwnerKind.from_code(o.kind) or model.OwnerKind.NONE,
        state=model.BlockState.from_code(o.state) or model.BlockState.NONE,
        block_ptr=o.block_ptr or None,
        block_size=o.block_size,
        class_bytes=o.class_bytes,
        region_base=o.region_base or None,
        region_size=o.region_size,
        class_index=o.class_index if o.class_index >= 0 else None,
        registered=bool(o.registered),
        method=_method(o.method),
    )


def _geometry(g: HakGeometry) -> model.Geometry:
    return model.Geometry(
        abi_version=g.abi_version,
        header_size=g.header_size,
        magic=g.magic,
        page_size=g.page_size,
        superslab_size=g.superslab_size,
        mid_chunk_size=g.mid_chunk_size,
        l25_chunk_size=g.l25_chunk_size,
        build_release=bool(g.build_release),
        tiny_class_sizes=tuple(g.tiny_class_sizes[: min(g.num_tiny_classes, HAK_TINY_NUM_CLASSES)]),
        mid_class_bytes=tuple(g.mid_class_bytes[: min(g.num_mid_classes, HAK_MID_NUM_CLASSES)]),
        l25_class_bytes=tuple(g.l25_class_bytes[: min(g.num_l25_classes, HAK_L25_NUM_CLASSES)]),
        tiny_max=g.tiny_max,
        mid_max=g.mid_max,
        l25_max=g.l25_max,
        bigcache_min=g.bigcache_min,
        bigcache_l25_min=g.bigcache_l25_min,
        batch_min_size=g.batch_min_size,
    )


def _reqtrace(r: HakReqtraceRec) -> model.ReqtraceRecord:
    return model.ReqtraceRecord(
        seq=r.seq,
        free_seq=r.free_seq,
        base=r.base,
        addr=r.addr,
        op=model.ReqtraceOp.from_code(r.op),
        reg=model.RegKind.from_code(r.reg),
        live=r.live,
        tid=r.tid,
    )


def _stats(s: HakStats) -> model.Stats:
    counts = {route: s.route_counts[route.code] for route in model.Route}
    return model.Stats(
        allocs=s.allocs,
        frees=s.frees,
        superslabs=s.superslabs,
        superslabs_registered=s.superslabs_registered,
        superslabs_released_live=s.superslabs_released_live,
        mid_chunks=s.mid_chunks,
        l25_chunks=s.l25_chunks,
        mmap_live=s.mmap_live,
        mmap_cached=s.mmap_cached,
        malloc_live=s.malloc_live,
        route_counts=counts,
    )


def _ptr(ptr: int | None) -> c_void_p:
    return c_void_p(ptr or None)


def _knob_value(value: object) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, model.CEnum):
        return value.value.encode()
    return str(value).encode()


# ---------------------------------------------------------------------- Allocator
class Allocator:
    """A handle on an allocator library (hakmem-ref by default).

    The heap lives in the library and is process-wide: handles on the same path share it.
    close() only retires this handle (the library stays loaded; unloading an allocator with
    live blocks is never safe); any use after close() raises ClosedError.
    """

    def __init__(self, lib: str | os.PathLike[str] | None = None, *, debug: bool = False) -> None:
        self._lib: _LoadedAllocator | None = load_allocator(lib, debug=debug)
        self.path = self._lib.path
        self.abi_version = self._lib.abi_version

    # -- lifetime
    def close(self) -> None:
        self._lib = None

    @property
    def closed(self) -> bool:
        return self._lib is None

    def __enter__(self) -> Allocator:
        self._live()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Allocator {self.path} ({state})>"

    def _live(self) -> _LoadedAllocator:
        if self._lib is None:
            raise ClosedError(f"Allocator for {self.path} used after close()")
        return self._lib

    def _fn(self, name: str):
        return self._live().fn(name)

    def _check(self, rc: int, function: str) -> int:
        return _check(rc, function, self._live().last_error, _HAK_ERRORS)

    # -- capabilities
    @property
    def missing_symbols(self) -> tuple[str, ...]:
        return self._live().missing

    @property
    def missing_features(self) -> tuple[str, ...]:
        """Features whose symbols this library lacks (their methods raise FeatureUnavailable)."""
        features: list[str] = []
        for name in self._live().missing:
            feature = abi.get_symbol(name).feature
            if feature not in features:
                features.append(feature)
        return tuple(features)

    def has_feature(self, feature: str) -> bool:
        return feature not in self.missing_features

    def get_function_address(self, name: str) -> int:
        """Address of an exported function (for hfd_bind_table)."""
        return ctypes.cast(self._fn(name), c_void_p).value or 0

    # -- allocation
    def init(self) -> None:
        self._check(self._fn("hak_init")(), "hak_init")

    def alloc(self, size: int, site: int = 0) -> int:
        ptr = self._fn("hak_alloc_at")(size, site)
        if not ptr and size:
            raise MemoryError(f"hak_alloc_at({size}) returned NULL")
        return ptr or 0

    def free(self, ptr: int | None, size: int = 0, site: int = 0) -> None:
        self._fn("hak_free_at")(_ptr(ptr), size, site)

    def calloc(self, nmemb: int, size: int, site: int = 0) -> int:
        ptr = self._fn("hak_calloc_at")(nmemb, size, site)
        if not ptr and nmemb and size:
            raise MemoryError(f"hak_calloc_at({nmemb}, {size}) returned NULL")
        return ptr or 0

    def realloc(self, ptr: int | None, size: int, site: int = 0) -> int:
        new = self._fn("hak_realloc_at")(_ptr(ptr), size, site)
        if not new and size:
            raise MemoryError(f"hak_realloc_at({ptr or 0:#x}, {size}) returned NULL")
        return new or 0

    def memalign(self, alignment: int, size: int, site: int = 0) -> int:
        ptr = self._fn("hak_memalign_at")(alignment, size, site)
        if not ptr and size:
            raise MemoryError(f"hak_memalign_at({alignment}, {size}) returned NULL")
        return ptr or 0

    def usable_size(self, ptr: int) -> int:
        return self._fn("hak_usable_size")(_ptr(ptr))

    def tiny_free(self, ptr: int) -> None:
        """Call hak_tiny_free directly, as the seed's fallbacks do."""
        self._fn("hak_tiny_free")(_ptr(ptr))

    # -- knobs
    def set_knob(self, name: str, value: object) -> None:
        self._check(self._fn("hak_set_knob")(name.encode(), _knob_value(value)), f"hak_set_knob({name})")

    def get_knob(self, name: str) -> str:
        fn = self._fn("hak_get_knob")
        cap = 64
        while True:
            buf = ctypes.create_string_buffer(cap)
            try:
                self._check(fn(name.encode(), buf, cap), f"hak_get_knob({name})")
            except BufferTooSmallError:
                if cap >= 1 << 16:
                    raise
                cap *= 4
                continue
            return buf.value.decode("utf-8", "replace")

    def get_knob_names(self) -> list[str]:
        fn = self._fn("hak_knob_names")
        need = fn(None, 0)
        buf = ctypes.create_string_buffer(need + 1)
        fn(buf, need + 1)
        return [n for n in buf.value.decode().split("\n") if n]

    def knobs(self) -> dict[str, str]:
        return {name: self.get_knob(name) for name in self.get_knob_names()}

    # -- introspection
    def geometry(self) -> model.Geometry:
        g = HakGeometry()
        self._fn("hak_get_geometry")(ctypes.byref(g))
        return _geometry(g)

    def last_decision(self) -> model.FreeDecision:
        """The calling thread's last free; InvalidValueError if it has not freed anything."""
        d = HakFreeDecision()
        self._check(self._fn("hak_last_free_decision")(ctypes.byref(d)), "hak_last_free_decision")
        return _decision(d)

    def route_ring(self, cap: int = HAK_ROUTE_RING) -> list[model.FreeDecision]:
        buf = (HakFreeDecision * cap)()
        n = self._fn("hak_route_ring_get")(buf, cap)
        return [_decision(buf[i]) for i in range(min(n, cap))]

    def route_ring_clear(self) -> None:
        self._fn("hak_route_ring_clear")()

    def owner(self, addr: int) -> model.OwnerInfo:
        o = HakOwnerInfo()
        self._check(self._fn("hak_owner")(_ptr(addr), ctypes.byref(o)), "hak_owner")
        return _owner(addr, o)

    def owner_kind(self, addr: int) -> tuple[model.OwnerKind, bool]:
        """hak_owner_kind(): the owner's kind, and whether addr starts a live block (the oracle's
        question, without a whole hak_owner_info)."""
        k = self._fn("hak_owner_kind")(_ptr(addr))
        return (model.OwnerKind.from_code(k & HAK_OWNER_KIND_MASK) or model.OwnerKind.NONE, bool(k & HAK_OWNER_LIVE_BLOCK))

    def free_state(self) -> tuple[int, model.Stage | None, int]:
        """(ptr, stage, seq) of the calling thread's hak_free_state."""
        st = self._fn("hak_debug_free_state")()
        if not st:
            return (0, None, 0)
        s = st.contents
        return (s.ptr or 0, model.Stage.from_code(s.stage), s.seq)

    def stats(self) -> model.Stats:
        s = HakStats()
        self._fn("hak_get_stats")(ctypes.byref(s))
        return _stats(s)

    def get_broken_invariant(self, cap: int = 1024) -> str | None:
        """The first broken invariant hak_debug_check() finds, or None if the heap is sound."""
        buf = ctypes.create_string_buffer(cap)
        rc = self._fn("hak_debug_check")(buf, cap)
        if rc == -4:  # HAK_ECHECK: a finding, not a failure
            return buf.value.decode("utf-8", "replace") or "(no message)"
        self._check(rc, "hak_debug_check")
        return None

    def check(self) -> None:
        """Raise CheckFailedError (message = the broken invariant) unless the heap is sound."""
        msg = self.get_broken_invariant()
        if msg is not None:
            raise CheckFailedError("hak_debug_check", -4, msg)

    # -- registry request trace
    def reqtrace(self, ptr: int | None = None) -> list[model.ReqtraceRecord]:
        """Records of ptr's SuperSlab-sized region (all records if ptr is None), oldest first."""
        fn = self._fn("hak_super_reg_reqtrace_get")
        cap = 256
        while True:
            buf = (HakReqtraceRec * cap)()
            n = fn(_ptr(ptr), buf, cap)
            if n <= cap or cap >= HAK_REQTRACE_RING:
                return [_reqtrace(buf[i]) for i in range(min(n, cap))]
            cap = min(max(n, cap * 2), HAK_REQTRACE_RING)

    def reqtrace_clear(self) -> None:
        self._fn("hak_super_reg_reqtrace_clear")()

    def reqtrace_dump(self, ptr: int | None = None) -> None:
        """hak_super_reg_reqtrace_dump(): print the records to the process's stderr."""
        self._fn("hak_super_reg_reqtrace_dump")(_ptr(ptr))


# ------------------------------------------------------------------------- Driver
class Driver:
    """A handle on libhfdriver: binds an allocator, crash handler, readability probes."""

    PROBE_MAPS = HFD_PROBE_MAPS

    def __init__(self, lib: str | os.PathLike[str] | None = None) -> None:
        self._lib: _LoadedDriver | None = load_driver(lib)
        self.path = self._lib.path
        self.abi_version = self._lib.abi_version
        self._table: HfdVtable | None = None

    def close(self) -> None:
        self._lib = None

    @property
    def closed(self) -> bool:
        return self._lib is None

    def __enter__(self) -> Driver:
        self._live()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Driver {self.path} ({'closed' if self.closed else 'open'})>"

    def _live(self) -> ctypes.CDLL:
        if self._lib is None:
            raise ClosedError(f"Driver for {self.path} used after close()")
        return self._lib.cdll

    def _check(self, rc: int, function: str) -> int:
        assert self._lib is not None
        return _check(rc, function, self._lib.last_error, _HFD_ERRORS)

    # -- binding
    def bind_library(self, target: str | os.PathLike[str] | Allocator) -> None:
        path = target.path if isinstance(target, Allocator) else Path(target)
        rc = self._live().hfd_bind_library(str(path).encode())
        self._check(rc, f"hfd_bind_library({path})")

    def bind_libc(self) -> None:
        self._check(self._live().hfd_bind_libc(), "hfd_bind_libc")

    def bind_table(self, allocator: Allocator) -> None:
        """Bind through function pointers taken from an already loaded Allocator."""
        table = HfdVtable()
        missing = set(allocator.missing_symbols)
        for member, symbol in _VTABLE_SYMBOLS.items():
            if symbol not in missing:
                setattr(table, member, allocator.get_function_address(symbol))
        self._check(self._live().hfd_bind_table(ctypes.byref(table)), "hfd_bind_table")
        self._table = table

    @property
    def binding(self) -> str:
        code = self._live().hfd_binding()
        return {0: "none", 1: "hakmem", 2: "libc", 3: "table"}.get(code, f"unknown({code})")

    @property
    def missing_symbols(self) -> tuple[str, ...]:
        """Optional allocator symbols the bound library lacks (hfd_missing_symbols)."""
        fn = self._live().hfd_missing_symbols
        need = fn(None, 0)
        buf = ctypes.create_string_buffer(need + 1)
        fn(buf, need + 1)
        return tuple(n for n in buf.value.decode().split("\n") if n)

    # -- calls through the binding
    def alloc(self, size: int, site: int = 0) -> int:
        return self._live().hfd_alloc(size, site) or 0

    def free(self, ptr: int | None, size: int = 0, site: int = 0) -> None:
        self._live().hfd_free(_ptr(ptr), size, site)

    # -- crash handling
    def install_crash_handler(self, record_address: int) -> None:
        """Install the handlers; they fill the hfd_crash_record at record_address."""
        rec = ctypes.cast(c_void_p(record_address), POINTER(HfdCrashRecord))
        self._check(self._live().hfd_install_crash_handler(rec), "hfd_install_crash_handler")

    def uninstall_crash_handler(self) -> None:
        self._live().hfd_uninstall_crash_handler()

    def set_event_index(self, index: int) -> None:
        self._live().hfd_set_event_index(index)

    # -- probes
    @staticmethod
    def _probe_code(kind: model.ProbeKind | str | int) -> int:
        if isinstance(kind, int) and not isinstance(kind, model.CEnum):
            return kind
        if kind == "maps":
            return HFD_PROBE_MAPS
        try:
            return model.ProbeKind(kind).code
        except ValueError:
            names = ", ".join([k.value for k in model.ProbeKind] + ["maps"])
            raise BadInputError(f"unknown probe kind {kind!r}; expected one of {names}") from None

    def probe(self, kind: model.ProbeKind | str | int, addr: int, length: int = 1) -> bool:
        """Run a readability probe ("maps" or 100 = /proc/self/maps ground truth)."""
        code = self._probe_code(kind)
        rc = self._check(self._live().hfd_probe(code, _ptr(addr), length), f"hfd_probe({kind})")
        return rc == 1

    def probe_time(self, kind: model.ProbeKind | str | int, addr: int, length: int, n: int) -> tuple[int, int]:
        """(total nanoseconds, total TSC cycles or 0) of n probe calls."""
        cycles = c_uint64(0)
        ns = self._live().hfd_probe_time(self._probe_code(kind), _ptr(addr), length, n, ctypes.byref(cycles))
        return ns, cycles.value

    # ---- replay (hftrace.h)
    def step_reset(self, num_objects: int) -> None:
        """Start a stepped replay: an empty object table for ids 1..num_objects."""
        self._check(self._live().hfd_step_reset(num_objects), "hfd_step_reset")

    def step(self, record: HftRecord, index: int) -> HfrEvent:
        """Replay one event through the binding; the same code and record as hfd_replay."""
        out = HfrEvent()
        self._check(self._live().hfd_step(ctypes.byref(record), index, ctypes.byref(out)), "hfd_step")
        return out

    def summarize(self, events_address: int, n: int) -> HfrSummary:
        """Aggregate n hfr_event records at events_address (route and outcome counts)."""
        out = HfrSummary()
        self._live().hfd_summarize(ctypes.cast(events_address, POINTER(HfrEvent)), n, ctypes.byref(out))
        return out

    def replay(self, trace: Any, results: Any, *, check_every: int = 0, threads: bool = False, judge: bool = True) -> None:
        """hfd_replay in this process: the binary trace in `trace` (a writable buffer holding the
        whole file, e.g. an mmap.ACCESS_COPY mapping: page-aligned, as the loop needs) into
        `results` (a writable buffer of one HfrHeader plus num_events HfrEvent records).

        For timing a replay in an isolated child; a crash kills the calling process."""
        opts = HfrOptions(check_every, int(threads), int(judge))
        tview = c_char.from_buffer(trace)
        rview = c_char.from_buffer(results)
        try:
            raddr = ctypes.addressof(rview)
            rc = self._live().hfd_replay(
                ctypes.addressof(tview),
                len(trace),
                ctypes.cast(raddr, POINTER(HfrHeader)),
                ctypes.cast(raddr + sizeof(HfrHeader), POINTER(HfrEvent)),
                ctypes.byref(opts),
            )
        finally:
            del tview, rview  # release the buffer exports so the caller can close its mappings
        self._check(rc, "hfd_replay")


# ----------------------------------------------------------- crash record buffers
CRASH_RECORD_SIZE = sizeof(HfdCrashRecord)


def get_buffer_address(buf: Any) -> int:
    """Address of a writable buffer (mmap, bytearray) for the C side to fill."""
    return ctypes.addressof(c_char.from_buffer(buf))


def read_crash_record(buf: Any) -> model.CrashRecord | None:
    """The crash record in buf (an mmap of CRASH_RECORD_SIZE bytes), None if never filled."""
    rec = HfdCrashRecord.from_buffer_copy(bytes(buf[:CRASH_RECORD_SIZE]))
    if rec.magic != HFD_CRASH_MAGIC:
        return None
    maps_len = min(rec.maps_len, HFD_CRASH_MAPS_MAX)
    maps = bytes(buf[HfdCrashRecord.maps.offset : HfdCrashRecord.maps.offset + maps_len])
    stage = None if rec.stage == HFD_STAGE_UNKNOWN else model.Stage.from_code(rec.stage)
    return model.CrashRecord(
        signo=rec.signo,
        si_code=rec.si_code,
        fault_address=rec.fault_addr or 0,
        ptr=rec.ptr or None,
        stage=stage,
        stage_name=rec.stage_name.decode("utf-8", "replace") or (stage.value if stage else "unknown"),
        has_state=bool(rec.has_state),
        free_seq=rec.free_seq,
        event_index=None if rec.event_index == UINT64_MAX else rec.event_index,
        tid=rec.tid,
        maps=maps.decode("utf-8", "replace"),
        maps_truncated=bool(rec.maps_truncated),
    )


# ------------------------------------------------------------- raw memory, pages
def read_memory(addr: int, n: int) -> bytes:
    """Copy n bytes at addr (the caller vouches that they are readable)."""
    return ctypes.string_at(addr, n)


def write_memory(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def fill_memory(addr: int, byte: int, n: int) -> None:
    ctypes.memset(addr, byte, n)


PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
_MAP_PRIVATE = 0x02
_MAP_ANONYMOUS = 0x20
_MAP_FAILED = (1 << (8 * sizeof(c_void_p))) - 1


class Pages:
    """Anonymous pages made with libc mmap/mprotect/munmap, for probe test beds.

    map() returns the address of npages read-write pages; unmap()/protect() act on any
    page-aligned part of them. close() unmaps whatever this object mapped and still holds.
    """

    def __init__(self) -> None:
        self._libc = _libc()
        self.page_size = self._libc.getpagesize()
        self._maps: list[tuple[int, int]] = []

    def _errno(self, what: str) -> OSError:
        err = ctypes.get_errno()
        return OSError(err, f"{what}: {os.strerror(err)}")

    def map(self, npages: int, prot: int = PROT_READ | PROT_WRITE) -> int:
        length = npages * self.page_size
        addr = self._libc.mmap(None, length, prot, _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            raise self._errno("mmap")
        self._maps.append((addr, length))
        return addr

    def protect(self, addr: int, length: int, prot: int) -> None:
        if self._libc.mprotect(c_void_p(addr), length, prot) != 0:
            raise self._errno("mprotect")

    def unmap(self, addr: int, length: int) -> None:
        if self._libc.munmap(c_void_p(addr), length) != 0:
            raise self._errno("munmap")

    def close(self) -> None:
        # munmap of already-unmapped pages is harmless, so unmap every whole mapping.
        for addr, length in self._maps:
            self._libc.munmap(c_void_p(addr), length)
        self._maps.clear()

    def __enter__(self) -> Pages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
