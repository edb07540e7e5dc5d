"""The ctypes mirrors in forensics.native match the DWARF of the built libraries."""

from __future__ import annotations

import ctypes

import pytest

from forensics import elf, native


def _assert_same_layout(path, name, struct):
    layout = elf.get_struct_layout(path, name)
    assert layout.byte_size == ctypes.sizeof(struct), f"{name}: sizeof differs in {path}"
    fields = [f[0] for f in struct._fields_]
    assert list(layout.members) == fields, f"{name}: member names/order differ in {path}"
    for field in fields:
        desc = getattr(struct, field)
        assert layout.members[field] == (desc.offset, desc.size), f"{name}.{field} in {path}"


@pytest.mark.parametrize("name", sorted(native.ALLOCATOR_STRUCTS))
@pytest.mark.parametrize("which", ["release", "debug"])
def test_allocator_structs_match_dwarf(name, which, allocator_path, debug_allocator_path):
    path = allocator_path if which == "release" else debug_allocator_path
    _assert_same_layout(path, name, native.ALLOCATOR_STRUCTS[name])


@pytest.mark.parametrize("name", sorted(native.DRIVER_STRUCTS))
def test_driver_structs_match_dwarf(name, driver_path):
    _assert_same_layout(driver_path, name, native.DRIVER_STRUCTS[name])


def test_driver_copies_of_allocator_structs_match_too(driver_path):
    """The driver compiles hakmem.h as well; whatever of it lands in its DWARF must agree."""
    found = elf.get_struct_layouts(driver_path, sorted(native.ALLOCATOR_STRUCTS))
    present = {n: layout for n, layout in found.items() if layout is not None}
    assert present, "the driver's DWARF holds none of hakmem.h's structs"
    for name in present:
        _assert_same_layout(driver_path, name, native.ALLOCATOR_STRUCTS[name])


def test_layout_check_can_fail(allocator_path):
    """A deliberately wrong mirror is caught."""

    class Wrong(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_uint64), ("ptr", ctypes.c_uint32), ("route", ctypes.c_uint32)]

    with pytest.raises(AssertionError):
        _assert_same_layout(allocator_path, "hak_free_decision", Wrong)
