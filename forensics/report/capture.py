"""Reports of traces from real programs: `record`, `import` and `symbols` (rich and JSON).

JSON schemas (keys always present; a new key may appear within a version, a key changing
meaning or disappearing bumps it):

    "hakmem-forensics/import/1":
      {"schema", "format": str, "source": str, "lines": int, "malformed": int,
       "malformed_samples": [str], "events": int, "seconds": float, "events_per_second": float,
       "peak_rss_kib": int, "timing": {op: {"calls": int, "ns": int}}, "outputs": [output]}

    "hakmem-forensics/record/1":
      {"schema", "command": [str], "exit_status": int|null, "exit_signal": str|null, "hang": bool,
       "seconds": float, "raw_dir": str|null, "outputs": [output]}

    output = {"path": str, "pid": int|null, "generation": int, "events": int, "objects": int,
              "threads": int, "ops": {op: int}, "per_thread": {tid: int}, "repairs": {name: int},
              "calls": {function: int}, "note": str, "sites": int, "symbolized": int,
              "finding_count": int, "findings": [finding], "memcheck": [check],
              "top_sites": [site_stat]}
    finding = {"event_index", "kind", "tid", "address", "address_hex", "obj", "offset",
               "block_size", "site", "site_hex", "where", "call", "explain", "site_info": site|null}
    check = {"event_index", "ours", "our_offset", "memcheck", "memcheck_offset", "block_size",
             "line", "agrees": bool}

    "hakmem-forensics/sites/1":
      {"schema", "trace": str, "symbolized": bool, "sites": [site_stat], "anomalies": [event]}
    site_stat = {"site": site, "events": int, "ops": {op: int}, "anomalies": int}
    site = {"address", "address_hex", "module": str|null, "vaddr": int|null,
            "function": str|null, "file": str|null, "line": int|null, "text": str}
    event = {"event_index", "op", "tid", "obj", "arg", "site": site}
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forensics.model import AddressFinding, ImportResult, MemcheckCheck, RecordResult, SiteInfo, TraceOutput

IMPORT_SCHEMA = "hakmem-forensics/import/1"
RECORD_SCHEMA = "hakmem-forensics/record/1"
SITES_SCHEMA = "hakmem-forensics/sites/1"
SHOWN_FINDINGS = 10

_REPAIR_TEXT = {
    "failed_alloc": "allocations that returned NULL (no event)",
    "implicit_free": "allocations at an address still live: the old object was freed first",
    "bad_realloc": "realloc of a pointer that is not a live block (forensic op + malloc)",
    "freed_forgotten": "freed blocks forgotten to bound memory (a later double free becomes free_raw)",
    "realloc_zero_returned_block": "realloc(p, 0) that returned a block (free + malloc)",
    "realloc_without_begin": "realloc ends without their start (recorder)",
}


def _site(site: SiteInfo | None, address: int) -> str:
    if site is None:
        return f"{address:#x}" if address else "-"
    return escape(site.describe())


def _site_json(site: SiteInfo) -> dict[str, Any]:
    return {
        "address": site.address,
        "address_hex": f"{site.address:#x}",
        "module": site.module,
        "vaddr": site.vaddr,
        "function": site.function,
        "file": site.file,
        "line": site.line,
        "text": site.describe(),
    }


# ---------------------------------------------------------------------------- shared tables
def _outputs_table(outputs: Sequence[TraceOutput]) -> Table:
    table = Table(title="Traces written", title_justify="left", title_style="title")
    table.add_column("trace")
    table.add_column("pid", justify="right")
    table.add_column("events", justify="right", style="value.num")
    table.add_column("objects", justify="right")
    table.add_column("threads", justify="right")
    table.add_column("bad frees", justify="right")
    table.add_column("note", style="muted")
    for o in outputs:
        bad = sum(o.op_counts.get(k, 0) for k in ("free_interior", "double_free", "free_raw"))
        table.add_row(escape(o.path), "-" if o.pid is None else str(o.pid), f"{o.events:,}", f"{o.objects:,}",
                      str(o.threads), f"[error]{bad}[/]" if bad else "0", escape(o.note))
    return table


def _ops_table(o: TraceOutput) -> Table:
    table = Table(title="Events by op", title_justify="left", title_style="title")
    table.add_column("op")
    table.add_column("events", justify="right", style="value.num")
    for op, n in sorted(o.op_counts.items(), key=lambda kv: -kv[1]):
        style = "error" if op in ("free_interior", "double_free", "free_raw") else "value.text"
        table.add_row(f"[{style}]{op}[/]", f"{n:,}")
    return table


def _threads_table(o: TraceOutput) -> Table:
    table = Table(title="Events by thread", title_justify="left", title_style="title")
    table.add_column("tid", justify="right")
    table.add_column("events", justify="right", style="value.num")
    for tid, n in sorted(o.thread_counts.items()):
        table.add_row(str(tid), f"{n:,}")
    return table


def _findings_table(o: TraceOutput, sites: dict[int, SiteInfo], shown: int) -> Table:
    checks = {c.event_index: c for c in o.memcheck}
    table = Table(title=f"Bad frees and repairs ({o.finding_count:,})", title_justify="left", title_style="title")
    table.add_column("event", justify="right")
    table.add_column("op", style="error")
    table.add_column("tid", justify="right")
    table.add_column("what")
    table.add_column("site")
    if checks:
        table.add_column("memcheck says")
    for f in o.findings[:shown]:
        row = [str(f.event_index), f.kind, str(f.tid), escape(f.explain()), _site(sites.get(f.site), f.site)]
        if checks:
            c = checks.get(f.event_index)
            row.append(_memcheck_text(c) if c else "-")
        table.add_row(*row)
    return table


def _memcheck_text(c: MemcheckCheck) -> str:
    if c.memcheck == "inside_live":
        said = f"{c.memcheck_offset} bytes inside a block of size {c.block_size} alloc'd"
    elif c.memcheck == "inside_freed":
        said = f"{c.memcheck_offset} bytes inside a block of size {c.block_size} free'd"
    elif c.memcheck == "unknown":
        said = "not malloc'd or (recently) free'd"
    else:
        said = "another report"
    return f"{said} [outcome.ok](agrees)[/]" if c.agrees else f"{said} [error](differs)[/]"


def _repairs(console: Console, o: TraceOutput) -> None:
    for name, n in o.repairs.items():
        console.print(f"[warn]{n:,}[/] {escape(_REPAIR_TEXT.get(name, name))}")


def _top_sites_table(stats: Sequence, top: int) -> Table:
    table = Table(title=f"Top call sites ({min(top, len(stats))} of {len(stats):,})", title_justify="left",
                  title_style="title")
    table.add_column("site")
    table.add_column("events", justify="right", style="value.num")
    table.add_column("ops")
    table.add_column("bad", justify="right")
    for s in stats[:top]:
        ops = ", ".join(f"{op} {n:,}" for op, n in s.ops.most_common(4))
        table.add_row(escape(s.site.describe()) if s.site.address else "(no site)", f"{s.total:,}", ops,
                      f"[error]{s.anomalies}[/]" if s.anomalies else "0")
    return table


def _output_sections(console: Console, o: TraceOutput, sites: dict[int, SiteInfo], top_sites: Sequence | None,
                     top: int, title: bool) -> None:
    if title:
        console.print(f"\n[title]{escape(o.path)}[/] (pid {o.pid if o.pid is not None else '-'})")
    console.print(_ops_table(o))
    if o.thread_counts:
        console.print(_threads_table(o))
    if o.calls:
        console.print("[label]Calls recorded[/] " + escape(", ".join(f"{k} {v:,}" for k, v in o.calls.items())))
    if o.sites:
        console.print(f"[label]Call sites[/] {o.sites:,}, {o.symbolized:,} symbolized to a function")
    _repairs(console, o)
    if o.findings:
        console.print(_findings_table(o, sites, SHOWN_FINDINGS))
    if o.memcheck:
        agree = sum(1 for c in o.memcheck if c.agrees)
        style = "outcome.ok" if agree == len(o.memcheck) else "error"
        console.print(f"[{style}]memcheck agrees on {agree} of {len(o.memcheck)} invalid frees it reported[/]")
    if top_sites:
        console.print(_top_sites_table(top_sites, top))


# ---------------------------------------------------------------------------- import
def render_import(result: ImportResult, console: Console, *, sites: dict[str, dict[int, SiteInfo]] | None = None,
                  top_sites: dict[str, Sequence] | None = None, top: int = 10) -> None:
    console.print(
        f"[label]Imported[/] {escape(result.source)} ({result.format}): {result.lines:,} lines, {result.events:,} events "
        f"in {result.seconds:.2f} s ({result.events_per_second:,.0f} events/s, peak RSS "
        f"{result.peak_rss_kib / 1024:.0f} MiB)"
    )
    if result.malformed:
        console.print(f"[warn]{result.malformed:,} malformed lines skipped (--lenient)[/]")
        for sample in result.malformed_samples[:5]:
            console.print(f"  [muted]{escape(sample)}[/]")
    if result.timing:
        parts = [f"{op} {n:,} calls, {ns / max(n, 1):,.0f} ns avg" for op, (n, ns) in sorted(result.timing.items())]
        console.print("[label]Time in the allocator[/] " + "; ".join(parts))
    console.print(_outputs_table(result.outputs))
    for o in result.outputs:
        _output_sections(console, o, (sites or {}).get(o.path, {}), (top_sites or {}).get(o.path), top,
                         title=len(result.outputs) > 1)


def import_to_json(result: ImportResult, *, sites: dict[str, dict[int, SiteInfo]] | None = None,
                   top_sites: dict[str, Sequence] | None = None) -> dict[str, Any]:
    return {
        "schema": IMPORT_SCHEMA,
        "format": result.format,
        "source": result.source,
        "lines": result.lines,
        "malformed": result.malformed,
        "malformed_samples": list(result.malformed_samples),
        "events": result.events,
        "seconds": round(result.seconds, 6),
        "events_per_second": round(result.events_per_second, 1),
        "peak_rss_kib": result.peak_rss_kib,
        "timing": {op: {"calls": n, "ns": ns} for op, (n, ns) in sorted(result.timing.items())},
        "outputs": [_output_json(o, (sites or {}).get(o.path, {}), (top_sites or {}).get(o.path)) for o in result.outputs],
    }


# ---------------------------------------------------------------------------- record
def render_record(result: RecordResult, console: Console, *, sites: dict[str, dict[int, SiteInfo]] | None = None,
                  top_sites: dict[str, Sequence] | None = None, top: int = 10) -> None:
    if result.hang:
        status = "[outcome.hang]killed at the time limit[/]"
    elif result.exit_signal is not None:
        status = f"[outcome.crash]killed by {result.signal_name}[/]"
    else:
        status = f"exit status {result.exit_status}"
    command = " ".join(result.command).replace("\n", "\\n")
    console.print(f"[label]Recorded[/] {escape(command)}: {status}, {result.seconds:.2f} s")
    if result.raw_dir:
        console.print(f"[label]Raw logs[/] {escape(result.raw_dir)}")
    console.print(_outputs_table(result.outputs))
    for o in result.outputs:
        _output_sections(console, o, (sites or {}).get(o.path, {}), (top_sites or {}).get(o.path), top,
                         title=len(result.outputs) > 1)


def record_to_json(result: RecordResult, *, sites: dict[str, dict[int, SiteInfo]] | None = None,
                   top_sites: dict[str, Sequence] | None = None) -> dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA,
        "command": list(result.command),
        "exit_status": result.exit_status,
        "exit_signal": result.signal_name,
        "hang": result.hang,
        "seconds": round(result.seconds, 6),
        "raw_dir": result.raw_dir,
        "outputs": [_output_json(o, (sites or {}).get(o.path, {}), (top_sites or {}).get(o.path)) for o in result.outputs],
    }


def _finding_json(f: AddressFinding, sites: dict[int, SiteInfo]) -> dict[str, Any]:
    site = sites.get(f.site)
    return {
        "event_index": f.event_index,
        "kind": f.kind,
        "tid": f.tid,
        "address": f.address,
        "address_hex": f"{f.address:#x}",
        "obj": f.obj,
        "offset": f.offset,
        "block_size": f.block_size,
        "site": f.site,
        "site_hex": f"{f.site:#x}",
        "where": f.where,
        "call": f.call,
        "explain": f.explain(),
        "site_info": _site_json(site) if site else None,
    }


def _site_stat_json(s) -> dict[str, Any]:
    return {"site": _site_json(s.site), "events": s.total, "ops": dict(s.ops), "anomalies": s.anomalies}


def _output_json(o: TraceOutput, sites: dict[int, SiteInfo], top_sites: Sequence | None) -> dict[str, Any]:
    return {
        "path": o.path,
        "pid": o.pid,
        "generation": o.generation,
        "events": o.events,
        "objects": o.objects,
        "threads": o.threads,
        "ops": dict(o.op_counts),
        "per_thread": {str(k): v for k, v in o.thread_counts.items()},
        "repairs": dict(o.repairs),
        "calls": dict(o.calls),
        "note": o.note,
        "sites": o.sites,
        "symbolized": o.symbolized,
        "finding_count": o.finding_count,
        "findings": [_finding_json(f, sites) for f in o.findings],
        "memcheck": [
            {"event_index": c.event_index, "ours": c.ours, "our_offset": c.our_offset, "memcheck": c.memcheck,
             "memcheck_offset": c.memcheck_offset, "block_size": c.block_size, "line": c.line, "agrees": c.agrees}
            for c in o.memcheck
        ],
        "top_sites": [_site_stat_json(s) for s in (top_sites or [])],
    }


# ---------------------------------------------------------------------------- symbols
def render_sites(trace: str, stats: Sequence, anomalies: Sequence[tuple[int, str, int, int, int, SiteInfo]],
                 console: Console, *, symbolized: bool, top: int = 20, note: str = "") -> None:
    """stats: SiteStat list (sites.get_site_table); anomalies: (event, op, tid, obj, arg, site)."""
    console.print(f"[label]Call sites of[/] {escape(trace)}: {len(stats):,} sites"
                  + ("" if symbolized else " [muted](not symbolized)[/]"))
    if note:
        console.print(f"[muted]{escape(note)}[/]")
    console.print(_top_sites_table(stats, top))
    if anomalies:
        table = Table(title=f"Forensic ops ({len(anomalies)} shown)", title_justify="left", title_style="title")
        table.add_column("event", justify="right")
        table.add_column("op", style="error")
        table.add_column("tid", justify="right")
        table.add_column("object", justify="right")
        table.add_column("site")
        for index, op, tid, obj, arg, site in anomalies:
            obj_text = f"{arg:#x}" if op == "free_raw" else (f"{obj} +{arg}" if op == "free_interior" else str(obj))
            table.add_row(str(index), op, str(tid), obj_text, escape(site.describe()) if site.address else "-")
        console.print(table)


def sites_to_json(trace: str, stats: Sequence, anomalies: Sequence[tuple[int, str, int, int, int, SiteInfo]],
                  *, symbolized: bool) -> dict[str, Any]:
    return {
        "schema": SITES_SCHEMA,
        "trace": trace,
        "symbolized": symbolized,
        "sites": [_site_stat_json(s) for s in stats],
        "anomalies": [
            {"event_index": i, "op": op, "tid": tid, "obj": obj, "arg": arg, "site": _site_json(site)}
            for i, op, tid, obj, arg, site in anomalies
        ],
    }
