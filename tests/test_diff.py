"""diff: two replays side by side, and the first event they decided differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import model
from forensics.cli import app
from forensics.diff import compare_records, first_mismatch
from forensics.minimize import decode_event, probe_kind_of
from forensics.replay import EVENT_SIZE, ReplayConfig, run_replay
from forensics.report import diff as diff_report
from forensics.trace import iter_raw

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEGV = FIXTURES / "segv-registry-escape.trace"
runner = CliRunner()


def _json(args: list[str]) -> dict:
    res = runner.invoke(app, [*args, "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_off_vs_safe_names_the_crashing_event_as_the_first_divergence():
    doc = _json(["diff", str(SEGV), "--probe", "off", "--probe", "safe"])
    assert doc["schema"] == diff_report.SCHEMA and doc["exact"] is True
    crash = doc["a"]["crash"]
    assert crash["signal"] == "SIGSEGV" and doc["b"]["crash"] is None and doc["b"]["completed"]
    d = doc["divergence"]
    assert d["event_index"] == crash["event_index"] == 44
    assert d["what"] == ["crash"] and d["a_crashed"] and not d["b_crashed"]
    assert d["a"]["status"] == "started" and d["a"]["route"] is None
    assert d["b"]["route"] == "unmapped_header_fallback" and d["b"]["outcome"] == "correct" and d["b"]["probe"] == "unreadable"
    assert d["a"]["ptr"] == d["b"]["ptr"] == crash["ptr"]
    assert doc["events_compared"] == 44
    assert (doc["a"]["label"], doc["b"]["label"]) == ("probe=off", "probe=safe")
    routes = {r["route"]: r for r in doc["routes"]}
    assert routes["unmapped_header_fallback"]["a"] == 0 and routes["unmapped_header_fallback"]["delta"] > 0
    outcomes = {o["outcome"]: o for o in doc["outcomes"]}
    assert outcomes["crashed"] == {"outcome": "crashed", "a": 1, "b": 0, "delta": -1}


def test_seed_mincore_vs_mincore_names_the_first_free_whose_route_changed():
    doc = _json(["diff", str(SEGV), "--probe", "seed-mincore", "--probe", "mincore"])
    d = doc["divergence"]
    i = d["event_index"]
    assert d["a"]["op"] == "free" and "route" in d["what"]
    assert d["a"]["route"] != d["b"]["route"]  # a real difference
    # checked independently: the events before agree, and no free changed route before i
    ra = run_replay(SEGV, ReplayConfig(threads=False, probe="seed-mincore"), keep_events=True)
    rb = run_replay(SEGV, ReplayConfig(threads=False, probe="mincore"), keep_events=True)
    records = list(iter_raw(SEGV))
    first_route_change = None
    for j in range(len(records)):
        ea = decode_event(ra.raw_events, j, records[j], probe_kind_of(ra.allocator, ra.knobs))
        eb = decode_event(rb.raw_events, j, records[j], probe_kind_of(rb.allocator, rb.knobs))
        route_a = ea.decision.route if ea.decision else None
        route_b = eb.decision.route if eb.decision else None
        if j < i:
            assert (ea.outcome, ea.status, route_a) == (eb.outcome, eb.status, route_b), j
        if route_a != route_b:
            first_route_change = j
            break
    assert first_route_change == i
    assert doc["events_compared"] == i and doc["a"]["crash"] is None and doc["b"]["crash"] is None


def test_diff_report_explains_both_sides():
    res = runner.invoke(app, ["diff", str(SEGV), "--probe", "off", "--probe", "safe"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "First divergence: event #44" in out
    assert "event  #44 thread 1: free obj 1068, a tiny block" in out
    assert "died: SIGSEGV in magic_read" in out and "(= ptr - 32)" in out
    assert "unmapped_header_fallback → tiny_free" in out
    assert "events 0..43 were decided the same way on both sides" in out


def test_hakmem_vs_libc_differs_at_the_first_free():
    doc = _json(["diff", str(FIXTURES / "random-mixed.trace"), "--allocator", "hakmem", "--allocator", "libc"])
    d = doc["divergence"]
    first_free = next(k for k, e in enumerate(iter_raw(FIXTURES / "random-mixed.trace")) if e[0] == 5)
    assert d["event_index"] == first_free and "route" in d["what"]
    assert d["b"]["route"] is None and d["a"]["route"] == "ss_hit"
    assert doc["first_owner_difference"] == 0  # every block has another owner under libc
    assert doc["b"]["allocator"] == "libc" and (doc["a"]["label"], doc["b"]["label"]) == ("hakmem", "libc")


def test_same_decisions_give_no_divergence():
    doc = _json(["diff", str(FIXTURES / "random-mixed.trace"), "--probe", "off", "--probe", "safe"])
    assert doc["divergence"] is None and doc["events_compared"] == 5260
    assert all(r["delta"] == 0 for r in doc["routes"])


def test_two_json_reports_compare_their_anomalies(tmp_path):
    a, b = tmp_path / "off.json", tmp_path / "safe.json"
    for path, probe in ((a, "off"), (b, "safe")):
        res = runner.invoke(app, ["replay", str(SEGV), "--probe", probe, "--json", str(path)])
        assert res.exit_code == 0, res.output
    doc = _json(["diff", str(a), str(b)])
    assert doc["exact"] is False and "lists only the first anomalies" in doc["note"]
    d = doc["divergence"]
    assert d["event_index"] == 44 and d["a_crashed"] and d["b"] is None
    assert (doc["a"]["label"], doc["b"]["label"]) == ("off.json", "safe.json")
    assert {r["route"]: r["delta"] for r in doc["routes"]}["unmapped_header_fallback"] > 0


def test_two_saved_results_compare_event_by_event(tmp_path):
    a, b = tmp_path / "a.hfres", tmp_path / "b.hfres"
    for path, probe in ((a, "seed-mincore"), (b, "mincore")):
        res = runner.invoke(app, ["replay", str(SEGV), "--probe", probe, "--serial", "--save", str(path), "--json", str(tmp_path / "x.json")])
        assert res.exit_code == 0, res.output
    saved = _json(["diff", str(a), str(b)])
    live = _json(["diff", str(SEGV), "--probe", "seed-mincore", "--probe", "mincore"])
    assert saved["exact"] is True
    assert saved["divergence"]["event_index"] == live["divergence"]["event_index"]
    assert saved["divergence"]["what"] == live["divergence"]["what"]
    assert saved["routes"] == live["routes"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--probe", "safe"], "same configuration"),
        ([], "same configuration"),
        (["--probe", "off", "--probe", "safe", "--probe", "mincore"], "given 3 times"),
        (["--allocator", "libc", "--lib", "/x.so", "--allocator", "libc", "--lib", "/y.so"], "exclude each other"),
    ],
)
def test_diff_usage_errors(args, message):
    res = runner.invoke(app, ["diff", str(SEGV), *args])
    assert res.exit_code == 3, res.output
    assert message in res.output


def test_diff_of_two_traces_or_results_with_options_is_refused(tmp_path):
    res = runner.invoke(app, ["diff", str(SEGV), str(SEGV)])
    assert res.exit_code == 3 and "a trace, not a replay result" in res.output
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"schema": "something/else"}))
    res = runner.invoke(app, ["diff", str(j), str(j), "--probe", "safe"])
    assert res.exit_code == 3 and "go with one trace" in res.output
    res = runner.invoke(app, ["diff", str(j), str(j)])
    assert res.exit_code == 3 and "not a replay report" in res.output


# ------------------------------------------------------------------ the comparison itself
@pytest.mark.parametrize(
    "x, y, want",
    [(b"", b"", None), (b"abc", b"abc", None), (b"abc", b"abd", 2), (b"abc", b"xbc", 0), (b"ab", b"abc", 2), (bytes(1000) + b"x", bytes(1001), 1000)],
)
def test_first_mismatch(x, y, want):
    assert first_mismatch(x, y) == want


def _records(*events: dict) -> bytes:
    out = bytearray()
    for e in events:
        rec = bytearray(EVENT_SIZE)
        rec[16] = e.get("route", 0)
        rec[20] = e.get("action", 0)
        rec[24] = e.get("tried", 0)
        rec[32:36] = (e.get("probe", -1) & 0xFFFFFFFF).to_bytes(4, "little")
        rec[44] = e.get("owner", 1)
        rec[45] = e.get("outcome", 1)
        rec[46] = e.get("status", model.EventStatus.DONE.code)
        rec[0:8] = e.get("ptr", 0x1000).to_bytes(8, "little")
        out += rec
    return bytes(out)


def test_compare_records_ignores_pointers_and_names_what_differs():
    base = [{"route": 2}, {"route": 2}, {"route": 3}]
    a = _records(*base)
    assert compare_records(a, _records(*[dict(e, ptr=0x2000) for e in base])) == (None, (), None)
    b = _records(base[0], {"route": 5, "tried": 7, "outcome": 4}, base[2])
    assert compare_records(a, b) == (1, ("outcome", "route", "stages"), None)
    crashed = _records(base[0], {"status": model.EventStatus.STARTED.code, "outcome": 5, "owner": 1}, {"status": 0, "owner": 0})
    assert compare_records(a, crashed) == (1, ("crash",), None)  # owners after the crash are not compared
    owner = _records(base[0], dict(base[1], owner=2), base[2])
    assert compare_records(a, owner) == (None, (), 1)
