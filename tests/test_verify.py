"""`verify`: the claim table's structure, the verdicts that are facts, and the speed rules (as ratios)."""

from __future__ import annotations

import io
import json
import re

import pytest
from typer.testing import CliRunner

from forensics import model, verify
from forensics.cli import app
from forensics.report import verify as verify_report
from forensics.theme import make_console

runner = CliRunner()
SEEDS = 2


@pytest.fixture(scope="module")
def report() -> model.VerifyReport:
    return verify.run_verify(verify.VerifyOptions.make_quick(seeds=SEEDS, runs=1))


# ------------------------------------------------------------------ structure
def test_one_check_per_claim_in_order_with_evidence(report):
    assert [c.id for c in report.claims] == list(verify.CLAIM_IDS)
    for c in report.claims:
        assert c.claim and c.source and c.measurement
        assert c.status in ("holds", "does not hold", "partly", "not measured")
        assert c.evidence and all(cmd.startswith("hakmem-forensics ") for cmd in c.evidence), c.id
        assert set(c.holds_for) <= set(verify.VARIANTS)
        if c.status == "partly":
            assert c.verdict == "holds only for " + ", ".join(c.holds_for)


def test_every_matrix_trace_was_replayed_under_every_variant(report):
    keys = {k for c in verify.CLAIMS for k in c.matrix}
    assert {(r.trace, r.probe) for r in report.runs} == {(k, p) for k in keys for p in verify.VARIANTS}
    assert set(report.traces) >= keys


def test_json_document(report):
    doc = verify_report.to_json(report)
    assert doc["schema"] == "hakmem-forensics/verify/1"
    assert [c["id"] for c in doc["claims"]] == list(verify.CLAIM_IDS)
    assert doc["settings"]["quick"] is True and doc["settings"]["seeds"] == SEEDS
    assert doc["audit"]["schema"] == "hakmem-forensics/probe-audit/1"
    assert {s["fault"] for s in doc["stress"]} == {"none", "registry-capacity", "protnone-guard"}
    assert all(o["ratio"] is None or o["ratio"] > 0 for o in doc["overheads"])
    json.dumps(doc)


def test_rich_table_lists_each_claim_with_its_verdict(report):
    buf = io.StringIO()
    verify_report.render(report, make_console(buf, width=160), details=True)
    out = buf.getvalue()
    assert "The seed's claims, measured" in out and "Judged replays" in out and "Stress loop" in out
    assert "“mincore():" in out and "“Worst case (all miss):" in out
    assert "$ hakmem-forensics probe audit" in out
    counts = {st: sum(c.status == st for c in report.claims) for st in ("holds", "does not hold", "partly")}
    assert f"Verdicts: {counts['holds']} holds, {counts['does not hold']} does not hold, {counts['partly']} partly" in out


# ------------------------------------------------------------- verdicts that are facts
def test_off_crashes_where_frees_miss_the_registries(report):
    run = report.get_run("rm-step3+registry-capacity", "off")
    assert not run.completed and run.crash_signal == "SIGSEGV" and run.crash_stage == "magic_read"
    assert report.get_run("rm-step3", "off").completed  # the seed's command as written does not crash hakmem-ref
    assert report.get_run("rm-step3", "off").header_frees == 0
    c = report.get_claim("random-mixed-no-segv")
    assert f"registry-capacity (SIGSEGV in magic_read at event #{run.crash_event})" in c.measurement


def test_safe_never_crashes_and_never_misroutes(report):
    for r in report.runs:
        if r.probe == "safe":
            assert r.completed, r.trace
            assert r.misrouted == 0, r.trace
    assert all(not t.failed for t in report.stress if t.probe == "safe")


def test_seed_probes_misroute_the_all_miss_frees_and_the_corrected_ones_do_not(report):
    for key in ("rm-step3+all-miss", "rm-step4+all-miss"):
        for p in ("seed-mincore", "seed-msync"):
            r = report.get_run(key, p)
            assert r.completed and r.misrouted > 0.9 * r.frees, (key, p, r.misrouted, r.frees)
            assert r.fallback == r.misrouted  # each went to unmapped_header_fallback
        for p in ("off", "mincore", "safe"):
            r = report.get_run(key, p)
            assert r.completed and r.misrouted == 0 and r.header_frees == r.frees
    worst = report.get_claim("worst-case")
    assert "seed-mincore" not in worst.holds_for and "seed-msync" not in worst.holds_for
    assert "misroutes/leaks" in worst.measurement
    assert "seed-mincore" not in report.get_claim("correct-handler").holds_for


def test_corrected_mincore_crashes_on_a_protnone_guard(report):
    r = report.get_run("rm-step3+protnone-guard", "mincore")
    assert r.crash_signal == "SIGSEGV" and r.crash_stage == "magic_read"
    assert report.get_run("rm-step3+protnone-guard", "seed-mincore").completed
    assert "mincore" not in report.get_claim("random-mixed-no-segv").holds_for
    nfp = report.get_claim("no-false-positives")
    assert nfp.holds_for == ("safe",) and nfp.verdict == "holds only for safe"
    assert f"--event {r.crash_event}" in nfp.evidence[-1]


def test_larson_is_all_tiny_and_every_variant_completes(report):
    c = report.get_claim("larson-works")
    assert c.status == "holds" and c.holds_for == verify.FIXES
    for p in verify.VARIANTS:
        r = report.get_run("larson-step3", p)
        assert r.completed and r.header_frees == 0 and r.routes == {"ss_hit": r.frees}


def test_stress_loop_counts_failures_per_variant(report):
    tallies = {(t.fault, t.probe): t for t in report.stress}
    assert tallies[("registry-capacity", "off")].failed == tuple(range(1, SEEDS + 1))
    assert tallies[("none", "off")].failed == () and tallies[("none", "off")].header_frees == 0
    assert tallies[("protnone-guard", "mincore")].failed == tuple(range(1, SEEDS + 1))
    c = report.get_claim("stress")
    assert "safe" in c.holds_for and "mincore" not in c.holds_for


def test_speed_claims_are_ratios_against_off(report):
    by = {(o.trace, o.probe): o for o in report.overheads}
    assert set(by) == {(k, p) for k in verify.TIMINGS for p in verify.FIXES}
    cells = {(t.trace, t.probe) for t in report.timings}
    assert ("rm-step4", verify.AA) in cells and ("rm-step4+registry-capacity", "off") not in cells
    assert by[("rm-step4+registry-capacity", "safe")].baseline_trace == "rm-step4"  # off crashes on the fault trace
    assert all(o.ratio is not None for o in report.overheads)
    for c in (report.get_claim("worst-case"), report.get_claim("larson-perf"), report.get_claim("random-mixed-perf")):
        assert "x [" in c.measurement and "vs off" in c.measurement
        assert not re.search(r"\d\s*(ms|ns|µs)\b", c.measurement), c.measurement  # no absolute times


# ------------------------------------------------------------ the rules, on made-up numbers
def _synthetic(ratio: float, misrouted: int = 0, noise: float = 0.01) -> model.VerifyReport:
    key = "rm-step4+all-miss"
    runs = [
        model.VerifyRun(key, p, True, None, None, None, 100, 100, 50, 50, misrouted if p == "seed-mincore" else 0, 0, misrouted if p == "seed-mincore" else 0, 0, 0, 7 if misrouted and p == "seed-mincore" else None, None, {"malloc_hdr": 50})
        for p in verify.VARIANTS
    ]
    overheads = [model.Overhead(key, p, key, "off", ratio, ratio - 0.01, ratio + 0.01, noise) for p in verify.FIXES]
    return model.VerifyReport([], {}, runs, [], [], overheads, None, {})


def test_worst_case_rule_uses_the_ratio_the_noise_and_correctness():
    opts = verify.VerifyOptions.make_quick()
    ok = verify.judge(_synthetic(1.08), opts, ["worst-case"])[0]
    assert ok.status == "holds" and "1.08x [1.07–1.09]" in ok.measurement
    assert verify.judge(_synthetic(1.105, noise=0.01), opts, ["worst-case"])[0].status == "holds"  # within noise
    bad = verify.judge(_synthetic(1.25), opts, ["worst-case"])[0]
    assert bad.status == "does not hold"
    wrong = verify.judge(_synthetic(1.0, misrouted=40), opts, ["worst-case"])[0]
    assert wrong.verdict == "holds only for seed-msync, mincore, safe"
    assert "misroutes/leaks 40 of 50 frees (first: event #7)" in wrong.measurement


def test_verdict_wording():
    assert verify.verdict_for(list(verify.FIXES)) == ("holds", "holds")
    assert verify.verdict_for([]) == ("does not hold", "does not hold")
    assert verify.verdict_for(["safe", "seed-msync"]) == ("holds only for seed-msync, safe", "partly")


def test_overheads_are_paired_ratios_with_an_aa_noise_floor():
    # a disturbed round slows off and its neighbour alike: the paired ratio stays 2
    cells = [model.TimingCell("rm-step4", "off", (1.0, 1.0, 3.0, 1.0, 1.0))]
    cells += [model.TimingCell("rm-step4", verify.AA, (1.0, 1.02, 3.0, 0.98, 1.0))]
    cells += [model.TimingCell("rm-step4", p, (2.0, 2.0, 6.0, 2.0, 2.0)) for p in verify.FIXES]
    o = next(x for x in verify._overheads(cells) if x.probe == "safe")
    assert o.ratio == 2.0 and (o.ratio_lo, o.ratio_hi) == (2.0, 2.0)
    assert o.noise == verify.MIN_NOISE  # median |AA - 1| is 0
    cells[1] = model.TimingCell("rm-step4", verify.AA, (1.1, 0.9, 3.3, 1.1, 0.9))
    assert next(x for x in verify._overheads(cells) if x.probe == "safe").noise == pytest.approx(0.2)
    crashed = [model.TimingCell("rm-step4", "off", (1.0,)), model.TimingCell("rm-step4", "safe", (None,))]
    assert next(x for x in verify._overheads(crashed) if x.probe == "safe").ratio is None


# ------------------------------------------------------------------------- CLI
def test_cli_verify_subset_json():
    result = runner.invoke(app, ["verify", "--quick", "--claim", "larson-works", "--claim", "no-false-positives", "--seeds", "0", "--runs", "1", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [c["id"] for c in doc["claims"]] == ["no-false-positives", "larson-works"]
    assert doc["timings"] == [] and doc["stress"] == []


def test_cli_verify_unknown_claim():
    result = runner.invoke(app, ["verify", "--quick", "--claim", "nonsense"])
    assert result.exit_code == 3
    assert "unknown claim nonsense" in result.output
