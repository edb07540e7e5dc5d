"""The `explain` report: provenance, the free path stage by stage, the header bytes, the crash,
the chain of causes (rich and JSON).

JSON schema "hakmem-forensics/explain/1":

    {
      "schema": "hakmem-forensics/explain/1",
      "result": str,                          # the saved result explained
      "explanations": [explanation]
    }
    explanation = {
      "event": event | null,                  # as in hakmem-forensics/replay/1
      "addr": int, "addr_hex": str,
      "provenance": {"addr": int, "relation": "inside"|"before"|"after"|"none", "offset": int,
                     "as_of_event": int, "text": str,
                     "block": null | {"obj": int, "ptr": int, "size": int, "alloc_event": int,
                                      "alloc_op": str, "tid": int, "site": int,
                                      "free_event": int | null, "libc": bool}},
      "expected": str,                        # the route the block's owner needs
      "stages": [finding], "causes": [finding],
      "header": null | {"base": int, "hex": str ("??" = unreadable byte), "header_addr": int,
                        "header_size": int, "magic_expected": int, "magic_found": int | null,
                        "owner": str, "provenance": str | null},
      "crash": null | {"signal": str, "fault_address": int, "ptr": int | null, "stage": str,
                       "text": str, "maps": [str]},
      "verdict": str,
      "facts": {...}                          # the raw inspection (hfreplay/inspect/1)
    }
    finding = {"text": str, "evidence": str, "event_index": int | null,
               "severity": "info" | "ok" | "warn" | "bad"}
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from forensics.model import Explanation, Finding, HeaderDump, Provenance
from forensics.report.replay import event_to_json

SCHEMA = "hakmem-forensics/explain/1"

_SEVERITY_STYLE = {"ok": "outcome.ok", "bad": "error", "warn": "warn", "info": ""}
_SEVERITY_MARK = {"ok": "✓", "bad": "✗", "warn": "!", "info": "·"}


def _finding(f: Finding) -> dict[str, Any]:
    return {"text": f.text, "evidence": f.evidence, "event_index": f.event_index, "severity": f.severity}


def _provenance(p: Provenance) -> dict[str, Any]:
    b = p.block
    return {
        "addr": p.addr,
        "relation": p.relation,
        "offset": p.offset,
        "as_of_event": p.as_of_event,
        "text": p.text,
        "block": None
        if b is None
        else {"obj": b.obj, "ptr": b.ptr, "size": b.size, "alloc_event": b.alloc_event, "alloc_op": b.alloc_op, "tid": b.tid, "site": b.site, "free_event": b.free_event, "libc": b.libc},
    }


def hex_string(h: HeaderDump) -> str:
    return "".join("??" if b is None else f"{b:02x}" for b in h.data)


def explanation_to_json(e: Explanation) -> dict[str, Any]:
    h = e.header
    return {
        "event": event_to_json(e.event) if e.event else None,
        "addr": e.addr,
        "addr_hex": f"{e.addr:#x}",
        "provenance": _provenance(e.provenance),
        "expected": e.expected,
        "stages": [_finding(f) for f in e.stages],
        "causes": [_finding(f) for f in e.causes],
        "header": None
        if h is None
        else {
            "base": h.base,
            "hex": hex_string(h),
            "header_addr": h.header_addr,
            "header_size": h.header_size,
            "magic_expected": h.magic_expected,
            "magic_found": h.magic_found,
            "owner": h.owner_text,
            "provenance": h.provenance.text if h.provenance else None,
        },
        "crash": None
        if e.crash is None
        else {"signal": e.crash.signal, "fault_address": e.crash.fault_address, "ptr": e.crash.ptr, "stage": e.crash.stage, "text": e.crash.text, "maps": [line for _lo, _hi, line, _m in e.crash.maps_excerpt]},
        "verdict": e.verdict,
        "facts": e.facts,
    }


def to_json(result_path: str, explanations: list[Explanation]) -> dict[str, Any]:
    return {"schema": SCHEMA, "result": result_path, "explanations": [explanation_to_json(e) for e in explanations]}


# ------------------------------------------------------------------------ rich
def hexdump_lines(h: HeaderDump, ptr: int) -> list[Text]:
    """16 bytes a line; the magic and the rest of the header highlighted, unreadable bytes '??'."""
    out: list[Text] = []
    for off in range(0, len(h.data), 16):
        addr = h.base + off
        line = Text(f"{addr:#x} ", style="value.addr")
        for i in range(16):
            a = addr + i
            b = h.data[off + i] if off + i < len(h.data) else None
            in_header = h.header_addr <= a < h.header_addr + h.header_size
            is_magic = h.header_addr <= a < h.header_addr + 4
            style = "error" if is_magic else ("warn" if in_header else ("label" if a >= ptr else "muted"))
            line.append((" ??" if b is None else f" {b:02x}") + (" " if i == 7 else ""), style=style)
        if addr <= h.header_addr < addr + 16:
            line.append(" <- hdr", style="warn")
        if addr <= ptr < addr + 16:
            line.append(" <- ptr", style="label")
        out.append(line)
    return out


def _findings(title: str, findings: list[Finding], numbered: bool = False) -> list[Text]:
    out = [Text(title, style="label")]
    for i, f in enumerate(findings, 1):
        mark = f"{i}. " if numbered else f"{_SEVERITY_MARK.get(f.severity, '·')} "
        t = Text("  " + mark, style=_SEVERITY_STYLE.get(f.severity, ""))
        t.append(f.text, style=_SEVERITY_STYLE.get(f.severity, ""))
        out.append(t)
        if f.evidence:
            out.append(Text("      " + f.evidence, style="muted"))
    return out


def render_explanation(e: Explanation, console: Console) -> None:
    console.print(explanation_renderable(e))


def explanation_renderable(e: Explanation, *, panel: bool = True) -> Any:
    """The explanation as one rich renderable (a Panel, or the bare Group)."""
    parts: list[Any] = []
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="label", no_wrap=True)
    grid.add_column()
    if e.event is not None:
        ev = e.event
        grid.add_row("Event", Text(f"#{ev.index}, thread {ev.tid}: {ev.op}" + (f" obj {ev.obj}" if ev.obj else "") + f" ({ev.ptr:#x})"))
        grid.add_row("Outcome", Text(ev.outcome.value, style="error" if ev.is_anomaly else "outcome.ok"))
    # texts built from the trace (sites, paths): Text, never markup
    grid.add_row("Provenance", Text(e.provenance.text))
    if e.expected:
        grid.add_row("Owner needs", Text(e.expected))
    parts.append(grid)
    if e.stages:
        parts.extend(_findings("Free path" if e.event is not None else "Facts", e.stages))
    if e.header is not None:
        h = e.header
        found = f"{h.magic_found:#x}" if h.magic_found is not None else "(never read)"
        parts.append(Text.assemble(("Header at ptr - HEADER_SIZE ", "label"), (f"{h.header_addr:#x}", "value.addr"), f": expected magic {h.magic_expected:#x}, found {found}"))
        parts.extend(hexdump_lines(h, e.addr))
        parts.append(Text(f"  those bytes: {h.owner_text}", style="muted"))
        if h.provenance is not None:
            parts.append(Text(f"  {h.provenance.text}", style="muted"))
    if e.crash is not None:
        parts.append(Text.assemble(("Crash ", "label"), (e.crash.text, "outcome.crash")))
        for _lo, _hi, line, mark in e.crash.maps_excerpt:
            parts.append(Text("  " + line, style="error" if mark else "muted"))
    if e.causes:
        parts.extend(_findings("Chain of causes", e.causes, numbered=True))
    parts.append(Text.assemble(("Verdict ", "label"), e.verdict))
    title = f"Event #{e.event.index}" if e.event is not None else f"Address {e.addr:#x}"
    if not panel:
        return Group(*parts)
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


def render(explanations: list[Explanation], console: Console) -> None:
    for e in explanations:
        render_explanation(e, console)
