"""The route explorer, driven with keys (Textual pilot) and compared with snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from forensics.browse import Filter, from_saved
from forensics.replay import ReplayConfig, run_replay
from forensics.saved import open_result, save_result
from forensics.tui import EventTable, ExplorerApp, parse_filter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLE = FIXTURES / "tui-sample.hfres"


def _pane_text(app: ExplorerApp, selector: str) -> str:
    """The plain text of a pane, rendered the way the screen shows it (theme included)."""
    from rich.console import Console

    from forensics.theme import THEME

    static = app.query_one(selector)
    content = static.content
    console = Console(theme=THEME, width=200, record=True, file=open("/dev/null", "w"))
    console.print(content)
    return console.export_text()


def _detail_text(app: ExplorerApp) -> str:
    return _pane_text(app, "#detail")


@pytest.fixture(scope="module")
def segv_result(tmp_path_factory):
    path = tmp_path_factory.mktemp("tui") / "segv.hfres"
    config = ReplayConfig()
    save_result(run_replay(FIXTURES / "segv-registry-escape.trace", config, keep_events=True), config, path)
    return path


@pytest.fixture(scope="module")
def double_free_result(tmp_path_factory):
    path = tmp_path_factory.mktemp("tui") / "df.hfres"
    config = ReplayConfig()
    save_result(run_replay(FIXTURES / "scenario-double-free.trace", config, keep_events=True), config, path)
    return path


async def test_filter_to_misrouted(double_free_result):
    with open_result(double_free_result) as saved:
        app = ExplorerApp(from_saved(saved), source="df", saved=saved, inspect=False)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("colon")
            await pilot.press(*"outcome=misrouted")
            await pilot.press("enter")
            await pilot.pause()
            table = app.query_one(EventTable)
            assert len(table.view) == 4
            for i in table.view:
                assert saved.get_event(i).outcome.value == "misrouted"
            # the summary follows the filter
            summary = _pane_text(app, "#summary")
            assert "outcome=misrouted: 4 events" in summary
            # the detail pane shows the selected misrouted event
            first = table.view[0]
            text = _detail_text(app)
            assert f"Event #{first}" in text and "outcome: misrouted" in text
            assert "double_free" in text and "route ss_hit -> tiny_free" in text
            await pilot.press("x")
            await pilot.pause()
            assert len(table.view) == saved.num_events


async def test_jump_to_crash_then_its_allocation_and_explain(segv_result):
    with open_result(segv_result) as saved:
        crash = saved.doc["crash"]["event_index"]
        app = ExplorerApp(from_saved(saved), source="segv", saved=saved, inspect=True)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("c")
            await pilot.pause()
            table = app.query_one(EventTable)
            assert table.selected == crash
            text = _detail_text(app)
            assert f"Event #{crash}" in text and "outcome: crashed" in text and "status: started" in text
            # open the allocation of the crashing block
            await pilot.press("a")
            await pilot.pause()
            alloc = table.selected
            assert alloc is not None and alloc < crash
            ev = saved.get_event(alloc)
            assert ev.op == "malloc" and ev.ptr == saved.get_event(crash).ptr
            assert f"Event #{alloc}" in _detail_text(app)
            # back to the crash, and the full explanation from an inspection replay
            await pilot.press("c")
            await pilot.press("enter")
            for _ in range(100):
                await pilot.pause(0.1)
                if app.last_explanation is not None:
                    break
            await pilot.pause()
            text = _detail_text(app)
            assert "never registered" in text and "SIGSEGV in magic_read" in text
            assert "Chain of causes" in text


async def test_next_anomaly_last_anomaly_and_ptr_search(segv_result):
    with open_result(segv_result) as saved:
        cols = from_saved(saved)
        app = ExplorerApp(cols, source="segv", saved=saved, inspect=False)
        async with app.run_test(size=(140, 40)) as pilot:
            table = app.query_one(EventTable)
            await pilot.press("n")
            await pilot.pause()
            assert table.selected == cols.find_next_anomaly(-1)
            await pilot.press("L")
            await pilot.pause()
            assert table.selected == cols.find_last_anomaly()
            target = saved.get_event(10).ptr
            await pilot.press("slash")
            await pilot.press(*f"{target:x}")
            await pilot.press("enter")
            await pilot.pause()
            assert len(table.view) >= 1 and all(f"{saved.get_event(i).ptr:x}".find(f"{target:x}") != -1 for i in table.view)


async def test_keys_move_and_help_and_quit():
    with open_result(SAMPLE) as saved:
        app = ExplorerApp(from_saved(saved), source="sample", saved=saved, inspect=False)
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.query_one(EventTable)
            await pilot.press("down", "down", "down")
            assert table.selected == 3
            await pilot.press("end")
            assert table.selected == saved.num_events - 1
            await pilot.press("home")
            assert table.selected == 0
            await pilot.click(EventTable, offset=(2, 5))
            await pilot.pause()
            assert table.selected == table.scroll_offset.y + 4
            await pilot.press("question_mark")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
            await pilot.press("q")
        assert app.return_code in (0, None)


def test_parse_filter():
    f = parse_filter("outcome=misrouted,leaked route=ss_hit thread=1,2 size=tiny ptr=7fff anomalies")
    assert f == Filter(frozenset({"ss_hit"}), frozenset({"misrouted", "leaked"}), frozenset({1, 2}), frozenset({"tiny"}), "7fff", True)
    with pytest.raises(ValueError, match="unknown key"):
        parse_filter("colour=red")
    with pytest.raises(ValueError, match="key=value"):
        parse_filter("misrouted")


def test_export_view_json(tmp_path, monkeypatch):
    import asyncio
    import json

    monkeypatch.chdir(tmp_path)

    async def run():
        with open_result(SAMPLE) as saved:
            app = ExplorerApp(from_saved(saved), source="sample", saved=saved, inspect=False)
            async with app.run_test(size=(100, 30)) as pilot:
                await pilot.press("exclamation_mark")
                await pilot.press("e")
                await pilot.pause()
            return saved.doc["anomalies_total"]

    total = asyncio.run(run())
    doc = json.loads((tmp_path / "hakmem-forensics-view.json").read_text())
    assert doc["filter"] == "anomalies" and len(doc["events"]) == total
    assert all(e["outcome"] not in ("correct", "none") for e in doc["events"])


@pytest.mark.parametrize("size", [(80, 24), (140, 40)])
def test_snapshot(snap_compare, size):
    saved = open_result(SAMPLE)
    app = ExplorerApp(from_saved(saved), source="tui-sample.hfres", saved=saved, inspect=False)
    assert snap_compare(app, terminal_size=size, press=["c"])


def _route_log(tmp_path, trace: Path, *knobs: str) -> Path:
    """hakmem-ref's stderr of a replay with the route trace on."""
    import subprocess

    from forensics import abi
    from forensics.trace import convert

    binary = tmp_path / "t.htb"
    convert(trace, binary, to="binary")
    log = tmp_path / "route.log"
    args = [str(abi.find_replay_exe()), str(binary), "--lib", str(abi.find_allocator()), "--quiet", "--knob", "HAKMEM_FREE_ROUTE_TRACE=1"]
    for k in knobs:
        args += ["--knob", k]
    with open(log, "wb") as err:
        subprocess.run(args, stderr=err, check=False)
    return log


async def test_route_log_opens_at_once_and_filters(tmp_path):
    import gzip

    from forensics.browse import from_log

    log = _route_log(tmp_path, FIXTURES / "probe-safe.trace")
    gz = tmp_path / "route.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    lines = [line for line in log.read_text().splitlines() if line.startswith("[hakmem-route]")]
    for path in (log, gz):
        cols = from_log(path)
        assert cols.n == len(lines)
    cols = from_log(gz)
    im = sum(1 for line in lines if "route=invalid_magic_tiny_recovery" in line)
    app = ExplorerApp(cols, source="route.log.gz", saved=None, inspect=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("colon", *"route=invalid_magic_tiny_recovery", "enter")
        await pilot.pause()
        table = app.query_one(EventTable)
        assert len(table.view) == im > 0
        text = _detail_text(app)
        assert "route invalid_magic_tiny_recovery -> tiny_free" in text and "tried: ss,mid,l25,probe,magic" in text
        assert "invalid_magic_tiny_recovery" in _pane_text(app, "#summary")


def test_not_a_log_is_a_one_line_error(tmp_path):
    from forensics.browse import from_log
    from forensics.errors import BadInputError

    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n")
    with pytest.raises(BadInputError, match="no \\[hakmem-route\\]"):
        from_log(junk)
