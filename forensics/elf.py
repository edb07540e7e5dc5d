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
from forensics.model import LibraryInfo, StructLayout, SymbolStatus

_ELF_ERRORS = (ELFError, ELFParseError, DWARFError, struct.error, ValueError, KeyError, IndexError)


class ElfFile:
    """An open ELF file; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BadInputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise BadInputError(f"{self.path}: is a directory, not a library file")
        try:
            self._stream: BinaryIO = open(self.path, "rb")
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot open: {exc.strerror}") from None
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
