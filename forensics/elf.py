"""Read a library file without loading it: ABI symbols, build mode, constants, DWARF struct layouts.

The only module that imports pyelftools; everything else gets model.py records. Every
failure to read a file becomes a BadInputError naming the file and the reason.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from forensics import abi
from forensics.errors import BadInputError
from forensics.safeio import open_input
from forensics.model import CodeLocation, LibraryInfo, StructLayout, SymbolStatus

_ELF_ERRORS = (ELFError, ELFParseError, DWARFError, struct.error, ValueError, KeyError, IndexError)


class ElfFile:
    """An open ELF file; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # a regular file only: a trace's `# meta map=` lines can name anything (a FIFO would block)
        self._stream: BinaryIO = open_input(self.path, "library")
        head = self._stream.read(4)
        self._stream.seek(0)
        if head != b"\x7fELF":
            self._stream.close()
            raise BadInputError(f"{self.path}: not an ELF file (no ELF magic at offset 0)")
        try:
            self._elf = ELFFile(self._stream)
        except _ELF_ERRORS as exc:
            self._stream.close()
            raise BadInputError(f"{self.path}: malformed ELF file: {exc}") from None
        self._symbols: dict[str, object] | None = None

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- symbols
    def _get_symbols(self) -> dict[str, object]:
        if self._symbols is None:
            symbols: dict[str, object] = {}
            try:
                for name in (".dynsym", ".symtab"):
                    section = self._elf.get_section_by_name(name)
                    if not isinstance(section, SymbolTableSection):
                        continue
                    for sym in section.iter_symbols():
                        if (
                            sym.name
                            and sym["st_shndx"] != "SHN_UNDEF"
                            and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                            and sym.name not in symbols
                        ):
                            symbols[sym.name] = sym
            except _ELF_ERRORS as exc:
                raise BadInputError(f"{self.path}: malformed symbol table: {exc}") from None
            self._symbols = symbols
        return self._symbols

    def has_symbol(self, name: str) -> bool:
        return name in self._get_symbols()

    def get_symbol_bytes(self, name: str) -> bytes | None:
        """The bytes a defined data symbol holds in the file (zeros for .bss), None if absent."""
        sym = self._get_symbols().get(name)
        if sym is None:
            return None
        size = sym["st_size"]
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int) or size <= 0:
            return None
        try:
            section = self._elf.get_section(shndx)
            if section["sh_type"] == "SHT_NOBITS":
                return bytes(size)
            offset = sym["st_value"] - section["sh_addr"]
            if offset < 0 or offset + size > section["sh_size"]:
                raise BadInputError(f"{self.path}: symbol {name} lies outside its section")
            self._stream.seek(section["sh_offset"] + offset)
            data = self._stream.read(size)
        except _ELF_ERRORS as exc:
            raise BadInputError(f"{self.path}: cannot read symbol {name}: {exc}") from None
        if len(data) != size:
            raise BadInputError(f"{self.path}: truncated file: symbol {name} runs past the end")
        return data

    def _unpack(self, name: str, fmt: str) -> tuple[int, ...] | None:
        data = self.get_symbol_bytes(name)
        if data is None:
            return None
        order = "<" if self._elf.little_endian else ">"
        n = len(data) // struct.calcsize(fmt)
        return struct.unpack(f"{order}{n}{fmt}", data[: n * struct.calcsize(fmt)])

    def get_u32(self, name: str) -> int | None:
        values = self._unpack(name, "I")
        return values[0] if values else None

    def get_u64(self, name: str) -> int | None:
        values = self._unpack(name, "Q")
        return values[0] if values else None

    def get_u32_array(self, name: str) -> tuple[int, ...] | None:
        return self._unpack(name, "I")

    # -- facts
    @property
    def machine(self) -> str:
        return str(self._elf["e_machine"])

    @property
    def elf_class(self) -> int:
        return self._elf.elfclass

    def has_debug_info(self) -> bool:
        return self._elf.has_dwarf_info() and self._elf.get_section_by_name(".debug_info") is not None

    def get_library_info(self) -> LibraryInfo:
        names = self._get_symbols()
        if any(s.name in names for s in abi.HAKMEM_SYMBOLS if s.required):
            kind, table = "allocator", abi.HAKMEM_SYMBOLS
        elif any(s.name in names for s in abi.HFDRIVER_SYMBOLS):
            kind, table = "driver", abi.HFDRIVER_SYMBOLS
        else:
            kind, table = "unknown", abi.HAKMEM_SYMBOLS
        symbols = tuple(SymbolStatus(s.name, s.required, s.name in names, s.feature, s.kind) for s in table)
        release = self.get_u32("hak_build_release_const")
        build_mode = None if release is None else ("release" if release else "debug")
        tiny = self.get_u32_array("hak_tiny_class_sizes_const")
        return LibraryInfo(
            path=str(self.path),
            library_kind=kind,
            machine=self.machine,
            elf_class=self.elf_class,
            abi_version=self.get_u32("hak_abi_version_const"),
            build_mode=build_mode,
            header_size=self.get_u32("hak_header_size_const"),
            magic=self.get_u32("hak_magic_const"),
            superslab_size=self.get_u64("hak_superslab_size_const"),
            tiny_class_sizes=tuple(tiny) if tiny is not None else None,
            has_debug_info=self.has_debug_info(),
            symbols=symbols,
        )

    # -- DWARF
    def get_struct_layout(self, name: str) -> StructLayout:
        """Layout of struct `name` (struct tag or typedef name) from DWARF."""
        layout = self.get_struct_layouts([name])[name]
        if layout is None:
            raise BadInputError(f"{self.path}: no struct named {name} in its DWARF")
        return layout

    def get_struct_layouts(self, names: list[str]) -> dict[str, StructLayout | None]:
        """Layouts of several structs in one DWARF walk; None for a struct not found."""
        if not self._elf.has_dwarf_info():
            raise BadInputError(f"{self.path}: no DWARF debug info (built without -g?)")
        found: dict[str, StructLayout | None] = {n: None for n in names}
        try:
            for die in self._iter_dies():
                if die.tag not in ("DW_TAG_structure_type", "DW_TAG_typedef"):
                    continue
                n = _die_name(die)
                if n not in found or found[n] is not None or "DW_AT_declaration" in die.attributes:
                    continue
                struct_die = _strip_typedefs(die)
                if struct_die is None or struct_die.tag != "DW_TAG_structure_type":
                    continue
                if "DW_AT_declaration" in struct_die.attributes:
                    continue
                found[n] = _layout(n, struct_die)
                if all(v is not None for v in found.values()):
                    break
        except _ELF_ERRORS as exc:
            raise BadInputError(f"{self.path}: malformed DWARF: {exc}") from None
        return found

    def _iter_dies(self) -> Iterator:
        dwarf = self._elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            yield from cu.iter_DIEs()


def _die_name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_QUALIFIERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type", "DW_TAG_atomic_type")


def _strip_typedefs(die):
    seen = 0
    while die is not None and die.tag in _QUALIFIERS and seen < 64:
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
        seen += 1
    return die


def _type_size(die) -> int:
    die = _strip_typedefs(die)
    if die is None:
        return 0
    if "DW_AT_byte_size" in die.attributes:
        return int(die.attributes["DW_AT_byte_size"].value)
    if die.tag == "DW_TAG_array_type":
        count = 1
        for sub in die.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            if "DW_AT_count" in sub.attributes:
                count *= int(sub.attributes["DW_AT_count"].value)
            elif "DW_AT_upper_bound" in sub.attributes:
                count *= int(sub.attributes["DW_AT_upper_bound"].value) + 1
            else:
                count = 0
        return count * _type_size(die.get_DIE_from_attribute("DW_AT_type"))
    return 0


def _member_offset(member) -> int:
    attr = member.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return 0  # union-like or first member in some producers
    value = attr.value
    if isinstance(value, int):
        return value
    # DWARF 2 style: a location expression DW_OP_plus_uconst <n>
    if isinstance(value, list) and value and value[0] == 0x23:
        result, shift = 0, 0
        for byte in value[1:]:
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return result
    raise ValueError(f"unsupported member location {value!r}")


def _layout(name: str, struct_die) -> StructLayout:
    members: dict[str, tuple[int, int]] = {}
    for child in struct_die.iter_children():
        if child.tag != "DW_TAG_member":
            continue
        member_name = _die_name(child) or f"<anon@{_member_offset(child)}>"
        size = _type_size(child.get_DIE_from_attribute("DW_AT_type")) if "DW_AT_type" in child.attributes else 0
        members[member_name] = (_member_offset(child), size)
    byte_size = int(struct_die.attributes["DW_AT_byte_size"].value) if "DW_AT_byte_size" in struct_die.attributes else 0
    return StructLayout(name=name, byte_size=byte_size, members=members)


def read_library_info(path: str | os.PathLike[str]) -> LibraryInfo:
    with ElfFile(path) as elf:
        return elf.get_library_info()


def get_struct_layout(path: str | os.PathLike[str], name: str) -> StructLayout:
    with ElfFile(path) as elf:
        return elf.get_struct_layout(name)


def get_struct_layouts(path: str | os.PathLike[str], names: list[str]) -> dict[str, StructLayout | None]:
    with ElfFile(path) as elf:
        return elf.get_struct_layouts(names)


# --------------------------------------------------------------------------- symbolization
# Call sites to function + file:line (issue 5). Addresses here are the ELF's own virtual
# addresses (link-time, so 0-based for PIE executables and shared libraries); turning a
# runtime address into one through a memory map is forensics.sites' job, which asks for
# the load segments below.


def _get_build_id(elf: ElfFile) -> str | None:
    try:
        for section in elf._elf.iter_sections():
            if section["sh_type"] != "SHT_NOTE":
                continue
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    desc = note["n_desc"]
                    return desc if isinstance(desc, str) else bytes(desc).hex()
    except _ELF_ERRORS:
        return None
    return None


def _get_load_segments(elf: ElfFile) -> list[tuple[int, int, int]]:
    """(file offset, file size, virtual address) of each PT_LOAD segment."""
    out = []
    try:
        for seg in elf._elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                out.append((seg["p_offset"], seg["p_filesz"], seg["p_vaddr"]))
    except _ELF_ERRORS as exc:
        raise BadInputError(f"{elf.path}: malformed program headers: {exc}") from None
    return out


def _file_offset_to_vaddr(segments: list[tuple[int, int, int]], offset: int) -> int | None:
    for p_offset, p_filesz, p_vaddr in segments:
        if p_offset <= offset < p_offset + p_filesz:
            return p_vaddr + (offset - p_offset)
    return None


def _function_symbols(elf: ElfFile) -> tuple[list[int], list[tuple[int, str]]]:
    """Sorted starts and (end, name) of the sized FUNC symbols (.symtab, else .dynsym)."""
    funcs: dict[int, tuple[int, str]] = {}
    for name in (".symtab", ".dynsym"):
        section = elf._elf.get_section_by_name(name)
        if not isinstance(section, SymbolTableSection):
            continue
        for sym in section.iter_symbols():
            if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC") or sym["st_shndx"] == "SHN_UNDEF":
                continue
            start, size = sym["st_value"], sym["st_size"]
            if size <= 0 or not sym.name:
                continue
            prev = funcs.get(start)
            # prefer a global name over a local alias at the same address
            if prev is None or (sym["st_info"]["bind"] == "STB_GLOBAL" and prev[1].startswith("_")):
                funcs[start] = (start + size, sym.name)
        if funcs:
            break
    starts = sorted(funcs)
    return starts, [funcs[s] for s in starts]


def _dwarf_file_name(lineprog, cu_top, index: int) -> str | None:
    header = lineprog.header
    files = header["file_entry"]
    dirs = header["include_directory"]
    version = header["version"]
    pos = index if version >= 5 else index - 1
    if not 0 <= pos < len(files):
        return None
    entry = files[pos]
    name = entry.name.decode("utf-8", "replace") if isinstance(entry.name, bytes) else str(entry.name)
    if os.path.isabs(name):
        return name
    dir_index = entry.dir_index
    if version >= 5:
        directory = dirs[dir_index] if 0 <= dir_index < len(dirs) else b""
    elif dir_index > 0 and dir_index - 1 < len(dirs):
        directory = dirs[dir_index - 1]
    else:
        comp_dir = cu_top.attributes.get("DW_AT_comp_dir") if cu_top is not None else None
        directory = comp_dir.value if comp_dir is not None else b""
    directory = directory.decode("utf-8", "replace") if isinstance(directory, bytes) else str(directory or "")
    if directory and not os.path.isabs(directory) and cu_top is not None and "DW_AT_comp_dir" in cu_top.attributes:
        comp = cu_top.attributes["DW_AT_comp_dir"].value
        comp = comp.decode("utf-8", "replace") if isinstance(comp, bytes) else str(comp)
        directory = os.path.join(comp, directory)
    return os.path.normpath(os.path.join(directory, name)) if directory else name


def _cu_rows(dwarf, cu) -> tuple[list[int], list[tuple[str | None, int]]]:
    """The line table of one CU: sorted addresses and (file, line) rows; line 0 = no code."""
    lineprog = dwarf.line_program_for_CU(cu)
    if lineprog is None:
        return [], []
    top = cu.get_top_DIE()
    names: dict[int, str | None] = {}
    rows: list[tuple[int, int, str | None, int]] = []
    for entry in lineprog.get_entries():
        state = entry.state
        if state is None:
            continue
        if state.end_sequence:
            rows.append((state.address, 0, None, 0))
            continue
        if state.file not in names:
            names[state.file] = _dwarf_file_name(lineprog, top, state.file)
        rows.append((state.address, 1, names[state.file], state.line))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[0] for r in rows], [(r[2], r[3]) for r in rows]


def _cu_functions(cu) -> list[tuple[int, int, str]]:
    """(low, high, name) of the CU's subprograms that have code (not inlined instances)."""
    out = []
    for die in cu.iter_DIEs():
        if die.tag != "DW_TAG_subprogram":
            continue
        attrs = die.attributes
        if "DW_AT_low_pc" not in attrs or "DW_AT_high_pc" not in attrs:
            continue
        low = attrs["DW_AT_low_pc"].value
        high_attr = attrs["DW_AT_high_pc"]
        high = high_attr.value if high_attr.form == "DW_FORM_addr" else low + high_attr.value
        name = _die_name(die)
        if name is None and "DW_AT_specification" in attrs:
            name = _die_name(die.get_DIE_from_attribute("DW_AT_specification"))
        if name is None and "DW_AT_abstract_origin" in attrs:
            name = _die_name(die.get_DIE_from_attribute("DW_AT_abstract_origin"))
        if "DW_AT_linkage_name" in attrs:
            linkage = attrs["DW_AT_linkage_name"].value
            name = linkage.decode("utf-8", "replace") if isinstance(linkage, bytes) else str(linkage)
        if name:
            out.append((low, high, name))
    return out


def _lookup_code(elf: ElfFile, vaddrs: list[int]) -> dict[int, CodeLocation]:
    from bisect import bisect_right

    starts, funcs = _function_symbols(elf)
    out: dict[int, CodeLocation] = {}
    for vaddr in vaddrs:
        function = None
        i = bisect_right(starts, vaddr) - 1
        if i >= 0 and vaddr < funcs[i][0]:
            function = funcs[i][1]
        out[vaddr] = CodeLocation(vaddr, function, None, None)
    if not elf._elf.has_dwarf_info() or elf._elf.get_section_by_name(".debug_line") is None:
        return out
    dwarf = elf._elf.get_dwarf_info()
    # Which CU holds each address: .debug_aranges when present (then only those CUs are
    # read: a big library costs what the sites in it cost), else every CU.
    wanted: dict[int, list[int]] = {}
    aranges = dwarf.get_aranges() if elf._elf.get_section_by_name(".debug_aranges") is not None else None
    if aranges is not None:
        for vaddr in vaddrs:
            cu_offset = aranges.cu_offset_at_addr(vaddr)
            if cu_offset is not None:
                wanted.setdefault(cu_offset, []).append(vaddr)
        cus = [dwarf.get_CU_at(off) for off in sorted(wanted)]
    else:
        cus = list(dwarf.iter_CUs())
    remaining = set(vaddrs)
    for cu in cus:
        addrs, rows = _cu_rows(dwarf, cu)
        if not addrs:
            continue
        subprograms = None
        for vaddr in wanted.get(cu.cu_offset, vaddrs) if aranges is not None else list(remaining):
            if vaddr not in remaining or vaddr < addrs[0] or vaddr > addrs[-1]:
                continue
            j = bisect_right(addrs, vaddr) - 1
            file, line = rows[j]
            if not line:
                continue  # past the end of a sequence: not this CU's code
            function = out[vaddr].function
            if function is None:
                if subprograms is None:
                    subprograms = _cu_functions(cu)
                for low, high, name in subprograms:
                    if low <= vaddr < high:
                        function = name
                        break
            out[vaddr] = CodeLocation(vaddr, function, file, line)
            remaining.discard(vaddr)
    return out


def get_build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build id of an ELF file (hex), or None if it has none."""
    with ElfFile(path) as elf:
        return _get_build_id(elf)


def get_load_segments(path: str | os.PathLike[str]) -> list[tuple[int, int, int]]:
    """(file offset, file size, virtual address) of each PT_LOAD segment."""
    with ElfFile(path) as elf:
        return _get_load_segments(elf)


def file_offset_to_vaddr(segments: list[tuple[int, int, int]], offset: int) -> int | None:
    """The virtual address the byte at file offset `offset` is loaded at (link-time), or None."""
    return _file_offset_to_vaddr(segments, offset)


def get_code_locations(path: str | os.PathLike[str], vaddrs: list[int]) -> dict[int, CodeLocation]:
    """Function (symbol table, else DWARF) and file:line (DWARF .debug_line) of each address."""
    with ElfFile(path) as elf:
        try:
            return _lookup_code(elf, sorted(set(vaddrs)))
        except _ELF_ERRORS as exc:
            raise BadInputError(f"{path}: malformed debug information: {exc}") from None
