"""forensics.native: loading, ABI checks, optional features, error mapping, handle lifetime."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from hf_helpers import run, run_ok
from typer.testing import CliRunner

from forensics import abi, elf, native
from forensics.cli import app
from forensics.errors import (
    CheckFailedError,
    ClosedError,
    FeatureUnavailable,
    InvalidValueError,
    LibraryError,
    UnknownKnobError,
)
from forensics.model import Action, OwnerKind, Route

# A "user's own build": only the required core of the ABI, on top of libc malloc.
STUB_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <malloc.h>
unsigned hak_abi_version(void) { return ABI; }
const char *hak_last_error(void) { return "stub"; }
int hak_init(void) { return 0; }
void *hak_alloc_at(size_t n, uintptr_t s) { return malloc(n); }
#ifndef NO_FREE
void hak_free_at(void *p, size_t n, uintptr_t s) { free(p); }
#endif
void *hak_calloc_at(size_t m, size_t n, uintptr_t s) { return calloc(m, n); }
void *hak_realloc_at(void *p, size_t n, uintptr_t s) { return realloc(p, n); }
void *hak_memalign_at(size_t a, size_t n, uintptr_t s) { return memalign(a, n); }
size_t hak_usable_size(void *p) { return malloc_usable_size(p); }
const unsigned hak_abi_version_const = ABI;
#ifdef BAD_NAMES
const char *hak_route_name(unsigned r) { return r == 2 ? "mid_hit" : "?"; }
#endif
"""


def _build_stub(tmp_path: Path, name: str, *defines: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stub library")
    src = tmp_path / f"{name}.c"
    src.write_text(STUB_C)
    out = tmp_path / f"lib{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src), *defines], check=True)
    return out


def test_bundled_library_loads_and_checks_abi(allocator):
    assert allocator.abi_version == abi.HAK_ABI_VERSION == 1
    assert allocator.missing_features == ()
    assert allocator.path == abi.find_allocator().resolve()


def test_libraries_are_loaded_once_per_path(allocator):
    again = native.Allocator()
    assert native.load_allocator() is native.load_allocator(allocator.path)
    assert again.path == allocator.path


def test_missing_library_names_path_and_cause(tmp_path):
    missing = tmp_path / "libnothere.so"
    with pytest.raises(LibraryError) as exc:
        native.Allocator(missing)
    assert str(missing) in str(exc.value) and "no such file" in str(exc.value)


def test_bundled_name_missing_tells_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(abi, "NATIVE_DIR", tmp_path)
    with pytest.raises(LibraryError) as exc:
        native.Allocator(tmp_path / abi.ALLOCATOR_FILE)
    message = str(exc.value)
    assert "not built" in message and "pip install ." in message and "make -C csrc" in message


def test_non_library_names_wrong_architecture():
    with pytest.raises(LibraryError) as exc:
        native.Allocator("/etc/passwd")
    assert "/etc/passwd" in str(exc.value) and "architecture or not a shared library" in str(exc.value)


def test_hakmem_lib_env_overrides(monkeypatch, debug_allocator_path):
    monkeypatch.setenv("HAKMEM_LIB", str(debug_allocator_path))
    assert abi.find_allocator() == debug_allocator_path
    assert abi.find_allocator("/x/libother.so") == Path("/x/libother.so")


def test_debug_build_reports_debug(debug_allocator_path):
    a = native.Allocator(debug=True)
    assert a.path == debug_allocator_path.resolve()
    assert a.geometry().build_release is False


def test_user_build_without_optional_symbols_still_loads(tmp_path):
    stub = _build_stub(tmp_path, "userbuild", "-DABI=1")
    a = native.Allocator(stub)
    for feature in ("owner", "reqtrace", "decision", "knobs", "geometry", "check", "stats"):
        assert feature in a.missing_features
    assert "core" not in a.missing_features
    p = a.alloc(100)
    assert a.usable_size(p) >= 100
    a.free(p)
    with pytest.raises(FeatureUnavailable) as exc:
        a.owner(p)
    assert "hak_owner" in str(exc.value) and str(stub) in str(exc.value)
    with pytest.raises(FeatureUnavailable, match="hak_super_reg_reqtrace_get"):
        a.reqtrace()
    # the ELF view agrees, without loading anything
    info = elf.read_library_info(stub)
    assert "hak_owner" in info.missing_optional and info.missing_required == ()
    assert info.abi_version == 1 and info.build_mode is None
    result = CliRunner().invoke(app, ["info", "--lib", str(stub)])
    assert result.exit_code == 0, result.output
    assert "missing" in result.stdout


def test_driver_reports_what_a_user_build_lacks(tmp_path):
    stub = _build_stub(tmp_path, "userbuild2", "-DABI=1")

    def body(ctx):
        p = ctx.driver.alloc(64)
        ctx.driver.free(p)
        return ctx.driver.binding, ctx.driver.missing_symbols

    binding, missing = isolate_run(body, lib=stub)
    assert binding == "hakmem"
    assert "hak_owner" in missing and "hak_alloc_at" not in missing


def isolate_run(fn, **kw):
    from forensics import isolate

    return isolate.run_isolated(fn, **kw).unwrap()


def test_wrong_abi_version_is_refused(tmp_path):
    stub = _build_stub(tmp_path, "abi2", "-DABI=2")
    with pytest.raises(LibraryError, match="ABI version 2"):
        native.Allocator(stub)


def test_missing_required_symbol_is_refused(tmp_path):
    stub = _build_stub(tmp_path, "nofree", "-DABI=1", "-DNO_FREE")
    with pytest.raises(LibraryError, match="missing required symbol.*hak_free_at"):
        native.Allocator(stub)


def test_use_after_close_fails_loudly():
    with native.Allocator() as a:
        assert not a.closed
    assert a.closed
    with pytest.raises(ClosedError):
        a.alloc(8)
    with pytest.raises(ClosedError):
        a.geometry()
    d = native.Driver()
    d.close()
    with pytest.raises(ClosedError):
        d.probe("maps", 0, 1)


def test_knob_errors_carry_the_c_message(allocator):
    with pytest.raises(UnknownKnobError) as exc:
        allocator.set_knob("HAKMEM_NO_SUCH_KNOB", 1)
    assert exc.value.code == -2 and exc.value.message and "hak_set_knob" in str(exc.value)
    with pytest.raises(InvalidValueError) as exc:
        allocator.set_knob("HAKMEM_HEADER_PROBE", "bogus")
    assert exc.value.code == -1 and exc.value.message
    with pytest.raises(UnknownKnobError):
        allocator.get_knob("HAKMEM_NO_SUCH_KNOB")


def test_knobs_round_trip_in_a_child(allocator):
    def body(ctx):
        a = ctx.allocator
        a.set_knob("HAKMEM_HEADER_PROBE", "seed-msync")
        a.set_knob("HAKMEM_SS_REG_CAPACITY", 7)
        return a.get_knob("HAKMEM_HEADER_PROBE"), a.get_knob("HAKMEM_SS_REG_CAPACITY"), a.knobs()

    probe, cap, knobs = run_ok(body)
    assert (probe, cap) == ("seed-msync", "7")
    assert knobs["HAKMEM_HEADER_PROBE"] == "seed-msync"
    assert {"HAKMEM_FREE_ROUTE_TRACE", "HAKMEM_SUPER_REG_REQTRACE", "HAKMEM_SS_REG_CAPACITY"} <= set(knobs)
    # the parent's allocator never saw the child's knobs
    assert allocator.get_knob("HAKMEM_HEADER_PROBE") == "off"


def test_last_decision_before_any_free_is_an_error(allocator):
    errors = []

    def fresh_thread():
        try:
            allocator.last_decision()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], InvalidValueError)


def test_route_ring_and_stats(geometry):
    def body(ctx):
        a = ctx.allocator
        a.route_ring_clear()
        before = a.stats()
        ptrs = [a.alloc(16), a.alloc(geometry.mid_class_user_sizes[0]), a.alloc(geometry.l25_class_user_sizes[0])]
        for p in ptrs:
            a.free(p)
        return ptrs, a.route_ring(), before, a.stats()

    ptrs, ring, before, after = run_ok(body)
    assert [d.ptr for d in ring] == ptrs
    assert [d.route for d in ring] == [Route.SS_HIT, Route.MID_HIT, Route.L25_HIT]
    assert [d.action for d in ring] == [Action.TINY_FREE, Action.POOL_FREE, Action.L25_FREE]
    assert ring[0].seq < ring[1].seq < ring[2].seq
    assert after.allocs - before.allocs == 3 and after.frees - before.frees == 3
    for route in (Route.SS_HIT, Route.MID_HIT, Route.L25_HIT):
        assert after.route_counts[route] - before.route_counts[route] == 1


def test_check_finds_a_corrupted_header(geometry):
    def body(ctx):
        a = ctx.allocator
        p = a.alloc(geometry.mid_class_user_sizes[0])
        sound = a.get_broken_invariant()
        native.write_memory(p - geometry.header_size, b"\xef\xbe\xad\xde")
        broken = a.get_broken_invariant()
        try:
            a.check()
        except CheckFailedError as exc:
            raised = exc.message
        else:
            raised = None
        return sound, broken, raised

    sound, broken, raised = run_ok(body)
    assert sound is None
    assert broken and raised == broken


def test_free_state_is_idle_outside_the_allocator(allocator):
    ptr, stage, _ = allocator.free_state()
    assert stage is not None and stage.value == "idle"


def test_run_helper_reports_child_errors():
    result = run(lambda ctx: 1 / 0)
    assert result.outcome == "error" and "ZeroDivisionError" in result.error


def test_route_order_disagreement_is_refused(tmp_path):
    stub = _build_stub(tmp_path, "badnames", "-DABI=1", "-DBAD_NAMES")
    with pytest.raises(LibraryError, match="hak_route_name.*disagrees"):
        native.Allocator(stub)


def test_driver_binds_libc_and_tables(geometry):
    def body(ctx):
        d, a = ctx.driver, ctx.allocator
        d.bind_libc()
        libc_binding = d.binding
        p = d.alloc(100)
        libc_owner = a.owner(p).kind
        d.free(p)
        d.bind_table(a)
        table_binding = d.binding
        q = d.alloc(100)
        table_owner = a.owner(q).kind
        d.free(q)
        return libc_binding, libc_owner, table_binding, table_owner, a.last_decision().ptr == q

    assert run_ok(body) == ("libc", OwnerKind.NONE, "table", OwnerKind.TINY, True)


def test_unknown_probe_name_is_bad_input(driver):
    from forensics.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown probe kind"):
        driver.probe("mincore-ish", 0, 1)
