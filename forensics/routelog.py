"""Reads hakmem's stderr lines (route trace, registry trace, alloc trace, `[hakmem]` messages) from logs of any size.

The line formats are docs/route-trace.md. Logs are read as bytes in 1 MiB chunks, plain or
gzip (sniffed by magic), and every line is folded into bounded aggregates: nothing per line
is kept. What is kept per pointer, region or event is capped (CAPS below, documented in
docs/route-trace.md):

* pointers: an OrderedDict of the last `max_pointers` pointers allocated (or, in a log without
  alloc lines, freed), evicted oldest-allocation first. A free of an evicted pointer is judged
  "unjudged" (its allocation is no longer known). Pointers involved in an anomaly get a full
  lifecycle (capped at `keep` pointers of `MAX_EVENTS` events each).
* registry history: the last `REGION_HISTORY` registry *changes* (register, unregister,
  capacity_error, dropped) per region base, for the last `max_regions` regions; an escaped
  pointer or an invalid magic gets a copy of the history of the regions that can cover it.
* lists of events (invalid magics, escapes, crashes, notable registry changes): the first
  `keep`, plus exact totals.

Lines that are not hakmem's are skipped and counted; lines with hakmem's tag that do not parse
are counted as malformed (the first few are kept as examples); a damaged gzip stream ends that
file with an error naming the offset. Nothing in a log raises.
"""

from __future__ import annotations

import gzip
import re
import sys
import time
import zlib
from collections import OrderedDict, deque
from pathlib import Path
from typing import IO, Iterable

from forensics.errors import BadInputError
from forensics.safeio import open_input
from forensics.model import (
    Correlation,
    EscapedRegion,
    InvalidMagicEvent,
    LogCrash,
    LogFileStats,
    MalformedLine,
    PointerEvent,
    PointerLifecycle,
    ProcessImage,
    RegistryLine,
    RouteLogResult,
    TimelineSlice,
    TraceJoin,
    UnknownMethodEvent,
)

CHUNK = 1 << 20
MAX_LINE = 64 * 1024  # longer lines are skipped (counted as overlong)
DEFAULT_MAX_POINTERS = 65536
DEFAULT_MAX_REGIONS = 16384
DEFAULT_KEEP = 256
MAX_EVENTS = 32  # events kept per anomalous pointer
MAX_DUMP = 64  # records kept of one reqtrace dump
REGION_HISTORY = 8  # registry changes kept per region
MAX_MALFORMED = 20
MAX_NAMES = 256  # distinct route/action/path names; beyond: "(other)"
TIMELINE_SLICES = 64
TIMELINE_START_WIDTH = 1024
# Regions (SuperSlabs, pool chunks) are aligned to their own size (hakmem.h), so the region of
# registry `reg` covering a pointer starts at ptr & ~(size - 1). The sizes come from the
# allocator's geometry (the CLI reads it from the library); without it, each registry's size
# is learned from the log as the smallest alignment of the bases it registered.
DEFAULT_REGION = 1 << 20
MAX_LEARNED_SHIFT = 24

GZIP_MAGIC = b"\x1f\x8b"
NULL_PATH = "\0null"  # the "allocation path" of free(NULL)
_SEQ_INF = 1 << 64

# ------------------------------------------------------------------------------ formats
# Numbers have at most 20 digits (hakmem prints 64-bit values): a longer one makes the line
# malformed, never a multi-thousand-digit int().
ROUTE_RE = re.compile(
    rb"\[hakmem-route\] seq=(\d{1,20}) tid=(\d{1,20}) ptr=(0x[0-9a-fA-F]+|\(nil\)) route=([a-z0-9_]+) action=([a-z0-9_]+) "
    rb"tried=([a-z0-9,]+|-) hit=([a-z0-9,]+|-) probe=(-|readable|unreadable) magic=(0x[0-9a-fA-F]+|-) "
    rb"method=(-?\d{1,20}|-)(?: [a-z_]+=\S*)*\r?$"
)
ALLOC_RE = re.compile(
    rb"\[hakmem-alloc\] seq=(\d{1,20}) free_seq=(\d{1,20}) tid=(\d{1,20}) ptr=0x([0-9a-fA-F]+) size=(\d{1,20}) align=(\d{1,20}) "
    rb"path=([a-z0-9_]+)(?: [a-z_]+=\S*)*\r?$"
)
REG_RE = re.compile(
    rb"\[hakmem-reg\] seq=(\d{1,20}) free_seq=(\d{1,20}) tid=(\d{1,20}) op=([a-z_]+) reg=([a-z0-9_]+) base=0x([0-9a-fA-F]+) "
    rb"addr=0x([0-9a-fA-F]+) live=(\d{1,20})(?: [a-z_]+=\S*)*\r?$"
)
INVALID_MAGIC_RE = re.compile(rb"\[hakmem\] ERROR: Invalid magic 0x([0-9A-Fa-f]+) \(expected 0x([0-9A-Fa-f]+)\)\r?$")
UNKNOWN_METHOD_RE = re.compile(rb"\[hakmem\] ERROR: Unknown allocation method: (-?\d{1,20})\r?$")
SKIP_RE = re.compile(rb"\[hakmem\] WARNING: Skipping free of invalid pointer (0x[0-9a-fA-F]+|\(nil\)) \(may leak memory\)\r?$")
DUMP_RE = re.compile(rb"\[hakmem\] reqtrace for (0x[0-9a-fA-F]+|\(nil\)) \(region 0x([0-9a-fA-F]+)\):\r?$")
CRASH_RE = re.compile(
    rb"\[hakmem\] CRASH: ([A-Z0-9]+) fault=0x([0-9a-fA-F]+) ptr=0x([0-9a-fA-F]+) stage=(\S+) event=(\d{1,20}|-)"
    rb"(?: free_seq=(\d{1,20}))?(?: \S+)*\r?$"
)
PROCESS_RE = re.compile(
    rb"\[hakmem\] PROCESS: pid=(\d{1,20}) ppid=(\d{1,20}) start=([a-z]+) free_seq=(\d{1,20})(?: mode=(\S+))?(?: probe=(\S+))?(?: \S+)*\r?$"
)
STATS_RE = re.compile(rb"\[hakmem\] STATS: pid=(\d{1,20}) allocs=(\d{1,20}) frees=(\d{1,20})(?: \S+)*\r?$")

# Route classes (the seed's route names, docs/route-trace.md).
INVALID_MAGIC_ROUTES = frozenset({"invalid_magic_tiny_recovery", "invalid_magic_skip", "invalid_magic_libc"})
REGISTRY_HIT_ROUTES = frozenset({"ss_hit", "mid_hit", "l25_hit"})
# In hakmem-ref a Mid or L25 block reaches its header route only when its registry missed it.
POOL_HEADER_ROUTES = frozenset({"pool_hdr", "pool_hdr_disabled", "l25_hdr"})
# What the route must finally call for a block of each allocation path (the replay oracle's rule).
EXPECTED_ACTIONS = {
    "tiny": frozenset({"tiny_free"}),
    "mid": frozenset({"pool_free"}),
    "l25": frozenset({"l25_free"}),
    "mmap": frozenset({"bigcache_put", "batch_add", "whale_put", "munmap"}),
    "malloc": frozenset({"libc_free_raw"}),
}
REGISTERED_PATHS = frozenset({"tiny", "mid", "l25"})  # blocks a registry should find
CHANGE_OPS = frozenset({"register", "unregister", "capacity_error", "dropped"})
VERDICTS = ("correct", "misrouted", "leaked", "invalid_magic", "unjudged")

PATTERN_GROUPS_REQUIRED = ("route", "ptr")
PATTERN_GROUPS_OPTIONAL = ("seq", "tid", "action", "magic", "method")


def compile_pattern(pattern: str) -> re.Pattern[bytes]:
    """A user's route-line pattern: a regex with named groups route and ptr (seq, tid, action,
    magic, method optional), searched in each line that is not one of hakmem's own."""
    try:
        rx = re.compile(pattern.encode("utf-8", "surrogateescape"))
    except re.error as exc:
        raise BadInputError(f"--pattern {pattern!r}: not a regular expression: {exc}") from None
    missing = [g for g in PATTERN_GROUPS_REQUIRED if g not in rx.groupindex]
    if missing:
        raise BadInputError(
            f"--pattern {pattern!r}: needs the named group(s) {', '.join('(?P<%s>...)' % g for g in missing)}; "
            f"optional: {', '.join(PATTERN_GROUPS_OPTIONAL)}"
        )
    return rx


def _num(b: bytes | None) -> int | None:
    if b is None or b == b"-" or b == b"(nil)":
        return 0 if b == b"(nil)" else None
    try:
        if b[:2] in (b"0x", b"0X"):
            return int(b, 16)
        return int(b)
    except ValueError:
        return None


def _ptr(b: bytes) -> int:
    return 0 if b == b"(nil)" else int(b, 16)


def _show(line: bytes, limit: int = 120) -> str:
    text = line[:limit].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return text + ("…" if len(line) > limit else "")


def _bucket(n: int) -> str:
    if n <= 1:
        return "1"
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


class _Names:
    """bytes -> str for the few names a log uses (routes, actions, paths), capped."""

    def __init__(self) -> None:
        self.map: dict[bytes, str] = {}

    def get(self, b: bytes) -> str:
        s = self.map.get(b)
        if s is None:
            s = b.decode("ascii", "replace") if len(self.map) < MAX_NAMES else "(other)"
            self.map[b] = s
        return s


# -------------------------------------------------------------------------- analyzer
class RouteLogAnalyzer:
    """Feed it logs (feed_path / feed_stream), then take result(). One instance, one report."""

    def __init__(
        self,
        *,
        pattern: str | None = None,
        max_pointers: int = DEFAULT_MAX_POINTERS,
        max_regions: int = DEFAULT_MAX_REGIONS,
        keep: int = DEFAULT_KEEP,
        region_sizes: dict[str, int] | None = None,
    ) -> None:
        if max_pointers < 1 or max_regions < 1 or keep < 1:
            raise BadInputError("--max-pointers, --max-regions and --keep must be at least 1")
        self.pattern_text = pattern
        self.pattern = compile_pattern(pattern) if pattern else None
        self.max_pointers = max_pointers
        self.max_regions = max_regions
        self.keep = keep
        self.region_sizes = dict(region_sizes) if region_sizes else None
        self.learned_shift: dict[str, int] = {}  # registry -> smallest alignment (log2) of its bases
        self.t0 = time.perf_counter()
        self.names = _Names()
        self.files: list[LogFileStats] = []
        # (route, action, probe, allocation path) -> [count, verdict, anomalies, escaped, route, action, path]:
        # routes, actions, probes, verdicts and the lifecycle matrix are all sums over it
        self.kinfo: dict[tuple, list] = {}
        self.alloc_paths_b: dict[bytes, int] = {}
        self.anomaly_kinds: dict[str, int] = {}
        self.reuse: dict[str, int] = {}
        self.pointers_tracked = 0
        self.pointers_evicted = 0
        self.double_frees = 0
        self.allocated_twice = 0
        self.failed_allocs = 0
        self.anomalous: dict[int, PointerLifecycle] = {}
        self.anomalous_total = 0
        self.invalid_magic: list[InvalidMagicEvent] = []
        self.invalid_magic_total = 0
        self.unknown_methods: list[UnknownMethodEvent] = []
        self.unknown_method_total = 0
        self.skip_warnings: list[int] = []
        self.skip_warning_total = 0
        self.knob_warnings: list[str] = []
        self.escapes: dict[int, EscapedRegion] = {}
        self.escapes_total = 0
        self.escaped_regions_total = 0
        self.registry_ops: dict[str, dict[str, int]] = {}
        self.registry_events: list[tuple[RegistryLine, str, int]] = []
        self.registry_events_total = 0
        self.crashes: list[LogCrash] = []
        self.crash_total = 0
        self.messages: dict[str, int] = {}
        self.processes: list[ProcessImage] = []
        self.processes_total = 0
        self.malformed: list[MalformedLine] = []
        self.tl_slices: list[list] = []  # [first ordinal, seq min, seq max, {route bytes: n}, anomalies]
        self.tl_width = TIMELINE_START_WIDTH
        self.tl_boundary = 0
        self.tl_cur: list | None = None
        self.route_ordinal = 0
        self._reset_space()
        self._reset_file_state()

    # ---------------------------------------------------------------- per-file state
    def _reset_space(self) -> None:
        """A new address space (new file, exec): pointer and region state no longer applies."""
        if hasattr(self, "ptrs"):
            for ent in self.ptrs.values():
                self._count_reuse(ent)
        self.ptrs: OrderedDict[int, list] = OrderedDict()
        self.regions: OrderedDict[int, deque] = OrderedDict()
        self.reg_seq_max = 0
        self.have_allocs = False

    def _reset_file_state(self) -> None:
        self.in_dump = False
        self.pending_invalid: list | None = None  # [magic, file, line, dump list, dump ptr]
        self.image: ProcessImage | None = None

    def _new_image(self, file: str, pid: int | None, ppid: int | None, start: str, base: int,
                   mode: str | None, probe: str | None) -> ProcessImage:
        img = ProcessImage(file=file, pid=pid, ppid=ppid, start=start, free_seq_base=base, mode=mode, probe=probe)
        self.processes_total += 1
        if len(self.processes) < self.keep:
            self.processes.append(img)
        self.image = img
        return img

    def _count_reuse(self, ent: list) -> None:
        if ent[5]:
            key = _bucket(ent[5])
            self.reuse[key] = self.reuse.get(key, 0) + 1

    # ------------------------------------------------------------------------ input
    def feed_path(self, path: str | Path) -> LogFileStats:
        """Read one log file ('-' = standard input). A missing file is bad input; damage inside is reported."""
        name = str(path)
        if name == "-":
            return self.feed_stream(sys.stdin.buffer, "<stdin>")
        try:
            fh = open_input(name, "log", stream_ok=True)  # a pipe (`<(zcat ...)`) streams too
        except BadInputError as exc:
            raise BadInputError(f"{name}: cannot read log: {str(exc)[len(name) + 2:]}") from None
        with fh:
            return self.feed_stream(fh, name)

    def feed_stream(self, raw: IO[bytes], name: str) -> LogFileStats:
        head = _peek(raw, 2)
        compressed = head == GZIP_MAGIC
        stats = LogFileStats(path=name, compressed=compressed)
        self.files.append(stats)
        self._reset_space()
        self._reset_file_state()
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        buf = b""
        skipping = False  # inside an overlong line: drop up to its newline
        lineno = 0
        while True:
            try:
                chunk = stream.read(CHUNK)
            except (EOFError, OSError, zlib.error) as exc:
                where = _offset(raw)
                reason = "truncated gzip stream" if isinstance(exc, EOFError) else f"damaged gzip stream ({exc})"
                stats.error = f"{reason} at compressed offset {where}" if where is not None else reason
                break
            if not chunk:
                break
            stats.bytes += len(chunk)
            lines = chunk.split(b"\n")
            if skipping:
                if len(lines) == 1:
                    continue
                lines[0] = b""  # the rest of the overlong line
                lineno += 1
                stats.lines += 1
                lines = lines[1:]
                skipping = False
            elif buf:
                lines[0] = buf + lines[0]
            buf = lines.pop()
            if len(buf) > MAX_LINE:
                buf = b""
                skipping = True
                stats.overlong_lines += 1
            lineno = self._feed_lines(lines, stats, lineno)
        if buf and not skipping:
            stats.truncated_last_line = True
            lineno = self._feed_lines([buf], stats, lineno)
        elif skipping:
            stats.lines += 1
        self._flush_pending(name)
        return stats

    # ------------------------------------------------------------------- dispatch
    def _feed_lines(self, lines: list[bytes], stats: LogFileStats, lineno: int) -> int:
        name = stats.path
        route_line = self._route_line
        alloc_line = self._alloc_line
        pattern = self.pattern
        for line in lines:
            lineno += 1
            head = line[:15]
            # the two lines a traced program prints most, first
            if head == b"[hakmem-route] ":
                if route_line(line, stats, name, lineno):
                    continue
            elif head == b"[hakmem-alloc] ":
                if alloc_line(line, stats, name, lineno):
                    continue
            else:
                if len(line) > MAX_LINE:
                    stats.overlong_lines += 1
                    continue
                if line[:7] != b"[hakmem":
                    idx = line.find(b"[hakmem")
                    if idx < 0:
                        if line.startswith(b"[SP_META_CAPACITY_ERROR]"):
                            stats.message_lines += 1
                            self._count_message("sp_meta_capacity_error")
                            continue
                        if pattern is not None and self._pattern_line(line, stats, name, lineno):
                            continue
                        stats.other_lines += 1
                        if b"\0" in line or not _is_utf8(line):
                            stats.binary_lines += 1
                        self.in_dump = False
                        continue
                    line = line[idx:]  # a hakmem line glued to the end of a program's unfinished line
                tag = line[7:9]
                if tag == b"] ":
                    self._message_line(line, stats, name, lineno)
                    continue
                if line[7:13] == b"-route":
                    if route_line(line, stats, name, lineno):
                        continue
                elif line[7:11] == b"-reg":
                    if self._reg_line(line, stats, name, lineno):
                        continue
                elif line[7:13] == b"-alloc":
                    if alloc_line(line, stats, name, lineno):
                        continue
            if pattern is not None and self._pattern_line(line, stats, name, lineno):
                continue
            self._malformed(stats, name, lineno, line, "hakmem tag, but not a line hakmem-ref prints")
        stats.lines += len(lines)
        return lineno

    def _malformed(self, stats: LogFileStats, name: str, lineno: int, line: bytes, reason: str) -> None:
        stats.malformed_lines += 1
        self.in_dump = False
        if len(self.malformed) < MAX_MALFORMED:
            self.malformed.append(MalformedLine(name, lineno, reason, _show(line)))

    def _count_message(self, kind: str) -> None:
        self.messages[kind] = self.messages.get(kind, 0) + 1

    def _current_image(self, name: str) -> ProcessImage:
        img = self.image
        if img is None:
            img = self._new_image(name, None, None, "-", 0, None, None)
        return img

    # ------------------------------------------------------------------ route lines
    def _route_line(self, line: bytes, stats: LogFileStats, name: str, lineno: int) -> bool:
        m = ROUTE_RE.match(line)
        if m is None:
            return False
        seq_b, tid_b, ptr_b, route_b, action_b, _tried, _hit, probe_b, magic_b, method_b = m.groups()
        stats.route_lines += 1
        self.in_dump = False
        self._free(int(seq_b), tid_b, 0 if ptr_b == b"(nil)" else int(ptr_b, 16), route_b, action_b, probe_b,
                   magic_b, method_b, name, lineno)
        return True

    def _pattern_line(self, line: bytes, stats: LogFileStats, name: str, lineno: int) -> bool:
        m = self.pattern.search(line)  # type: ignore[union-attr]
        if m is None:
            return False
        g = m.groupdict()
        ptr = _num(g.get("ptr"))
        if ptr is None:
            try:
                ptr = int(g["ptr"], 16)
            except (TypeError, ValueError):
                self._malformed(stats, name, lineno, line, "--pattern matched, but ptr is not a number")
                return True
        stats.pattern_lines += 1
        self.in_dump = False
        magic, method = g.get("magic"), g.get("method")
        self._free(_num(g.get("seq")), g.get("tid"), ptr, g.get("route") or b"-", g.get("action"), b"-",
                   magic if magic is not None else b"-", method if method is not None else b"-", name, lineno)
        return True

    def _classify(self, key: tuple) -> list:
        """The oracle's verdict and the anomalies for one (route, action, probe, path) combination."""
        route_b, action_b, _probe_b, path_b = key
        names = self.names
        path = path_b if path_b is None or path_b is NULL_PATH else names.get(path_b)
        route = names.get(route_b)
        action = names.get(action_b) if action_b is not None else None
        anomalies: list[str] = []
        if path is NULL_PATH:
            verdict = "correct"  # free(NULL)
        elif route in INVALID_MAGIC_ROUTES:
            verdict = "invalid_magic"
            anomalies.append("invalid_magic")
        elif action == "none":
            verdict = "leaked"
            anomalies.append("leaked")
        elif path is None or action is None:
            verdict = "unjudged"
        elif action in EXPECTED_ACTIONS.get(path, ()):
            verdict = "correct"
        else:
            verdict = "misrouted"
            anomalies.append("misrouted")
        if route == "unmapped_header_fallback":
            anomalies.append("unmapped_header_fallback")
        elif route == "unknown_method":
            anomalies.append("unknown_method")
        # a block some registry should have found, or (origin unknown) a pointer on the header path
        escaped = path is not NULL_PATH and route not in REGISTRY_HIT_ROUTES and route != "null" and (
            path in REGISTERED_PATHS or (path is None and (route in POOL_HEADER_ROUTES or bool(anomalies)))
        )
        if escaped and path in REGISTERED_PATHS:
            anomalies.append("escaped")
        info = [0, verdict, tuple(anomalies), escaped, route, action, path]
        self.kinfo[key] = info
        return info

    def _free(self, seq: int | None, tid_b, ptr: int, route_b: bytes, action_b: bytes | None, probe_b: bytes,
              magic_b: bytes, method_b: bytes, name: str, lineno: int) -> None:
        ent = self.ptrs.get(ptr) if ptr else None
        path = ent[1] if ent is not None else (None if ptr else NULL_PATH)
        key = (route_b, action_b, probe_b, path)
        info = self.kinfo.get(key)
        if info is None:
            info = self._classify(key)
        info[0] += 1
        img = self.image or self._current_image(name)
        img.route_lines += 1
        if seq is not None:
            last = img.last_seq
            if last is None:
                img.first_seq = seq
            elif seq != last + 1:
                img.seq_gaps += 1
            img.last_seq = seq
        double = False
        if ent is not None:
            if ent[0] == 0 and ent[5] and self.have_allocs:
                double = True
            ent[0] = 0
            ent[6] += 1
        elif ptr and not self.have_allocs:
            # a route-only log: remember freed pointers to count frees per pointer; with alloc lines,
            # a pointer whose allocation is unknown would only push out one whose allocation is known
            self._track(ptr, [0, None, None, None, None, 0, 1, 0, name])
        # the timeline: slices of consecutive route lines, width doubling to keep TIMELINE_SLICES
        ordinal = self.route_ordinal
        self.route_ordinal = ordinal + 1
        if ordinal >= self.tl_boundary:
            self._timeline_next(ordinal)
        sl = self.tl_cur
        r = sl[3]
        r[route_b] = r.get(route_b, 0) + 1
        if seq is not None:
            if seq > sl[2]:
                sl[2] = seq
            if seq < sl[1]:
                sl[1] = seq
        if info[2] or info[3] or double or (ptr and ptr in self.anomalous):
            self._free_special(info, double, seq, tid_b, ptr, ent, magic_b, method_b, name, lineno)

    def _free_special(self, info: list, double: bool, seq, tid_b, ptr: int, ent, magic_b: bytes, method_b: bytes,
                      name: str, lineno: int) -> None:
        """The rare frees: anomalies, escapes, and every free of a pointer already followed."""
        _, verdict, kinds, escaped, route, action, path = info
        anomalies = list(kinds)
        if double:
            self.double_frees += 1
            anomalies.append("double_free")
        tid = _num(tid_b) if isinstance(tid_b, bytes) else tid_b
        magic = _num(magic_b)
        method = _num(method_b)
        if path is NULL_PATH:
            path = None
        event = PointerEvent("free", seq, tid, path, None, route, action, magic, verdict, name, lineno)
        if anomalies:
            self.tl_cur[4] += 1
            kc = self.anomaly_kinds
            for kind in anomalies:
                kc[kind] = kc.get(kind, 0) + 1
            self._note_anomaly(ptr, anomalies, event, ent)
        else:
            life = self.anomalous.get(ptr)
            if life is not None:
                self._follow(life, event)
        if route in INVALID_MAGIC_ROUTES:
            self._invalid_magic(seq, tid, ptr, magic, route, action, path, name, lineno)
        if route == "unknown_method":
            self.unknown_method_total += 1
            if len(self.unknown_methods) < self.keep:
                self.unknown_methods.append(UnknownMethodEvent(seq, ptr, method, name, lineno))
        if escaped:
            self._escape(ptr, seq, route, path, name, lineno)

    def _timeline_next(self, ordinal: int) -> None:
        slices = self.tl_slices
        if len(slices) >= TIMELINE_SLICES and ordinal // self.tl_width >= len(slices):
            merged = []
            for i in range(0, len(slices), 2):
                a = slices[i]
                if i + 1 < len(slices):
                    b = slices[i + 1]
                    a[1] = min(a[1], b[1])
                    a[2] = max(a[2], b[2])
                    for k, n in b[3].items():
                        a[3][k] = a[3].get(k, 0) + n
                    a[4] += b[4]
                merged.append(a)
            self.tl_slices = slices = merged
            self.tl_width *= 2
        idx = ordinal // self.tl_width
        if idx < len(slices):
            cur = slices[idx]
        else:
            cur = [idx * self.tl_width, _SEQ_INF, -1, {}, 0]
            slices.append(cur)
        self.tl_cur = cur
        self.tl_boundary = (idx + 1) * self.tl_width

    def _track(self, ptr: int, ent: list) -> None:
        ptrs = self.ptrs
        ptrs[ptr] = ent
        self.pointers_tracked += 1
        if len(ptrs) > self.max_pointers:
            self._evict()

    def _evict(self) -> None:
        _, old = self.ptrs.popitem(last=False)
        self.pointers_evicted += 1
        self._count_reuse(old)

    # ------------------------------------------------------------------ anomalies
    def _note_anomaly(self, ptr: int, kinds: list[str], event: PointerEvent | None, ent: list | None) -> None:
        life = self.anomalous.get(ptr)
        if life is None:
            self.anomalous_total += 1
            if len(self.anomalous) >= self.keep:
                return
            life = PointerLifecycle(ptr=ptr, anomalies=[], allocs=0, frees=0, events=[])
            if ent is not None and ent[1] is not None:
                life.allocs = ent[5]
                life.frees = ent[6] - (1 if event is not None and event.kind == "free" else 0)
                # the allocation that made the block, as far as the log says
                life.events.append(PointerEvent("alloc", _num(ent[2]), _num(ent[4]), self.names.get(ent[1]),
                                                _num(ent[3]), None, None, None, None, ent[8], ent[7]))
            self.anomalous[ptr] = life
        for kind in kinds:
            if kind not in life.anomalies:
                life.anomalies.append(kind)
        if event is not None:
            self._follow(life, event)

    def _follow(self, life: PointerLifecycle, event: PointerEvent) -> None:
        if event.kind == "alloc":
            life.allocs += 1
        elif event.kind == "free":
            life.frees += 1
        if len(life.events) < MAX_EVENTS:
            life.events.append(event)
        else:
            life.events_dropped += 1

    def get_region_sizes(self) -> dict[str, int]:
        if self.region_sizes:
            return self.region_sizes
        return {reg: 1 << min(shift, MAX_LEARNED_SHIFT) for reg, shift in self.learned_shift.items()}

    def _history(self, ptr: int) -> tuple[RegistryLine, ...]:
        """Registry changes kept for the regions that can cover ptr, oldest first."""
        out: list[RegistryLine] = []
        for reg, size in self.get_region_sizes().items():
            dq = self.regions.get(ptr & ~(size - 1))
            if dq:
                out.extend(RegistryLine(*r) for r in dq if r[4] == reg)
        out.sort(key=lambda r: r.seq)
        return tuple(out)

    def _invalid_magic(self, seq, tid, ptr, magic, route, action, path, name, lineno) -> None:
        pending = self.pending_invalid
        dump: tuple[RegistryLine, ...] = ()
        if pending is not None and (magic is None or pending[0] == magic):
            dump = tuple(RegistryLine(*r) for r in pending[3])
            if magic is None:
                magic = pending[0]
            self.pending_invalid = None
        self.invalid_magic_total += 1
        if len(self.invalid_magic) < self.keep:
            self.invalid_magic.append(InvalidMagicEvent(
                seq, tid, ptr, magic if magic is not None else 0, route, action, path, dump,
                self._history(ptr) if ptr else (), name, lineno,
            ))

    def _flush_pending(self, name: str) -> None:
        """An ERROR line no route line followed (the process died in between): keep it anyway."""
        pending = self.pending_invalid
        if pending is None:
            return
        self.pending_invalid = None
        self.invalid_magic_total += 1
        if len(self.invalid_magic) < self.keep:
            ptr = pending[4]
            self.invalid_magic.append(InvalidMagicEvent(
                None, None, ptr, pending[0], None, None, None, tuple(RegistryLine(*r) for r in pending[3]),
                self._history(ptr) if ptr else (), pending[1], pending[2],
            ))

    def _escape(self, ptr: int, seq, route: str, path, name: str, lineno: int) -> None:
        self.escapes_total += 1
        region = ptr & ~(self.get_region_sizes().get("ss", DEFAULT_REGION) - 1)
        esc = self.escapes.get(region)
        if esc is None:
            self.escaped_regions_total += 1
            if len(self.escapes) >= self.keep:
                return
            esc = self.escapes[region] = EscapedRegion(
                base=region, escapes=0, first_seq=seq, first_ptr=ptr, first_route=route, path=path, routes={},
                history=self._history(ptr), file=name, line=lineno,
            )
        esc.escapes += 1
        esc.routes[route] = esc.routes.get(route, 0) + 1

    # ------------------------------------------------------------------ alloc lines
    def _alloc_line(self, line: bytes, stats: LogFileStats, name: str, lineno: int) -> bool:
        m = ALLOC_RE.match(line)
        if m is None:
            return False
        seq_b, _fs, tid_b, ptr_b, size_b, _align, path_b = m.groups()
        stats.alloc_lines += 1
        self.have_allocs = True
        ap = self.alloc_paths_b
        ap[path_b] = ap.get(path_b, 0) + 1
        img = self.image or self._current_image(name)
        img.alloc_lines += 1
        ptr = int(ptr_b, 16)
        if not ptr:
            self.failed_allocs += 1
            return True
        # entry: [live, path, seq, size, tid, allocs, frees, line, file]; the numbers stay bytes
        # until an anomaly needs them
        ptrs = self.ptrs
        ent = ptrs.get(ptr)
        if ent is None:
            ptrs[ptr] = [1, path_b, seq_b, size_b, tid_b, 1, 0, lineno, name]
            self.pointers_tracked += 1
            if len(ptrs) > self.max_pointers:
                self._evict()
            return True
        twice = ent[0] == 1 and ent[1] is not None
        ent[0] = 1
        ent[1] = path_b
        ent[2] = seq_b
        ent[3] = size_b
        ent[4] = tid_b
        ent[5] += 1
        ent[7] = lineno
        ent[8] = name
        ptrs.move_to_end(ptr)
        if twice or ptr in self.anomalous:
            event = PointerEvent("alloc", int(seq_b), int(tid_b), self.names.get(path_b), int(size_b), None, None,
                                 None, None, name, lineno)
            if twice:
                # a block handed out while still live: the allocator gave it to two owners
                self.allocated_twice += 1
                self.anomaly_kinds["allocated_twice"] = self.anomaly_kinds.get("allocated_twice", 0) + 1
                self._note_anomaly(ptr, ["allocated_twice"], event, None)
            else:
                self._follow(self.anomalous[ptr], event)
        return True

    # ------------------------------------------------------------------- registry
    def _reg_line(self, line: bytes, stats: LogFileStats, name: str, lineno: int) -> bool:
        m = REG_RE.match(line)
        if m is None:
            return False
        seq_b, fs_b, tid_b, op_b, reg_b, base_b, addr_b, live_b = m.groups()
        stats.reg_lines += 1
        names = self.names
        seq = int(seq_b)
        rec = (seq, int(fs_b), int(tid_b), names.get(op_b), names.get(reg_b), int(base_b, 16), int(addr_b, 16),
               int(live_b))
        if self.in_dump or seq <= self.reg_seq_max:
            # the allocator's own dump of its ring (after an invalid magic), not a new request
            pending = self.pending_invalid
            if pending is not None and len(pending[3]) < MAX_DUMP:
                pending[3].append(rec)
            self._count_message("reqtrace_dump_line")
            return True
        self.reg_seq_max = seq
        op, reg = rec[3], rec[4]
        by_reg = self.registry_ops.get(reg)
        if by_reg is None:
            by_reg = self.registry_ops[reg] = {}
        by_reg[op] = by_reg.get(op, 0) + 1
        if op in CHANGE_OPS:
            base = rec[5]
            if base and self.region_sizes is None:
                shift = (base & -base).bit_length() - 1
                if shift < self.learned_shift.get(reg, 64):
                    self.learned_shift[reg] = shift
            regions = self.regions
            dq = regions.get(base)
            if dq is None:
                dq = regions[base] = deque(maxlen=REGION_HISTORY)
                if len(regions) > self.max_regions:
                    regions.popitem(last=False)
            dq.append(rec)
            if op != "register" and (op != "unregister" or rec[7] > 0):
                self.registry_events_total += 1
                if len(self.registry_events) < self.keep:
                    self.registry_events.append((RegistryLine(*rec), name, lineno))
        return True

    # ------------------------------------------------------------------- messages
    def _message_line(self, line: bytes, stats: LogFileStats, name: str, lineno: int) -> None:
        stats.message_lines += 1
        body = line[9:]
        self.in_dump = False
        if body.startswith(b"ERROR: Invalid magic"):
            m = INVALID_MAGIC_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("error_invalid_magic")
            self._flush_pending(name)
            self.pending_invalid = [int(m.group(1), 16), name, lineno, [], None]
        elif body.startswith(b"ERROR: Unknown allocation method"):
            if UNKNOWN_METHOD_RE.match(line) is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("error_unknown_method")
        elif body.startswith(b"WARNING: Skipping free"):
            m = SKIP_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("warning_skip")
            self.skip_warning_total += 1
            if len(self.skip_warnings) < self.keep:
                self.skip_warnings.append(_ptr(m.group(1)))
        elif body.startswith(b"WARNING: ignoring "):
            self._count_message("warning_knob")
            if len(self.knob_warnings) < 20:
                self.knob_warnings.append(_show(body[len(b"WARNING: ignoring "):].rstrip(b"\r")))
        elif body.startswith(b"reqtrace for "):
            m = DUMP_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("reqtrace_dump")
            self.in_dump = True
            if self.pending_invalid is not None:
                self.pending_invalid[4] = _ptr(m.group(1))
        elif body.startswith(b"reqtrace: "):
            self._count_message("reqtrace_dump")
        elif body.startswith(b"CRASH: "):
            m = CRASH_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("crash")
            sig, fault, ptr, stage, event, fseq = m.groups()
            ptr_i = int(ptr, 16)
            crash = LogCrash(sig.decode("ascii"), int(fault, 16), ptr_i, stage.decode("ascii", "replace"),
                             None if event == b"-" else int(event), None if fseq is None else int(fseq), name, lineno,
                             self._history(ptr_i) if ptr_i else ())
            self.crash_total += 1
            if len(self.crashes) < self.keep:
                self.crashes.append(crash)
            if crash.ptr and crash.stage != "idle":
                ev = PointerEvent("crash", crash.free_seq, None, None, None, None, None, None, None, name, lineno)
                self.anomaly_kinds["crash"] = self.anomaly_kinds.get("crash", 0) + 1
                self._note_anomaly(crash.ptr, ["crash"], ev, self.ptrs.get(crash.ptr))
        elif body.startswith(b"PROCESS: "):
            m = PROCESS_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("process")
            pid, ppid, start, base, mode, probe = m.groups()
            start_s = start.decode("ascii")
            if start_s == "exec":
                self._reset_space()
            self._new_image(name, int(pid), int(ppid), start_s, int(base),
                            mode.decode("ascii", "replace") if mode else None,
                            probe.decode("ascii", "replace") if probe else None)
        elif body.startswith(b"STATS: "):
            m = STATS_RE.match(line)
            if m is None:
                return self._bad_message(stats, name, lineno, line)
            self._count_message("stats")
            img = self._current_image(name)
            img.stats_allocs = int(m.group(2))
            img.stats_frees = int(m.group(3))
            img.route_lines_at_stats = img.route_lines
        elif body.startswith(b"DEBUG: "):
            self._count_message("debug")
        elif body.startswith(b"ERROR: "):
            self._count_message("error_other")
        elif body.startswith(b"WARNING: "):
            self._count_message("warning_other")
        else:
            self._count_message("other")

    def _bad_message(self, stats: LogFileStats, name: str, lineno: int, line: bytes) -> None:
        stats.message_lines -= 1
        self._malformed(stats, name, lineno, line, "a [hakmem] message in a shape hakmem-ref never prints")

    # --------------------------------------------------------------------- result
    def result(self) -> RouteLogResult:
        reuse = dict(self.reuse)
        for ent in self.ptrs.values():
            if ent[5]:
                key = _bucket(ent[5])
                reuse[key] = reuse.get(key, 0) + 1
        order = sorted(reuse, key=lambda k: int(k.split("-")[0]))
        routes: dict[str, int] = {}
        actions: dict[str, int] = {}
        probes: dict[str, int] = {}
        verdicts: dict[str, int] = {v: 0 for v in VERDICTS}
        lifecycle: dict[str, dict[str, int]] = {}
        for (_r, _a, probe_b, _p), (n, verdict, _k, _e, route, action, path) in self.kinfo.items():
            routes[route] = routes.get(route, 0) + n
            if action is not None:
                actions[action] = actions.get(action, 0) + n
            probe = self.names.get(probe_b)
            probes[probe] = probes.get(probe, 0) + n
            verdicts[verdict] += n
            row = lifecycle.setdefault("?" if path is None else ("(null)" if path is NULL_PATH else path), {})
            row[route] = row.get(route, 0) + n
        timeline = []
        for first, smin, smax, rts, anomalies in self.tl_slices:
            named: dict[str, int] = {}
            for rb, n in rts.items():
                k = self.names.get(rb)
                named[k] = named.get(k, 0) + n
            timeline.append(TimelineSlice(first_line=first, lines=sum(rts.values()),
                                          seq_min=None if smin == _SEQ_INF else smin,
                                          seq_max=None if smax < 0 else smax, routes=named, anomalies=anomalies))

        def by_count(d: dict[str, int]) -> dict[str, int]:
            return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

        return RouteLogResult(
            files=self.files,
            routes=by_count(routes),
            actions=by_count(actions),
            probes=by_count(probes),
            alloc_paths=by_count({self.names.get(k): n for k, n in self.alloc_paths_b.items()}),
            lifecycle={p: by_count(r) for p, r in sorted(lifecycle.items())},
            verdicts=verdicts,
            pointers_tracked=self.pointers_tracked,
            pointers_evicted=self.pointers_evicted,
            double_frees=self.double_frees,
            allocated_twice=self.allocated_twice,
            failed_allocs=self.failed_allocs,
            reuse={k: reuse[k] for k in order},
            anomalous_pointers=list(self.anomalous.values()),
            anomalous_pointers_total=self.anomalous_total,
            anomaly_kinds=by_count(self.anomaly_kinds),
            invalid_magic=self.invalid_magic,
            invalid_magic_total=self.invalid_magic_total,
            unknown_methods=self.unknown_methods,
            unknown_method_total=self.unknown_method_total,
            skip_warnings=self.skip_warnings,
            skip_warning_total=self.skip_warning_total,
            knob_warnings=self.knob_warnings,
            escapes=list(self.escapes.values()),
            escapes_total=self.escapes_total,
            escaped_regions_total=self.escaped_regions_total,
            registry_ops=self.registry_ops,
            registry_events=self.registry_events,
            registry_events_total=self.registry_events_total,
            crashes=self.crashes,
            crash_total=self.crash_total,
            messages=dict(sorted(self.messages.items())),
            processes=self.processes,
            processes_total=self.processes_total,
            timeline=timeline,
            timeline_width=self.tl_width,
            malformed=self.malformed,
            pattern=self.pattern_text,
            region_sizes=self.get_region_sizes(),
            caps={"max_pointers": self.max_pointers, "max_regions": self.max_regions, "keep": self.keep,
                  "events_per_pointer": MAX_EVENTS, "region_history": REGION_HISTORY, "dump_records": MAX_DUMP,
                  "max_line": MAX_LINE},
            seconds=time.perf_counter() - self.t0,
        )


def _peek(raw: IO[bytes], n: int) -> bytes:
    peek = getattr(raw, "peek", None)
    if peek is not None:
        try:
            return peek(n)[:n]
        except (OSError, ValueError):
            pass
    try:
        pos = raw.tell()
        head = raw.read(n)
        raw.seek(pos)
        return head
    except (OSError, ValueError):
        return b""


def _offset(raw: IO[bytes]) -> int | None:
    try:
        return raw.tell()
    except (OSError, ValueError):
        return None


def _is_utf8(line: bytes) -> bool:
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def analyze(paths: Iterable[str | Path], *, pattern: str | None = None, max_pointers: int = DEFAULT_MAX_POINTERS,
            max_regions: int = DEFAULT_MAX_REGIONS, keep: int = DEFAULT_KEEP,
            region_sizes: dict[str, int] | None = None) -> RouteLogResult:
    """Read every log in order and return the aggregate."""
    an = RouteLogAnalyzer(pattern=pattern, max_pointers=max_pointers, max_regions=max_regions, keep=keep,
                          region_sizes=region_sizes)
    for p in paths:
        an.feed_path(p)
    return an.result()


# --------------------------------------------------------------------- correlation
# Trace ops whose replay runs the allocator's free path once (csrc/hfreplay.c): the Nth of them
# in trace order is the free with seq N in a serial replay of the trace on a fresh allocator.
# realloc counts when its OLD is not 0 (realloc(NULL, n) allocates only).
FREE_OPS = frozenset({"free", "free_libc", "free_interior", "double_free", "free_raw"})
ALLOC_OPS = frozenset({"malloc", "calloc", "memalign", "libc_malloc", "realloc"})


def _wanted_seqs(result: RouteLogResult) -> set[int]:
    seqs: set[int] = set()
    for ev in result.invalid_magic:
        if ev.seq is not None:
            seqs.add(ev.seq)
    for life in result.anomalous_pointers:
        for e in life.events:
            if e.kind in ("free", "crash") and e.seq is not None:
                seqs.add(e.seq)
    for esc in result.escapes:
        if esc.first_seq is not None:
            seqs.add(esc.first_seq)
    for um in result.unknown_methods:
        if um.seq is not None:
            seqs.add(um.seq)
    for c in result.crashes:
        if c.free_seq:
            seqs.add(c.free_seq)
    return seqs


def correlate(result: RouteLogResult, trace_path: str | Path) -> Correlation:
    """Join the log's anomalies to the events of the trace the log's run replayed.

    Rule: the Nth trace event that runs the free path (FREE_OPS, and realloc of a non-NULL
    OLD) is the free with seq N; this holds for a serial replay (`replay --serial`, `hfreplay`
    without --threads) on a fresh allocator. A driver crash line names its event index itself.
    Checked where both sides state a fact: a free_raw's address must be the route line's ptr,
    a free of object 0 must take route null.
    """
    from forensics.trace import iter_raw, read_header
    from forensics.trace.records import OP_NAMES, OP_REALLOC

    header = read_header(trace_path)
    wanted = _wanted_seqs(result)
    crash_event = next((c.event for c in result.crashes if c.event is not None), None)
    facts: dict[int, tuple[int, str]] = {}  # seq -> (ptr, route) of the route lines shown
    for ev in result.invalid_magic:
        if ev.seq is not None and ev.ptr is not None:
            facts[ev.seq] = (ev.ptr, ev.route or "")
    for life in result.anomalous_pointers:
        for e in life.events:
            if e.kind == "free" and e.seq is not None:
                facts[e.seq] = (life.ptr, e.route or "")

    picked: dict[int, tuple] = {}  # seq -> (index, raw)
    crash_raw = None
    want_objs: dict[int, int] = {}  # obj -> event index of its free
    n_events = 0
    n_frees = 0
    tids: set[int] = set()
    for index, raw in enumerate(iter_raw(trace_path)):
        n_events += 1
        code, tid, obj, obj2 = raw[0], raw[1], raw[2], raw[3]
        op = OP_NAMES[code]
        if len(tids) < 64:
            tids.add(tid)
        if index == crash_event:
            crash_raw = (index, raw)
        if op in FREE_OPS or (code == OP_REALLOC and obj2 != 0):
            n_frees += 1
            if n_frees in wanted:
                picked[n_frees] = (index, raw)
                victim = obj2 if code == OP_REALLOC else obj
                if victim:
                    want_objs[victim] = index
    if crash_raw is not None:
        code, _, obj, obj2 = crash_raw[1][:4]
        victim = obj2 if code == OP_REALLOC else obj
        if victim:
            want_objs.setdefault(victim, crash_raw[0])

    # second pass: the allocation of each object involved, before the free that used it
    allocs: dict[int, tuple[int, tuple]] = {}
    if want_objs:
        for index, raw in enumerate(iter_raw(trace_path)):
            op = OP_NAMES[raw[0]]
            obj = raw[2]
            if op in ALLOC_OPS and obj in want_objs and index < want_objs[obj]:
                allocs[obj] = (index, raw)

    def join(seq: int, index: int, raw: tuple) -> TraceJoin:
        code, tid, obj, obj2, size, arg, _value, site = raw
        op = OP_NAMES[code]
        victim = obj2 if code == OP_REALLOC else obj
        al = allocs.get(victim)
        agrees = None
        fact = facts.get(seq)
        if fact is not None:
            ptr, route = fact
            if op == "free_raw":
                agrees = ptr == (arg & ((1 << 64) - 1))
            elif op == "free" and obj == 0:
                agrees = route == "null"
        return TraceJoin(
            seq=seq, event_index=index, op=op, tid=tid, obj=victim, site=site,
            alloc_index=al[0] if al else None, alloc_op=OP_NAMES[al[1][0]] if al else None,
            alloc_size=al[1][4] if al else None, alloc_site=al[1][7] if al else None, agrees=agrees,
        )

    joins = {seq: join(seq, index, raw) for seq, (index, raw) in sorted(picked.items())}
    checked = sum(1 for j in joins.values() if j.agrees is not None)
    disagreements = sum(1 for j in joins.values() if j.agrees is False)
    notes = []
    if len(tids) > 1:
        notes.append(f"the trace has {len(tids)}{'+' if len(tids) >= 64 else ''} threads: seq N is the Nth free only "
                     "in a serial replay (replay --serial)")
    log_frees = result.num_route_lines()
    if log_frees and log_frees != n_frees:
        notes.append(f"the trace has {n_frees:,} frees, the log {log_frees:,} route lines: not the same run, or the "
                     "log ends early (a crash)")
    missing = sorted(s for s in wanted if s not in joins)
    if missing:
        notes.append(f"{len(missing)} seq(s) beyond the trace's frees (first {missing[0]})")
    crash = join(0, crash_raw[0], crash_raw[1]) if crash_raw is not None else None
    return Correlation(
        trace=str(trace_path), trace_events=n_events, trace_frees=n_frees, trace_threads=len(tids),
        joins=joins, crash_event=crash, checked=checked, disagreements=disagreements, note="; ".join(notes),
    )
