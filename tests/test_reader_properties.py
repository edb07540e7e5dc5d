"""Properties of every reader of untrusted input (issue 11): whatever the bytes, a reader either reads or
raises BadInputError (one line); what an importer writes is always a valid trace; route logs never raise
and account for every line; the binary and text forms round-trip. The trace formats' own properties are
in test_trace_property.py; the fuzz targets under scripts/fuzz/ run the same rules for minutes."""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from forensics.errors import BadInputError
from forensics.importers import import_file
from forensics.importers.addrmap import AddressMapper
from forensics.routelog import RouteLogAnalyzer
from forensics.trace import iter_raw
from forensics.trace.records import OP_MALLOC, check_raw
from forensics.trace.validate import ObjectValidator

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ROOT = Path(__file__).resolve().parent.parent

# Numbers where readers break: the edges of every field width, and far past them.
EDGES = [0, 1, 15, 16, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -1, -(2**63)]
NUMBER = st.one_of(st.sampled_from(EDGES), st.integers(-(2**70), 2**70))
HOSTILE_TEXT = st.sampled_from(["", " ", "\x00", "\xff", "[bold]", "[/]", "(nil)", "0x", "9" * 5000, "\r", "#", "=", "@"])


def _num_text(n: int) -> str:
    return hex(n) if n >= 0 and n % 3 == 0 else str(n)


def _one_line(exc: BadInputError) -> None:
    text = str(exc)
    assert "\n" not in text and len(text) < 2000


def _import(fmt: str, data: bytes, suffix: str = ".log", lenient: bool = False) -> None:
    """Import data; on success every trace written reads back with exactly its events."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / f"in{suffix}", Path(tmp) / "out.trace"
        src.write_bytes(data)
        try:
            result = import_file(fmt, src, out, lenient=lenient, max_processes=16)
        except BadInputError as exc:
            _one_line(exc)
            assert not out.exists()
            return
        for o in result.outputs:
            assert sum(1 for _ in iter_raw(o.path)) == o.events


# ------------------------------------------------------------------------------ importers
@st.composite
def valgrind_lines(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 25))):
        pid = draw(st.sampled_from(["--1-- ", "--2-- ", "==1== ", "", "--00:00:00:01.000 1-- "]))
        n = _num_text(draw(NUMBER))
        a = hex(draw(st.sampled_from([0x1000, 0x1010, 0x2000, 0]))) if draw(st.booleans()) else _num_text(draw(NUMBER))
        call = draw(st.sampled_from([
            f"malloc({n}) = {a}", f"calloc({n},{_num_text(draw(NUMBER))}) = {a}", f"realloc({a},{n}) = {a}",
            f"free({a})", f"memalign(al {n}, size 16) = {a}", f"_Znwm({n}) = {a}", f"_ZdlPv({a})", f" = {a}",
            f"realloc({a},0)free({a})", f"malloc({n})", "Invalid free() / delete / delete[] / realloc()",
            f" Address {a} is 8 bytes inside a block of size 16 alloc'd", draw(HOSTILE_TEXT),
        ]))
        lines.append(pid + call)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@given(valgrind_lines(), st.booleans())
@SETTINGS
def test_valgrind_importer_writes_valid_traces_or_one_line_errors(data, lenient):
    _import("valgrind", data, lenient=lenient)


@st.composite
def android_lines(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 25))):
        tid = _num_text(draw(NUMBER)) if draw(st.integers(0, 9)) == 0 else str(draw(st.integers(1, 4)))
        p = hex(draw(st.sampled_from([0x1000, 0x1010, 0x2000, 0, 2**64 - 16, 2**64])))
        n = str(draw(NUMBER))
        lines.append(draw(st.sampled_from([
            f"{tid}: malloc {p} {n}", f"{tid}: calloc {p} {n} 16", f"{tid}: realloc {p} {p} {n}", f"{tid}: free {p}",
            f"{tid}: memalign {p} {n} 16", f"{tid}: thread_done 0x0", f"{tid}: malloc {p} {n} 1 2", f"{tid}: free {p} 1 2 3",
            f"{tid}: {draw(HOSTILE_TEXT)} {p}",
        ])))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@given(android_lines(), st.booleans(), st.sampled_from(["plain", "zip"]))
@SETTINGS
def test_android_importer_writes_valid_traces_or_one_line_errors(data, lenient, container):
    if container == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("record_allocs.txt", data)
        _import("android", buf.getvalue(), ".zip", lenient)
    else:
        _import("android", data, ".txt", lenient)


@st.composite
def mtrace_lines(draw) -> bytes:
    lines = ["= Start"]
    for _ in range(draw(st.integers(0, 25))):
        p = hex(draw(st.sampled_from([0x1000, 0x1010, 0x2000, 0])))
        n = _num_text(draw(NUMBER))
        site = draw(st.sampled_from(["", "@ ./prog:[0x11b0] ", f"@ ./prog:[{hex(abs(draw(NUMBER)))}] "]))
        lines.append(site + draw(st.sampled_from([f"+ {p} {n}", f"- {p}", f"< {p}", f"> {p} {n}", f"! {p} {n}", "+ (nil) 0x10",
                                                  draw(HOSTILE_TEXT)])))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@given(mtrace_lines(), st.booleans())
@SETTINGS
def test_mtrace_importer_writes_valid_traces_or_one_line_errors(data, lenient):
    _import("mtrace", data, ".txt", lenient)


ADDRS = st.sampled_from([0, 0x1000, 0x1008, 0x1010, 0x1020, 0x2000, 2**64 - 8])
SIZES = st.sampled_from([0, 1, 8, 16, 4096, 2**63, 2**64 - 1])


@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "realloc", "thread_end"]), ADDRS, ADDRS, SIZES), max_size=60))
@settings(max_examples=200, deadline=None)
def test_address_mapper_only_makes_valid_events(calls):
    """Any order of calls on any addresses (reuse, interior, double and wild frees, realloc(NULL, 0)
    returning a block, which fuzzing found) makes events the trace readers accept."""
    m = AddressMapper(freed_limit=4)
    for kind, a, b, size in calls:
        if kind == "alloc":
            m.alloc(1, OP_MALLOC, a, size, 0, 0, size)
        elif kind == "free":
            m.free(1, a, 0)
        elif kind == "realloc":
            m.realloc(1, b, a, size, 0)
        else:
            m.thread_end(1)
    v = ObjectValidator("event")
    for i, raw in enumerate(m.drain()):
        assert check_raw(raw) is None, (i, raw, check_raw(raw))
        assert v.check(raw, i) is None, (i, raw, v.check(raw, i))


# ------------------------------------------------------------------------------ route logs
@st.composite
def route_log_lines(draw) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 30))):
        n = str(draw(NUMBER)).encode()
        p = draw(st.sampled_from([b"0x10", b"0x7f0000100000", b"(nil)", b"0x" + b"f" * 40]))
        out.append(draw(st.sampled_from([
            b"[hakmem-route] seq=" + n + b" tid=1 ptr=" + p + b" route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-",
            b"[hakmem-alloc] seq=" + n + b" free_seq=0 tid=" + n + b" ptr=" + p.replace(b"(nil)", b"0x0") + b" size=" + n + b" align=0 path=tiny",
            b"[hakmem-reg] seq=" + n + b" free_seq=0 tid=1 op=register reg=ss base=" + p + b" addr=0x10 live=" + n,
            b"[hakmem] CRASH: SIGSEGV fault=0x10 ptr=" + p + b" stage=magic_read event=" + n,
            b"[hakmem] PROCESS: pid=" + n + b" ppid=1 start=main free_seq=0",
            b"[hakmem] STATS: pid=1 allocs=" + n + b" frees=1", b"[hakmem] ERROR: Invalid magic 0x" + n + b" (expected 0x1)",
            b"[hakmem-route] " + draw(HOSTILE_TEXT).encode("utf-8", "surrogateescape"), draw(st.binary(max_size=40)),
        ])))
    return out


@given(route_log_lines(), st.booleans())
@SETTINGS
def test_route_logs_never_raise_and_account_for_every_line(lines, gz):
    import gzip

    data = b"\n".join(lines) + (b"\n" if lines else b"")
    assume(b"\n" not in b"".join(lines).replace(b"\n", b""))  # one logical line each
    an = RouteLogAnalyzer(keep=4, max_pointers=8, max_regions=4)
    stats = an.feed_stream(io.BytesIO(gzip.compress(data) if gz else data), "p.log")
    r = an.result()
    assert stats.error is None
    parts = (stats.route_lines + stats.alloc_lines + stats.reg_lines + stats.message_lines + stats.other_lines
             + stats.malformed_lines + stats.pattern_lines + stats.overlong_lines)
    assert stats.lines == data.count(b"\n") == parts
    assert len(an.ptrs) <= 8 + 1 and len(r.anomalous_pointers) <= 4  # the caps hold
    json.dumps(__import__("forensics.report.routes", fromlist=["to_json"]).to_json(r))


@given(route_log_lines())
@SETTINGS
def test_the_tui_log_reader_reads_or_says_why_not(lines):
    from forensics.browse import from_log

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.log"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            cols = from_log(path)
        except BadInputError as exc:
            _one_line(exc)
            return
        for i in range(cols.n):
            cols.get_event(i)


# ------------------------------------------------------------------------------ saved results
JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=8)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=8)


@given(st.dictionaries(st.sampled_from(["signo", "stage", "event_index", "ptr", "maps", "tid", "free_seq", "si_code", "fault_address"]),
                       JSON_VALUE), st.lists(JSON_VALUE, max_size=3), JSON_VALUE, JSON_VALUE)
@SETTINGS
def test_saved_result_loader_reads_or_says_why_not(crash, anomalies, knobs, config):
    from forensics import browse, explain
    from forensics.saved import open_result

    src = zipfile.ZipFile(ROOT / "fixtures" / "bad" / "saved" / "index-out-of-range.hfres")
    doc = json.loads(src.read("result.json"))
    doc["replay"].update(crash=crash, anomalies=anomalies, knobs=knobs)
    doc["config"] = config
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.hfres"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("result.json", json.dumps(doc))
            z.writestr("events.bin", src.read("events.bin"))
            z.writestr("trace.htb", src.read("trace.htb"))
        try:
            s = open_result(path)
        except BadInputError as exc:
            _one_line(exc)
            return
        with s:  # what reads a result without a replay copes with whatever passed the check
            browse.from_saved(s)
            s.get_crash()
            explain.pick_events(s)
            for i in range(s.num_events):
                s.get_event(i)


# ------------------------------------------------------------------------------ binary traces
def _binary(records: list[tuple]) -> bytes:
    text = b"# hakmem-trace v1\n"
    ro = (64 + len(text) + 7) // 8 * 8
    objs = max([r[4] for r in records] + [r[5] for r in records] + [0])
    head = struct.pack("<8sIIQIIQII16x", b"HKTRACE\0", 1, 48, len(records), objs, len({r[3] for r in records}), ro, len(text), 0)
    return head + text + b"\0" * (ro - 64 - len(text)) + b"".join(struct.pack("<BBHIIIQqQQ", *r) for r in records)


GOOD = _binary([(1, 0, 0, 1, 1, 0, 16, 0, 0, 0), (2, 0, 0, 2, 2, 0, 8, 4, 0, 0x401000), (3, 0, 0, 1, 3, 1, 64, 0, 0, 0),
                (7, 0, 0, 2, 3, 0, 0, 8, 0, 0), (9, 0, 0, 1, 0, 0, 0, -16, 0, 0), (5, 0, 0, 2, 2, 0, 0, 0, 0, 0)])


@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4), st.integers(0, len(GOOD)))
@settings(max_examples=300, deadline=None)
def test_damaged_binary_traces_read_or_name_the_offset(patches, cut):
    """Any few bytes of a valid binary trace changed, or the file cut anywhere: read (and then the
    text round trip is exact) or a TraceFormatError naming a byte offset inside the file."""
    from forensics.trace import TraceFormatError, convert

    data = bytearray(GOOD)
    for at, value in patches:
        data[at] = value
    data = bytes(data[:cut]) if cut < len(GOOD) else bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.htb"
        src.write_bytes(data)
        try:
            events = list(iter_raw(src))
        except TraceFormatError as exc:
            # a damage that turns the first byte into '#' makes it a (bad) text trace: then a line number
            assert (exc.offset is not None and 0 <= exc.offset <= max(len(data), 64)) or (exc.offset is None and exc.line == 1 and data[:1] == b"#")
            return
        text, back = Path(tmp) / "t.trace", Path(tmp) / "b.htb"
        convert(src, text, to="text")
        convert(text, back, to="binary")
        assert list(iter_raw(text)) == events == list(iter_raw(back))
