"""minimize: the seed's SEGV and every scenario shrink to a few events that fail the same way."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import model
from forensics.cli import app
from forensics.minimize import MinimizeOptions, allocation_units, is_valid, matches, minimize, renumber
from forensics.replay import ReplayConfig, run_replay
from forensics.report import minimize as minimize_report
from forensics.theme import make_console
from forensics.trace import iter_raw, read_header
from forensics.trace.records import OP_CORRUPT, OP_DOUBLE_FREE, OP_FREE, OP_FREE_INTERIOR, OP_MALLOC, OP_REALLOC, OP_THREAD_END

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEGV = FIXTURES / "segv-registry-escape.trace"
runner = CliRunner()


@pytest.fixture(scope="module")
def segv_min(tmp_path_factory):
    """The bundled SEGV fixture minimized through the command line (--jobs 2), timed."""
    out = tmp_path_factory.mktemp("min") / "segv-min.trace"
    report = out.with_suffix(".json")
    start = time.monotonic()
    res = runner.invoke(app, ["minimize", str(SEGV), "-o", str(out), "--jobs", "2", "--json", str(report)])
    seconds = time.monotonic() - start
    assert res.exit_code == 0, res.output
    return out, json.loads(report.read_text()), seconds, res.stdout


def test_segv_fixture_minimizes_to_at_most_10_events_in_under_60_s(segv_min):
    out, doc, seconds, _ = segv_min
    assert seconds < 60
    assert doc["original_events"] == 51056
    events = list(iter_raw(out))
    assert 1 <= len(events) <= 10
    assert doc["minimal_events"] == len(events) and doc["minimal_matches"] is True
    # the crashing free is the last event and frees a block the trace allocated
    assert events[-1][0] == OP_FREE and any(e[0] == OP_MALLOC and e[2] == events[-1][2] for e in events[:-1])


def test_minimal_segv_trace_still_crashes_with_the_same_signature(segv_min):
    out, doc, _, _ = segv_min
    original = run_replay(SEGV, ReplayConfig(threads=False))
    minimal = run_replay(out, ReplayConfig(threads=False))
    assert minimal.crash is not None and original.crash is not None
    assert minimal.crash.signal_name == original.crash.signal_name == "SIGSEGV"
    assert minimal.crash.stage_name == original.crash.stage_name == "magic_read"
    assert minimal.crash_event.op == original.crash_event.op == "free"
    assert minimal.crash_event.index == minimal.num_events - 1
    assert minimal.crash.fault_address == minimal.crash.ptr - 32
    sig = doc["signature"]
    assert (sig["kind"], sig["signal"], sig["stage"], sig["op"], sig["event_index"]) == ("crash", "SIGSEGV", "magic_read", "free", original.crash_event.index)
    assert doc["minimal"]["crash"]["signal"] == "SIGSEGV" and doc["original"]["crash"]["event_index"] == original.crash_event.index


def test_minimal_trace_keeps_the_knobs_and_says_how_it_was_made(segv_min):
    out, doc, _, _ = segv_min
    header = read_header(out)
    assert header.knobs == read_header(SEGV).knobs and header.knobs["HAKMEM_SS_REG_CAPACITY"] == "4"
    made = [line for line in header.lines if line.startswith("# minimized from ")]
    assert made == [f"# minimized from segv-registry-escape.trace by hakmem-forensics minimize, signature crash: SIGSEGV in magic_read during free, {doc['replays']} replays"]
    # objects are renumbered densely, in order of allocation, and map back to the original
    events = list(iter_raw(out))
    allocated = [e[2] for e in events if e[0] == OP_MALLOC]
    assert allocated == list(range(1, len(allocated) + 1))
    original = list(iter_raw(SEGV))
    for orig_index, e in zip(doc["kept"], events):
        o = original[orig_index]
        assert (o[0], o[1], o[4]) == (e[0], e[1], e[4])  # same op, thread and size
        if e[2]:
            assert doc["objects"][str(e[2])] == o[2]
    assert doc["kept"] == sorted(doc["kept"])  # a subsequence: the order is kept


def test_minimize_report_shows_both_replays(segv_min):
    _, doc, _, stdout = segv_min
    assert f"51,056 → {doc['minimal_events']} events" in stdout
    assert "Minimal trace" in stdout and "original" in stdout and "minimal" in stdout
    assert "SIGSEGV in magic_read at #44 free obj 1068 (tiny block)" in stdout
    assert f"SIGSEGV in magic_read at #{doc['minimal_events'] - 1} free" in stdout
    assert "The minimal trace fails the same way (crash: SIGSEGV in magic_read during free)." in stdout


# scenario -> (signature, largest minimal size, the ops of the minimal trace if fixed)
SCENARIOS = {
    "registry-capacity": ("crash", 8, None),
    "registry-drop": ("crash", 4, None),
    "early-release": ("crash", 5, None),
    "wild-free": ("crash", 1, ["free_raw"]),
    "mixed-libc": ("outcome", 2, ["libc_malloc", "free_libc"]),
    "double-free": ("outcome", 3, ["malloc", "free", "double_free"]),
    "interior-free": ("outcome", 2, ["malloc", "free_interior"]),
    "header-corruption": ("outcome", 3, ["malloc", "corrupt", "free"]),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_scenario_minimizes_to_a_readable_trace(scenario, tmp_path):
    kind, largest, ops = SCENARIOS[scenario]
    src = FIXTURES / f"scenario-{scenario}.trace"
    r = minimize(src, tmp_path / "min.trace", ReplayConfig(threads=False), MinimizeOptions(signature=model.SignatureKind(kind), jobs=2))
    assert r.original_events > 3000
    assert 1 <= r.minimal_events <= largest, r.lines
    assert r.minimal_matches
    if ops is not None:
        assert [line.split()[1] for line in r.lines] == ops
    assert r.signature.kind.value == kind
    again = run_replay(tmp_path / "min.trace", ReplayConfig(threads=False), keep_events=True)
    assert matches(r.signature, again)
    if kind == "outcome":
        assert any(a.outcome is r.signature.outcome and a.owner is r.signature.owner for a in again.anomalies)


def test_header_corruption_keeps_the_outcome_on_the_same_owner_kind(tmp_path):
    r = minimize(FIXTURES / "scenario-header-corruption.trace", tmp_path / "m.trace", ReplayConfig(threads=False), MinimizeOptions(jobs=2))
    assert r.signature.kind is model.SignatureKind.OUTCOME  # the default when the replay does not crash
    assert (r.signature.outcome, r.signature.owner) == (model.Outcome.INVALID_MAGIC, model.OwnerKind.MMAP)
    assert r.lines[1] == "1 corrupt 1 -32 4 0xdeadbeef"


def test_minimize_report_lines(tmp_path):
    r = minimize(FIXTURES / "scenario-header-corruption.trace", tmp_path / "m.trace", ReplayConfig(threads=False), MinimizeOptions(jobs=2))
    buf = io.StringIO()
    minimize_report.render(r, make_console(file=buf, width=100))
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    assert "Signature  outcome: invalid_magic on a mmap block (event #789 of the original)" in lines
    assert lines[lines.index("Minimal trace") + 4 :][:3] == [
        "│ 0 │ 1 malloc 1 2100017           │     #600 │",
        "│ 1 │ 1 corrupt 1 -32 4 0xdeadbeef │     #788 │",
        "│ 2 │ 1 free 1                     │     #789 │",
    ]
    assert any(line.startswith("│ invalid_magic_tiny_recovery │        3 │       1 │") for line in lines)
    assert lines[-1] == "The minimal trace fails the same way (outcome: invalid_magic on a mmap block)."


def test_route_signature_and_event_choice(tmp_path):
    """--signature route --event N keeps the route of that free on its owner kind."""
    src = FIXTURES / "scenario-registry-capacity.trace"
    r = minimize(src, tmp_path / "m.trace", ReplayConfig(threads=False, probe="safe"), MinimizeOptions(signature=model.SignatureKind.ROUTE, event=168))
    assert r.signature.route is model.Route.INVALID_MAGIC_TINY_RECOVERY and r.signature.owner is model.OwnerKind.TINY
    assert r.minimal_events <= 8 and r.minimal_matches
    assert r.minimal.routes.get("invalid_magic_tiny_recovery", 0) >= 1
    assert read_header(tmp_path / "m.trace").knobs == read_header(src).knobs  # --probe is not written into the trace


def test_jobs_do_not_change_the_result(tmp_path):
    src = FIXTURES / "scenario-registry-drop.trace"
    one = minimize(src, tmp_path / "a.trace", ReplayConfig(threads=False), MinimizeOptions(jobs=1))
    three = minimize(src, tmp_path / "b.trace", ReplayConfig(threads=False), MinimizeOptions(jobs=3))
    assert one.kept == three.kept and one.lines == three.lines


def test_minimize_json_to_stdout_and_binary_output(tmp_path):
    out = tmp_path / "m.htb"
    res = runner.invoke(app, ["minimize", str(FIXTURES / "scenario-wild-free.trace"), "-o", str(out), "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == minimize_report.SCHEMA and doc["events"] == ["1 free_raw 0x10000"]
    assert out.read_bytes()[:8] == b"HKTRACE\0" and len(list(iter_raw(out))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--signature", "crash"], "does not crash"),
        (["--signature", "outcome"], "every free is correct"),
        (["--signature", "route", "--event", "0"], "took no route"),
        (["--signature", "outcome", "--event", "999999"], "out of range"),
    ],
)
def test_minimize_refuses_what_it_cannot_keep(args, message, tmp_path):
    res = runner.invoke(app, ["minimize", str(FIXTURES / "random-mixed.trace"), "-o", str(tmp_path / "m.trace"), *args])
    assert res.exit_code == 3, res.output
    assert message in res.output


def test_minimize_will_not_overwrite_its_input(tmp_path):
    src = tmp_path / "t.trace"
    src.write_text((FIXTURES / "scenario-wild-free.trace").read_text())
    res = runner.invoke(app, ["minimize", str(src), "-o", str(src)])
    assert res.exit_code == 3 and "is the input trace" in res.output


# ------------------------------------------------------------------ units and renumbering
def _ev(op, obj=0, obj2=0, size=0, arg=0, tid=1, value=0):
    return (op, tid, obj, obj2, size, arg, value, 0)


def test_allocation_units_keep_each_free_with_its_allocation():
    events = [
        _ev(OP_MALLOC, 1, size=16),  # 0  unit A
        _ev(OP_MALLOC, 2, size=16),  # 1  unit B
        _ev(OP_REALLOC, 3, 1, size=64),  # 2  A continues as 3 (realloc chain)
        _ev(OP_CORRUPT, 2, size=4, arg=-32, value=1),  # 3  B
        _ev(OP_FREE, 2),  # 4  B
        _ev(OP_DOUBLE_FREE, 2),  # 5  B
        _ev(OP_MALLOC, 2, size=8),  # 6  unit C: id 2 again, a new block
        _ev(OP_FREE_INTERIOR, 2, arg=4),  # 7  C
        _ev(OP_THREAD_END, tid=2),  # 8  its own unit
        _ev(OP_FREE, 3),  # 9  A
        _ev(OP_FREE, 0),  # 10 free(NULL): its own unit
    ]
    units = allocation_units(events, range(len(events)))
    assert units == [[0, 2, 9], [1, 3, 4, 5], [6, 7], [8], [10]]
    # every union of units is a valid trace
    for mask in range(1, 1 << len(units)):
        kept = sorted(i for k, u in enumerate(units) if mask >> k & 1 for i in u)
        assert is_valid(events, kept), kept
    assert not is_valid(events, [1, 3, 5])  # a double free without the free
    renamed, names = renumber(events, [1, 3, 4, 5, 6, 7, 0, 2, 9])
    assert [(e[0], e[2], e[3]) for e in renamed] == [
        (OP_MALLOC, 1, 0), (OP_CORRUPT, 1, 0), (OP_FREE, 1, 0), (OP_DOUBLE_FREE, 1, 0),
        (OP_MALLOC, 2, 0), (OP_FREE_INTERIOR, 2, 0), (OP_MALLOC, 3, 0), (OP_REALLOC, 4, 3), (OP_FREE, 4, 0),
    ]
    assert names == {1: 2, 2: 2, 3: 1, 4: 3}
    assert is_valid(renamed, range(len(renamed)))
