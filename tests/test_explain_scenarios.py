"""Each --scenario fixture: the explanation names the true cause, with its evidence."""

from __future__ import annotations

import re
from pathlib import Path


from forensics import explain as explain_mod
from forensics.replay import ReplayConfig, run_replay
from forensics.saved import open_result, save_result

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _explain_first(tmp_path, scenario: str, *, op: str | None = None, outcome: str | None = None, crash: bool = False, probe: str | None = None):
    """Replay the scenario fixture, save it, explain the first matching event (or the crash)."""
    config = ReplayConfig(probe=probe)
    result = run_replay(FIXTURES / f"scenario-{scenario}.trace", config, keep_events=True)
    path = save_result(result, config, tmp_path / f"{scenario}.hfres")
    with open_result(path) as saved:
        if crash:
            assert result.crash is not None, f"{scenario} did not crash"
            index = result.crash.event_index
        else:
            index = next(a.index for a in result.anomalies if (op is None or a.op == op) and (outcome is None or a.outcome.value == outcome))
        (e,) = explain_mod.explain_result(saved, events=[index])
        return e, saved.get_event(index)


def _texts(e) -> str:
    return " | ".join(f.text for f in e.stages + e.causes)


def test_capacity_error(tmp_path):
    e, ev = _explain_first(tmp_path, "registry-capacity", crash=True)
    cause = next(f for f in e.causes if "never registered" in f.text)
    assert "the registry was full (capacity 4)" in cause.text and cause.event_index is not None
    assert cause.event_index < ev.index
    assert e.crash is not None and e.crash.fault_address == ev.ptr - 32


def test_dropped_registration(tmp_path):
    e, ev = _explain_first(tmp_path, "registry-drop", crash=True)
    cause = next(f for f in e.causes if "registration was dropped" in f.text)
    assert "fault injection" in cause.text and cause.event_index is not None and cause.event_index < ev.index


def test_early_release(tmp_path):
    e, ev = _explain_first(tmp_path, "early-release", crash=True)
    cause = next(f for f in e.causes if "unregistered at event #" in f.text)
    m = re.search(r"while (\d+) of its blocks were live", cause.text)
    assert m and int(m.group(1)) >= 1
    assert any("no longer knows" in f.text for f in e.stages)


def test_libc_pointer(tmp_path):
    e, ev = _explain_first(tmp_path, "mixed-libc", outcome="invalid_magic")
    assert ev.owner.value == "libc"
    cause = next(f for f in e.causes if f.text.startswith("libc pointer"))
    assert f"{ev.ptr:#x} came from libc's malloc at event #" in cause.text
    assert e.provenance.block is not None and e.provenance.block.libc


def test_double_free_names_the_allocation_and_the_first_free(tmp_path):
    e, ev = _explain_first(tmp_path, "double-free", op="double_free")
    cause = next(f for f in e.causes if f.text.startswith("double free"))
    b = e.provenance.block
    assert b is not None and b.free_event is not None and b.alloc_event < b.free_event < ev.index
    assert f"allocated at event #{b.alloc_event} and already freed at event #{b.free_event}" in cause.text
    assert f"free'd at event #{b.free_event}" in e.provenance.text


def test_interior_free_names_the_offset(tmp_path):
    e, ev = _explain_first(tmp_path, "interior-free", op="free_interior")
    cause = next(f for f in e.causes if f.text.startswith("interior free"))
    assert e.provenance.relation == "inside" and e.provenance.offset == 16
    assert "16 bytes inside obj" in cause.text
    assert e.provenance.block.ptr + 16 == ev.ptr


def test_wild_free(tmp_path):
    e, ev = _explain_first(tmp_path, "wild-free", crash=True)
    assert ev.op == "free_raw"
    cause = next(f for f in e.causes if f.text.startswith("wild free"))
    assert "never returned by an allocation" in cause.text
    assert e.provenance.relation == "none"


def test_header_corruption_names_the_bytes_found(tmp_path):
    e, ev = _explain_first(tmp_path, "header-corruption", outcome="invalid_magic")
    cause = next(f for f in e.causes if f.text.startswith("header corruption"))
    assert "wrote 4 bytes 0xdeadbeef" in cause.text and "(ptr-32)" in cause.text
    assert e.header is not None and e.header.magic_found == 0xDEADBEEF
    off = e.header.header_addr - e.header.base
    assert bytes(e.header.data[off : off + 4]) == (0xDEADBEEF).to_bytes(4, "little")
    assert cause.event_index is not None and cause.event_index < ev.index
