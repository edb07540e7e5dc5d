"""Explanations: provenance, route stages and registry history, header bytes, crash placement,
saved results, the HTML page — through real replays of the bundled fixtures."""

from __future__ import annotations

import html.parser
import json
import re
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import explain as explain_mod
from forensics.cli import app
from forensics.errors import BadInputError
from forensics.model import EventStatus
from forensics.replay import ReplayConfig, run_replay
from forensics.report import html as html_report
from forensics.saved import open_result, save_result

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEGV = FIXTURES / "segv-registry-escape.trace"
runner = CliRunner()


@pytest.fixture(scope="module")
def segv_saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "segv.hfres"
    config = ReplayConfig()
    save_result(run_replay(SEGV, config, keep_events=True), config, path)
    return path


@pytest.fixture(scope="module")
def safe_saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "safe.hfres"
    config = ReplayConfig(probe="safe")
    save_result(run_replay(SEGV, config, keep_events=True), config, path)
    return path


def _explain(path, *args) -> list[dict]:
    res = runner.invoke(app, ["explain", str(path), *args, "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "hakmem-forensics/explain/1"
    return doc["explanations"]


def test_saved_result_round_trips_every_event(segv_saved):
    with open_result(segv_saved) as saved:
        assert saved.doc["crash"]["event_index"] == 44
        assert saved.num_events == 51056
        crash_ev = saved.get_event(44)
        assert crash_ev.outcome.value == "crashed" and crash_ev.status is EventStatus.STARTED
        assert saved.get_event(43).status is EventStatus.DONE
        assert saved.get_event(45).status is EventStatus.PENDING
        assert saved.get_crash().fault_address == crash_ev.ptr - 32
        assert saved.config.knobs == {} and not saved.config.libc
    with zipfile.ZipFile(segv_saved) as z:
        assert sorted(z.namelist()) == ["events.bin", "result.json", "trace.htb"]


def test_crash_explanation_proves_the_chain(segv_saved):
    (e,) = _explain(segv_saved, "--event", "44")
    ptr = e["addr"]
    assert e["event"]["event_index"] == 44 and e["event"]["owner"] == "tiny"
    # provenance, Valgrind style
    prov = e["provenance"]
    assert prov["relation"] == "inside" and prov["offset"] == 0 and prov["block"]["ptr"] == ptr
    assert prov["text"].startswith(f"{ptr:#x} is the start of a ") and "alloc'd at event #" in prov["text"]
    # why the SS lookup missed: the registry was full when the SuperSlab was made
    stage_text = " | ".join(s["text"] for s in e["stages"])
    assert "SS registry lookup: MISSED" in stage_text
    assert f"the SuperSlab {ptr:#x} was never registered: the registry was full (capacity 4)" in stage_text
    # the crash, placed
    crash = e["crash"]
    assert crash["fault_address"] == ptr - 32 and crash["signal"] == "SIGSEGV" and crash["stage"] == "magic_read"
    assert "(at ptr-32) is in the unmapped page just below SuperSlab" in crash["text"]
    # the header bytes below the SuperSlab are unreadable, the block's own bytes readable
    h = e["header"]
    assert h["header_addr"] == ptr - 32 and h["magic_found"] is None
    assert h["hex"][: 2 * 64] == "??" * 64 and "??" not in h["hex"][2 * 64 :]
    # the chain: capacity error (oldest) ... SIGSEGV (last)
    causes = [c["text"] for c in e["causes"]]
    assert "never registered" in causes[0] and "SIGSEGV" in causes[-1]
    events_in_chain = [c["event_index"] for c in e["causes"] if c["event_index"] is not None]
    assert events_in_chain == sorted(events_in_chain)


def test_capacity_error_event_is_the_allocation_that_made_the_superslab(segv_saved):
    (e,) = _explain(segv_saved, "--event", "44")
    cap = next(c for c in e["causes"] if "never registered" in c["text"])
    at = cap["event_index"]
    with open_result(segv_saved) as saved:
        ev = saved.get_event(at)
        assert ev.op in ("malloc", "calloc", "realloc", "memalign")
        # it is the first allocation that landed in that SuperSlab
        base = e["addr"]
        for i in range(at):
            earlier = saved.get_event(i)
            assert not (earlier.decision is None and base <= earlier.ptr < base + (1 << 20))
        assert base <= ev.ptr < base + (1 << 20)


def test_invalid_magic_explanation_names_the_bytes_owner(safe_saved):
    with open_result(safe_saved) as saved:
        first_im = next(a["event_index"] for a in saved.doc["anomalies"] if a["outcome"] == "invalid_magic")
    (e,) = _explain(safe_saved, "--event", str(first_im))
    h = e["header"]
    assert h["header_addr"] == e["addr"] - 32
    assert h["magic_expected"] == 0x48414B4D and h["magic_found"] is not None and h["magic_found"] != 0x48414B4D
    # the found value is the little-endian word at ptr-32 in the dump
    off = h["header_addr"] - h["base"]
    assert int.from_bytes(bytes.fromhex(h["hex"][2 * off : 2 * off + 8]), "little") == h["magic_found"]
    # ptr-32 of a Tiny block that is not at its SuperSlab's start lies in the previous block
    assert re.search(r"byte \d+ of a (live|free) tiny block 0x[0-9a-f]+ \(class \d+, \d+ bytes\) in SuperSlab", h["owner"])
    stage_text = " | ".join(s["text"] for s in e["stages"])
    assert "readability probe (safe) said the header" in stage_text and "right" in stage_text
    assert "magic check: found" in stage_text


def test_address_explanation(segv_saved):
    with open_result(segv_saved) as saved:
        live = saved.get_event(10)
        assert live.op == "malloc"
        addr = live.ptr + 8
    (e,) = _explain(segv_saved, "--ptr", hex(addr), "--at", "20")
    assert e["event"] is None
    assert e["provenance"]["relation"] == "inside" and e["provenance"]["offset"] == 8
    assert "8 bytes inside a" in e["provenance"]["text"]
    facts = " | ".join(s["text"] for s in e["stages"])
    assert "allocator's own bookkeeping: byte 8 of a live tiny block" in facts
    assert "probe verdicts:" in facts


def test_address_nobody_allocated(segv_saved):
    (e,) = _explain(segv_saved, "--ptr", "0x10000", "--at", "5")
    assert e["provenance"]["relation"] == "none"
    assert "not inside" in e["provenance"]["text"]
    assert any("is in no mapping" in s["text"] for s in e["stages"])


def test_default_picks_the_crash(segv_saved):
    exps = _explain(segv_saved)
    assert [e["event"]["event_index"] for e in exps] == [44]


def test_explain_a_trace_directly():
    exps = _explain(SEGV)
    assert exps[0]["crash"]["signal"] == "SIGSEGV"


def test_early_release_explains_the_unregister_with_live_blocks(tmp_path):
    trace = FIXTURES / "scenario-early-release.trace"
    path = tmp_path / "er.hfres"
    config = ReplayConfig(probe="safe")
    res = run_replay(trace, config, keep_events=True)
    save_result(res, config, path)
    leaked = next(a.index for a in res.anomalies if a.outcome.value == "leaked")
    (e,) = _explain(path, "--event", str(leaked))
    text = " | ".join(s["text"] for s in e["stages"])
    assert "unregistered at event #" in text and "of its blocks were live" in text


def test_bad_inputs_are_one_line_errors(tmp_path, segv_saved):
    not_zip = tmp_path / "x.hfres"
    not_zip.write_text("hello")
    for args in (["explain", str(not_zip)], ["explain", str(segv_saved), "--event", "999999"], ["explain", str(segv_saved), "--ptr", "zzz"], ["explain", "/nonexistent"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 3, (args, res.output)
        assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(BadInputError, match="past|died|crash"):
        with open_result(segv_saved) as saved:
            explain_mod.explain_result(saved, events=[100])


class _Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.scripts = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self.scripts += 1
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith("#"):
                self.external.append(v)


def test_html_report_is_self_contained_and_escaped(tmp_path):
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["replay", "--html", str(out), "--explain", "1"])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    checker = _Checker()
    checker.feed(page)
    assert checker.scripts == 0 and checker.external == []
    assert checker.tags.count("svg") >= 1  # the address-space map
    assert "SIGSEGV" in page and "unmapped page just below SuperSlab" in page
    # a hostile string never becomes markup
    evil = html_report.route_bar_svg({"<script>alert(1)</script>": 3})
    assert "<script>" not in evil and "&lt;script&gt;" in evil


def test_replay_summary_explains_by_itself():
    res = runner.invoke(app, ["replay"])
    assert res.exit_code == 0, res.output
    assert "Chain of causes" in res.stdout and "never registered" in res.stdout


def test_history_provenance_before_and_after(segv_saved):
    with open_result(segv_saved) as saved:
        history = explain_mod.History(saved.trace.get_records_bytes(), saved.events)
        ev = saved.get_event(10)
        rec = saved.trace.get_record(10)
        before = history.provenance(ev.ptr - 16, 20)
        after = history.provenance(ev.ptr + rec.size + 3, 20)
    assert before.relation in ("before", "inside", "after")  # a neighbour may own those bytes
    if before.relation == "before":
        assert before.offset == 16 and before.block.ptr == ev.ptr
    assert after.relation in ("after", "inside", "before")
    if after.relation == "after":
        assert after.offset == 3


def test_html_of_the_segv_fixture_renders_in_headless_chromium(tmp_path):
    """The page opens in a real browser (networking off) and draws the map with the fault marked."""
    import importlib.util
    import struct

    spec = importlib.util.spec_from_file_location("screenshot_html", Path(__file__).resolve().parent.parent / "scripts" / "screenshot_html.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    if shot.find_chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    page = tmp_path / "segv.html"
    res = runner.invoke(app, ["replay", "--html", str(page), "--explain", "1", "--json", "/dev/null"])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    assert re.search(r"<text[^>]*>fault 0x[0-9a-f]+</text>", text)  # the fault address marked on the map
    png = tmp_path / "segv.png"
    done = shot.screenshot(page, png, 1000, 1400)
    assert done.returncode == 0, done.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 1400)


def test_symbolized_sites_appear_in_provenance_and_stay_inert_in_html(tmp_path):
    """A site name from the trace header (`# meta site=...`) names the allocating call; markup in it is text."""
    trace = tmp_path / "sites.trace"
    evil = "<script>alert(1)</script>"
    trace.write_text(
        "# hakmem-trace v1\n"
        "# knob HAKMEM_SS_REG_CAPACITY=1\n"
        f"# meta site=0x401a2f {evil.replace(' ', '%20')} app.c:12 ?\n"
        "1 malloc 1 16 @0x401a2f\n"
        "1 malloc 2 1024 @0x401a2f\n"
        "1 free 2\n"
    )
    page = tmp_path / "x.html"
    res = runner.invoke(app, ["explain", str(trace), "--event", "2", "--json", "-", "--html", str(page)])
    assert res.exit_code == 0, res.output
    (e,) = json.loads(res.stdout)["explanations"]
    assert f"site {evil} (app.c:12)" in e["provenance"]["text"]
    html_text = page.read_text()
    assert evil not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
