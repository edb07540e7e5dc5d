"""The `routes` report: what hakmem's lines in a log say about every free (rich and JSON).

JSON schema "hakmem-forensics/routes/1" (keys always present; lists are capped, the matching
*_total says how many there were; addresses are integers with a *_hex twin):

    {
      "schema": "hakmem-forensics/routes/1",
      "files": [{"path", "compressed", "bytes", "lines", "route_lines", "alloc_lines", "reg_lines",
                 "message_lines", "pattern_lines", "other_lines", "binary_lines", "malformed_lines",
                 "overlong_lines", "truncated_last_line", "error"}],
      "lines": int, "route_lines": int, "seconds": float, "lines_per_second": float,
      "pattern": str | null,
      "routes": {route: frees}, "actions": {action: frees}, "probes": {"-"|"readable"|"unreadable": frees},
      "alloc_paths": {path: allocations},
      "lifecycle": {path: {route: frees}},     # path "?": allocation not in the log; "(null)": free(NULL)
      "verdicts": {"correct", "misrouted", "leaked", "invalid_magic", "unjudged": int},
      "pointers": {"tracked": int, "evicted": int, "double_frees": int, "allocated_twice": int,
                   "failed_allocs": int, "reuse": {"1"|"2-3"|...: pointers}},
      "anomaly_kinds": {kind: count},
      "anomalous_pointers": [{"ptr", "ptr_hex", "anomalies": [str], "allocs", "frees",
                              "events": [event], "events_dropped"}], "anomalous_pointers_total": int,
      "invalid_magic": [{"seq", "tid", "ptr", "ptr_hex", "magic", "magic_hex", "route", "action", "path",
                         "dump": [reg], "history": [reg], "file", "line", "trace": join|null}],
      "invalid_magic_total": int,
      "unknown_methods": [{"seq", "ptr", "ptr_hex", "method", "file", "line"}], "unknown_method_total": int,
      "skip_warnings": [ptr], "skip_warning_total": int, "knob_warnings": [str],
      "escapes": [{"region", "region_hex", "escapes", "first_seq", "first_ptr", "first_ptr_hex",
                   "first_route", "path", "routes": {route: n}, "history": [reg], "file", "line"}],
      "escapes_total": int, "escaped_regions_total": int,
      "registry": {"ops": {reg: {op: n}}, "events": [reg + {"file", "line"}], "events_total": int},
      "crashes": [{"signal", "fault", "fault_hex", "ptr", "ptr_hex", "stage", "event", "free_seq",
                   "file", "line", "history": [reg], "trace": join|null}], "crash_total": int,
      "messages": {kind: count},
      "processes": [{"file", "pid", "ppid", "start", "free_seq_base", "mode", "probe", "route_lines",
                     "alloc_lines", "first_seq", "last_seq", "seq_gaps", "stats_allocs", "stats_frees",
                     "expected_route_lines", "route_lines_at_stats", "consistent"}], "processes_total": int,
      "frees_seen_by_allocator": int | null,
      "timeline": {"width": int, "slices": [{"first_line", "lines", "seq_min", "seq_max",
                                             "routes": {route: n}, "anomalies"}]},
      "malformed": [{"file", "line", "reason", "text"}],
      "region_sizes": {reg: bytes},         # region of each registry, for the registry history
      "caps": {name: int},
      "correlation": null | {"trace", "trace_events", "trace_frees", "trace_threads", "checked",
                             "disagreements", "note", "joins": [join], "crash_event": join | null},
      "errors": [str]
    }

    event = {"kind": "alloc"|"free"|"crash", "seq", "tid", "path", "size", "route", "action",
             "magic", "verdict", "file", "line"}
    reg   = {"seq", "free_seq", "tid", "op", "reg", "base", "base_hex", "addr", "addr_hex", "live"}
    join  = {"seq", "event_index", "op", "tid", "obj", "site", "alloc_index", "alloc_op",
             "alloc_size", "alloc_site", "agrees"}

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import (
    Correlation,
    PointerEvent,
    RegistryLine,
    RouteLogResult,
    Route,
    TraceJoin,
)
from forensics.theme import get_route_style

SCHEMA = "hakmem-forensics/routes/1"
SHOWN = 10


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def _route_style(name: str | None) -> str:
    try:
        return get_route_style(Route(name)) if name else "muted"
    except ValueError:
        return "muted"


# ------------------------------------------------------------------------------ JSON
def reg_to_json(r: RegistryLine) -> dict[str, Any]:
    return {"seq": r.seq, "free_seq": r.free_seq, "tid": r.tid, "op": r.op, "reg": r.reg, "base": r.base,
            "base_hex": _hex(r.base), "addr": r.addr, "addr_hex": _hex(r.addr), "live": r.live}


def event_to_json(e: PointerEvent) -> dict[str, Any]:
    return {"kind": e.kind, "seq": e.seq, "tid": e.tid, "path": e.path, "size": e.size, "route": e.route,
            "action": e.action, "magic": e.magic, "verdict": e.verdict, "file": e.file, "line": e.line}


def join_to_json(j: TraceJoin | None) -> dict[str, Any] | None:
    if j is None:
        return None
    return {"seq": j.seq, "event_index": j.event_index, "op": j.op, "tid": j.tid, "obj": j.obj, "site": j.site,
            "alloc_index": j.alloc_index, "alloc_op": j.alloc_op, "alloc_size": j.alloc_size,
            "alloc_site": j.alloc_site, "agrees": j.agrees}


def _correlation_to_json(c: Correlation | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"trace": c.trace, "trace_events": c.trace_events, "trace_frees": c.trace_frees,
            "trace_threads": c.trace_threads, "checked": c.checked, "disagreements": c.disagreements, "note": c.note,
            "joins": [join_to_json(j) for j in c.joins.values()], "crash_event": join_to_json(c.crash_event)}


def to_json(r: RouteLogResult) -> dict[str, Any]:
    joins = r.correlation.joins if r.correlation else {}
    lines = r.num_lines()
    return {
        "schema": SCHEMA,
        "files": [
            {"path": f.path, "compressed": f.compressed, "bytes": f.bytes, "lines": f.lines,
             "route_lines": f.route_lines, "alloc_lines": f.alloc_lines, "reg_lines": f.reg_lines,
             "message_lines": f.message_lines, "pattern_lines": f.pattern_lines, "other_lines": f.other_lines,
             "binary_lines": f.binary_lines, "malformed_lines": f.malformed_lines,
             "overlong_lines": f.overlong_lines, "truncated_last_line": f.truncated_last_line, "error": f.error}
            for f in r.files
        ],
        "lines": lines,
        "route_lines": r.num_route_lines(),
        "seconds": round(r.seconds, 3),
        "lines_per_second": round(lines / r.seconds, 1) if r.seconds > 0 else None,
        "pattern": r.pattern,
        "routes": dict(r.routes),
        "actions": dict(r.actions),
        "probes": dict(r.probes),
        "alloc_paths": dict(r.alloc_paths),
        "lifecycle": {p: dict(v) for p, v in r.lifecycle.items()},
        "verdicts": dict(r.verdicts),
        "pointers": {"tracked": r.pointers_tracked, "evicted": r.pointers_evicted, "double_frees": r.double_frees,
                     "allocated_twice": r.allocated_twice, "failed_allocs": r.failed_allocs, "reuse": dict(r.reuse)},
        "anomaly_kinds": dict(r.anomaly_kinds),
        "anomalous_pointers": [
            {"ptr": p.ptr, "ptr_hex": _hex(p.ptr), "anomalies": list(p.anomalies), "allocs": p.allocs,
             "frees": p.frees, "events": [event_to_json(e) for e in p.events], "events_dropped": p.events_dropped}
            for p in r.anomalous_pointers
        ],
        "anomalous_pointers_total": r.anomalous_pointers_total,
        "invalid_magic": [
            {"seq": e.seq, "tid": e.tid, "ptr": e.ptr, "ptr_hex": _hex(e.ptr), "magic": e.magic,
             "magic_hex": f"{e.magic:#X}".replace("0X", "0x"), "route": e.route, "action": e.action, "path": e.path,
             "dump": [reg_to_json(x) for x in e.dump], "history": [reg_to_json(x) for x in e.history],
             "file": e.file, "line": e.line, "trace": join_to_json(joins.get(e.seq)) if e.seq else None}
            for e in r.invalid_magic
        ],
        "invalid_magic_total": r.invalid_magic_total,
        "unknown_methods": [
            {"seq": u.seq, "ptr": u.ptr, "ptr_hex": _hex(u.ptr), "method": u.method, "file": u.file, "line": u.line}
            for u in r.unknown_methods
        ],
        "unknown_method_total": r.unknown_method_total,
        "skip_warnings": list(r.skip_warnings),
        "skip_warning_total": r.skip_warning_total,
        "knob_warnings": list(r.knob_warnings),
        "escapes": [
            {"region": e.base, "region_hex": _hex(e.base), "escapes": e.escapes, "first_seq": e.first_seq,
             "first_ptr": e.first_ptr, "first_ptr_hex": _hex(e.first_ptr), "first_route": e.first_route,
             "path": e.path, "routes": dict(e.routes), "history": [reg_to_json(x) for x in e.history],
             "file": e.file, "line": e.line}
            for e in r.escapes
        ],
        "escapes_total": r.escapes_total,
        "escaped_regions_total": r.escaped_regions_total,
        "registry": {
            "ops": {reg: dict(ops) for reg, ops in r.registry_ops.items()},
            "events": [dict(reg_to_json(x), file=f, line=n) for x, f, n in r.registry_events],
            "events_total": r.registry_events_total,
        },
        "crashes": [
            {"signal": c.signal, "fault": c.fault, "fault_hex": _hex(c.fault), "ptr": c.ptr, "ptr_hex": _hex(c.ptr),
             "stage": c.stage, "event": c.event, "free_seq": c.free_seq, "file": c.file, "line": c.line,
             "history": [reg_to_json(x) for x in c.history],
             "trace": join_to_json(
                 (r.correlation.crash_event if c.event is not None else joins.get(c.free_seq or -1))
                 if r.correlation else None)}
            for c in r.crashes
        ],
        "crash_total": r.crash_total,
        "messages": dict(r.messages),
        "processes": [
            {"file": p.file, "pid": p.pid, "ppid": p.ppid, "start": p.start, "free_seq_base": p.free_seq_base,
             "mode": p.mode, "probe": p.probe, "route_lines": p.route_lines, "alloc_lines": p.alloc_lines,
             "first_seq": p.first_seq, "last_seq": p.last_seq, "seq_gaps": p.seq_gaps,
             "stats_allocs": p.stats_allocs, "stats_frees": p.stats_frees,
             "expected_route_lines": p.expected_route_lines, "route_lines_at_stats": p.route_lines_at_stats,
             "consistent": p.consistent}
            for p in r.processes
        ],
        "processes_total": r.processes_total,
        "frees_seen_by_allocator": r.num_frees_seen_by_allocator(),
        "timeline": {
            "width": r.timeline_width,
            "slices": [{"first_line": s.first_line, "lines": s.lines, "seq_min": s.seq_min, "seq_max": s.seq_max,
                        "routes": dict(s.routes), "anomalies": s.anomalies} for s in r.timeline],
        },
        "malformed": [{"file": m.file, "line": m.line, "reason": m.reason, "text": m.text} for m in r.malformed],
        "region_sizes": dict(r.region_sizes),
        "caps": dict(r.caps),
        "correlation": _correlation_to_json(r.correlation),
        "errors": r.get_errors(),
    }


# ------------------------------------------------------------------------------ rich
def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _files_table(r: RouteLogResult) -> Table:
    t = Table(title="Input", title_justify="left", expand=False)
    for col, just in (("log", "left"), ("lines", "right"), ("route", "right"), ("alloc", "right"),
                      ("registry", "right"), ("messages", "right"), ("skipped", "right"), ("malformed", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for f in r.files:
        name = f.path + (" (gzip)" if f.compressed else "")
        skipped = f"{f.other_lines:,}" + (f" ({f.binary_lines:,} binary)" if f.binary_lines else "")
        bad = f"{f.malformed_lines:,}" + (f" +{f.overlong_lines:,} overlong" if f.overlong_lines else "")
        t.add_row(Text(name), f"{f.lines:,}", f"{f.route_lines + f.pattern_lines:,}", f"{f.alloc_lines:,}",
                  f"{f.reg_lines:,}", f"{f.message_lines:,}", skipped, Text(bad, style="warn" if bad != "0" else ""))
    return t


def _routes_table(r: RouteLogResult) -> Table:
    t = Table(title="Routes", title_justify="left", expand=False)
    t.add_column("route")
    t.add_column("frees", justify="right")
    t.add_column("share", justify="right")
    total = sum(r.routes.values())
    for name, n in r.routes.items():
        t.add_row(Text(name, style=_route_style(name)), f"{n:,}", _pct(n, total))
    return t


def _lifecycle_table(r: RouteLogResult) -> Table:
    t = Table(title="Allocated as → freed by (route)", title_justify="left", expand=False)
    t.add_column("allocated as")
    t.add_column("allocs", justify="right")
    t.add_column("freed by", overflow="fold")
    for path in sorted(set(r.lifecycle) | set(r.alloc_paths), key=lambda p: (p in ("?", "(null)"), p)):
        routes = r.lifecycle.get(path, {})
        label = {"?": "? (not in the log)", "(null)": "NULL"}.get(path, path)
        cells = Text()
        for i, (route, n) in enumerate(routes.items()):
            if i:
                cells.append(", ")
            cells.append(route, style=_route_style(route))
            cells.append(f" {n:,}")
        t.add_row(Text(label), f"{r.alloc_paths[path]:,}" if path in r.alloc_paths else "-", cells or Text("-", style="muted"))
    return t


def _verdict_line(r: RouteLogResult) -> Text:
    v = r.verdicts
    styles = {"correct": "outcome.ok", "misrouted": "outcome.misrouted", "leaked": "outcome.leak",
              "invalid_magic": "route.invalid", "unjudged": "muted"}
    out = Text("Verdicts  ", style="label")
    for i, (k, n) in enumerate(v.items()):
        if i:
            out.append("  ")
        out.append(f"{k} {n:,}", style=styles.get(k, "") if n else "muted")
    return out


def _processes_table(r: RouteLogResult) -> Table:
    t = Table(title=f"Process images ({len(r.processes)} of {r.processes_total:,})", title_justify="left",
              expand=False)
    for col in ("pid", "start", "route lines", "allocator's frees", "consistent", "seq gaps"):
        t.add_column(col, justify="right" if col != "start" else "left")
    for p in r.processes:
        expected = p.expected_route_lines
        ok = p.consistent
        verdict = Text("-" if ok is None else ("yes" if ok else f"no ({p.route_lines_at_stats:,} lines)"),
                       style="muted" if ok is None else ("outcome.ok" if ok else "error"))
        t.add_row(str(p.pid) if p.pid is not None else "?", Text(p.start), f"{p.route_lines:,}",
                  f"{expected:,}" if expected is not None else "-", verdict, str(p.seq_gaps))
    return t


def _reg_brief(x: RegistryLine) -> str:
    extra = f" live={x.live}" if x.op == "unregister" and x.live else ""
    return f"#{x.seq} {x.op} {x.reg} {x.base:#x}{extra} (after free {x.free_seq})"


def _history_text(history: tuple[RegistryLine, ...], limit: int = 3) -> Text:
    if not history:
        return Text("no registry change in the log", style="muted")
    shown = history[-limit:]
    out = Text("; ".join(_reg_brief(x) for x in shown))
    if len(history) > limit:
        out = Text(f"…{len(history) - limit} earlier; ", style="muted") + out
    return out


def _join_text(j: TraceJoin | None) -> str:
    if j is None:
        return ""
    what = f"trace event #{j.event_index}: t{j.tid} {j.op}" + (f" obj {j.obj}" if j.obj else "")
    if j.alloc_index is not None:
        what += f", allocated at #{j.alloc_index} ({j.alloc_op} {j.alloc_size})"
    if j.agrees is False:
        what += " [disagrees with the log]"
    return what


def _invalid_table(r: RouteLogResult) -> Table:
    shown = r.invalid_magic[:SHOWN]
    t = Table(title=f"Invalid magic ({len(shown)} of {r.invalid_magic_total:,})", title_justify="left", expand=False)
    t.add_column("seq", justify="right")
    t.add_column("pointer")
    t.add_column("magic found")
    t.add_column("route")
    t.add_column("registry history of its region", overflow="fold")
    joins = r.correlation.joins if r.correlation else {}
    for e in shown:
        ptr = f"{e.ptr:#x}" if e.ptr is not None else "?"
        origin = f"\n{e.path} block" if e.path else "\nnot allocated in this log"
        hist = e.dump if e.dump else e.history
        cell = _history_text(hist)
        if e.dump:
            cell = Text("allocator's dump: ", style="muted") + cell
        j = joins.get(e.seq) if e.seq else None
        if j is not None:
            cell.append("\n" + _join_text(j), style="label")
        route = Text(e.route or "(no route line: the process died?)", style=_route_style(e.route))
        t.add_row(str(e.seq) if e.seq is not None else "-", Text(ptr + origin), f"{e.magic:#x}", route, cell)
    return t


def _escapes_table(r: RouteLogResult) -> Table:
    shown = r.escapes[:SHOWN]
    t = Table(title=f"Escaped pointers by region ({len(shown)} of {r.escaped_regions_total:,} regions, "
              f"{r.escapes_total:,} frees)", title_justify="left", expand=False)
    t.add_column("region")
    t.add_column("frees", justify="right")
    t.add_column("first")
    t.add_column("registry changes before it", overflow="fold")
    for e in shown:
        first = Text(f"{e.first_ptr:#x} seq {e.first_seq}\n")
        first.append(e.first_route, style=_route_style(e.first_route))
        first.append(f" ({e.path} block)" if e.path else " (origin not in the log)", style="muted")
        t.add_row(f"{e.base:#x}", f"{e.escapes:,}", first, _history_text(e.history))
    return t


def _event_brief(e: PointerEvent) -> str:
    if e.kind == "alloc":
        return f"alloc #{e.seq} {e.path} {e.size}"
    if e.kind == "crash":
        return f"CRASH in free {e.seq}" if e.seq else "CRASH"
    return f"free {e.seq} {e.route} → {e.verdict}"


def _pointers_table(r: RouteLogResult) -> Table:
    shown = r.anomalous_pointers[:SHOWN]
    t = Table(title=f"Pointers in anomalies ({len(shown)} of {r.anomalous_pointers_total:,})", title_justify="left",
              expand=False)
    t.add_column("pointer")
    t.add_column("anomalies")
    t.add_column("lifecycle (as far as the log says)", overflow="fold")
    for p in shown:
        events = p.events[:6]
        life = "; ".join(_event_brief(e) for e in events)
        more = len(p.events) - len(events) + p.events_dropped
        if more:
            life += f"; …{more} more"
        t.add_row(f"{p.ptr:#x}", Text(", ".join(p.anomalies), style="warn"), Text(life))
    return t


def _registry_table(r: RouteLogResult) -> Table:
    t = Table(title="Registry requests", title_justify="left", expand=False)
    t.add_column("registry")
    ops = sorted({op for v in r.registry_ops.values() for op in v})
    for op in ops:
        t.add_column(op, justify="right")
    for reg, v in sorted(r.registry_ops.items()):
        t.add_row(Text(reg), *(f"{v.get(op, 0):,}" for op in ops))
    return t


def _timeline_table(r: RouteLogResult) -> Table:
    t = Table(title=f"Timeline ({r.timeline_width:,} route lines per slice)", title_justify="left", expand=False)
    t.add_column("seq", justify="right")
    t.add_column("frees", justify="right")
    t.add_column("route mix", overflow="fold")
    t.add_column("anomalies", justify="right")
    slices = r.timeline
    step = max(1, (len(slices) + 15) // 16)  # at most 16 rows on a terminal
    for i in range(0, len(slices), step):
        group = slices[i:i + step]
        lines = sum(s.lines for s in group)
        mix: dict[str, int] = {}
        for s in group:
            for k, n in s.routes.items():
                mix[k] = mix.get(k, 0) + n
        lo = min((s.seq_min for s in group if s.seq_min is not None), default=None)
        hi = max((s.seq_max for s in group if s.seq_max is not None), default=None)
        cell = Text()
        for j, (k, n) in enumerate(sorted(mix.items(), key=lambda kv: -kv[1])[:4]):
            if j:
                cell.append(" ")
            cell.append(k, style=_route_style(k))
            cell.append(f" {_pct(n, lines)}")
        anomalies = sum(s.anomalies for s in group)
        t.add_row(f"{lo}–{hi}" if lo is not None else "-", f"{lines:,}", cell,
                  Text(f"{anomalies:,}", style="warn" if anomalies else "muted"))
    return t


def render(r: RouteLogResult, console: Console, *, title: str | None = None) -> None:
    lines = r.num_lines()
    rate = f", {lines / r.seconds:,.0f} lines/s" if r.seconds > 0 else ""
    console.print(Text(title or f"{lines:,} lines in {len(r.files)} log(s), {r.seconds:.2f} s{rate}", style="title"))
    console.print(_files_table(r))
    for err in r.get_errors():
        console.print(Text(f"damaged input: {err}", style="error"))
    if not r.routes and not r.alloc_paths and not r.messages:
        console.print(Text("No hakmem lines in the input.", style="warn"))
        return
    if r.routes:
        console.print(_routes_table(r))
    if r.alloc_paths or len(r.lifecycle) > 1:
        console.print(_lifecycle_table(r))
    if r.routes:
        console.print(_verdict_line(r))
    if r.processes and any(p.pid is not None or p.stats_frees is not None for p in r.processes):
        console.print(_processes_table(r))
    if r.anomaly_kinds:
        kinds = ", ".join(f"{k} {n:,}" for k, n in r.anomaly_kinds.items())
        console.print(Text.assemble(("Anomalies  ", "label"), (kinds, "warn")))
    if r.crashes:
        for c in r.crashes[:SHOWN]:
            where = f"event {c.event}" if c.event is not None else (f"free seq {c.free_seq}" if c.free_seq else "")
            join = None
            if r.correlation:
                join = r.correlation.crash_event if c.event is not None else r.correlation.joins.get(c.free_seq or -1)
            console.print(Text.assemble(("CRASH ", "outcome.crash"), f"{c.signal} fault={c.fault:#x} ptr={c.ptr:#x} "
                                        f"stage={c.stage} {where}", (f"  {_join_text(join)}" if join else "", "label")))
            if c.ptr and c.stage != "idle":
                offset = c.fault - c.ptr
                sign = "-" if offset < 0 else "+"
                console.print(Text(f"  fault = ptr {sign} {abs(offset)}; registry changes of its region: ", style="muted")
                              + _history_text(c.history))
    if r.invalid_magic:
        console.print(_invalid_table(r))
    if r.unknown_methods:
        um = ", ".join(f"{u.ptr:#x} method {u.method} (seq {u.seq})" for u in r.unknown_methods[:SHOWN])
        console.print(Text.assemble((f"Unknown methods ({r.unknown_method_total:,})  ", "label"), um))
    if r.skip_warning_total:
        console.print(Text.assemble(("Skip warnings  ", "label"),
                                    f"{r.skip_warning_total:,}: " + ", ".join(f"{p:#x}" for p in r.skip_warnings[:5])))
    if r.escapes:
        console.print(_escapes_table(r))
    if r.anomalous_pointers:
        console.print(_pointers_table(r))
    if r.registry_ops:
        console.print(_registry_table(r))
        if r.registry_events_total:
            ev = "; ".join(_reg_brief(x) for x, _, _ in r.registry_events[:5])
            console.print(Text.assemble((f"Registry events ({r.registry_events_total:,})  ", "label"), ev))
    if len(r.timeline) > 1:
        console.print(_timeline_table(r))
    if r.knob_warnings:
        console.print(Text.assemble(("Knob warnings  ", "label"), ("; ".join(r.knob_warnings[:5]), "warn")))
    if r.malformed:
        console.print(Text("Malformed lines (first few):", style="label"))
        for m in r.malformed[:5]:
            console.print(Text(f"  {m.file}:{m.line}: {m.reason}: {m.text}", style="muted"))
    c = r.correlation
    if c is not None:
        console.print(Text.assemble(
            ("Trace  ", "label"),
            f"{c.trace}: {c.trace_frees:,} frees in {c.trace_events:,} events; {len(c.joins):,} log frees joined, "
            f"{c.checked:,} checked, ", (f"{c.disagreements:,} disagreements", "error" if c.disagreements else "outcome.ok"),
        ))
        if c.note:
            console.print(Text(c.note, style="warn"))
    p = r.pointers_tracked
    if p:
        console.print(Text(
            f"Pointers: {p:,} tracked, {r.pointers_evicted:,} evicted (cap {r.caps.get('max_pointers', 0):,}); "
            f"double frees {r.double_frees:,}, allocated twice {r.allocated_twice:,}, failed allocations "
            f"{r.failed_allocs:,}", style="muted"))
