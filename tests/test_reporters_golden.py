"""Reporters render model records, no ctypes: compared line by line with fixtures/expected/.

Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change (and read the diff).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from forensics.model import (
    Action,
    BlockRef,
    CrashPlacement,
    CrashRecord,
    EventResult,
    EventStatus,
    Explanation,
    Finding,
    FreeDecision,
    FreeStep,
    HeaderDump,
    Outcome,
    OwnerKind,
    ProbeKind,
    ProbeVerdict,
    Provenance,
    ReplayResult,
    Route,
    Stage,
)
from forensics.report import explain as explain_report
from forensics.report import html as html_report
from forensics.report import replay as replay_report
from forensics.theme import THEME

EXPECTED = Path(__file__).resolve().parent.parent / "fixtures" / "expected"
PTR = 0x7FFFF6B00000
MAPS = "\n".join(
    [
        "555555554000-555555558000 r--p 00000000 fe:00 123 /opt/hfreplay",
        "7ffff6b00000-7ffff6c00000 rw-p 00000000 00:00 0",
        "7ffff6d00000-7ffff6f00000 rw-p 00000000 00:00 0",
    ]
)


def _render(fn, *args) -> str:
    buf = io.StringIO()
    console = Console(theme=THEME, file=buf, width=100, color_system=None, highlight=False, force_terminal=False)
    fn(*args, console)
    return buf.getvalue()


def _golden(name: str, text: str) -> None:
    path = EXPECTED / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    expected = path.read_text().splitlines()
    got = text.splitlines()
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g == e, f"{name} line {i + 1}:\n  expected {e!r}\n  got      {g!r}"
    assert len(got) == len(expected), f"{name}: {len(got)} lines, expected {len(expected)}"


def _decision(route: Route | None, action: Action, tried, hit, probe=ProbeVerdict.NOT_RUN, magic=None, method=None) -> FreeDecision:
    return FreeDecision(seq=7, ptr=PTR + 0x80, route=route, action=action, tried=tried, hit=hit, probe=probe, probe_kind=ProbeKind.SAFE, magic_found=magic, method=method, tid=1)


def _crash_event() -> EventResult:
    return EventResult(index=44, op="free", tid=1, obj=1068, ptr=PTR, owner=OwnerKind.TINY, outcome=Outcome.CRASHED, status=EventStatus.STARTED, check_failed=False, decision=None)


def _result() -> ReplayResult:
    crash = CrashRecord(signo=11, si_code=1, fault_address=PTR - 32, ptr=PTR, stage=Stage.MAGIC_READ, stage_name="magic_read", has_state=True, free_seq=9, event_index=44, tid=4242, maps=MAPS, maps_truncated=False)
    im = EventResult(index=30, op="free", tid=1, obj=19, ptr=PTR + 0x80, owner=OwnerKind.TINY, outcome=Outcome.INVALID_MAGIC, status=EventStatus.DONE, check_failed=False,
                     decision=_decision(Route.INVALID_MAGIC_TINY_RECOVERY, Action.TINY_FREE, (FreeStep.SS, FreeStep.MID, FreeStep.L25, FreeStep.MAGIC), (), magic=0))
    return ReplayResult(
        trace="fixtures/segv-registry-escape.trace", allocator="libhakmem.so", knobs={"HAKMEM_SS_REG_CAPACITY": "4"}, threads=True,
        num_events=51056, events_done=44, threads_used=1, frees=9, allocs=35,
        routes={"ss_hit": 8, "invalid_magic_tiny_recovery": 1}, outcomes={"correct": 8, "invalid_magic": 1, "crashed": 1},
        crash=crash, crash_event=_crash_event(), hang=False, exit_status=None, exit_signal=11,
        anomalies=[im, _crash_event()], anomaly_count=2, first_anomaly=30, check_every=0, first_check_failure=None, seconds=0.25,
    )


def _explanation() -> Explanation:
    block = BlockRef(obj=1068, ptr=PTR, size=59, alloc_event=25, alloc_op="malloc", tid=1, site=0x401A2F)
    prov = Provenance(PTR, "inside", 0, block, 44, f"{PTR:#x} is the start of a 59-byte block alloc'd at event #25 (malloc obj 1068, thread 1, site 0x401a2f)")
    header = HeaderDump(base=PTR - 64, data=tuple([None] * 64 + [0] * 64), header_addr=PTR - 32, header_size=32, magic_expected=0x48414B4D, magic_found=None,
                        owner_text="no block of the allocator (nothing it owns)", provenance=Provenance(PTR - 32, "before", 32, block, 44, f"{PTR - 32:#x} is 32 bytes before a 59-byte block"))
    excerpt = tuple((lo, hi, line, False) for lo, hi, line in [(0x555555554000, 0x555555558000, MAPS.splitlines()[0]), (PTR, PTR + 0x100000, MAPS.splitlines()[1])])
    placement = CrashPlacement("SIGSEGV", PTR - 32, PTR, "magic_read", f"SIGSEGV in magic_read: fault address {PTR - 32:#x} (at ptr-32) is in the unmapped page just below SuperSlab {PTR:#x} that holds the freed pointer", excerpt)
    cap = Finding(f"the SuperSlab {PTR:#x} was never registered: the registry was full (capacity 4) when it was created at event #25 (SP_META_CAPACITY_ERROR)", "reqtrace seq 6: op=capacity_error", 25, "bad")
    return Explanation(
        event=_crash_event(), addr=PTR, provenance=prov, expected="hak_tiny_free (normally through ss_hit)",
        stages=[Finding("SS registry lookup: MISSED, though this is a tiny block", severity="bad"), cap, Finding("Mid registry lookup: missed (right: not a MID block)")],
        header=header, crash=placement, causes=[cap, Finding(placement.text, "crash record", 44, "bad")], verdict="event #44 (free of a tiny block) crashed", facts=None,
    )


def test_replay_report_golden():
    _golden("replay-report.txt", _render(replay_report.render, _result()))


def test_explain_report_golden():
    _golden("explain-report.txt", _render(explain_report.render, [_explanation()]))


def test_replay_json_has_the_documented_keys():
    doc = replay_report.to_json(_result())
    assert doc["schema"] == "hakmem-forensics/replay/1"
    assert doc["crash"]["fault_minus_ptr"] == -32 and doc["crash"]["event"]["outcome"] == "crashed"
    assert [a["event_index"] for a in doc["anomalies"]] == [30, 44]
    assert set(doc) >= {"events", "frees", "routes", "outcomes", "crash", "anomalies"}


@pytest.mark.parametrize("evil", ["<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>"])
def test_html_makes_hostile_strings_inert(evil):
    result = _result()
    result.trace = evil
    result.knobs = {"HAKMEM_X": evil}
    exp = _explanation()
    exp.provenance = Provenance(PTR, "inside", 0, exp.provenance.block, 44, f"site {evil}")
    page = html_report.replay_page(result, [exp])
    assert evil not in page
    assert "&lt;script&gt;" in page or "&quot;&gt;&lt;img" in page
    assert "<script" not in page.lower()
