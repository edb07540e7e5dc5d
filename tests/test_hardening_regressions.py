"""Regression tests for the reader bugs issue 11's corpus, property tests and fuzzing found; each names what
used to happen."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics.cli import app
from forensics.errors import EXIT_BAD_INPUT
from forensics.importers.addrmap import AddressMapper
from forensics.routelog import RouteLogAnalyzer
from forensics.trace import iter_raw
from forensics.trace.records import OP_MALLOC, check_raw

runner = CliRunner()
DIGITS = "9" * 5000  # past int()'s 4300-digit limit: used to raise ValueError (exit 4, "internal error")


def _err(result) -> str:
    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output)
    assert result.stderr.count("\n") == 1 and "internal error" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("fmt, text", [
    ("valgrind", f"--1-- malloc({DIGITS}) = 0x10\n"),
    ("valgrind", f"--1-- malloc(16) = {DIGITS}\n"),
    ("mtrace", f"@ x:[0x10] + 0x10 {DIGITS}\n"),
    ("android", f"1: malloc 0x10 {DIGITS}\n"),
])
def test_thousands_of_digits_are_a_malformed_line_not_an_internal_error(tmp_path, fmt, text):
    log = tmp_path / "log.txt"
    log.write_text(text)
    assert f"{log}:1: " in _err(runner.invoke(app, ["import", fmt, str(log), "-o", str(tmp_path / "o.trace")]))


def test_route_lines_with_thousands_of_digits_are_malformed():
    an = RouteLogAnalyzer()
    stats = an.feed_stream(io.BytesIO(f"[hakmem-route] seq={DIGITS} tid=1 ptr=0x10 route=ss_hit action=tiny_free tried=ss "
                                      f"hit=ss probe=- magic=- method=-\n[hakmem] STATS: pid={DIGITS} allocs=1 frees=1\n".encode()), "x.log")
    assert stats.malformed_lines == 2 and stats.route_lines == 0


@pytest.mark.parametrize("line", ["1: malloc 0x10 -5", "1: malloc 0x10 18446744073709551616", "1: calloc 0x10 9223372036854775808 1"])
def test_importers_never_write_a_number_the_trace_format_cannot_hold(tmp_path, line):
    """These used to be written as they came: a trace that no reader (and no replay) accepts."""
    log = tmp_path / "a.txt"
    log.write_text(line + "\n")
    _err(runner.invoke(app, ["import", "android", str(log), "-o", str(tmp_path / "o.trace")]))
    assert not (tmp_path / "o.trace").exists()
    result = runner.invoke(app, ["import", "android", str(log), "-o", str(tmp_path / "o.trace"), "--lenient"])
    assert result.exit_code == 0 and list(iter_raw(tmp_path / "o.trace")) == []


def test_mtrace_error_names_the_log_not_the_trace_written(tmp_path):
    """A size past 2**64 used to be written, then blamed on the output trace when it was read back."""
    log = tmp_path / "m.txt"
    log.write_text("@ ./p:[0x11b0] + 0x10 0x1ffffffffffffffff\n")
    assert _err(runner.invoke(app, ["import", "mtrace", str(log), "-o", str(tmp_path / "o.trace")])).startswith(
        f"hakmem-forensics: error: {log}:1: size ")


def test_realloc_of_null_to_size_zero_that_returns_a_block_is_a_malloc():
    """Found by fuzzing the Android and mtrace importers: `realloc NEW 0 0` was written, which the
    format forbids (a realloc to size 0 frees OLD and has no NEW)."""
    m = AddressMapper()
    m.realloc(1, 0, 0x1000, 0, 0)
    m.free(1, 0x1000, 0)
    events = m.drain()
    assert [e[0] for e in events] == [OP_MALLOC, 5] and all(check_raw(e) is None for e in events)


def test_free_interior_offsets_stay_in_the_signed_field():
    m = AddressMapper()
    m.alloc(1, OP_MALLOC, 0x10, 2**64 - 1, 0, 0, 2**64 - 1)
    m.free(1, 0x10 + 2**63 + 8, 0)  # inside the block, but OFFSET would not fit: a wild free
    events = m.drain()
    assert events[-1][0] == 9 and all(check_raw(e) is None for e in events)


def test_diff_reads_hostile_json_reports_as_bad_input(tmp_path):
    deep, wrong = tmp_path / "deep.json", tmp_path / "wrong.json"
    deep.write_text('{"schema": "hakmem-forensics/replay/1", "x": ' + "[" * 100_000)
    wrong.write_text(json.dumps({"schema": "hakmem-forensics/replay/1", "allocator": "a", "trace": "t", "events": 1,
                                 "events_done": 1, "completed": True, "routes": [1], "outcomes": {}}))
    assert "not a JSON replay report" in _err(runner.invoke(app, ["diff", str(deep), str(wrong)]))
    assert "malformed replay report: AttributeError" in _err(runner.invoke(app, ["diff", str(wrong), str(wrong)]))


def test_an_empty_zip_is_opened_as_a_saved_result_and_said_to_be_one(tmp_path):
    """An empty zip (PK\\x05\\x06) used to be taken for a trace: 'bad magic' instead of the real reason."""
    p = tmp_path / "e.hfres"
    p.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    for cmd in (["explain", str(p)], ["tui", str(p)], ["diff", str(p), str(p)]):
        assert _err(runner.invoke(app, cmd)) == f"hakmem-forensics: error: {p}: not a saved result (missing 'result.json')\n"


def test_a_kill_is_not_counted_as_a_crash_in_the_report():
    """A SIGKILLed child's in-flight event used to count as 'crashed'; it is cut off (status killed)."""
    from forensics.model import ReplayResult
    from forensics.report import replay as replay_report

    r = ReplayResult(trace="t", allocator="a", knobs={}, threads=False, num_events=10, events_done=4, threads_used=1, frees=2,
                     allocs=2, routes={}, outcomes={"correct": 2}, crash=None, crash_event=None, hang=False, exit_status=None,
                     exit_signal=9, anomalies=[], anomaly_count=0, first_anomaly=None, check_every=0, first_check_failure=None,
                     in_flight=[4])
    doc = replay_report.to_json(r)
    assert (doc["status"], doc["partial"], doc["in_flight"], doc["completed"]) == ("killed", True, [4], False)
    lines = [t.plain for t in replay_report.ending_lines(r)]
    assert lines == ["The replay child was killed by SIGKILL with no crash record (the OOM killer, a user, a time limit outside "
                     "the toolkit): 4 of 10 events ran (cut off in #4), the result is partial."]

