"""firstbad: bisection names the same event as the check after every event, with far fewer checks,
even when the crash comes much later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics.cli import app
from forensics.firstbad import _checkpoints, find_first_bad
from forensics.replay import ReplayConfig, run_replay
from forensics.report import firstbad as firstbad_report

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEGV = FIXTURES / "segv-registry-escape.trace"
runner = CliRunner()


def _every_event(trace: Path, **config) -> tuple[int | None, int | None]:
    """(first check failure, crash event) of a replay with the check after every event."""
    r = run_replay(trace, ReplayConfig(threads=False, check_every=1, **config))
    return (r.first_check_failure.event_index if r.first_check_failure else None), (r.crash_event.index if r.crash_event else None)


@pytest.fixture(scope="module")
def late_corruption(tmp_path_factory) -> tuple[Path, int]:
    """The header-corruption scenario with the corrupt moved right after the block's malloc and
    invalid frees passed to libc: the corruption breaks the heap ~190 events before the free
    that crashes on it (SIGABRT in libc free)."""
    lines = (FIXTURES / "scenario-header-corruption.trace").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    events = [line for line in lines if not line.startswith("#")]
    corrupt = next(e for e in events if " corrupt " in e)
    obj = corrupt.split()[2]
    events.remove(corrupt)
    malloc_at = next(k for k, e in enumerate(events) if e.split()[1] == "malloc" and e.split()[2] == obj)
    events.insert(malloc_at + 1, corrupt)
    header.insert(1, "# knob HAKMEM_INVALID_FREE=0")
    path = tmp_path_factory.mktemp("fb") / "late-corruption.trace"
    path.write_text("\n".join(header + events) + "\n")
    return path, malloc_at + 1


@pytest.mark.parametrize(
    "trace, config",
    [
        (SEGV, {}),  # the seed's SEGV: the registry escape at 25, the crash at 44
        (SEGV, {"probe": "safe"}),  # no crash, 51,056 events
        (FIXTURES / "scenario-early-release.trace", {}),  # released SuperSlab at 80, the crash at 332
        (FIXTURES / "scenario-registry-drop.trace", {}),
        (FIXTURES / "scenario-double-free.trace", {}),
        (FIXTURES / "scenario-interior-free.trace", {}),
        (FIXTURES / "random-mixed.trace", {}),  # never fails
    ],
)
def test_bisection_names_the_same_event_as_checking_every_event(trace, config):
    expected, crash = _every_event(trace, **config)
    r = find_first_bad(trace, ReplayConfig(**config))
    assert (r.first.event_index if r.first else None) == expected
    assert (r.crash_event.index if r.crash_event else None) == crash
    checked_every = (expected if expected is not None else (crash - 1 if crash is not None else r.num_events - 1)) + 1
    if checked_every > 40:
        assert r.checks * 2 < checked_every  # far fewer checks
    assert r.replays == len(r.levels) <= 6


def test_header_corruption_is_traced_back_to_the_corrupting_event(late_corruption):
    path, corrupt_index = late_corruption
    r = find_first_bad(path, verify=True)
    assert r.first is not None and r.first.event_index == corrupt_index
    assert r.event is not None and r.event.op == "corrupt"
    assert "0xDEADBEEF" in r.first.message and "header overwritten" in r.first.message
    assert r.crash is not None and r.crash.signal_name == "SIGABRT" and r.crash.stage_name == "libc_free"
    assert r.crash.event_index - corrupt_index > 100  # the crash comes much later
    assert r.verified is not None and r.verified.event_index == corrupt_index
    assert r.verify_checks == corrupt_index + 1
    assert r.checks * 10 < r.verify_checks


def test_firstbad_command(late_corruption):
    path, corrupt_index = late_corruption
    res = runner.invoke(app, ["firstbad", str(path), "--verify", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == firstbad_report.SCHEMA
    assert doc["first_bad"]["event_index"] == corrupt_index and doc["first_bad"]["event"]["op"] == "corrupt"
    assert doc["verified"] == {"event_index": corrupt_index, "message": doc["first_bad"]["message"], "checks": corrupt_index + 1, "agrees": True}
    assert doc["crash"]["events_after_first_bad"] == doc["crash"]["event_index"] - corrupt_index
    assert doc["checks"] == sum(lv["checks"] for lv in doc["levels"])
    res = runner.invoke(app, ["firstbad", "--verify"])  # the bundled SEGV fixture
    assert res.exit_code == 0, res.output
    assert "First bad event #25: thread 1 malloc obj 1068" in res.stdout
    assert "not in the SS registry" in res.stdout
    assert "The crash (SIGSEGV in magic_read at #44) comes 19 events later." in res.stdout
    assert "Verified: the check after every event names #25: the same event." in res.stdout


def test_check_window_reaches_hfreplay():
    """ReplayConfig.check_from/check_to: only the window is checked (hfreplay --check-from/--check-to)."""
    safe = {"probe": "safe", "threads": False}
    assert run_replay(SEGV, ReplayConfig(check_every=1, check_to=24, **safe)).first_check_failure is None
    assert run_replay(SEGV, ReplayConfig(check_every=1, check_from=25, check_to=25, **safe)).first_check_failure.event_index == 25
    # every 10 from 20: checks after 29, 39, ... and the window's end; the registry escape persists
    assert run_replay(SEGV, ReplayConfig(check_every=10, check_from=20, check_to=100, **safe)).first_check_failure.event_index == 29
    assert run_replay(SEGV, ReplayConfig(check_every=1000, check_from=20, check_to=30, **safe)).first_check_failure.event_index == 30


def test_checkpoints():
    assert _checkpoints(0, 9, 3) == [2, 5, 8, 9]
    assert _checkpoints(5, 5, 1) == [5]
    assert _checkpoints(4, 10, 100) == [10]
    assert _checkpoints(10, 13, 2) == [11, 13]


def test_firstbad_bad_fanout():
    res = runner.invoke(app, ["firstbad", str(SEGV), "--fanout", "1"])
    assert res.exit_code == 2
