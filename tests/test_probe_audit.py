"""The probe audit: verdict matrix against /proc/self/maps, wrong verdicts pinned, cost as ratios, CLI."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
from typer.testing import CliRunner

from forensics import probeaudit
from forensics.cli import app
from forensics.errors import IsolationError
from forensics.report import probe as probe_report
from forensics.theme import make_console

runner = CliRunner()
UNREADABLE_PAGE_ROWS = ("unmapped+0", "unmapped+8", "protnone+0", "protnone+8", "rw|unmapped", "rw|protnone", "ss-guard", "ss-hole")


@pytest.fixture(scope="module")
def audit():
    return probeaudit.run_audit(calls=20, batches=3)


def _names(rows) -> set[str]:
    return {r.name for r in rows}


def test_the_bed_is_what_it_was_built_to_be(audit):
    ps = audit.page_size
    names = [r.name for r in audit.rows]
    assert names[:3] == ["rw+0", "rw+8", f"rw+{ps - 1}"]
    for must in ("unmapped+0", f"unmapped+{ps - 32}", "protnone+0", "ro+8", "rw|unmapped", "rw|protnone", "mid-header", "ss-guard", "ss-block", "ss-hole"):
        assert must in names
    assert audit.notes == []  # no row moved under the audit
    for r in audit.rows:
        assert r.readable == r.expected, r.name
        assert r.length == audit.header_size == 32
    # the straddling headers really straddle a page boundary
    for name in ("rw|unmapped", "rw|protnone"):
        r = audit.get_row(name)
        assert r.addr // ps != (r.addr + r.length - 1) // ps
    # the SuperSlab rows: the header is the 32 bytes right below a page-aligned block
    assert audit.get_row("ss-hole").addr + 32 == audit.get_row("ss-block").addr
    assert audit.get_row("ss-block").addr % ps == 0


def test_safe_agrees_with_maps_on_every_row(audit):
    for r in audit.rows:
        assert r.verdicts["safe"] == r.readable, r.name
    assert not audit.get_false_readable("safe") and not audit.get_false_unreadable("safe")


def test_wrong_verdicts_are_pinned_to_what_the_bed_shows(audit):
    last = audit.page_size - 1
    unreadable = {r.name for r in audit.rows if not r.readable}
    assert set(UNREADABLE_PAGE_ROWS) <= unreadable
    # off never looks: every unreadable row is a false "readable" (a crash in the free path)
    assert _names(audit.get_false_readable("off")) == unreadable and len(unreadable) == 11
    assert not audit.get_false_unreadable("off")
    # the seed's mincore: PROT_NONE page-aligned says readable; every unaligned readable row says unreadable (EINVAL)
    seed_unaligned = {"rw+8", f"rw+{last}", "ro+8", f"ro+{last}", "mid-header"}
    assert _names(audit.get_false_readable("seed-mincore")) == {"protnone+0"}
    assert _names(audit.get_false_unreadable("seed-mincore")) == seed_unaligned
    # the seed's msync: the errno == ENOMEM branch calls an unmapped aligned page readable
    assert _names(audit.get_false_readable("seed-msync")) == {"unmapped+0", "protnone+0"}
    assert _names(audit.get_false_unreadable("seed-msync")) == seed_unaligned
    # corrected mincore: residency, not permission — every PROT_NONE header is "readable"
    assert _names(audit.get_false_readable("mincore")) == {"protnone+0", "protnone+8", f"protnone+{last}", "rw|protnone", "ss-guard"}
    assert not audit.get_false_unreadable("mincore")


def test_the_superslab_hole_fools_nobody_but_off(audit):
    """The seed's own SEGV site: ptr - 32 below a SuperSlab, not page-aligned."""
    r = audit.get_row("ss-hole")
    assert not r.readable
    assert r.verdicts == {"off": True, "seed-mincore": False, "seed-msync": False, "mincore": False, "safe": False}


def test_costs_cover_every_probe_and_row_as_ratios(audit):
    assert len(audit.costs) == len(audit.rows) * len(audit.probes)
    off = audit.get_cost("off", "rw+8")
    for p in ("seed-mincore", "mincore", "safe"):
        c = audit.get_cost(p, "rw+8")
        assert len(c.ns) == 3 and c.calls == 20
        # a system call costs several times the bare timing loop
        assert c.ns_median > 5 * off.ns_median, (p, c.ns_median, off.ns_median)
        q1, q3 = c.ns_quartiles
        assert q1 <= c.ns_median <= q3


def test_audit_json_and_render(audit):
    doc = probe_report.audit_to_json(audit)
    assert doc["schema"] == "hakmem-forensics/probe-audit/1"
    assert doc["probes"] == ["off", "seed-mincore", "seed-msync", "mincore", "safe"]
    assert doc["summary"]["seed-msync"]["false_readable"] == ["unmapped+0", "protnone+0"]
    assert doc["summary"]["safe"] == {"false_readable": [], "false_unreadable": [], "false_readable_count": 0, "false_unreadable_count": 0}
    row = next(r for r in doc["rows"] if r["name"] == "protnone+8")
    assert row["wrong"] == ["off", "mincore"] and row["readable"] is False
    assert {c["probe"] for c in doc["costs"]} == set(doc["probes"])
    json.dumps(doc)
    buf = io.StringIO()
    probe_report.render_audit(audit, make_console(buf, width=120))
    out = buf.getvalue()
    assert "Verdict matrix" in out and 'false "readable"' in out and "good frees misrouted" in out
    line = next(x for x in out.splitlines() if x.startswith("│ unmapped+0 "))
    assert line.split("│")[2:8] == [" unreadable ", " readable ✗ ", " unreadable   ", " readable ✗   ", " unreadable ", " unreadable "]


def test_a_dying_audit_child_does_not_kill_the_toolkit(monkeypatch):
    def boom(ctx, calls, batches):
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(probeaudit, "_audit_in_child", boom)
    with pytest.raises(IsolationError, match="SIGSEGV"):
        probeaudit.run_audit(calls=0)


def test_cli_probe_audit_json():
    result = runner.invoke(app, ["probe", "audit", "--calls", "5", "--batches", "1", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == probe_report.AUDIT_SCHEMA
    assert doc["summary"]["mincore"]["false_unreadable_count"] == 0
    assert all(len(c["ns"]) == 1 for c in doc["costs"])
