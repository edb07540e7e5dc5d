"""Properties of the trace formats: any valid event sequence round-trips; readers only ever raise TraceFormatError."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.trace import Event, TraceFormatError, TraceHeader, TraceOp, convert, iter_events, iter_raw, write_trace
from forensics.trace.text import _Bad, format_event, parse_event_line

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
SITE = st.one_of(st.just(0), U64)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_events(draw) -> list[Event]:
    """A sequence that obeys the object rules: simulate the live set while drawing ops."""
    live: dict[int, bool] = {}  # id -> is libc
    freed: set[int] = set()
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 40))):
        tid = draw(st.one_of(st.integers(1, 4), U32))
        site = draw(SITE)
        hak = [o for o, libc in live.items() if not libc]
        libc = [o for o, is_libc in live.items() if is_libc]
        choices = ["malloc", "calloc", "memalign", "libc_malloc", "free_null", "free_raw", "thread_end", "realloc_new"]
        if hak:
            choices += ["free", "free_interior", "corrupt", "realloc", "realloc_zero"]
        if libc:
            choices += ["free_libc", "corrupt_libc"]
        if freed:
            choices += ["double_free"]
        kind = draw(st.sampled_from(choices))
        new_id = draw(st.integers(1, 2**32 - 1).filter(lambda i: i not in live))
        if kind in ("malloc", "calloc", "memalign", "libc_malloc"):
            op = TraceOp(kind)
            arg = draw(st.integers(0, 2**63 - 1)) if kind in ("calloc", "memalign") else 0
            events.append(Event(op, tid, new_id, size=draw(U64), arg=arg, site=site))
            live[new_id] = kind == "libc_malloc"
            freed.discard(new_id)
        elif kind == "free_null":
            events.append(Event(TraceOp.FREE, tid, 0, site=site))
        elif kind == "free_raw":
            events.append(Event(TraceOp.FREE_RAW, tid, arg=draw(I64), site=site))
        elif kind == "thread_end":
            events.append(Event(TraceOp.THREAD_END, tid, site=site))
        elif kind == "realloc_new":
            events.append(Event(TraceOp.REALLOC, tid, new_id, 0, size=draw(st.integers(1, 2**64 - 1)), site=site))
            live[new_id] = False
            freed.discard(new_id)
        elif kind in ("free", "free_interior", "corrupt", "realloc", "realloc_zero"):
            # plain free and realloc also take libc_malloc objects (the mixed-pointer case)
            obj = draw(st.sampled_from(sorted(live) if kind in ("free", "realloc", "realloc_zero") else sorted(hak)))
            if kind == "free":
                events.append(Event(TraceOp.FREE, tid, obj, site=site))
                del live[obj]
                freed.add(obj)
            elif kind == "free_interior":
                events.append(Event(TraceOp.FREE_INTERIOR, tid, obj, arg=draw(I64), site=site))
            elif kind == "corrupt":
                length = draw(st.integers(1, 8))
                value = draw(st.integers(0, 2 ** (8 * length) - 1))
                events.append(Event(TraceOp.CORRUPT, tid, obj, size=length, arg=draw(I64), value=value, site=site))
            elif kind == "realloc":
                new = draw(st.sampled_from([obj, new_id]))
                events.append(Event(TraceOp.REALLOC, tid, new, obj, size=draw(st.integers(1, 2**64 - 1)), site=site))
                del live[obj]
                freed.add(obj)
                live[new] = False
                freed.discard(new)
            else:
                events.append(Event(TraceOp.REALLOC, tid, 0, obj, size=0, site=site))
                del live[obj]
                freed.add(obj)
        elif kind == "free_libc":
            obj = draw(st.sampled_from(sorted(libc)))
            events.append(Event(TraceOp.FREE_LIBC, tid, obj, site=site))
            del live[obj]
            freed.add(obj)
        elif kind == "corrupt_libc":
            obj = draw(st.sampled_from(sorted(libc)))
            events.append(Event(TraceOp.CORRUPT, tid, obj, size=1, arg=-1, value=0xAB, site=site))
        else:
            events.append(Event(TraceOp.DOUBLE_FREE, tid, draw(st.sampled_from(sorted(freed))), site=site))
    return events


HEADERS = st.builds(
    TraceHeader.build,
    st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True), st.from_regex(r"[!-~]{1,8}", fullmatch=True),
                    max_size=3),
    st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.text(st.characters(blacklist_categories=["Cc", "Cs"]),
                                                                              max_size=20)), max_size=2),
    st.lists(st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=20), max_size=2),
)


@SETTINGS
@given(header=HEADERS, events=valid_events())
def test_valid_sequences_round_trip(header, events):
    with tempfile.TemporaryDirectory() as d:
        text, binary, back = Path(d) / "a.trace", Path(d) / "a.htb", Path(d) / "b.trace"
        stats = write_trace(text, header, events)
        assert stats.num_events == len(events)
        assert list(iter_events(text)) == events
        convert(text, binary)
        assert list(iter_events(binary)) == events
        convert(binary, back)
        assert back.read_bytes() == text.read_bytes()
        write_trace(Path(d) / "direct.htb", header, events)
        assert (Path(d) / "direct.htb").read_bytes() == binary.read_bytes()


@SETTINGS
@given(events=valid_events())
def test_format_then_parse_is_identity(events):
    for e in events:
        assert parse_event_line(format_event(e.raw).encode().split()) == e.raw


TOKENS = st.one_of(
    st.sampled_from([op.value for op in TraceOp] + ["mallok", "#", "@", "@0x", "0x", "-", "-0x1", "@0x10", "1", "0", "-5"]),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 2**70).map(hex),
    st.text(max_size=6),
)
LINES = st.lists(TOKENS, max_size=7).map(" ".join)


@SETTINGS
@given(lines=st.lists(LINES, max_size=12), header=st.sampled_from(["# hakmem-trace v1\n", "", "# hakmem-trace v1\n# knob X=1\n"]),
       junk=st.binary(max_size=20))
def test_text_reader_raises_only_trace_format_error(lines, header, junk):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.trace"
        path.write_bytes(header.encode() + "\n".join(lines).encode("utf-8", "surrogatepass") + junk)
        for check in (True, False):
            try:
                for _ in iter_raw(path, check=check):
                    pass
            except TraceFormatError as exc:
                assert "\n" not in str(exc) and str(exc).startswith(f"{path}:")


@SETTINGS
@given(tokens=st.lists(TOKENS.map(lambda t: t.encode("utf-8", "surrogatepass")), min_size=1, max_size=7))
def test_line_parser_raises_only_its_reason(tokens):
    parts = b" ".join(tokens).split()
    if not parts:
        return
    try:
        raw = parse_event_line(parts)
    except _Bad:
        return
    assert parse_event_line(format_event(raw).encode().split()) == raw


_VALID_BINARY: bytes | None = None


def _valid_binary() -> bytes:
    global _VALID_BINARY
    if _VALID_BINARY is None:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "v.trace"
            src.write_text("# hakmem-trace v1\n# knob K=1\n1 malloc 1 16\n2 calloc 2 3 8\n1 corrupt 2 -8 2 0xbeef\n"
                           "1 free 1\n2 free_raw 0x10000\n2 thread_end\n")
            convert(src, Path(d) / "v.htb")
            _VALID_BINARY = (Path(d) / "v.htb").read_bytes()
    return _VALID_BINARY


@SETTINGS
@given(data=st.data())
def test_binary_reader_raises_only_trace_format_error(data):
    blob = bytearray(_valid_binary())
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["byte", "u32", "u64", "cut", "extend"]))
        if kind == "cut":
            del blob[data.draw(st.integers(0, len(blob))):]
        elif kind == "extend":
            blob += data.draw(st.binary(min_size=1, max_size=64))
        elif len(blob) >= 8:
            at = data.draw(st.integers(0, len(blob) - 8))
            if kind == "byte":
                blob[at] = data.draw(st.integers(0, 255))
            elif kind == "u32":
                struct.pack_into("<I", blob, at, data.draw(st.integers(0, 2**32 - 1)))
            else:
                struct.pack_into("<Q", blob, at, data.draw(st.integers(0, 2**64 - 1)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.htb"
        path.write_bytes(bytes(blob))
        try:
            for _ in iter_raw(path):
                pass
        except TraceFormatError as exc:
            assert "\n" not in str(exc) and (exc.offset is not None or exc.line is not None)
