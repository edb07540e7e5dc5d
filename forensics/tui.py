"""The interactive route explorer: a Textual app over a replay's events.

It reads records only: rows, filters, counts and jump targets come from forensics.browse,
explanations from forensics.explain (through an inspection replay in a child process, run on
a worker thread so the table never waits), and rich renderables from forensics.report. The
event table is virtual: it renders only the lines on screen, whatever the number of events.
"""

from __future__ import annotations

import json
import re
from array import array
from pathlib import Path
from typing import Callable

from rich.console import Group
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Header, Input, Static

from forensics import explain as explain_mod
from forensics.browse import EventColumns, Filter, Row
from forensics.report import explain as explain_report
from forensics.report.replay import event_to_json
from forensics.theme import THEME

COLUMNS = (("event", 8), ("thr", 4), ("op", 13), ("ptr", 14), ("size", 8), ("route", 27), ("outcome", 16))
_OUTCOME_STYLE = {
    "misrouted": Style(color="yellow", bold=True),
    "leaked": Style(color="yellow"),
    "invalid_magic": Style(color="red"),
    "crashed": Style(color="white", bgcolor="red", bold=True),
    "detected_invalid": Style(color="cyan"),
    "correct": Style(color="green"),
}


def format_row(row: Row) -> list[str]:
    return [
        f"#{row.index}",
        str(row.tid),
        row.op,
        f"{row.ptr:x}" if row.ptr else "-",
        str(row.size) if row.size else "",
        row.route or "",
        row.outcome or "",
    ]


def parse_filter(text: str, base: Filter = Filter()) -> Filter:
    """`outcome=misrouted route=ss_hit thread=1 size=tiny ptr=7fff anomalies` -> Filter.

    Raises ValueError with a message naming the bad word."""
    routes, outcomes, tids, sizes = set(), set(), set(), set()
    ptr = ""
    anomalies = False
    for word in text.split():
        key, sep, value = word.partition("=")
        key = key.lower()
        if not sep:
            if key in ("anomalies", "anomaly", "!"):
                anomalies = True
                continue
            raise ValueError(f"'{word}': expected key=value (route, outcome, thread, size, ptr) or 'anomalies'")
        values = [v for v in value.split(",") if v]
        if key in ("route", "routes", "r"):
            routes.update(values)
        elif key in ("outcome", "outcomes", "o"):
            outcomes.update(values)
        elif key in ("thread", "threads", "tid", "t"):
            try:
                tids.update(int(v, 0) for v in values)
            except ValueError:
                raise ValueError(f"'{word}': thread ids are numbers") from None
        elif key in ("size", "class", "s"):
            sizes.update(values)
        elif key in ("ptr", "p"):
            ptr = value
        else:
            raise ValueError(f"'{word}': unknown key {key!r}")
    return Filter(frozenset(routes), frozenset(outcomes), frozenset(tids), frozenset(sizes), ptr, anomalies)


class EventTable(ScrollView, can_focus=True):
    """A virtual table: one line per event of the current view, only visible lines rendered."""

    DEFAULT_CSS = "EventTable { height: 1fr; }"
    cursor: reactive[int] = reactive(0)

    class Selected(Message):
        def __init__(self, index: int | None) -> None:
            super().__init__()
            self.index = index

    def __init__(self, columns: EventColumns, **kwargs) -> None:
        super().__init__(**kwargs)
        self.columns = columns
        self.view: array = array("I", range(columns.n))
        self._width = sum(w + 1 for _, w in COLUMNS) - 1
        self.virtual_size = Size(self._width, len(self.view) + 1)

    # ---- data
    def set_view(self, indices: array, keep: int | None = None) -> None:
        self.view = indices
        self.virtual_size = Size(self._width, len(indices) + 1)
        pos = 0
        if keep is not None and len(indices):
            pos = _bisect(indices, keep)
            pos = min(pos, len(indices) - 1)
        changed = self.cursor != pos
        self.cursor = pos
        if not changed:  # the same position now shows another event: say so
            self.post_message(self.Selected(self.selected))
        self._scroll_to_cursor()
        self.refresh()

    @property
    def selected(self) -> int | None:
        return self.view[self.cursor] if 0 <= self.cursor < len(self.view) else None

    def select_event(self, index: int) -> bool:
        """Move the cursor to trace event index; False if it is not in the view."""
        pos = _bisect(self.view, index)
        if pos < len(self.view) and self.view[pos] == index:
            self.cursor = pos
            self._scroll_to_cursor()
            return True
        return False

    # ---- rendering
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            text = " ".join(name.ljust(w)[:w] for name, w in COLUMNS)
            return Strip([Segment(text, Style(bold=True, reverse=True))]).crop(scroll_x, scroll_x + width).simplify()
        pos = scroll_y + y - 1
        if pos >= len(self.view):
            return Strip.blank(width)
        row = self.columns.get_row(self.view[pos])
        cells = format_row(row)
        segs = []
        selected = pos == self.cursor
        for k, ((name, w), cell) in enumerate(zip(COLUMNS, cells)):
            style = _OUTCOME_STYLE.get(row.outcome, Style()) if name == "outcome" else Style()
            if selected:
                style = style + Style(reverse=True)
            segs.append(Segment(cell.ljust(w)[:w] + (" " if k + 1 < len(COLUMNS) else ""), style))
        return Strip(segs).crop(scroll_x, scroll_x + width).simplify()

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh()
        self.post_message(self.Selected(self.selected))

    def _visible_rows(self) -> int:
        # the header line takes one row; a horizontal scrollbar, when shown, another
        return max(self.scrollable_content_region.height - 1, 1)

    def _page(self) -> int:
        return max(self._visible_rows() - 1, 1)

    def _scroll_to_cursor(self) -> None:
        top = self.scroll_offset.y
        visible = self._visible_rows()
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)

    def move(self, delta: int) -> None:
        if not len(self.view):
            return
        self.cursor = max(0, min(len(self.view) - 1, self.cursor + delta))
        self._scroll_to_cursor()

    def on_key(self, event: events.Key) -> None:
        moves = {"up": -1, "down": 1, "pageup": -self._page(), "pagedown": self._page(), "k": -1, "j": 1}
        if event.key in moves:
            self.move(moves[event.key])
            event.stop()
        elif event.key in ("home", "g"):
            self.move(-len(self.view))
            event.stop()
        elif event.key in ("end", "G"):
            self.move(len(self.view))
            event.stop()

    def on_click(self, event: events.Click) -> None:
        pos = self.scroll_offset.y + event.y - 1
        if 0 <= pos < len(self.view):
            self.cursor = pos
        self.focus()


def _bisect(a: array, x: int) -> int:
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


HELP = """\
[b]Keys[/b]
  ↑ ↓ PgUp PgDn Home End   move (also j k g G); click a row to select it
  n            next anomaly (any non-correct free, or the crash)
  L            last anomaly
  c            the crash
  a            the allocation of the selected block
  p            the previous free of the selected pointer
  enter / i    explain the selected event in depth (replays up to it in a child)
  /            search pointers (hex digits, e.g. 7ffff6b0)
  :            filter: route=… outcome=… thread=… size=tiny|mid|l25|large ptr=… anomalies
  !            anomalies only, on/off
  x            clear the filter
  e / h        export the current view to JSON / HTML
  ?            this help       q  quit
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = "HelpScreen { align: center middle; } HelpScreen > Static { width: 80; padding: 1 2; border: round $accent; background: $panel; }"

    def compose(self) -> ComposeResult:
        yield Static(HELP, markup=True)


class ExplorerApp(App[None]):
    """Browse a replay: event table, detail pane, summary pane that follows the filter."""

    TITLE = "hakmem-forensics"
    CSS = """
    #left { width: 3fr; }
    #right { width: 2fr; min-width: 40; }
    #summary { height: auto; max-height: 40%; border: round $primary; }
    #detail { border: round $secondary; }
    #prompt { display: none; }
    #prompt.visible { display: block; }
    #status { height: 1; background: $boost; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("n", "next_anomaly", "next anomaly"),
        Binding("L", "last_anomaly", "last anomaly", show=False),
        Binding("c", "crash", "crash"),
        Binding("a", "allocation", "allocation"),
        Binding("p", "previous_free", "prev free"),
        Binding("enter,i", "inspect", "explain"),
        Binding("slash", "search", "ptr search"),
        Binding("colon", "filter", "filter"),
        Binding("exclamation_mark", "toggle_anomalies", "anomalies", show=False),
        Binding("x", "clear_filter", "clear", show=False),
        Binding("e", "export_json", "export", show=False),
        Binding("h", "export_html", "html", show=False),
    ]

    def __init__(self, columns: EventColumns, *, source: str, saved=None, inspect: bool = True, explain_fn: Callable | None = None) -> None:
        super().__init__()
        self.columns = columns
        self.source = source
        self.saved = saved
        self.inspect_enabled = inspect and saved is not None
        self.filter = Filter()
        self.prompt_mode = ""
        self._explain_fn = explain_fn
        self._history = None
        self._geometry = None
        self.detail_event: int | None = None
        self.last_explanation = None

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal():
            with Vertical(id="left"):
                yield EventTable(self.columns, id="table")
                yield Input(id="prompt")
                yield Static("", id="status")
            with Vertical(id="right"):
                yield Static("", id="summary")
                with VerticalScroll(id="detail-scroll"):
                    yield Static("", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        # the reporters' renderables use the toolkit's semantic style names (label, warn, ...)
        self.console.push_theme(THEME)
        self.sub_title = f"{self.source} — {self.columns.n:,} events"
        self.query_one(EventTable).focus()
        self._refresh_summary()
        self._show_quick(self.query_one(EventTable).selected)
        if getattr(self.columns, "note", ""):
            self._status(self.columns.note)

    # ---- panes
    def _refresh_summary(self) -> None:
        counts = self.columns.get_counts(self.filter)
        t = Table(title=Text(f"{self.filter.describe()}: {counts.rows:,} events", style="table.title"), title_justify="left", expand=True, show_edge=False)
        t.add_column("route")
        t.add_column("frees", justify="right")
        for name, n in sorted(counts.routes.items(), key=lambda kv: -kv[1]):
            t.add_row(Text(name), f"{n:,}")
        o = Table(expand=True, show_edge=False)
        o.add_column("outcome")
        o.add_column("events", justify="right")
        for name, n in sorted(counts.outcomes.items(), key=lambda kv: -kv[1]):
            o.add_row(Text(name, style=_OUTCOME_STYLE.get(name, Style())), f"{n:,}")
        self.query_one("#summary", Static).update(Group(t, o))

    def _status(self, text: str) -> None:
        # status lines quote file names, filters the user typed and error messages: Text, never markup
        self.query_one("#status", Static).update(Text(text))

    def _show_quick(self, index: int | None) -> None:
        """What the saved records say about an event, at once (no replay)."""
        detail = self.query_one("#detail", Static)
        self.detail_event = index
        if index is None:
            detail.update("no event selected")
            return
        row = self.columns.get_row(index)
        lines = [Text.assemble(("Event ", "bold"), f"#{row.index}, thread {row.tid}: {row.op}" + (f" obj {row.obj}" if row.obj else ""))]
        if row.ptr:
            lines.append(Text(f"ptr {row.ptr:#x}" + (f", {row.size} bytes" if row.size else "")))
        ev = self.columns.get_event(index)
        d = ev.decision
        if ev.owner.value != "none" or d is not None:
            lines.append(Text(f"owner: {ev.owner.value}   outcome: {ev.outcome.value}   status: {ev.status.value}"))
            if d is not None:
                lines.append(Text(f"route {d.route.value if d.route else '-'} -> {d.action.value}"))
                lines.append(Text("tried: " + (",".join(s.value for s in d.tried) or "-") + "   hit: " + (",".join(s.value for s in d.hit) or "-")))
                lines.append(Text(f"probe: {d.probe.value}" + (f"   magic: {d.magic_found:#x}" if d.magic_found is not None else "") + (f"   method: {d.method}" if d.method is not None else "")))
        if self.inspect_enabled:
            lines.append(Text("press enter to explain in depth (provenance, registry history, header bytes)", style="dim"))
        detail.update(Group(*lines))

    def on_event_table_selected(self, message: EventTable.Selected) -> None:
        self._show_quick(message.index)

    # ---- deep explanation, off the UI thread
    def action_inspect(self) -> None:
        index = self.query_one(EventTable).selected
        if index is None or self.saved is None:
            return
        self._status(f"explaining event #{index}: replaying up to it in a child…")
        self._explain(index)

    @work(thread=True, exclusive=True)
    def _explain(self, index: int) -> None:
        try:
            if self._explain_fn is not None:
                exp = self._explain_fn(index)
            else:
                (exp,) = explain_mod.explain_result(self.saved, events=[index])
        except Exception as exc:  # noqa: BLE001 - shown to the user, never fatal
            self.call_from_thread(self._status, f"cannot explain #{index}: {exc}")
            return
        self.call_from_thread(self._show_explanation, index, exp)

    def _show_explanation(self, index: int, exp) -> None:
        self.last_explanation = exp
        if self.detail_event != index:
            return
        parts = [explain_report.explanation_renderable(exp, panel=False)]
        amap = _address_map(exp)
        if amap is not None:
            parts.append(amap)
        self.query_one("#detail", Static).update(Group(*parts))
        self._status(f"event #{index} explained")

    # ---- jumps
    def _jump(self, index: int | None, what: str) -> None:
        if index is None:
            self._status(f"no {what}")
            return
        table = self.query_one(EventTable)
        if not table.select_event(index):
            self.filter = Filter()
            table.set_view(self.columns.get_indices(self.filter), keep=index)
            self._refresh_summary()
            self._status(f"{what}: #{index} (filter cleared: it was outside the view)")
            table.select_event(index)
        else:
            self._status(f"{what}: #{index}")

    def action_next_anomaly(self) -> None:
        sel = self.query_one(EventTable).selected
        self._jump(self.columns.find_next_anomaly(sel if sel is not None else -1), "next anomaly")

    def action_last_anomaly(self) -> None:
        self._jump(self.columns.find_last_anomaly(), "last anomaly")

    def action_crash(self) -> None:
        self._jump(self.columns.crash_index, "crash")

    def action_allocation(self) -> None:
        sel = self.query_one(EventTable).selected
        self._jump(None if sel is None else self.columns.find_allocation(sel), "allocation of this block")

    def action_previous_free(self) -> None:
        sel = self.query_one(EventTable).selected
        self._jump(None if sel is None else self.columns.find_previous_free(sel), "previous free of this pointer")

    # ---- filters
    def apply_filter(self, f: Filter) -> None:
        self.filter = f
        table = self.query_one(EventTable)
        keep = table.selected
        table.set_view(self.columns.get_indices(f), keep=keep)
        self._refresh_summary()
        self._status(f"{len(table.view):,} events: {f.describe()}")

    def action_toggle_anomalies(self) -> None:
        f = self.filter
        self.apply_filter(Filter(f.routes, f.outcomes, f.tids, f.size_classes, f.ptr_text, not f.anomalies_only))

    def action_clear_filter(self) -> None:
        self.apply_filter(Filter())

    def _open_prompt(self, mode: str, placeholder: str) -> None:
        self.prompt_mode = mode
        prompt = self.query_one("#prompt", Input)
        prompt.placeholder = placeholder
        prompt.value = ""
        prompt.add_class("visible")
        prompt.focus()

    def action_search(self) -> None:
        self._open_prompt("ptr", "pointer hex digits (enter to apply, escape to cancel)")

    def action_filter(self) -> None:
        self._open_prompt("filter", "route=… outcome=… thread=… size=… ptr=… anomalies")

    def on_input_submitted(self, message: Input.Submitted) -> None:
        prompt = self.query_one("#prompt", Input)
        text = message.value.strip()
        prompt.remove_class("visible")
        self.query_one(EventTable).focus()
        f = self.filter
        try:
            if self.prompt_mode == "ptr":
                if text and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", text):
                    raise ValueError(f"'{text}' is not hex digits")
                self.apply_filter(Filter(f.routes, f.outcomes, f.tids, f.size_classes, text, f.anomalies_only))
            else:
                self.apply_filter(parse_filter(text))
        except ValueError as exc:
            self._status(f"filter not applied: {exc}")

    def on_key(self, event: events.Key) -> None:
        prompt = self.query_one("#prompt", Input)
        if event.key == "escape" and prompt.has_class("visible"):
            prompt.remove_class("visible")
            self.query_one(EventTable).focus()
            event.stop()

    # ---- export
    def _view_rows(self, limit: int = 100_000) -> list[dict]:
        table = self.query_one(EventTable)
        rows = []
        for i in table.view[:limit]:
            if self.saved is not None:
                rows.append(event_to_json(self.saved.get_event(i)))
            else:
                r = self.columns.get_row(i)
                rows.append({"event_index": r.index, "tid": r.tid, "op": r.op, "ptr": r.ptr, "route": r.route or None, "outcome": r.outcome or None})
        return rows

    def action_export_json(self) -> None:
        path = Path("hakmem-forensics-view.json")
        doc = {"schema": "hakmem-forensics/view/1", "source": self.source, "filter": self.filter.describe(), "events": self._view_rows()}
        if not self._write(path, json.dumps(doc, indent=1)):
            return
        self._status(f"exported {len(doc['events']):,} events to {path}")

    def action_export_html(self) -> None:
        from forensics.report import html as html_report

        path = Path("hakmem-forensics-view.html")
        rows = self._view_rows(5000)
        body = "".join(
            f"<tr><td>#{r['event_index']}</td><td>{r['tid']}</td><td>{html_report._e(r['op'])}</td><td><code>{r['ptr']:#x}</code></td><td>{html_report._e(r.get('route') or '-')}</td><td>{html_report._e(r.get('outcome') or '')}</td></tr>"
            for r in rows
        )
        exp = html_report.explanation_html(self.last_explanation) if self.last_explanation is not None else ""
        page = html_report._page(
            "hakmem-forensics view",
            f"<h1>{html_report._e(self.source)}</h1><p>{html_report._e(self.filter.describe())}</p>"
            f"<table><tr><th>event</th><th>thread</th><th>op</th><th>ptr</th><th>route</th><th>outcome</th></tr>{body}</table>{exp}",
        )
        if not self._write(path, page):
            return
        self._status(f"exported {len(rows):,} events to {path}")

    def _write(self, path: Path, text: str) -> bool:
        """Write an export whole or not at all (a temporary file renamed into place); a failure is
        a status line, never the end of the app."""
        from forensics.errors import BadInputError
        from forensics.safeio import write_text_atomic

        try:
            write_text_atomic(path, text)
        except BadInputError as exc:
            self._status(f"not exported: {exc}")
            return False
        return True

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def _address_map(exp) -> Text | None:
    """A few lines of the memory map around the pointer (from the inspection's maps)."""
    if not exp.facts or not exp.addr:
        return None
    maps = explain_mod.parse_maps(exp.facts.get("maps", ""))
    if not maps:
        return None
    text, excerpt = explain_mod.place_address(exp.addr, maps, None)
    t = Text("Address map around the pointer\n", style="bold")
    t.append(text + "\n", style="dim")
    for lo, hi, line, inside in excerpt:
        t.append(("→ " if inside else "  ") + line + "\n", style="bold" if inside else "dim")
    return t
