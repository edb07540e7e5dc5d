"""Native replay in a child process: the seed's SEGV, the probes, the oracle, threads, stepping."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import fixtures, native
from forensics.cli import app
from forensics.model import Outcome, Route
from forensics.replay import ReplayConfig, TraceFile, run_replay, step_events
from forensics.trace import convert

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
runner = CliRunner()
MAGIC = 0x48414B4D


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_default_replay_shows_the_seeds_segv():
    """No argument: the bundled fixture; the crash panel names the event and ptr - HEADER_SIZE."""
    doc = _json(["replay"])
    crash = doc["crash"]
    assert crash is not None and crash["signal"] == "SIGSEGV"
    assert crash["stage"] == "magic_read"
    assert crash["fault_address"] == crash["ptr"] - 32 and crash["fault_minus_ptr"] == -32
    ev = crash["event"]
    assert ev["event_index"] == crash["event_index"] and ev["op"] == "free" and ev["ptr"] == crash["ptr"]
    assert ev["owner"] == "tiny" and ev["outcome"] == "crashed" and ev["status"] == "started"
    # everything before the crash is kept
    assert doc["events_done"] == crash["event_index"] and not doc["completed"]
    assert doc["outcomes"] == {"crashed": 1}
    assert doc["knobs"]["HAKMEM_SS_REG_CAPACITY"] == "4"  # from the trace header, no flags needed
    assert any("7" in line for line in crash["maps"])  # the memory map of the moment came back


def test_default_replay_rich_report():
    result = runner.invoke(app, ["replay"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Crash: SIGSEGV in magic_read" in out
    assert "(= ptr - 32)" in out
    assert "<- fault address: in no mapping" in out
    assert "died before choosing a route" in out


def test_safe_probe_has_no_crash_and_nothing_misrouted():
    doc = _json(["replay", "--probe", "safe"])
    assert doc["crash"] is None and doc["completed"]
    assert doc["outcomes"].get("crashed", 0) == 0 and doc["outcomes"].get("misrouted", 0) == 0
    assert doc["routes"]["unmapped_header_fallback"] > 0  # the first blocks of escaped SuperSlabs
    assert doc["frees"] == sum(doc["routes"].values())
    assert sum(doc["outcomes"].values()) == doc["frees"]


@pytest.mark.parametrize("probe", ["seed-mincore", "seed-msync", "mincore"])
def test_every_probe_variant_reports_what_it_does(probe):
    """Whatever a variant does to the SEGV trace is measured and self-consistent, not assumed."""
    doc = _json(["replay", "--probe", probe])
    assert doc["knobs"]["HAKMEM_HEADER_PROBE"] == probe
    assert sum(doc["outcomes"].values()) == doc["frees"] + (1 if doc["crash"] else 0)
    for a in doc["anomalies"]:
        if a["route"] == "unmapped_header_fallback":
            assert a["probe"] == "unreadable" and "probe" in a["stages_tried"]


def test_seed_probes_route_every_unaligned_header_to_the_fallback():
    """The seed's mincore/msync fail with EINVAL on addresses that are not page-aligned, so
    they send escaped blocks to unmapped_header_fallback far more often than a correct probe."""
    seed = _json(["replay", "--probe", "seed-mincore"])
    safe = _json(["replay", "--probe", "safe"])
    assert seed["routes"]["unmapped_header_fallback"] > safe["routes"]["unmapped_header_fallback"]
    assert seed["crash"] is None


def test_random_mixed_without_faults_is_all_correct(tmp_path):
    out = tmp_path / "rm.trace"
    res = runner.invoke(app, ["gen", "random-mixed", "50000", "2048", "1234567", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = _json(["replay", str(out)])
    assert doc["completed"] and doc["crash"] is None
    assert doc["frees"] > 20000
    assert doc["outcomes"] == {"correct": doc["frees"]}
    assert set(doc["routes"]) <= {"ss_hit", "mid_hit"}


def test_larson_replays_on_four_real_threads_with_cross_thread_frees():
    trace = FIXTURES / "larson-tiny.trace"
    doc = _json(["replay", str(trace)])
    assert doc["threads_used"] == 4
    assert doc["outcomes"] == {"correct": doc["frees"]} and doc["frees"] > 1000
    # the trace really frees across threads: an object's free on another tid than its malloc
    owner: dict[int, int] = {}
    cross = 0
    for line in trace.read_text().splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if parts[1] == "malloc":
            owner[int(parts[2])] = int(parts[0])
        elif parts[1] == "free" and owner.get(int(parts[2])) not in (None, int(parts[0])):
            cross += 1
    assert cross > 100


def test_serial_replay_of_a_threaded_trace_uses_one_thread():
    doc = _json(["replay", str(FIXTURES / "larson-tiny.trace"), "--serial"])
    assert doc["threads_used"] == 1 and doc["outcomes"] == {"correct": doc["frees"]}


def test_libc_baseline_replays_the_segv_trace_cleanly():
    doc = _json(["replay", "--allocator", "libc"])
    assert doc["allocator"] == "libc" and doc["completed"]
    assert doc["outcomes"] == {"correct": doc["frees"]} and doc["knobs"] == {}


def test_check_every_names_the_first_event_that_broke_an_invariant():
    """The registry escape is visible long before the crash: right after the first block of an
    unregistered SuperSlab is handed out."""
    doc = _json(["replay", "--check-every", "1", "--probe", "safe"])
    failure = doc["first_check_failure"]
    assert failure is not None
    assert "not in the SS registry" in failure["message"]
    first_crash = _json(["replay"])["crash"]["event_index"]
    assert failure["event_index"] < first_crash


@pytest.mark.parametrize("name", ["random-mixed.trace", "probe-safe.trace", "scenario-double-free.trace", "scenario-header-corruption.trace", "scenario-mixed-libc.trace", "scenario-interior-free.trace"])
def test_native_loop_and_ctypes_stepping_agree_event_by_event(name, tmp_path):
    trace = FIXTURES / name
    config = ReplayConfig(threads=False)
    native_run = run_replay(trace, config)
    stepped = step_events(trace, config)
    assert stepped.outcome == "ok", (stepped.outcome, stepped.error, stepped.stderr[-2000:])
    assert len(stepped.value) == native_run.num_events
    # compare every event's record: run the native loop again keeping the raw file
    binary = tmp_path / "t.htb"
    convert(trace, binary, to="binary")
    raw = _native_records(binary)
    assert len(raw) == len(stepped.value)
    # Two processes, two address-space layouts: pointers differ by where the kernel put each
    # region, so compare them by their offset inside their 1 MiB-aligned region (SuperSlabs and
    # pool chunks are carved identically); every other field must match byte for byte.
    pools = {native.model.OwnerKind.TINY.code, native.model.OwnerKind.MID.code, native.model.OwnerKind.L25.code}
    for i, (a, b) in enumerate(zip(raw, stepped.value)):
        ea, eb = native.HfrEvent.from_buffer_copy(a), native.HfrEvent.from_buffer_copy(b)
        # magic_found of an invalid-magic free is whatever bytes lay below the block (often a
        # free-list pointer, so also layout-dependent): compare that field only when it matched
        mo = native.HfrEvent.magic_found.offset
        if ea.magic_found == MAGIC or eb.magic_found == MAGIC:
            assert ea.magic_found == eb.magic_found, i
        assert a[8:mo] + a[mo + 4 :] == b[8:mo] + b[mo + 4 :], f"event {i}: {a[8:].hex()} != {b[8:].hex()}"
        assert (ea.ptr == 0) == (eb.ptr == 0), i
        if ea.owner in pools and ea.route:
            assert ea.ptr & 0xFFFFF == eb.ptr & 0xFFFFF, i


def _native_records(binary: Path) -> list[bytes]:
    """Raw hfr_event records of a serial native replay (through the hfreplay child)."""
    import mmap
    import os
    import subprocess

    from forensics import abi
    from forensics.replay import EVENT_SIZE, HEADER_SIZE

    with TraceFile(binary) as tf:
        n = tf.num_events
    fd = os.memfd_create("test")
    try:
        os.ftruncate(fd, HEADER_SIZE + n * EVENT_SIZE)
        subprocess.run([str(abi.find_replay_exe()), str(binary), "--lib", str(abi.find_allocator()), "--results-fd", str(fd), "--quiet"], pass_fds=(fd,), check=True)
        with mmap.mmap(fd, HEADER_SIZE + n * EVENT_SIZE) as m:
            return [m[HEADER_SIZE + i * EVENT_SIZE : HEADER_SIZE + (i + 1) * EVENT_SIZE] for i in range(n)]
    finally:
        os.close(fd)


def test_stepping_crash_is_isolated_and_keeps_the_records_before_it():
    trace = fixtures.find_fixture()
    res = step_events(trace, ReplayConfig(threads=False))
    assert res.outcome == "crash" and res.signal == signal.SIGSEGV
    assert res.crash is not None and res.crash.event_index == _json(["replay"])["crash"]["event_index"]


def test_early_release_scenario_is_judged_leaked_with_safe_probe():
    doc = _json(["replay", str(FIXTURES / "scenario-early-release.trace"), "--probe", "safe"])
    assert doc["crash"] is None
    assert doc["outcomes"].get("leaked", 0) > 0
    leaked = [a for a in doc["anomalies"] if a["outcome"] == "leaked"]
    assert leaked and all(a["owner"] == "tiny" for a in leaked)


def test_early_release_crashes_with_probe_off():
    doc = _json(["replay", str(FIXTURES / "scenario-early-release.trace"), "--probe", "off"])
    assert doc["crash"] is not None and doc["crash"]["signal"] == "SIGSEGV"


def test_hang_becomes_a_report(tmp_path):
    """A replay that outlives --timeout is killed and reported, with the events it finished."""
    big = tmp_path / "big.htb"
    res = runner.invoke(app, ["gen", "random-mixed", "3000000", "4096", "7", "-o", str(big)])
    assert res.exit_code == 0, res.output
    doc = _json(["replay", str(big), "--timeout", "1", "--check-every", "1"])
    assert doc["hang"] and not doc["completed"]
    assert 0 < doc["events_done"] < doc["events"]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("# hakmem-trace v1\n1 mallok 1 16\n", ":2: unknown op 'mallok'"),
        ("# hakmem-trace v1\n1 free 7\n", ":2:"),
        ("not a trace\n", ":1:"),
    ],
)
def test_bad_trace_is_a_one_line_error(tmp_path, content, needle):
    bad = tmp_path / "bad.trace"
    bad.write_text(content)
    result = runner.invoke(app, ["replay", str(bad)])
    assert result.exit_code == 3, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output
    assert str(bad) in err and needle in err


def test_bad_binary_trace_names_the_offset(tmp_path):
    good = tmp_path / "g.htb"
    convert(FIXTURES / "random-mixed.trace", good, to="binary")
    cut = tmp_path / "cut.htb"
    cut.write_bytes(good.read_bytes()[:1000])
    result = runner.invoke(app, ["replay", str(cut)])
    assert result.exit_code == 3, result.output
    assert "offset" in result.stderr and "truncated" in result.stderr


def test_missing_trace_and_conflicting_options():
    assert runner.invoke(app, ["replay", "/nonexistent.trace"]).exit_code == 3
    res = runner.invoke(app, ["replay", "--allocator", "libc", "--lib", "/x.so"])
    assert res.exit_code == 3 and "exclude" in res.stderr
    res = runner.invoke(app, ["replay", "--knob", "NOEQUALS"])
    assert res.exit_code == 3 and "NAME=VALUE" in res.stderr


def test_bad_knob_value_is_bad_input():
    res = runner.invoke(app, ["replay", "--knob", "HAKMEM_SS_REG_CAPACITY=lots"])
    assert res.exit_code == 3, res.output
    assert "HAKMEM_SS_REG_CAPACITY" in res.stderr


def test_route_table_counts_match_the_allocators_own_stats():
    """The replay's per-free routes add up to what hak_get_stats counted in the child."""
    result = run_replay(FIXTURES / "probe-safe.trace", ReplayConfig())
    assert result.completed
    assert sum(result.routes.values()) == result.frees
    assert result.routes.get(Route.SS_HIT.value, 0) > 0
    assert result.outcomes.get(Outcome.MISROUTED.value, 0) == 0
