"""inspect_event and `probe ADDR --trace --event`: the live heap of a replay child just before an event."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forensics import fixtures
from forensics.cli import app
from forensics.errors import BadInputError
from forensics.inspect import InspectCrashed, from_facts, inspect_event
from forensics.model import OwnerKind
from forensics.replay import ReplayConfig, run_replay

runner = CliRunner()
UNMAPPED_PAGE = 0x1000  # page-aligned, never mapped in a process


@pytest.fixture(scope="module")
def segv():
    """The bundled SEGV trace and the event it crashes at with the probe off."""
    trace = fixtures.find_fixture()
    result = run_replay(trace, ReplayConfig(probe="off", threads=False))
    assert result.crash is not None
    return trace, result.crash.event_index, result.crash.ptr


@pytest.fixture(scope="module")
def at_crash(segv):
    trace, event, _ = segv
    return inspect_event(trace, event, [UNMAPPED_PAGE])


def test_the_heap_just_before_the_crashing_free(segv, at_crash):
    _, event, ptr = segv
    i = at_crash
    assert i.event == event and i.op == "free"
    assert i.target == ptr  # the same address the crashed replay saw (ASLR off, serial)
    assert i.header_addr == ptr - 32
    owner = i.get_owner(ptr)
    assert owner.kind is OwnerKind.TINY and owner.region_base == ptr and not owner.registered
    assert i.get_owner(ptr - 32).kind is OwnerKind.NONE
    assert i.check and "not in the SS registry" in i.check
    assert f"\n{ptr:x}-" in i.maps  # the memory map of the moment: the SuperSlab starts at ptr


def test_probe_verdicts_on_the_header_and_an_unmapped_page(at_crash):
    hdr = at_crash.get_probes(at_crash.header_addr)
    assert hdr.length == 32 and hdr.readable is False
    assert hdr.verdicts == {"off": True, "seed-mincore": False, "seed-msync": False, "mincore": False, "safe": False}
    assert hdr.get_wrong() == ["off"]
    page = at_crash.get_probes(UNMAPPED_PAGE)
    assert page.length == 1 and page.readable is False
    # the seed's msync counts ENOMEM (unmapped) as readable: a live false "readable"
    assert page.get_wrong() == ["off", "seed-msync"]


def test_the_dump_marks_unreadable_bytes(at_crash):
    i = at_crash
    assert i.dump_base == i.target - 64 and len(i.dump) == 128
    assert all(b is None for b in i.dump[:64])  # the hole below the SuperSlab
    assert any(b is not None for b in i.dump[64:])  # the block itself


def test_from_facts_round_trips(at_crash):
    again = from_facts(at_crash.trace, json.loads(json.dumps(at_crash.facts)))
    assert again.owners == at_crash.owners and again.probes == at_crash.probes and again.dump == at_crash.dump


def test_past_the_crash_is_an_error_naming_the_crash(segv):
    trace, event, _ = segv
    with pytest.raises(InspectCrashed) as exc:
        inspect_event(trace, event + 1)
    assert exc.value.crash.event_index == event
    assert f"event #{event}" in str(exc.value)


def test_a_probe_knob_lets_the_replay_go_past_the_crash(segv):
    trace, event, _ = segv
    i = inspect_event(trace, event + 1, config=ReplayConfig(probe="safe"))
    assert i.knobs["HAKMEM_HEADER_PROBE"] == "safe" and i.event == event + 1


def test_bad_requests(segv):
    trace, _, _ = segv
    with pytest.raises(BadInputError, match="has 51056 events"):
        inspect_event(trace, 10**9)
    with pytest.raises(BadInputError, match="no such file"):
        inspect_event(str(trace) + ".missing", 1)
    with pytest.raises(BadInputError, match="at most 64"):
        inspect_event(trace, 1, range(1, 70))


def test_cli_probe_addresses(segv):
    trace, event, ptr = segv
    result = runner.invoke(app, ["probe", hex(UNMAPPED_PAGE), str(ptr), "--trace", str(trace), "--event", str(event), "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "hakmem-forensics/probe/1" and doc["event"] == event
    rows = {a["addr"]: a for a in doc["addresses"]}
    assert set(rows) == {ptr - 32, UNMAPPED_PAGE, ptr}
    assert rows[ptr - 32]["what"].startswith("header of the pointer")
    assert rows[ptr]["owner"]["kind"] == "tiny" and rows[ptr]["readable"] and rows[ptr]["wrong"] == []
    assert rows[UNMAPPED_PAGE]["wrong"] == ["off", "seed-msync"]
    # the explicit sub-command, options first, and the rich report
    for args in (["probe", "addr", "--trace", str(trace), "--event", str(event)], ["probe", "--trace", str(trace), "--event", str(event)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert f"just before event #{event}" in result.stdout and "(NOT registered)" in result.stdout


def test_cli_probe_errors(segv):
    trace, event, _ = segv
    result = runner.invoke(app, ["probe", "nonsense", "--trace", str(trace), "--event", "1"])
    assert result.exit_code == 3 and "not an address" in result.output
    result = runner.invoke(app, ["probe", "0x10", "--trace", str(trace), "--event", str(event + 1)])
    assert result.exit_code == 3 and "died (SIGSEGV in magic_read)" in result.output
