"""Trace formats (docs/trace-format.md): text and binary readers/writers, round trips, errors."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from forensics.errors import EXIT_BAD_INPUT, BadInputError
from forensics.trace import (
    BinaryTraceReader,
    Event,
    TraceFormatError,
    TraceHeader,
    TraceOp,
    convert,
    iter_events,
    iter_raw,
    open_trace,
    open_writer,
    read_header,
    sniff,
    write_trace,
)
from forensics.trace.text import format_event

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GOOD_FIXTURES = sorted(FIXTURES.glob("*.trace"))
BAD_FIXTURES = sorted(p for p in (FIXTURES / "bad").iterdir() if p.is_file() and p.suffix != ".err")  # bad/<reader>/: other readers


def _doc_example() -> str:
    doc = (ROOT / "docs" / "trace-format.md").read_text()
    block = re.search(r"```\n(# hakmem-trace v1\n.*?)```", doc, re.S)
    assert block, "the text example in docs/trace-format.md"
    return block.group(1)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _error(path: Path, check: bool = True) -> TraceFormatError:
    with pytest.raises(TraceFormatError) as info:
        for _ in iter_raw(path, check=check):
            pass
    return info.value


# ------------------------------------------------------------------------ records and the C header
def test_op_codes_match_hftrace_h():
    src = (ROOT / "csrc" / "hftrace.h").read_text()
    c_ops = {m.group(1).lower(): int(m.group(2)) for m in re.finditer(r"HFT_OP_(\w+) = (\d+)", src)}
    assert c_ops == {op.value: op.code for op in TraceOp}
    assert TraceOp.from_code(12) is TraceOp.CORRUPT and TraceOp("free_raw").code == 9


def test_record_layout_matches_docs(tmp_path):
    header = TraceHeader.build({"HAKMEM_SS_REG_CAPACITY": 1})
    path = tmp_path / "one.htb"
    ev = Event(TraceOp.CORRUPT, tid=0x01020304, obj=7, size=4, arg=-32, value=0xDEADBEEF, site=0x401A2F)
    with open_writer(path, header) as w:
        w.write(Event(TraceOp.MALLOC, 0x01020304, 7, size=100))
        w.write(ev)
    data = path.read_bytes()
    text = header.text.encode()
    assert data[:8] == b"HKTRACE\0"
    assert len(text) == 50  # records at 64 + 50 rounded up to 8
    assert struct.unpack_from("<IIQIIQI", data, 8) == (1, 48, 2, 7, 1, 120, 50)
    assert data[44:64] == bytes(20)
    assert data[64:114] == text and data[114:120] == bytes(6)
    rec = data[120 + 48:]
    assert len(rec) == 48
    assert rec[0] == 12 and rec[1:4] == bytes(3)
    assert struct.unpack_from("<III", rec, 4) == (0x01020304, 7, 0)
    assert struct.unpack_from("<QqQQ", rec, 16) == (4, -32, 0xDEADBEEF, 0x401A2F)


# ------------------------------------------------------------------------------------ text reading
def test_doc_example_reads_and_round_trips(tmp_path):
    text = _doc_example()
    src = _write(tmp_path, "doc.trace", text)
    header = read_header(src)
    assert header.knobs == {"HAKMEM_SS_REG_CAPACITY": "1"}
    assert header.meta == [("generator", "random-mixed 50000 2048 1234567"), ("scenario", "registry-capacity")]
    assert header.lines[-1] == "# Anything else after '#' in the header is a comment and is kept."
    events = list(iter_events(src))
    assert events[0] == Event(TraceOp.MALLOC, 1, 1, size=128, site=0x401A2F)
    assert events[1] == Event(TraceOp.CALLOC, 1, 2, size=32, arg=4)
    assert events[3] == Event(TraceOp.REALLOC, 1, 3, 2, size=5000)
    assert events[4] == Event(TraceOp.MEMALIGN, 1, 4, size=200, arg=64)
    assert events[-1] == Event(TraceOp.THREAD_END, 2)
    convert(src, tmp_path / "doc.htb")
    convert(tmp_path / "doc.htb", tmp_path / "back.trace")
    assert (tmp_path / "back.trace").read_text() == text


def test_every_op_text_form(tmp_path):
    text = (
        "# hakmem-trace v1\n"
        "1 malloc 1 128 @0x401a2f\n"
        "1 calloc 2 4 32\n"
        "1 realloc 3 2 5000\n"
        "1 memalign 4 64 200\n"
        "1 free_interior 4 16\n"
        "1 corrupt 3 -32 4 0xdeadbeef\n"
        "1 free 4\n"
        "1 double_free 4\n"
        "1 free_raw 0xffff800000000000\n"
        "1 libc_malloc 5 100\n"
        "1 free_libc 5\n"
        "1 realloc 0 3 0\n"
        "1 realloc 6 0 10\n"
        "1 free 0\n"
        "1 thread_end\n"
    )
    src = _write(tmp_path, "ops.trace", text)
    events = list(iter_events(src))
    assert [e.op for e in events][:12] == [
        TraceOp.MALLOC, TraceOp.CALLOC, TraceOp.REALLOC, TraceOp.MEMALIGN, TraceOp.FREE_INTERIOR, TraceOp.CORRUPT,
        TraceOp.FREE, TraceOp.DOUBLE_FREE, TraceOp.FREE_RAW, TraceOp.LIBC_MALLOC, TraceOp.FREE_LIBC, TraceOp.REALLOC,
    ]
    raw_free = events[8]
    assert raw_free.arg == 0xFFFF800000000000 - (1 << 64) and raw_free.address == 0xFFFF800000000000
    assert events[5] == Event(TraceOp.CORRUPT, 1, 3, size=4, arg=-32, value=0xDEADBEEF)
    assert "".join(format_event(e.raw) + "\n" for e in events) == text.split("\n", 1)[1]
    convert(src, tmp_path / "ops.htb")
    assert [e for e in iter_events(tmp_path / "ops.htb")] == events
    convert(tmp_path / "ops.htb", tmp_path / "ops2.trace")
    assert (tmp_path / "ops2.trace").read_text() == text


def test_non_canonical_text_reads_and_becomes_canonical(tmp_path):
    text = (
        "# hakmem-trace v1\r\n"
        "# knob HAKMEM_MODE=direct\r\n"
        "\r\n"
        "# knob HAKMEM_IGNORED=1   (after the header: a comment)\n"
        "  1\tmalloc   0x10  0x20 \n"
        "0x2 malloc 2 0 @0x0\n"
        "   # indented comment\n"
        "1 corrupt 16 -0x20 8 18446744073709551615 @255\n"
        "2 free_raw 4096\n"
        "1 free 16"  # no final newline
    )
    src = _write(tmp_path, "messy.trace", text)
    header = read_header(src)
    assert header.lines == ("# hakmem-trace v1", "# knob HAKMEM_MODE=direct") and header.knobs == {"HAKMEM_MODE": "direct"}
    convert(src, tmp_path / "m.htb")
    convert(tmp_path / "m.htb", tmp_path / "m.trace")
    assert (tmp_path / "m.trace").read_text() == (
        "# hakmem-trace v1\n# knob HAKMEM_MODE=direct\n"
        "1 malloc 16 32\n2 malloc 2 0\n1 corrupt 16 -32 8 0xffffffffffffffff @0xff\n2 free_raw 0x1000\n1 free 16\n"
    )


def test_header_only_trace(tmp_path):
    src = _write(tmp_path, "empty.trace", "# hakmem-trace v1\n# meta k=v = w\n")
    assert list(iter_events(src)) == []
    assert read_header(src).meta == [("k", "v = w")]
    result = convert(src, tmp_path / "e.htb")
    assert result.stats.num_events == 0 and result.stats.num_threads == 0
    with BinaryTraceReader(tmp_path / "e.htb") as r:
        assert r.num_events == 0 and list(r.iter_raw()) == []


def test_reading_streams(tmp_path):
    # The events before a bad line come out before the error: nothing is read ahead.
    lines = "".join(f"1 malloc {i} 16\n" for i in range(1, 1001))
    src = _write(tmp_path, "s.trace", "# hakmem-trace v1\n" + lines + "1 mallok 2000 16\n")
    it = iter_events(src)
    assert next(it) == Event(TraceOp.MALLOC, 1, 1, size=16)
    got = 1
    with pytest.raises(TraceFormatError, match=r"s\.trace:1002: unknown op 'mallok'"):
        for _ in it:
            got += 1
    assert got == 1000


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fixture", GOOD_FIXTURES, ids=lambda p: p.name)
def test_fixture_round_trip_is_byte_identical(fixture, tmp_path):
    binary, back = tmp_path / "t.htb", tmp_path / "t.trace"
    to_bin = convert(fixture, binary)
    assert (to_bin.src_format, to_bin.dst_format) == ("text", "binary")
    to_text = convert(binary, back)
    assert (to_text.src_format, to_text.dst_format) == ("binary", "text")
    assert back.read_bytes() == fixture.read_bytes()
    again = tmp_path / "again.htb"
    convert(back, again)
    assert again.read_bytes() == binary.read_bytes()
    with BinaryTraceReader(binary) as r:
        assert r.header == read_header(fixture)
        assert r.num_events == to_bin.stats.num_events == sum(1 for _ in iter_raw(fixture))
        assert r.records_offset % 8 == 0
        assert (r.num_objects, r.num_threads) == (to_bin.stats.num_objects, to_bin.stats.num_threads)


def test_binary_and_text_give_the_same_events(tmp_path):
    fixture = FIXTURES / "scenario-header-corruption.trace"
    convert(fixture, tmp_path / "x.htb")
    assert list(iter_events(tmp_path / "x.htb")) == list(iter_events(fixture))


def test_convert_same_encoding_is_a_canonical_rewrite(tmp_path):
    src = _write(tmp_path, "a.trace", "# hakmem-trace v1\n\n1   malloc 1 0x10\n1 free 1\n")
    result = convert(src, tmp_path / "b.trace", to="text")
    assert result.dst_format == "text"
    assert (tmp_path / "b.trace").read_text() == "# hakmem-trace v1\n1 malloc 1 16\n1 free 1\n"


def test_convert_refuses_to_overwrite_its_input(tmp_path):
    src = _write(tmp_path, "a.trace", "# hakmem-trace v1\n1 malloc 1 16\n")
    with pytest.raises(BadInputError, match="is the input file"):
        convert(src, src, to="text")
    assert src.read_text() == "# hakmem-trace v1\n1 malloc 1 16\n"


def test_failed_convert_leaves_no_output(tmp_path):
    out = tmp_path / "out.htb"
    with pytest.raises(TraceFormatError):
        convert(FIXTURES / "bad" / "never-allocated.trace", out)
    assert not out.exists()


def test_no_check_converts_semantically_bad_traces(tmp_path):
    out = tmp_path / "out.htb"
    convert(FIXTURES / "bad" / "never-allocated.trace", out, check=False)
    assert [e.op for e in iter_events(out, check=False)] == [TraceOp.MALLOC, TraceOp.FREE, TraceOp.FREE]
    with pytest.raises(TraceFormatError, match=r"offset 208: event 2: free of object 7, which was never allocated"):
        list(iter_events(out))


# ------------------------------------------------------------------------------------ writers
def test_writer_checks_typed_events(tmp_path):
    path = tmp_path / "w.trace"
    with pytest.raises(ValueError, match="malloc does not use arg"):
        with open_writer(path, TraceHeader()) as w:
            w.write(Event(TraceOp.MALLOC, 1, 1, size=8, arg=3))
    assert not path.exists()  # a failed write removes the partial file
    with pytest.raises(ValueError, match="corrupt LEN 9 out of range"):
        with open_writer(tmp_path / "w.htb", TraceHeader()) as w:
            w.write(Event(TraceOp.CORRUPT, 1, 1, size=9, arg=0, value=1))
    assert not (tmp_path / "w.htb").exists()


def test_writer_stats_and_header_counts(tmp_path):
    events = [Event(TraceOp.MALLOC, 5, 9, size=1), Event(TraceOp.REALLOC, 6, 3, 9, size=2), Event(TraceOp.THREAD_END, 7)]
    stats = write_trace(tmp_path / "s.htb", TraceHeader(), events)
    assert (stats.num_events, stats.num_objects, stats.num_threads) == (3, 9, 3)
    assert stats.op_counts == {TraceOp.MALLOC: 1, TraceOp.REALLOC: 1, TraceOp.THREAD_END: 1}
    head = (tmp_path / "s.htb").read_bytes()[:32]
    assert struct.unpack_from("<QII", head, 16) == (3, 9, 3)
    assert stats.describe(TraceHeader.build({"A": 1})) == "3 events, 9 objects, 3 threads, knobs A=1"


def test_sniff(tmp_path):
    assert sniff(FIXTURES / "random-mixed.trace") == "text"
    assert sniff(FIXTURES / "bad" / "truncated.htb") == "binary"
    assert sniff(_write(tmp_path, "x.htb", "nonsense")) == "binary"
    assert sniff(_write(tmp_path, "x.trace", "nonsense")) == "text"
    assert sniff(_write(tmp_path, "x.bin", b"\x7fELF\x02\x01")) == "binary"


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("bad", BAD_FIXTURES, ids=lambda p: p.name)
def test_bad_fixture_gives_its_one_line_error(bad, monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = (bad.parent / f"{bad.name}.err").read_text().rstrip("\n")
    assert "\n" not in expected
    err = _error(Path("fixtures/bad") / bad.name)
    assert str(err) == expected
    assert err.exit_code == EXIT_BAD_INPUT
    assert (err.line is None) != (err.offset is None)


HEAD = "# hakmem-trace v1\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("1 malloc 1\n", ":2: malloc takes 2 fields (OBJ SIZE), got 1"),
        ("1 malloc 1 2 3\n", ":2: malloc takes 2 fields (OBJ SIZE), got 3"),
        ("1 free\n", ":2: free takes 1 field (OBJ), got 0"),
        ("1 thread_end 5\n", ":2: thread_end takes no fields, got 1"),
        ("1 corrupt 1 0 4\n", ":2: corrupt takes 4 fields (OBJ OFFSET LEN VALUE), got 3"),
        ("1\n", ":2: missing op after the thread id"),
        ("malloc 1 16\n", ":2: bad TID 'malloc': not a number"),
        ("1 MALLOC 1 16\n", ":2: unknown op 'MALLOC'"),
        ("1 malloc 0 16\n", ":2: OBJ must be positive (object ids start at 1)"),
        ("1 malloc 4294967296 16\n", ":2: OBJ 4294967296 is out of range (max 4294967295)"),
        ("4294967296 malloc 1 16\n", ":2: TID 4294967296 is out of range (max 4294967295)"),
        ("-1 malloc 1 16\n", ":2: TID -1 is negative"),
        ("1 malloc 1 18446744073709551616\n", ":2: SIZE 18446744073709551616 is out of range (max 18446744073709551615)"),
        ("1 malloc 1 " + "9" * 30 + "\n", ":2: SIZE '" + "9" * 30 + "' is out of range"),
        ("1 malloc 1 1_000\n", ":2: bad SIZE '1_000': not a number"),
        ("1 malloc 1 +5\n", ":2: bad SIZE '+5': not a number"),
        ("1 malloc 1 0X10\n", ":2: bad SIZE '0X10': not a number"),
        ("1 calloc 1 -2 8\n", ":2: NMEMB -2 is negative"),
        ("1 memalign 1 -64 8\n", ":2: ALIGN -64 is negative"),
        ("1 malloc 1 8 @xyz\n", ":2: bad SITE 'xyz': not a number"),
        ("1 malloc 1 8\n1 corrupt 1 0 9 1\n", ":3: LEN 9 is out of range 1..8"),
        ("1 malloc 1 8\n1 corrupt 1 0 0 0\n", ":3: LEN 0 is out of range 1..8"),
        ("1 malloc 1 8\n1 corrupt 1 0 1 0x100\n", ":3: VALUE 0x100 does not fit in LEN 1 byte"),
        ("1 malloc 1 8\n1 free_interior 1 9223372036854775808\n",
         ":3: OFFSET 9223372036854775808 is out of range (max 9223372036854775807)"),
        ("1 free_raw 0x10000000000000000\n", ":2: ADDR 18446744073709551616 is out of range (max 18446744073709551615)"),
        ("1 malloc 1 8\n1 realloc 2 1 0\n", ":3: realloc to SIZE 0 frees OLD, so NEW must be 0"),
        ("1 realloc 0 0 5\n", ":2: realloc names neither a new nor an old object (NEW and OLD are 0)"),
        ("1 realloc 0 0 0\n", ":2: realloc names neither a new nor an old object (NEW and OLD are 0)"),
        ("1 malloc 1 8\n1 realloc 0 1 5\n", ":3: realloc to a non-zero SIZE needs a positive NEW id"),
        (b"1 malloc 1 8\xff\n", ":2: bad SIZE '8\\xff': not a number"),
        ("1 malloc 1 8\x01\n", ":2: bad SIZE '8\\x01': not a number"),
        ("1 mal'loc 1 8\n", ":2: unknown op 'mal'loc'"),
        ("1 malloc 1 8 # trailing comment\n", ":2: malloc takes 2 fields (OBJ SIZE), got 5"),
    ],
)
def test_text_syntax_errors(tmp_path, body, message):
    path = _write(tmp_path, "t.trace", HEAD.encode() + (body if isinstance(body, bytes) else body.encode()))
    assert str(_error(path)) == f"{path}{message}"


@pytest.mark.parametrize(
    "body, message",
    [
        ("1 free 3\n", ":2: free of object 3, which was never allocated"),
        ("1 malloc 3 8\n1 malloc 3 8\n", ":3: malloc of object 3, which is already live (allocated at line 2)"),
        ("1 malloc 3 8\n1 free 3\n1 corrupt 3 0 1 1\n", ":4: corrupt of object 3, which is not live (freed at line 3)"),
        ("1 free_interior 3 16\n", ":2: free_interior of object 3, which was never allocated"),
        ("1 double_free 3\n", ":2: double_free of object 3, which was never allocated"),
        ("1 free_libc 3\n", ":2: free_libc of object 3, which was never allocated"),
        ("1 malloc 3 8\n1 free_libc 3\n", ":3: free_libc of object 3, which is not a libc_malloc object (allocated at line 2)"),
        ("1 libc_malloc 3 8\n1 realloc 4 3 9\n1 free_libc 4\n",
         ":4: free_libc of object 4, which is not a libc_malloc object (allocated at line 3)"),
        ("1 libc_malloc 3 8\n1 free 3\n1 free_libc 3\n", ":4: free_libc of object 3, which is not live (freed at line 3)"),
        ("1 realloc 2 1 8\n", ":2: realloc of object 1, which was never allocated"),
        ("1 malloc 1 8\n1 malloc 2 8\n1 realloc 2 1 8\n", ":4: realloc to object 2, which is already live (allocated at line 3)"),
    ],
)
def test_object_semantics_errors(tmp_path, body, message):
    path = _write(tmp_path, "o.trace", HEAD + body)
    assert str(_error(path)) == f"{path}{message}"
    assert list(iter_raw(path, check=False))  # the syntax alone is fine


def test_object_ids_may_be_reused_and_realloc_in_place(tmp_path):
    body = "1 malloc 1 8\n2 free 1\n3 malloc 1 16\n1 realloc 1 1 32\n1 free 1\n1 double_free 1\n1 malloc 1 4\n1 free 1\n"
    assert len(list(iter_raw(_write(tmp_path, "r.trace", HEAD + body)))) == 8


def test_libc_objects_are_live_for_free_and_realloc(tmp_path):
    # As in the native replay's validation: plain free/realloc of a libc_malloc object is the mixed-pointer case.
    body = "1 libc_malloc 1 8\n1 free 1\n1 libc_malloc 2 8\n1 realloc 3 2 16\n1 free 3\n1 libc_malloc 4 8\n1 free_libc 4\n"
    assert len(list(iter_raw(_write(tmp_path, "l.trace", HEAD + body)))) == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("", ":1: empty file: the first line must be '# hakmem-trace v1'"),
        ("\n1 malloc 1 8\n", ":1: first line must be '# hakmem-trace v1', got an empty line"),
        ("# hakmem-trace v2\n", ":1: unsupported trace version 'v2' (this reader knows v1)"),
        ("1 malloc 1 8\n", ":1: first line must be '# hakmem-trace v1', got '1 malloc 1 8'"),
        ("# hakmem-trace v1 \n", ":1: unsupported trace version 'v1 ' (this reader knows v1)"),
        (HEAD + "# knob HAKMEM_MODE\n", ":2: malformed knob line '# knob HAKMEM_MODE': expected '# knob NAME=VALUE'"),
        (HEAD + "# knob A=b c\n", ":2: malformed knob line '# knob A=b c': expected '# knob NAME=VALUE'"),
        (HEAD + "# meta novalue\n", ":2: malformed meta line '# meta novalue': expected '# meta KEY=VALUE'"),
        (HEAD + "# caf\xe9\n", ":2: header line is not valid UTF-8"),
        (HEAD + "1 malloc 1 " + "1" * 70000 + "\n", ":2: line longer than 65536 bytes"),
    ],
)
def test_text_header_errors(tmp_path, text, message):
    path = _write(tmp_path, "h.trace", text.encode("latin-1"))
    assert str(_error(path)) == f"{path}{message}"


def _valid_binary(tmp_path: Path) -> bytes:
    src = _write(tmp_path, "v.trace", HEAD + "1 malloc 1 16\n2 malloc 2 32\n1 free 1\n")
    convert(src, tmp_path / "v.htb")
    return (tmp_path / "v.htb").read_bytes()  # header text 18 bytes: records at 88, 136, 184


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    "patch, message",
    [
        (lambda d: d[:5], ": offset 5: truncated: the file is 5 bytes, shorter than the 64-byte header"),
        (lambda d: d[:40], ": offset 40: truncated: the file is 40 bytes, shorter than the 64-byte header"),
        (lambda d: d[:70], ": offset 70: truncated: the file is 70 bytes, the header text ends at 82"),
        (lambda d: d + b"\0" * 8, ": offset 232: 8 bytes after the last of the 3 events the header claims"),
        (lambda d: _patched(d, 12, "<I", 40), ": offset 12: record size 40 (expected 48)"),
        (lambda d: _patched(d, 48, "<I", 1), ": offset 44: reserved header bytes are not zero"),
        (lambda d: _patched(d, 32, "<Q", 84), ": offset 32: records offset 84 is not a multiple of 8 at or after the header text's end (82)"),
        (lambda d: _patched(d, 40, "<I", 1 << 30), ": offset 40: header text length 1073741824 is more than 16777216"),
        (lambda d: _patched(d, 28, "<I", 3), ": offset 28: the header claims 3 threads, the events use 2"),
        (lambda d: _patched(d, 64, "<B", ord("X")), ": offset 64: header line 1: first line must be '# hakmem-trace v1', got 'X hakmem-trace v1'"),
        (lambda d: _patched(d, 81, "<B", ord("x")), ": offset 82: header text does not end in a newline"),
        (lambda d: _patched(d, 70, "<B", 0xFF), ": offset 70: header text is not valid UTF-8"),
        (lambda d: _patched(d, 84, "<B", 1), ": offset 82: padding after the header text is not zero"),
        (lambda d: _patched(d, 136 + 1, "<B", 2), ": offset 137: event 1: flags 0x2 are not zero"),
        (lambda d: _patched(d, 136 + 2, "<H", 2), ": offset 138: event 1: reserved bytes are not zero"),
        (lambda d: _patched(d, 136, "<B", 0), ": offset 136: unknown op 0 in event 1"),
        (lambda d: _patched(d, 136 + 24, "<q", 5), ": offset 136: event 1: malloc does not use arg but it is 5"),
        (lambda d: _patched(d, 184 + 16, "<Q", 5), ": offset 184: event 2: free does not use size but it is 5"),
        (lambda d: _patched(d, 136 + 8, "<I", 0), ": offset 136: event 1: malloc needs a positive object id"),
    ],
)
def test_binary_errors(tmp_path, patch, message):
    data = _valid_binary(tmp_path)
    path = _write(tmp_path, "b.htb", patch(data))
    assert str(_error(path)) == f"{path}{message}"


def test_binary_record_id_above_count_and_semantics(tmp_path):
    data = _valid_binary(tmp_path)
    path = _write(tmp_path, "b.htb", _patched(data, 184 + 8, "<I", 3))
    assert str(_error(path)) == f"{path}: offset 192: event 2: object id 3 is above the header's object count 2"
    path = _write(tmp_path, "c.htb", _patched(_patched(data, 184 + 8, "<I", 2), 136 + 8, "<I", 1))
    assert str(_error(path)) == f"{path}: offset 136: event 1: malloc of object 1, which is already live (allocated at event 0)"


def test_missing_and_unreadable_inputs(tmp_path):
    with pytest.raises(BadInputError, match=r"nope\.trace: no such file"):
        read_header(tmp_path / "nope.trace")
    with pytest.raises(BadInputError, match="is a directory"):
        read_header(tmp_path)


def test_open_trace_reader_attributes(tmp_path):
    convert(FIXTURES / "larson-tiny.trace", tmp_path / "l.htb")
    with open_trace(tmp_path / "l.htb") as r:
        assert r.format == "binary" and r.num_threads == 4 and r.header.get_meta("generator") == "larson 1 8 128 256 2 12345 4"
    with open_trace(FIXTURES / "larson-tiny.trace") as r:
        assert r.format == "text"


def test_binary_reader_windows(tmp_path, monkeypatch):
    # Records are mapped in window by window; the window edges must not show.
    from forensics.trace import binary

    convert(FIXTURES / "scenario-wild-free.trace", tmp_path / "w.htb")
    whole = list(iter_raw(tmp_path / "w.htb"))
    monkeypatch.setattr(binary, "_WINDOW_BYTES", 48 * 3)
    assert list(iter_raw(tmp_path / "w.htb")) == whole
    data = bytearray((tmp_path / "w.htb").read_bytes())
    with BinaryTraceReader(tmp_path / "w.htb") as r:
        at = r.records_offset + 48 * 1000
    data[at] = 99
    (tmp_path / "x.htb").write_bytes(bytes(data))
    assert str(_error(tmp_path / "x.htb")) == f"{tmp_path / 'x.htb'}: offset {at}: unknown op 99 in event 1000"
