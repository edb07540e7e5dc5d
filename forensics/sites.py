"""Call sites: memory maps kept in trace headers, symbolization (cached per build id), site tables.

A recorded trace carries its process's memory map as ``# meta map=`` lines (the executable,
file-backed mappings, from /proc/PID/maps snapshots taken while it ran) and, once
symbolized, one ``# meta site=`` line per call site (docs/trace-format.md, "Call sites").
A site is a return address; it is symbolized at address - 1, the call instruction, through
the mapping it falls in: file offset -> the ELF's own address (its PT_LOAD segments: PIE
executables and shared libraries alike) -> function (symbol table, else DWARF) and
file:line (DWARF line table). Results are cached in memory and on disk per build id, so a
library is read once however many traces use it. ELF is read by forensics.elf only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from forensics import elf, model
from forensics.errors import BadInputError
from forensics.trace import TraceHeader, open_trace, open_writer, sniff
from forensics.trace.records import META_PREFIX, OP_NAMES

CACHE_VERSION = 1
ENV_CACHE = "HAKMEM_FORENSICS_CACHE"
_FORENSIC_OPS = ("free_interior", "double_free", "free_raw", "free_libc", "corrupt")

_MAPS_LINE = re.compile(r"^([0-9a-fA-F]+)-([0-9a-fA-F]+)\s+(\S{4})\s+([0-9a-fA-F]+)\s+\S+\s+\d+\s+(.*)$")


def one_line(text: str) -> str:
    """Text made safe for one header line (line breaks escaped)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _enc(text: str | None) -> str:
    if text is None or text == "":
        return "?"
    return text.replace("%", "%25").replace(" ", "%20").replace("\t", "%09").replace("\n", "%0A").replace("\r", "%0D")


def _dec(text: str) -> str | None:
    if text == "?":
        return None
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


# ---------------------------------------------------------------------------- memory maps
def parse_proc_maps(text: str) -> list[model.MappedFile]:
    """The executable, file-backed mappings of a /proc/PID/maps text."""
    out = []
    for line in text.splitlines():
        m = _MAPS_LINE.match(line)
        if not m or "x" not in m.group(3):
            continue
        path = m.group(5).strip()
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if not path.startswith("/"):
            continue
        out.append(model.MappedFile(int(m.group(1), 16), int(m.group(2), 16), int(m.group(4), 16), path))
    return out


def merge_snapshots(snapshots: Iterable[Sequence[model.MappedFile]]) -> list[model.MappedFile]:
    """Every mapping any snapshot saw, once, by start address."""
    seen: dict[model.MappedFile, None] = {}
    for snap in snapshots:
        for entry in snap:
            seen.setdefault(entry, None)
    return sorted(seen, key=lambda e: (e.start, e.end, e.path))


def get_module_ids(maps: Sequence[model.MappedFile]) -> dict[str, str | None]:
    """Build id of every mapped file (None: unreadable, not ELF, or no build id)."""
    out: dict[str, str | None] = {}
    for entry in maps:
        if entry.path not in out:
            out[entry.path] = _build_id(entry.path)
    return out


def _build_id(path: str) -> str | None:
    try:
        return elf.get_build_id(path)
    except BadInputError:
        return None


def format_map_meta(maps: Sequence[model.MappedFile], modules: dict[str, str | None]) -> list[tuple[str, str]]:
    meta: list[tuple[str, str]] = [("map", f"{e.start:#x}-{e.end:#x} {e.offset:#x} {one_line(e.path)}") for e in maps]
    meta += [("module", f"{build_id or '-'} {one_line(path)}") for path, build_id in modules.items()]
    return meta


def parse_map_meta(header: TraceHeader) -> tuple[list[model.MappedFile], dict[str, str | None]]:
    maps: list[model.MappedFile] = []
    modules: dict[str, str | None] = {}
    for key, value in header.meta:
        if key == "map":
            m = re.match(r"^(0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+) (0x[0-9a-fA-F]+) (.+)$", value)
            if m:
                maps.append(model.MappedFile(int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16), m.group(4)))
        elif key == "module":
            build_id, _, path = value.partition(" ")
            if path:
                modules[path] = None if build_id == "-" else build_id
    return maps, modules


# ---------------------------------------------------------------------------- site lines
def format_site(site: model.SiteInfo) -> str:
    """ADDR FUNCTION FILE:LINE MODULE+VADDR; '?' for what is unknown, %-escaped spaces."""
    where = f"{_enc(site.file)}:{site.line}" if site.file and site.line else "?"
    module = f"{_enc(site.module)}+{site.vaddr:#x}" if site.module and site.vaddr is not None else _enc(site.module)
    return f"{site.address:#x} {_enc(site.function)} {where} {module}"


def parse_site(value: str) -> model.SiteInfo | None:
    parts = value.split(" ")
    if len(parts) != 4:
        return None
    try:
        address = int(parts[0], 16)
    except ValueError:
        return None
    function = _dec(parts[1])
    file = line = None
    if parts[2] != "?":
        f, _, ln = parts[2].rpartition(":")
        file, line = _dec(f), int(ln) if ln.isdigit() else None
    module = vaddr = None
    if parts[3] != "?":
        mod, plus, off = parts[3].rpartition("+")
        if plus and off.startswith("0x"):
            module, vaddr = _dec(mod), int(off, 16)
        else:
            module = _dec(parts[3])
    return model.SiteInfo(address, module, vaddr, function, file, line)


def get_sites(header: TraceHeader) -> dict[int, model.SiteInfo]:
    """The symbolized sites a trace header carries."""
    out: dict[int, model.SiteInfo] = {}
    for key, value in header.meta:
        if key == "site":
            site = parse_site(value)
            if site is not None:
                out[site.address] = site
    return out


# ---------------------------------------------------------------------------- symbolization
def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hakmem-forensics" / "sites"


_SEGMENTS: dict[tuple, list[tuple[int, int, int]] | None] = {}
_CODE: dict[str, dict[int, model.CodeLocation]] = {}  # module key -> code vaddr -> location


def _module_key(path: str, build_id: str | None) -> tuple:
    if build_id:
        return ("build-id", build_id)
    try:
        st = os.stat(path)
    except OSError:
        return ("missing", path)
    return ("file", os.path.realpath(path), st.st_mtime_ns, st.st_size)


def _segments(path: str, key: tuple) -> list[tuple[int, int, int]] | None:
    if key not in _SEGMENTS:
        try:
            _SEGMENTS[key] = elf.get_load_segments(path)
        except BadInputError:
            _SEGMENTS[key] = None
    return _SEGMENTS[key]


def _cache_file(cache_dir: Path | None, build_id: str | None) -> Path | None:
    if cache_dir is None or not build_id or not re.fullmatch(r"[0-9a-fA-F]{8,128}", build_id):
        return None
    return cache_dir / f"{build_id}.json"


def _load_cache(path: Path | None) -> dict[int, model.CodeLocation]:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != CACHE_VERSION:
            return {}
        return {int(k, 16): model.CodeLocation(int(k, 16), v[0], v[1], v[2]) for k, v in doc["sites"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def _store_cache(path: Path | None, module: str, code: dict[int, model.CodeLocation]) -> None:
    if path is None:
        return
    doc = {"version": CACHE_VERSION, "module": module,
           "sites": {f"{v:#x}": [c.function, c.file, c.line] for v, c in sorted(code.items())}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=str(path.parent))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written is only slower next time


def symbolize(
    addresses: Iterable[int],
    maps: Sequence[model.MappedFile],
    *,
    modules: dict[str, str | None] | None = None,
    cache_dir: Path | None = None,
) -> dict[int, model.SiteInfo]:
    """SiteInfo for each return address: the mapping it is in, and its function and line.

    modules: build ids recorded with the map; a file whose build id differs now (rebuilt
    since) is not read for it. cache_dir: the on-disk cache (None: memory only)."""
    by_module: dict[str, list[tuple[int, int]]] = {}  # path -> [(address, vaddr)]
    out: dict[int, model.SiteInfo] = {}
    ordered = sorted(maps, key=lambda e: e.start)
    starts = [e.start for e in ordered]
    from bisect import bisect_right

    for address in addresses:
        i = bisect_right(starts, address - 1) - 1
        entry = ordered[i] if i >= 0 and ordered[i].contains(address - 1) else None
        if entry is None:
            out[address] = model.SiteInfo(address)
            continue
        by_module.setdefault(entry.path, []).append((address, address - entry.start + entry.offset))
    for path, items in by_module.items():
        recorded = (modules or {}).get(path)
        build_id = _build_id(path) if os.path.exists(path) else None
        if recorded and build_id and recorded != build_id:
            for address, _ in items:
                out[address] = model.SiteInfo(address, path)  # rebuilt since the recording
            continue
        key = _module_key(path, build_id)
        segments = _segments(path, key)
        code_key = "|".join(map(str, key))
        known = _CODE.setdefault(code_key, {})
        cache_path = _cache_file(cache_dir, build_id)
        if not known and cache_path is not None:
            known.update(_load_cache(cache_path))
        wanted: list[tuple[int, int | None]] = []
        for address, file_offset in items:
            vaddr = elf.file_offset_to_vaddr(segments, file_offset) if segments else None
            wanted.append((address, vaddr))
        missing = sorted({v - 1 for _, v in wanted if v is not None and (v - 1) not in known})
        if missing:
            try:
                known.update(elf.get_code_locations(path, missing))
            except BadInputError:
                for v in missing:
                    known[v] = model.CodeLocation(v, None, None, None)
            _store_cache(cache_path, path, known)
        for address, vaddr in wanted:
            code = known.get(vaddr - 1) if vaddr is not None else None
            if code is None:
                out[address] = model.SiteInfo(address, path, vaddr)
            else:
                out[address] = model.SiteInfo(address, path, vaddr, code.function, code.file, code.line)
    return out


# ---------------------------------------------------------------------------- traces
def symbolize_trace(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    cache_dir: Path | None = None,
) -> tuple[TraceHeader, dict[int, model.SiteInfo]]:
    """Symbolize every call site of a trace through the memory map in its header, and write
    the trace again with one ``# meta site=`` line per site (dst, or src in place).

    A trace without ``# meta map=`` lines (generated, imported) has nothing to symbolize
    against: BadInputError."""
    src_path = Path(src)
    with open_trace(src_path) as reader:
        header = reader.header
    maps, modules = parse_map_meta(header)
    if not maps:
        raise BadInputError(f"{src}: the trace has no memory map ('# meta map=' lines): only traces made by "
                            "`hakmem-forensics record` can be symbolized")
    addresses: set[int] = set()
    with open_trace(src_path) as reader:
        for raw in reader.iter_raw(check=False):
            if raw[7]:
                addresses.add(raw[7])
    site_infos = symbolize(sorted(addresses), maps, modules=modules, cache_dir=cache_dir)
    lines = [ln for ln in header.lines if not ln.startswith(META_PREFIX + "site=")]
    lines += [f"{META_PREFIX}site={format_site(s)}" for _, s in sorted(site_infos.items())]
    new_header = TraceHeader.parse(lines, str(src_path))
    target = Path(dst) if dst is not None else src_path
    tmp = target.with_name(target.name + ".partial") if dst is None or target.resolve() == src_path.resolve() else target
    binary = (sniff(src_path) == "binary") if tmp != target else None
    with open_trace(src_path) as reader:
        with open_writer(tmp, new_header, binary=binary) as writer:
            writer.write_many(reader.iter_raw(check=False))
    if tmp != target:
        os.replace(tmp, target)
    return new_header, site_infos


@dataclass
class SiteStat:
    """One call site of a trace: how many events of each op it made."""

    site: model.SiteInfo
    ops: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def anomalies(self) -> int:
        return sum(self.ops[op] for op in _FORENSIC_OPS)


def get_site_table(trace: str | os.PathLike[str]) -> tuple[TraceHeader, list[SiteStat]]:
    """Per call site of a trace, its events by op; sites with forensic ops first, then by count.

    Streams the trace; memory follows the number of distinct sites."""
    with open_trace(trace) as reader:
        header = reader.header
        counts: dict[int, Counter] = {}
        for raw in reader.iter_raw(check=False):
            c = counts.get(raw[7])
            if c is None:
                c = counts[raw[7]] = Counter()
            c[raw[0]] += 1
    known = get_sites(header)
    stats = []
    for address, c in counts.items():
        info = known.get(address) or model.SiteInfo(address)
        stats.append(SiteStat(info, Counter({OP_NAMES[k]: v for k, v in c.items()})))
    stats.sort(key=lambda s: (-s.anomalies, -s.total, s.site.address))
    return header, stats


__all__ = [
    "SiteStat",
    "default_cache_dir",
    "format_map_meta",
    "format_site",
    "get_module_ids",
    "get_site_table",
    "get_sites",
    "merge_snapshots",
    "one_line",
    "parse_map_meta",
    "parse_proc_maps",
    "parse_site",
    "symbolize",
    "symbolize_trace",
]
