"""The seed's SEGV: a Tiny block that escapes the SuperSlab registry falls to the header path."""

from __future__ import annotations

import re
import signal
import sys

import pytest
from hf_helpers import find_first_block_of_new_superslab, route_lines, run, run_ok

from forensics import native
from forensics.model import Action, BlockState, FreeStep, ProbeKind, ProbeVerdict, Route, Stage

ESCAPE = {"HAKMEM_SS_REG_CAPACITY": 1}


def _escaped_block(a, geometry, index: int = 0) -> tuple[int, int, int]:
    """(first, p, base): a registered first SuperSlab's block and block `index` of an
    unregistered second SuperSlab (a different Tiny class, so it needs a SuperSlab of its own)."""
    first = a.alloc(geometry.tiny_class_sizes[0])
    size = geometry.tiny_class_sizes[-1]
    base = find_first_block_of_new_superslab(a, size)
    blocks = [base] + [a.alloc(size) for _ in range(index)]
    p = blocks[index]
    assert a.owner(p).region_base == base
    return first, p, base


def test_second_superslab_escapes_ss_lookup(geometry):
    """Capacity 1: the second SuperSlab is never registered; its blocks miss SS lookup and
    are only found again by the header path (here: invalid magic -> tiny recovery)."""
    size = geometry.tiny_class_sizes[-1]

    def body(ctx):
        a = ctx.allocator
        first, p, base = _escaped_block(a, geometry, index=1)
        native.fill_memory(base, 0xAB, size)  # the bytes the header read will find
        owners = (a.owner(first), a.owner(p))
        a.free(p)
        return owners, a.last_decision(), a.owner(p), a.stats()

    result = run(body, **ESCAPE)
    (first_owner, owner), d, after, stats = result.unwrap()
    assert first_owner.registered and not owner.registered
    assert stats.superslabs_registered == 1 and stats.superslabs >= 2
    assert d.was_tried(FreeStep.SS) and not d.has_hit(FreeStep.SS)
    assert d.tried == (FreeStep.SS, FreeStep.MID, FreeStep.L25, FreeStep.MAGIC)
    assert d.hit == ()
    assert d.probe is ProbeVerdict.NOT_RUN
    assert d.magic_found == 0xABABABAB
    assert (d.route, d.action) == (Route.INVALID_MAGIC_TINY_RECOVERY, Action.TINY_FREE)
    assert after.state is BlockState.FREE
    assert "[hakmem] ERROR: Invalid magic 0xABABABAB (expected 0x48414B4D)" in result.stderr


def _free_first_block_of_second_ss(geometry):
    def body(ctx):
        a = ctx.allocator
        _, p, _ = _escaped_block(a, geometry)
        sys.stderr.write(f"test: freeing {p:#x}\n")
        sys.stderr.flush()
        ctx.set_event_index(41)
        a.free(p)
        return p, a.last_decision(), a.owner(p)

    return body


def _freed_ptr(stderr: str) -> int:
    m = re.search(r"test: freeing (0x[0-9a-f]+)", stderr)
    assert m, stderr
    return int(m.group(1), 16)


def test_unprobed_header_read_segfaults_at_ptr_minus_header(geometry):
    result = run(_free_first_block_of_second_ss(geometry), HAKMEM_HEADER_PROBE="off", **ESCAPE)
    assert result.outcome == "crash", (result.outcome, result.error, result.stderr)
    assert result.signal == signal.SIGSEGV
    ptr = _freed_ptr(result.stderr)
    crash = result.crash
    assert crash is not None, result.stderr
    assert crash.signal_name == "SIGSEGV"
    assert crash.fault_address == ptr - geometry.header_size
    assert crash.ptr == ptr
    assert crash.stage is Stage.MAGIC_READ and crash.stage_name == "magic_read"
    assert crash.event_index == 41
    assert crash.has_state
    # The maps snapshot shows the hole: no mapping contains the faulting address.
    spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in crash.maps.splitlines() if line]
    assert spans and not any(lo <= crash.fault_address < hi for lo, hi in spans)
    assert any(lo <= ptr < hi for lo, hi in spans)
    assert "[hakmem] CRASH:" in result.stderr


@pytest.mark.parametrize("probe", ["safe", "mincore", "seed-mincore", "seed-msync"])
def test_probe_turns_the_segv_into_a_fallback(geometry, probe):
    """Every probe says 'unreadable' for ptr - HEADER_SIZE in the unmapped hole below a
    SuperSlab (the seed ones only because that address is never page-aligned)."""
    p, d, after = run_ok(_free_first_block_of_second_ss(geometry), HAKMEM_HEADER_PROBE=probe, **ESCAPE)
    assert d.ptr == p
    assert (d.route, d.action) == (Route.UNMAPPED_HEADER_FALLBACK, Action.TINY_FREE)
    assert d.probe is ProbeVerdict.UNREADABLE and d.probe_kind is ProbeKind(probe)
    assert d.was_tried(FreeStep.PROBE) and not d.was_tried(FreeStep.MAGIC)
    assert not d.has_hit(FreeStep.SS)
    assert after.state is BlockState.FREE


def test_ldpreload_mode_sends_the_fallback_to_libc(geometry):
    """In LD_PRELOAD mode the seed's fallback calls __libc_free(ptr) on a headerless Tiny
    block; glibc reads its chunk header just below ptr, in the same hole, and faults there."""
    result = run(_free_first_block_of_second_ss(geometry), HAKMEM_HEADER_PROBE="safe", HAKMEM_MODE="ldpreload", **ESCAPE)
    assert result.outcome == "crash" and result.crash is not None, (result.outcome, result.stderr)
    ptr = _freed_ptr(result.stderr)
    assert result.crash.signal_name == "SIGSEGV"
    assert result.crash.stage is Stage.LIBC_FREE and result.crash.ptr == ptr
    assert ptr - geometry.header_size <= result.crash.fault_address < ptr


def test_protnone_guard_defeats_the_corrected_mincore_but_not_safe(geometry):
    """mincore reports residency, not permission: a PROT_NONE guard page below the SuperSlab
    passes the corrected mincore probe and the header read faults; 'safe' is not fooled."""
    crash = run(_free_first_block_of_second_ss(geometry), HAKMEM_HEADER_PROBE="mincore", HAKMEM_SS_GUARD="protnone", **ESCAPE)
    assert crash.outcome == "crash" and crash.crash is not None, crash.stderr
    ptr = _freed_ptr(crash.stderr)
    assert crash.crash.fault_address == ptr - geometry.header_size
    assert crash.crash.stage is Stage.MAGIC_READ

    p, d, _ = run_ok(_free_first_block_of_second_ss(geometry), HAKMEM_HEADER_PROBE="safe", HAKMEM_SS_GUARD="protnone", **ESCAPE)
    assert (d.route, d.action) == (Route.UNMAPPED_HEADER_FALLBACK, Action.TINY_FREE)


def test_route_trace_of_the_fallback(geometry):
    def body(ctx):
        a = ctx.allocator
        _, p, _ = _escaped_block(a, geometry)
        a.free(p)
        return p, a.last_decision()

    result = run(body, HAKMEM_HEADER_PROBE="safe", HAKMEM_FREE_ROUTE_TRACE=1, **ESCAPE)
    p, d = result.unwrap()
    lines = [line for line in route_lines(result.stderr) if int(line["ptr"], 16) == p]
    assert len(lines) == 1
    line = lines[0]
    assert int(line["seq"]) == d.seq
    assert line["route"] == "unmapped_header_fallback" and line["action"] == "tiny_free"
    assert line["tried"] == "ss,mid,l25,probe" and line["hit"] == "-"
    assert line["probe"] == "unreadable" and line["magic"] == "-" and line["method"] == "-"
