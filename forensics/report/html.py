"""Self-contained HTML reports: one file, inline CSS and SVG, no scripts, nothing fetched.

Pictures where a picture beats text: the route mix as a stacked bar, and an address-space map
placing the faulting address among the pointer's region and the mappings of the moment. Every
string that came from a trace, a log or the allocator (pointers, sites, paths, maps lines) is
escaped: a hostile trace cannot inject markup.
"""

from __future__ import annotations

import html
import math
from typing import Iterable

from forensics.model import Explanation, Finding, ReplayResult
from forensics.report import replay as replay_report
from forensics.report.explain import hex_string

_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
_SEVERITY_CLASS = {"ok": "ok", "bad": "bad", "warn": "warn", "info": "info"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f8f8f8;padding:.6em;overflow-x:auto}
.crash{border:2px solid #c00;padding:.6em 1em;background:#fff5f5}
.bad{color:#b00} .warn{color:#a60} .ok{color:#070} .info{color:#333} .muted{color:#888}
.evidence{color:#888;font-size:.85em;margin-left:1.5em}
.hdr{background:#ffe9a8} .magic{background:#ffb3b3} .unread{color:#c00}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def route_bar_svg(routes: dict[str, int], width: int = 700, height: int = 28) -> str:
    """The route mix as one stacked horizontal bar with a legend."""
    total = sum(routes.values())
    if not total:
        return "<p class='muted'>no frees</p>"
    items = sorted(routes.items(), key=lambda kv: -kv[1])
    x = 0.0
    rects, legend = [], []
    for i, (name, count) in enumerate(items):
        w = width * count / total
        color = _PALETTE[i % len(_PALETTE)]
        rects.append(f"<rect x='{x:.2f}' y='0' width='{max(w, 0.5):.2f}' height='{height}' fill='{color}'><title>{_e(name)}: {count:,}</title></rect>")
        legend.append(f"<span style='display:inline-block;width:.8em;height:.8em;background:{color};margin:0 .3em 0 1em'></span>{_e(name)} {count:,} ({100 * count / total:.1f}%)")
        x += w
    return f"<svg width='{width}' height='{height}' role='img' aria-label='route mix'>{''.join(rects)}</svg><div>{''.join(legend)}</div>"


def address_map_svg(excerpt: Iterable[tuple[int, int, str, bool]], fault: int, ptr: int | None, width: int = 900) -> str:
    """Mappings around the fault address as boxes (width ~ log of size, gaps drawn too),
    with the fault address and the freed pointer marked."""
    rows = sorted((lo, hi, line) for lo, hi, line, _m in excerpt)
    if not rows:
        return ""
    # segments: mappings and the gaps between them, plus the fault if it lies outside them all
    segs: list[tuple[int, int, str]] = []
    prev = None
    for lo, hi, line in rows:
        if prev is not None and lo > prev:
            segs.append((prev, lo, "gap"))
        segs.append((lo, hi, line))
        prev = hi
    lo0, hi0 = segs[0][0], segs[-1][1]
    if fault < lo0:
        segs.insert(0, (fault & ~0xFFF, lo0, "gap"))
    if fault >= hi0:
        segs.append((hi0, (fault | 0xFFF) + 1, "gap"))
    weights = [1 + math.log2(max(hi - lo, 1)) for lo, hi, _ in segs]
    scale = (width - 20) / sum(weights)
    x = 10.0
    parts = []
    marks = []
    for (lo, hi, line), wgt in zip(segs, weights):
        w = wgt * scale
        gap = line == "gap"
        perms = "" if gap else (line.split()[1] if len(line.split()) > 1 else "")
        fill = "#ffffff" if gap else ("#f4c7c3" if "r" not in perms else "#c6dbef")
        stroke = "#bbb" if gap else "#555"
        dash = " stroke-dasharray='4 3'" if gap else ""
        label = "unmapped" if gap else (line.split()[-1] if len(line.split()) >= 6 else perms)
        parts.append(f"<rect x='{x:.1f}' y='30' width='{w:.1f}' height='40' fill='{fill}' stroke='{stroke}'{dash}><title>{_e(f'{lo:#x}-{hi:#x} ' + ('(no mapping)' if gap else line))}</title></rect>")
        if w > 90:  # an address label needs about 90 px
            parts.append(f"<text x='{x + 3:.1f}' y='86' font-size='10' fill='#555'>{_e(f'{lo:#x}')}</text>")
        parts.append(f"<text x='{x + 3:.1f}' y='55' font-size='10' fill='#333'>{_e(label[:max(int(w / 6), 1)])}</text>")
        for addr, name, color, y in ((fault, "fault", "#c00", 22), (ptr, "ptr", "#06c", 108)):
            if addr is not None and lo <= addr < hi:
                ax = x + w * (addr - lo) / max(hi - lo, 1)
                marks.append(f"<line x1='{ax:.1f}' y1='{y - 10 if name == 'fault' else 74}' x2='{ax:.1f}' y2='{30 if name == 'fault' else y - 10}' stroke='{color}' stroke-width='2'/>")
                marks.append(f"<text x='{ax + 3:.1f}' y='{y}' font-size='11' fill='{color}'>{_e(f'{name} {addr:#x}')}</text>")
        x += w
    return f"<svg width='{width}' height='120' role='img' aria-label='address-space map'>{''.join(parts)}{''.join(marks)}</svg>"


def _findings_html(title: str, findings: list[Finding], ordered: bool = False) -> str:
    if not findings:
        return ""
    tag = "ol" if ordered else "ul"
    items = []
    for f in findings:
        ev = f"<div class='evidence'>{_e(f.evidence)}</div>" if f.evidence else ""
        items.append(f"<li class='{_SEVERITY_CLASS.get(f.severity, 'info')}'>{_e(f.text)}{ev}</li>")
    return f"<h3>{_e(title)}</h3><{tag}>{''.join(items)}</{tag}>"


def _hexdump_html(e: Explanation) -> str:
    h = e.header
    if h is None:
        return ""
    hexs = hex_string(h)
    lines = []
    for off in range(0, len(h.data), 16):
        addr = h.base + off
        cells = []
        for i in range(16):
            a = addr + i
            if off + i >= len(h.data):
                break
            byte = hexs[2 * (off + i) : 2 * (off + i) + 2]
            cls = "magic" if h.header_addr <= a < h.header_addr + 4 else ("hdr" if h.header_addr <= a < h.header_addr + h.header_size else "")
            if byte == "??":
                cls += " unread"
            cells.append(f"<span class='{cls.strip()}'>{_e(byte)}</span>")
        note = "  &lt;- ptr - HEADER_SIZE" if addr <= h.header_addr < addr + 16 else ""
        note += "  &lt;- ptr" if addr <= e.addr < addr + 16 else ""
        lines.append(f"{_e(f'{addr:#x}')}  {' '.join(cells)}{note}")
    found = f"{h.magic_found:#x}" if h.magic_found is not None else "(never read)"
    return (
        f"<h3>Header at ptr - HEADER_SIZE = {_e(f'{h.header_addr:#x}')}</h3>"
        f"<p>expected magic <code>{h.magic_expected:#x}</code>, found <code>{_e(found)}</code>; those bytes: {_e(h.owner_text)}</p>"
        f"<pre>{chr(10).join(lines)}</pre>"
        + (f"<p class='muted'>{_e(h.provenance.text)}</p>" if h.provenance else "")
    )


def explanation_html(e: Explanation) -> str:
    title = f"Event #{e.event.index}: {e.event.op} ({e.event.outcome.value})" if e.event else f"Address {e.addr:#x}"
    out = [f"<h2>{_e(title)}</h2>", f"<p><b>Provenance</b>: {_e(e.provenance.text)}</p>"]
    if e.expected:
        out.append(f"<p><b>Owner needs</b>: {_e(e.expected)}</p>")
    out.append(_findings_html("Free path", e.stages))
    out.append(_hexdump_html(e))
    if e.crash is not None:
        out.append(f"<div class='crash'><b>{_e(e.crash.text)}</b>{address_map_svg(e.crash.maps_excerpt, e.crash.fault_address, e.crash.ptr)}<pre>{_e(chr(10).join(line for _l, _h, line, _m in e.crash.maps_excerpt))}</pre></div>")
    out.append(_findings_html("Chain of causes", e.causes, ordered=True))
    out.append(f"<p><b>Verdict</b>: {_e(e.verdict)}</p>")
    return "\n".join(out)


def _counts_table(title: str, counts: dict[str, int]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{v:,}</td></tr>" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"<table><tr><th>{_e(title)}</th><th>count</th></tr>{rows}</table>"


def replay_page(result: ReplayResult, explanations: list[Explanation] = ()) -> str:
    """The whole report of one replay (and explanations of its anomalies) as an HTML page."""
    knobs = " ".join(f"{k}={v}" for k, v in result.knobs.items()) or "(none)"
    head = (
        "<table>"
        f"<tr><th>Trace</th><td>{_e(result.trace)}</td></tr>"
        f"<tr><th>Allocator</th><td>{_e(result.allocator)}</td></tr>"
        f"<tr><th>Knobs</th><td><code>{_e(knobs)}</code></td></tr>"
        f"<tr><th>Replayed</th><td>{result.events_done:,} of {result.num_events:,} events{' (partial)' if result.partial else ''} on {result.threads_used or 1} thread(s), {result.frees:,} frees</td></tr>"
        f"<tr><th>Status</th><td>{_e(result.status)}</td></tr>"
        "</table>"
    )
    crash = ""
    ending = "".join(f"<p class='bad'>{_e(line.plain)}</p>" for line in replay_report.ending_lines(result))
    if result.crash is not None:
        c = result.crash
        rel = f" (ptr {c.fault_address - c.ptr:+d})" if c.ptr else ""
        crash = f"<div class='crash'><b>{_e(c.signal_name)}</b> in <code>{_e(c.stage_name)}</code> at event #{_e(c.event_index)}: fault address <code>{c.fault_address:#x}</code>{_e(rel)}, freed pointer <code>{_e(f'{c.ptr:#x}' if c.ptr else '?')}</code></div>"
    elif result.hang:
        crash = "<div class='crash'><b>hang</b>: the replay was killed at its time limit</div>"
    anomalies = "".join(
        f"<tr><td>#{a.index}</td><td>{a.tid}</td><td>{_e(a.op)}</td><td><code>{a.ptr:#x}</code></td><td>{_e(a.owner.value)}</td>"
        f"<td>{_e(a.decision.route.value if a.decision and a.decision.route else '-')}</td><td class='bad'>{_e(a.outcome.value)}</td></tr>"
        for a in result.anomalies[:50]
    )
    anomaly_table = f"<h2>First anomalies ({min(len(result.anomalies), 50)} of {result.anomaly_count:,})</h2><table><tr><th>event</th><th>thread</th><th>op</th><th>ptr</th><th>owner</th><th>route</th><th>outcome</th></tr>{anomalies}</table>" if anomalies else ""
    body = "\n".join(
        [
            "<h1>hakmem-forensics replay</h1>",
            head,
            crash,
            ending,
            "<h2>Route mix</h2>",
            route_bar_svg(result.routes),
            _counts_table("route", result.routes),
            "<h2>Outcomes</h2>",
            _counts_table("outcome", result.outcomes),
            anomaly_table,
            *(explanation_html(e) for e in explanations),
        ]
    )
    return _page("hakmem-forensics replay", body)


def explain_page(source: str, explanations: list[Explanation]) -> str:
    body = f"<h1>hakmem-forensics explain</h1><p>{_e(source)}</p>" + "\n".join(explanation_html(e) for e in explanations)
    return _page("hakmem-forensics explain", body)


def _page(title: str, body: str) -> str:
    return f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
