"""The `probe` reports: the probe audit (verdict matrix, wrong verdicts, cost) and live-address verdicts.

JSON schema "hakmem-forensics/probe-audit/1" (`probe audit --json`; keys always present):

    {
      "schema": "hakmem-forensics/probe-audit/1",
      "ground_truth": "/proc/self/maps",
      "page_size": int, "header_size": int,
      "probes": [str],                          # off, seed-mincore, seed-msync, mincore, safe
      "rows": [{
        "name": str, "description": str,
        "addr": int, "addr_hex": str, "len": int,
        "readable": bool,                       # ground truth
        "expected": bool | null,                # what the bed was built to be
        "verdicts": {probe: bool},              # true = the probe said "readable"
        "wrong": [probe]                        # probes that disagree with the ground truth
      }],
      "summary": {probe: {
        "false_readable": [row name],           # said readable, is not: the header read crashes
        "false_unreadable": [row name],         # said unreadable, is readable: good frees misrouted
        "false_readable_count": int, "false_unreadable_count": int
      }},
      "costs": [{
        "probe": str, "row": str, "calls": int, "batches": int,
        "ns_median": float, "ns_q1": float, "ns_q3": float, "ns_min": float, "ns_max": float,
        "cycles_median": float, "cycles_q1": float, "cycles_q3": float,
        "ns": [float], "cycles": [float]        # per call, one value per batch
      }],
      "has_tsc": bool,                          # cycles are TSC (reference) cycles; 0 without a TSC
      "notes": [str]
    }

JSON schema "hakmem-forensics/probe/1" (`probe ADDR... --trace T --event N --json`):

    {
      "schema": "hakmem-forensics/probe/1",
      "trace": str, "event": int,               # the heap as event N is about to run
      "op": str | null, "target": int | null, "header_addr": int | null,
      "addresses": [{
        "addr": int, "addr_hex": str, "len": int,
        "what": str,                            # "header of the event's pointer" / "address asked about"
        "owner": {"kind": str, "state": str, "block_ptr": int | null, "block_size": int,
                  "region_base": int | null, "region_size": int, "registered": bool,
                  "method": str | null} | null,
        "readable": bool,                       # /proc/self/maps of the replay child
        "verdicts": {probe: bool},              # "off" always true: it never looks
        "wrong": [probe]
      }],
      "check": str | null,                      # the allocator's consistency check at that moment
      "facts": {...}                            # the raw hfreplay/inspect/1 document
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import Inspection, OwnerInfo, ProbeAudit, ProbeBedRow, ProbeCost

AUDIT_SCHEMA = "hakmem-forensics/probe-audit/1"
ADDR_SCHEMA = "hakmem-forensics/probe/1"
CRASH_WORDS = "the header read crashes"
MISROUTE_WORDS = "good frees misrouted"


def _word(readable: bool) -> str:
    return "readable" if readable else "unreadable"


# ---------------------------------------------------------------------- audit
def cost_to_json(c: ProbeCost) -> dict[str, Any]:
    q1, q3 = c.ns_quartiles
    c1, c3 = c.cycles_quartiles
    return {
        "probe": c.probe,
        "row": c.row,
        "calls": c.calls,
        "batches": len(c.ns),
        "ns_median": round(c.ns_median, 2),
        "ns_q1": round(q1, 2),
        "ns_q3": round(q3, 2),
        "ns_min": round(min(c.ns), 2) if c.ns else 0.0,
        "ns_max": round(max(c.ns), 2) if c.ns else 0.0,
        "cycles_median": round(c.cycles_median, 1),
        "cycles_q1": round(c1, 1),
        "cycles_q3": round(c3, 1),
        "ns": [round(v, 2) for v in c.ns],
        "cycles": [round(v, 1) for v in c.cycles],
    }


def audit_to_json(audit: ProbeAudit) -> dict[str, Any]:
    return {
        "schema": AUDIT_SCHEMA,
        "ground_truth": "/proc/self/maps",
        "page_size": audit.page_size,
        "header_size": audit.header_size,
        "probes": list(audit.probes),
        "rows": [
            {
                "name": r.name,
                "description": r.description,
                "addr": r.addr,
                "addr_hex": f"{r.addr:#x}",
                "len": r.length,
                "readable": r.readable,
                "expected": r.expected,
                "verdicts": dict(r.verdicts),
                "wrong": [p for p in audit.probes if r.verdicts[p] != r.readable],
            }
            for r in audit.rows
        ],
        "summary": {
            p: {
                "false_readable": [r.name for r in audit.get_false_readable(p)],
                "false_unreadable": [r.name for r in audit.get_false_unreadable(p)],
                "false_readable_count": len(audit.get_false_readable(p)),
                "false_unreadable_count": len(audit.get_false_unreadable(p)),
            }
            for p in audit.probes
        },
        "costs": [cost_to_json(c) for c in audit.costs],
        "has_tsc": audit.has_tsc,
        "notes": list(audit.notes),
    }


def _verdict_cell(row: ProbeBedRow, probe: str) -> Text:
    said = row.verdicts[probe]
    if said == row.readable:
        return Text(_word(said), style="outcome.ok")
    return Text(f"{_word(said)} ✗", style="error")


def _matrix(audit: ProbeAudit) -> Table:
    t = Table(title="Verdict matrix (✗ = disagrees with /proc/self/maps)", title_justify="left", expand=False)
    t.add_column("bed row", no_wrap=True)
    t.add_column("maps", no_wrap=True, style="label")
    for p in audit.probes:
        t.add_column(p, no_wrap=True)
    for r in audit.rows:
        t.add_row(r.name, _word(r.readable), *[_verdict_cell(r, p) for p in audit.probes])
    return t


def _legend(audit: ProbeAudit) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True, style="value.addr")
    t.add_column(overflow="fold", style="muted")
    for r in audit.rows:
        t.add_row(r.name, f"{r.addr:#x}", r.description)
    return t


def _cost_text(c: ProbeCost | None, has_tsc: bool) -> Text:
    if c is None or not c.ns:
        return Text("-")
    q1, q3 = c.ns_quartiles
    out = f"{c.ns_median:,.0f} ns [{q1:,.0f}–{q3:,.0f}]"
    if has_tsc:
        out += f"\n{c.cycles_median:,.0f} cycles"
    return Text(out)


def _summary(audit: ProbeAudit, header_row: str, aligned_row: str) -> Table:
    t = Table(title=Text("Wrong verdicts and cost per call (median [quartiles] over batches)"), title_justify="left", expand=False)
    t.add_column("probe", no_wrap=True)
    t.add_column(f'false "readable"\n→ {CRASH_WORDS}', overflow="fold")
    t.add_column(f'false "unreadable"\n→ {MISROUTE_WORDS}', overflow="fold")
    t.add_column(f"cost: a real header\n({header_row})", no_wrap=True, justify="right")
    t.add_column(f"cost: page-aligned\n({aligned_row})", no_wrap=True, justify="right")
    for p in audit.probes:
        fr = audit.get_false_readable(p)
        fu = audit.get_false_unreadable(p)
        fr_text = Text(f"{len(fr)}", style="error" if fr else "outcome.ok")
        if fr:
            fr_text.append(": " + ", ".join(r.name for r in fr), style="muted")
        fu_text = Text(f"{len(fu)}", style="outcome.misrouted" if fu else "outcome.ok")
        if fu:
            fu_text.append(": " + ", ".join(r.name for r in fu), style="muted")
        t.add_row(p, fr_text, fu_text, _cost_text(audit.get_cost(p, header_row), audit.has_tsc), _cost_text(audit.get_cost(p, aligned_row), audit.has_tsc))
    return t


def render_audit(audit: ProbeAudit, console: Console, *, header_row: str = "rw+8", aligned_row: str = "rw+0") -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    head.add_row("Probe audit", f"{len(audit.rows)} bed rows, each asked about {audit.header_size} bytes (the AllocHeader); page size {audit.page_size}")
    head.add_row("Ground truth", "/proc/self/maps: readable iff every byte lies in a mapping with 'r'")
    calls = audit.costs[0].calls if audit.costs else 0
    batches = len(audit.costs[0].ns) if audit.costs else 0
    if audit.costs:
        clock = "TSC (reference) cycles" if audit.has_tsc else "no TSC: ns only"
        head.add_row("Cost", f"{batches} batches of {calls:,} calls per probe and row; {clock}; `off` is the timing loop alone")
    console.print(head)
    console.print()
    console.print(_matrix(audit))
    console.print(Text("Bed rows (each probed for the header's length from this address):", style="label"))
    console.print(_legend(audit))
    console.print()
    console.print(_summary(audit, header_row, aligned_row))
    for note in audit.notes:
        console.print(Text(f"note: {note}", style="warn"))


# ----------------------------------------------------------------- live addresses
def _owner_json(o: OwnerInfo | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {
        "kind": o.kind.value,
        "state": o.state.value,
        "block_ptr": o.block_ptr,
        "block_size": o.block_size,
        "region_base": o.region_base,
        "region_size": o.region_size,
        "registered": o.registered,
        "method": o.method.name if o.method is not None else None,
    }


def _what(insp: Inspection, addr: int) -> str:
    if insp.header_addr is not None and addr == insp.header_addr:
        return f"header of the pointer event #{insp.event} frees ({insp.target:#x})"
    return "address asked about"


def inspection_to_json(insp: Inspection) -> dict[str, Any]:
    return {
        "schema": ADDR_SCHEMA,
        "trace": insp.trace,
        "event": insp.event,
        "op": insp.op,
        "target": insp.target,
        "header_addr": insp.header_addr,
        "addresses": [
            {
                "addr": p.addr,
                "addr_hex": f"{p.addr:#x}",
                "len": p.length,
                "what": _what(insp, p.addr),
                "owner": _owner_json(insp.get_owner(p.addr)),
                "readable": p.readable,
                "verdicts": dict(p.verdicts),
                "wrong": p.get_wrong(),
            }
            for p in insp.probes
        ],
        "check": insp.check,
        "facts": insp.facts,
    }


def _owner_text(o: OwnerInfo | None) -> str:
    if o is None:
        return "(unknown: no hak_owner)"
    if o.kind.value == "none":
        return "nobody (no allocator block)"
    out = f"{o.kind.value}"
    if o.block_ptr:
        off = o.addr - o.block_ptr
        where = "start of" if off == 0 else (f"{off} bytes into" if off > 0 else f"{-off} bytes before")
        out += f", {where} a {o.state.value} {o.block_size}-byte block {o.block_ptr:#x}"
    if o.region_base:
        out += f"\nregion {o.region_base:#x}+{o.region_size:#x}" + ("" if o.registered else " (NOT registered)")
    return out


def render_inspection(insp: Inspection, console: Console) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="label")
    head.add_column()
    head.add_row("Trace", Text(insp.trace))  # a user's path: never markup
    what = f"{insp.op} of {insp.target:#x}" if insp.target else (insp.op or "past the last event")
    head.add_row("Moment", f"just before event #{insp.event} ({what}); events 0..{insp.event - 1} replayed serially")
    if insp.target:
        head.add_row("Pointer", f"{insp.target:#x}: {_owner_text(insp.get_owner(insp.target))}")
    console.print(head)
    console.print()
    probes = list(insp.probes[0].verdicts) if insp.probes else []
    t = Table(title="Probe verdicts on live addresses (✗ = disagrees with /proc/self/maps)", title_justify="left", expand=False)
    t.add_column("address", no_wrap=True)
    t.add_column("owner", overflow="fold")
    t.add_column("maps", no_wrap=True, style="label")
    for p in probes:
        t.add_column(p, no_wrap=True)
    for p in insp.probes:
        label = Text(f"{p.addr:#x}", style="value.addr")
        label.append(f"\n{p.length} byte{'s' if p.length != 1 else ''}", style="muted")
        if insp.header_addr is not None and p.addr == insp.header_addr:
            label.append(" (header)", style="muted")
        cells = []
        for name in probes:
            said = p.verdicts[name]
            cells.append(Text(_word(said), style="outcome.ok") if said == p.readable else Text(f"{_word(said)} ✗", style="error"))
        t.add_row(label, _owner_text(insp.get_owner(p.addr)), _word(p.readable), *cells)
    console.print(t)
    if insp.check:
        console.print(Text.assemble(("Consistency check: ", "label"), (insp.check, "warn")))
