"""The `info` report: what a library file says about itself (rich table and JSON).

JSON schema "hakmem-forensics/info/1" (keys always present; null when the library does not say):

    {
      "schema": "hakmem-forensics/info/1",
      "path": str,                       # the file read
      "library_kind": "allocator" | "driver" | "unknown",
      "machine": str,                    # ELF e_machine, e.g. "EM_X86_64"
      "elf_class": 32 | 64,
      "abi_version": int | null,         # hak_abi_version_const
      "build_mode": "release" | "debug" | null,   # hak_build_release_const
      "header_size": int | null,         # hak_header_size_const
      "magic": int | null,               # hak_magic_const
      "magic_hex": str | null,           # the same, "0x48414b4d"
      "superslab_size": int | null,      # hak_superslab_size_const
      "tiny_class_sizes": [int] | null,  # hak_tiny_class_sizes_const
      "has_debug_info": bool,            # DWARF present
      "symbols": [{"name": str, "kind": "function" | "data", "required": bool,
                   "present": bool, "feature": str}],
      "missing_required": [str],
      "missing_optional": [str]
    }

A new key may appear within version 1; a key changing meaning or disappearing bumps it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from forensics.model import LibraryInfo

SCHEMA = "hakmem-forensics/info/1"


def to_json(info: LibraryInfo) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "path": info.path,
        "library_kind": info.library_kind,
        "machine": info.machine,
        "elf_class": info.elf_class,
        "abi_version": info.abi_version,
        "build_mode": info.build_mode,
        "header_size": info.header_size,
        "magic": info.magic,
        "magic_hex": f"{info.magic:#x}" if info.magic is not None else None,
        "superslab_size": info.superslab_size,
        "tiny_class_sizes": list(info.tiny_class_sizes) if info.tiny_class_sizes is not None else None,
        "has_debug_info": info.has_debug_info,
        "symbols": [
            {"name": s.name, "kind": s.kind, "required": s.required, "present": s.present, "feature": s.feature}
            for s in info.symbols
        ],
        "missing_required": list(info.missing_required),
        "missing_optional": list(info.missing_optional),
    }


def _unknown(value: object, fmt: str = "{}") -> str:
    return "[muted]unknown[/]" if value is None else fmt.format(value)


def render(info: LibraryInfo, console: Console) -> None:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="label", no_wrap=True)
    facts.add_column(overflow="fold")  # a long path wraps, never loses its tail
    facts.add_row("Library", Text(info.path))  # a user's path: never markup
    facts.add_row("Kind", f"{info.library_kind} ({info.machine}, ELF{info.elf_class})")
    facts.add_row("ABI version", _unknown(info.abi_version, "[value.num]{}[/]"))
    mode = info.build_mode
    facts.add_row("Build mode", f"[build.{mode}]{mode}[/]" if mode else "[muted]unknown[/]")
    facts.add_row("Header size", _unknown(info.header_size, "[value.num]{} bytes[/]"))
    facts.add_row("Magic", "[muted]unknown[/]" if info.magic is None else f"[value.num]{info.magic:#010x}[/]")
    facts.add_row(
        "SuperSlab size",
        "[muted]unknown[/]" if info.superslab_size is None else f"[value.num]{info.superslab_size}[/] bytes",
    )
    tiny = info.tiny_class_sizes
    facts.add_row("Tiny classes", "[muted]unknown[/]" if tiny is None else ", ".join(str(t) for t in tiny))
    facts.add_row("Debug info", "DWARF" if info.has_debug_info else "[warn]none[/]")
    console.print(facts)

    table = Table(title="ABI symbols", title_justify="left", show_lines=False)
    table.add_column("Symbol")
    table.add_column("Kind")
    table.add_column("Required")
    table.add_column("Feature")
    table.add_column("Status")
    for s in info.symbols:
        if s.present:
            status = "[sym.present]present[/]"
        elif s.required:
            status = "[sym.missing]MISSING[/]"
        else:
            status = "[sym.optional_missing]missing[/]"
        table.add_row(s.name, s.kind, "yes" if s.required else "no", s.feature, status)
    console.print(table)
    present = sum(1 for s in info.symbols if s.present)
    summary = f"{present}/{len(info.symbols)} ABI symbols present"
    if info.missing_required:
        summary += f"; [sym.missing]missing required: {', '.join(info.missing_required)}[/]"
    if info.missing_optional:
        summary += f"; [sym.optional_missing]missing optional: {', '.join(info.missing_optional)}[/]"
    console.print(summary)
