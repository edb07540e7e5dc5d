"""Untrusted strings (paths, site names, knob values, log lines, command lines) print literally: rich markup
in them is text, HTML in them is escaped (issue 11). `[/]` is the sharp test: taken for a closing tag, rich
raises MarkupError, so a report that interprets it dies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from forensics import model
from forensics.cli import app
from forensics.model import (
    CrashRecord,
    DiffResult,
    DiffSide,
    EventResult,
    EventStatus,
    Explanation,
    Finding,
    Outcome,
    OwnerKind,
    Provenance,
    ReplayResult,
    Stage,
)
from forensics.report import diff as diff_report
from forensics.report import explain as explain_report
from forensics.report import firstbad as firstbad_report
from forensics.report import html as html_report
from forensics.report import replay as replay_report
from forensics.report import routes as routes_report
from forensics.routelog import RouteLogAnalyzer
from forensics.theme import THEME

ROOT = Path(__file__).resolve().parent.parent
MARKUP = "[bold]x[/bold][/][link=http://evil]y"
HTML = "<script>alert(1)</script>\"'><img src=x onerror=alert(1)>"
runner = CliRunner()


def _render(fn, *args) -> str:
    buf = io.StringIO()
    console = Console(theme=THEME, file=buf, width=400, color_system=None, highlight=False, force_terminal=False)
    fn(*args, console)
    return buf.getvalue()


def _event(op: str = "free") -> EventResult:
    return EventResult(index=3, op=op, tid=1, obj=2, ptr=0x1000, owner=OwnerKind.TINY, outcome=Outcome.CRASHED,
                       status=EventStatus.STARTED, check_failed=False, decision=None)


def _crash(stage: str) -> CrashRecord:
    return CrashRecord(signo=11, si_code=1, fault_address=0xFE0, ptr=0x1000, stage=Stage.MAGIC_READ, stage_name=stage,
                       has_state=True, free_seq=1, event_index=3, tid=7, maps=f"1000-2000 rw-p 0 0:0 0 {MARKUP}", maps_truncated=False)


def _result(evil: str) -> ReplayResult:
    return ReplayResult(
        trace=f"/tmp/{evil}.trace", allocator=f"/lib/{evil}.so", knobs={"HAKMEM_X": evil}, threads=False,
        num_events=10, events_done=3, threads_used=1, frees=1, allocs=2, routes={"ss_hit": 1}, outcomes={"crashed": 1},
        crash=_crash(evil), crash_event=_event(), hang=False, exit_status=None, exit_signal=11, anomalies=[_event()],
        anomaly_count=1, first_anomaly=3, check_every=0, first_check_failure=None, note=f"note {evil}",
    )


def _explanation(evil: str) -> Explanation:
    prov = Provenance(0x1000, "none", 0, None, None, f"0x1000 is in no block (site {evil})")
    return Explanation(event=_event(), addr=0x1000, provenance=prov, expected=f"needs {evil}", stages=[Finding(f"stage {evil}", evil)],
                       header=None, crash=None, causes=[Finding(f"cause {evil}")], verdict=f"verdict {evil}", facts=None)


def test_replay_and_explain_reports_print_markup_literally():
    text = _render(replay_report.render, _result(MARKUP))
    assert f"/tmp/{MARKUP}.trace" in text and f"HAKMEM_X={MARKUP}" in text and f"/lib/{MARKUP}.so" in text
    assert f"Crash: SIGSEGV in {MARKUP}" in text
    text = _render(explain_report.render, [_explanation(MARKUP)])
    for piece in (f"site {MARKUP}", f"needs {MARKUP}", f"stage {MARKUP}", f"cause {MARKUP}", f"verdict {MARKUP}"):
        assert piece in text


def test_diff_report_prints_file_names_and_report_fields_literally():
    def side(label: str) -> DiffSide:
        return DiffSide(label=label, source=f"{label} (trace {MARKUP})", allocator=MARKUP, knobs={"K": MARKUP}, num_events=4,
                        events_done=4, completed=False, routes={}, outcomes={}, crash=_crash(MARKUP), crash_event=None, hang=False)

    result = DiffResult(side(f"a{MARKUP}"), side("b[/]"), [("ss_hit", 1, 2)], [("correct", 1, 1)], None, 4, True)
    text = _render(diff_report.render, result)
    assert f"a{MARKUP}" in text and "b[/]" in text and f"(trace {MARKUP})" in text and f"K={MARKUP}" in text
    assert f"SIGSEGV in {MARKUP}" in text


def test_firstbad_report_prints_paths_literally():
    r = model.FirstBadResult(trace=MARKUP, allocator=MARKUP, knobs={"K": MARKUP}, num_events=5, events_run=5, first=None,
                             event=None, levels=[], checks=0, replays=1, crash=None, crash_event=None)
    text = _render(firstbad_report.render, r)
    assert text.count(MARKUP) >= 2 and f"K={MARKUP}" in text


def test_route_log_lines_print_literally():
    an = RouteLogAnalyzer()
    log = (b"[hakmem-route] seq=1 tid=1 ptr=0x10 route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-\n"
           b"[hakmem-route] " + MARKUP.encode() + b"\n[hakmem] WARNING: ignoring HAKMEM_X=" + MARKUP.encode() + b"\n")
    an.feed_stream(io.BytesIO(log), f"{MARKUP}.log")
    text = _render(routes_report.render, an.result())
    assert f"[hakmem-route] {MARKUP}" in text  # the malformed line, as it was
    assert f"HAKMEM_X={MARKUP}" in text  # the knob warning
    assert f"{MARKUP}.log" in text


@pytest.mark.parametrize("evil", [HTML, MARKUP])
def test_html_pages_escape_everything(evil):
    page = html_report.replay_page(_result(evil), [_explanation(evil)])
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "<img" not in page
    page = html_report.explain_page(evil, [_explanation(evil)])
    assert "<script" not in page.lower() and "<img" not in page


def test_cli_prints_hostile_file_names_and_log_contents_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("[bold]t[", "[red]r[", "p[", "["):  # so that "[/]" can be in a path: "[bold]t[" + "/" + "].trace"
        Path(d).mkdir()
    name = "[bold]t[/].trace"
    Path(name).write_bytes((ROOT / "fixtures" / "random-mixed.trace").read_bytes())
    result = runner.invoke(app, ["replay", name, "--explain", "0", "--serial", "--save", "[red]r[/].hfres", "--html", "p[/].html"])
    assert result.exit_code == 0, result.output
    assert f"Trace      {name}" in result.stdout and "Saved to [red]r[/].hfres" in result.stdout
    page = Path("p[/].html").read_text()
    assert "[bold]t[/].trace" in page  # markup is plain text in HTML
    log = Path("[/]v.log")
    log.write_bytes(b"--1-- malloc(16) = 0x10\n--1-- malloc(" + MARKUP.encode() + b") = 0x20\n")
    result = runner.invoke(app, ["import", "valgrind", str(log), "-o", "o.trace", "--lenient"])
    assert result.exit_code == 0, result.output
    assert f"Imported {log}" in result.stdout and f"malloc({MARKUP})" in result.stdout
    result = runner.invoke(app, ["import", "valgrind", str(log), "-o", "o.trace"])
    assert result.exit_code == 3 and result.stderr == f"hakmem-forensics: error: {log}:2: cannot read the arguments of malloc({MARKUP})\n"


async def test_tui_status_and_filters_print_markup_literally(tmp_path, monkeypatch):
    from forensics.browse import from_log
    from forensics.tui import ExplorerApp

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "r.log"
    log.write_bytes(b"[hakmem-route] seq=1 tid=1 ptr=0x10 route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-\n")
    app_ = ExplorerApp(from_log(log), source=f"{HTML}{MARKUP}", saved=None, inspect=False)
    async with app_.run_test(size=(140, 40)) as pilot:
        await pilot.press("colon", *"route=[/]", "enter")  # a filter the user typed, echoed in the status line
        await pilot.pause()
        await pilot.press("colon", *"bogus=[/]", "enter")
        await pilot.pause()
        status = str(app_.query_one("#status").render())
        assert "'bogus=[/]'" in status
        await pilot.press("h")  # HTML export of the view: escaped, written whole
        await pilot.pause()
    page = (tmp_path / "hakmem-forensics-view.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not list(tmp_path.glob("*.partial"))
