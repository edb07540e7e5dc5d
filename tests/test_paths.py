"""Every allocation path of hakmem-ref: memory is usable, and each free takes the route its owner needs."""

from __future__ import annotations

import pytest
from hf_helpers import check_blocks, read_header, run, run_ok

from forensics import native
from forensics.model import Action, BlockState, FreeStep, Method, OwnerKind, Route

N_BLOCKS = 6


def _exercise(sizes: list[int]):
    """Child body: allocate, check, free one by one; return owners before and after, decisions."""

    def body(ctx):
        a = ctx.allocator
        g = a.geometry()
        blocks = [(a.alloc(s, site=0x1000 + i), s) for i, s in enumerate(sizes)]
        check_blocks(a, blocks)
        owners = [a.owner(p) for p, _ in blocks]
        headers = [read_header(p, g.header_size) if o.kind is not OwnerKind.TINY else None for (p, _), o in zip(blocks, owners)]
        decisions, after = [], []
        for p, _ in blocks:
            a.free(p)
            decisions.append(a.last_decision())
            after.append(a.owner(p))
        return {"blocks": blocks, "owners": owners, "headers": headers, "decisions": decisions, "after": after}

    return body


def _assert_freed(out, route: Route, action: Action, tried: tuple[FreeStep, ...], hit: tuple[FreeStep, ...]):
    for (p, _), d in zip(out["blocks"], out["decisions"]):
        assert d.ptr == p
        assert (d.route, d.action) == (route, action), f"free({p:#x}) took {d.route}/{d.action}"
        assert d.tried == tried
        assert d.hit == hit


def test_every_tiny_class(geometry):
    sizes = []
    prev = 0
    for size in geometry.tiny_class_sizes:
        sizes += [prev + 1, size] + [size] * (N_BLOCKS - 2)  # both edges of the class
        prev = size
    out = run_ok(_exercise(sizes))
    for (p, s), o in zip(out["blocks"], out["owners"]):
        cls = next(i for i, c in enumerate(geometry.tiny_class_sizes) if s <= c)
        assert o.kind is OwnerKind.TINY and o.state is BlockState.LIVE
        assert o.class_index == cls and o.block_size == geometry.tiny_class_sizes[cls]
        assert o.block_ptr == p and o.registered and o.method is None
        assert o.region_size == geometry.superslab_size and o.region_base % geometry.superslab_size == 0
    _assert_freed(out, Route.SS_HIT, Action.TINY_FREE, (FreeStep.SS,), (FreeStep.SS,))
    assert all(o.state is BlockState.FREE for o in out["after"])


def test_every_mid_class(geometry):
    sizes = []
    prev = geometry.tiny_max
    for user in geometry.mid_class_user_sizes:
        sizes += [prev + 1, user] + [user] * (N_BLOCKS - 2)
        prev = user
    assert prev == geometry.mid_max
    out = run_ok(_exercise(sizes))
    for (p, s), o, h in zip(out["blocks"], out["owners"], out["headers"]):
        cls = next(i for i, c in enumerate(geometry.mid_class_user_sizes) if s <= c)
        assert o.kind is OwnerKind.MID and o.class_index == cls and o.method is Method.POOL
        assert o.class_bytes == geometry.mid_class_bytes[cls] and o.registered
        magic, method, size, site, class_bytes = h
        assert (magic, method, size, class_bytes) == (geometry.magic, Method.POOL, s, geometry.mid_class_bytes[cls])
    _assert_freed(out, Route.MID_HIT, Action.POOL_FREE, (FreeStep.SS, FreeStep.MID), (FreeStep.MID,))
    assert all(o.state is BlockState.FREE for o in out["after"])


def test_every_l25_class(geometry):
    sizes = []
    prev = geometry.mid_max
    for user in geometry.l25_class_user_sizes:
        sizes += [prev + 1, user, user]
        prev = user
    assert prev == geometry.l25_max
    out = run_ok(_exercise(sizes))
    for (p, s), o, h in zip(out["blocks"], out["owners"], out["headers"]):
        cls = next(i for i, c in enumerate(geometry.l25_class_user_sizes) if s <= c)
        assert o.kind is OwnerKind.L25 and o.class_index == cls and o.method is Method.L25_POOL and o.registered
        assert h[0] == geometry.magic and h[1] == Method.L25_POOL and h[4] == geometry.l25_class_bytes[cls]
    _assert_freed(
        out, Route.L25_HIT, Action.L25_FREE, (FreeStep.SS, FreeStep.MID, FreeStep.L25), (FreeStep.L25,)
    )


HEADER_TRIED = (FreeStep.SS, FreeStep.MID, FreeStep.L25, FreeStep.MAGIC)
METHOD_TRIED = HEADER_TRIED + (FreeStep.METHOD,)


@pytest.mark.parametrize(
    "case, size_of, knobs, route, action, tried, hit, state_after",
    [
        (
            "bigcache",
            lambda g: g.bigcache_min + 12345,
            {"HAKMEM_BIGCACHE": 1},
            Route.BIGCACHE, Action.BIGCACHE_PUT, HEADER_TRIED, (FreeStep.MAGIC,), BlockState.CACHED,
        ),
        (
            "bigcache_l25 band",
            lambda g: g.l25_max + 1,
            {"HAKMEM_BIGCACHE": 1, "HAKMEM_BIGCACHE_L25": 1},
            Route.BIGCACHE_L25, Action.BIGCACHE_PUT, HEADER_TRIED, (FreeStep.MAGIC,), BlockState.CACHED,
        ),
        (
            "band off without HAKMEM_BIGCACHE_L25",
            lambda g: g.l25_max + 1,
            {"HAKMEM_BIGCACHE": 1, "HAKMEM_BIGCACHE_L25": 0, "HAKMEM_WHALE": 1},
            Route.MMAP_WHALE, Action.WHALE_PUT, METHOD_TRIED, (FreeStep.MAGIC, FreeStep.METHOD), BlockState.CACHED,
        ),
        (
            "batch madvise",
            lambda g: g.bigcache_min + 4096,
            {"HAKMEM_BIGCACHE": 0, "HAKMEM_BATCH_MADVISE": 1},
            Route.MMAP_BATCH, Action.BATCH_ADD, METHOD_TRIED, (FreeStep.MAGIC, FreeStep.METHOD), BlockState.CACHED,
        ),
        (
            "whale",
            lambda g: g.bigcache_min + 4096,
            {"HAKMEM_BIGCACHE": 0, "HAKMEM_BATCH_MADVISE": 0, "HAKMEM_WHALE": 1},
            Route.MMAP_WHALE, Action.WHALE_PUT, METHOD_TRIED, (FreeStep.MAGIC, FreeStep.METHOD), BlockState.CACHED,
        ),
        (
            "munmap",
            lambda g: g.bigcache_min + 4096,
            {"HAKMEM_BIGCACHE": 0, "HAKMEM_BATCH_MADVISE": 0, "HAKMEM_WHALE": 0},
            Route.MMAP_MUNMAP, Action.MUNMAP, METHOD_TRIED, (FreeStep.MAGIC, FreeStep.METHOD), BlockState.NONE,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_mmap_large(geometry, case, size_of, knobs, route, action, tried, hit, state_after):
    size = size_of(geometry)

    def body(ctx):
        a = ctx.allocator
        p = a.alloc(size)
        check_blocks(a, [(p, size)])
        before = a.owner(p)
        header = read_header(p, geometry.header_size)
        a.free(p)
        return before, header, a.last_decision(), a.owner(p), ctx.driver.probe("maps", p, 1)

    before, header, d, after, still_mapped = run_ok(body, **knobs)
    assert before.kind is OwnerKind.MMAP and before.method is Method.MMAP and before.state is BlockState.LIVE
    assert header[0] == geometry.magic and header[1] == Method.MMAP and header[2] == size
    assert (d.route, d.action) == (route, action), f"{case}: free took {d.route}/{d.action}"
    assert d.tried == tried and d.hit == hit
    assert d.magic_found == geometry.magic
    assert after.state is state_after
    # munmap must really give the pages back; the caches must keep them.
    assert still_mapped is (state_after is not BlockState.NONE)


def test_malloc_method_when_pools_are_off(geometry):
    sizes = [1, geometry.tiny_max, geometry.tiny_max + 1, geometry.mid_max, geometry.mid_max + 1, geometry.l25_max]
    out = run_ok(_exercise(sizes), HAKMEM_TINY=0, HAKMEM_POOL=0, HAKMEM_L25=0)
    for (p, s), o, h in zip(out["blocks"], out["owners"], out["headers"]):
        assert o.kind is OwnerKind.MALLOC and o.method is Method.MALLOC, f"size {s}: {o}"
        assert h[0] == geometry.magic and h[1] == Method.MALLOC and h[2] == s
    _assert_freed(out, Route.MALLOC_HDR, Action.LIBC_FREE_RAW, METHOD_TRIED, (FreeStep.MAGIC, FreeStep.METHOD))
    for d in out["decisions"]:
        assert d.method == Method.MALLOC and d.magic_found == geometry.magic


def test_pool_blocks_with_dropped_registrations_take_the_header_path(geometry):
    """With every pool registration dropped, Mid/L25 blocks are found by their header instead."""
    mid, l25 = geometry.mid_class_user_sizes[0], geometry.l25_class_user_sizes[0]
    out = run_ok(_exercise([mid, l25]), HAKMEM_MID_REG_DROP_EVERY=1, HAKMEM_L25_REG_DROP_EVERY=1)
    assert [o.kind for o in out["owners"]] == [OwnerKind.MID, OwnerKind.L25]
    assert not any(o.registered for o in out["owners"])
    routes = [(d.route, d.action) for d in out["decisions"]]
    assert routes == [(Route.POOL_HDR, Action.POOL_FREE), (Route.L25_HDR, Action.L25_FREE)]
    assert all(o.state is BlockState.FREE for o in out["after"])


def test_pool_method_with_pool_disabled_at_free_is_not_freed(geometry):
    size = geometry.mid_class_user_sizes[1]

    def body(ctx):
        a = ctx.allocator
        p = a.alloc(size)
        a.set_knob("HAKMEM_POOL", 0)
        a.free(p)
        return a.last_decision(), a.owner(p)

    d, after = run_ok(body, HAKMEM_MID_REG_DROP_EVERY=1)
    assert (d.route, d.action) == (Route.POOL_HDR_DISABLED, Action.NONE)
    assert after.state is BlockState.LIVE  # leaked: nothing freed it


def test_owner_kinds_and_interior_pointers(geometry, driver):
    sizes = {
        OwnerKind.TINY: geometry.tiny_class_sizes[2],
        OwnerKind.MID: geometry.mid_class_user_sizes[0],
        OwnerKind.L25: geometry.l25_class_user_sizes[0],
        OwnerKind.MMAP: geometry.bigcache_min,
    }

    def body(ctx):
        a = ctx.allocator
        out = {}
        for kind, size in sizes.items():
            p = a.alloc(size)
            out[kind] = (p, a.owner(p), a.owner(p + size // 2))
        with native.Pages() as pages:
            foreign = pages.map(1)
            out[OwnerKind.NONE] = (foreign, a.owner(foreign), a.owner(foreign + 8))
        return out

    out = run_ok(body)
    for kind, (p, o, inner) in out.items():
        assert o.kind is kind, f"owner({p:#x}) = {o.kind}, expected {kind}"
        assert inner.kind is kind
        if kind is OwnerKind.NONE:
            assert o.block_ptr is None and o.state is BlockState.NONE
        else:
            assert o.state is BlockState.LIVE and o.block_ptr == p and inner.block_ptr == p


def test_calloc_realloc_memalign(geometry):
    def body(ctx):
        a = ctx.allocator
        res = {}
        for n in (3, geometry.tiny_max + 5, geometry.mid_max + 7):
            p = a.calloc(n, 1)
            res[f"calloc{n}"] = native.read_memory(p, n) == bytes(n)
        p = a.alloc(24)
        native.write_memory(p, b"hakmem-forensics-realloc")
        grown = a.realloc(p, geometry.mid_max)
        res["realloc_keeps"] = native.read_memory(grown, 24) == b"hakmem-forensics-realloc"
        res["realloc_owner"] = a.owner(grown).kind
        for align in (64, 4096):
            q = a.memalign(align, 100)
            res[f"align{align}"] = q % align
            check_blocks(a, [(q, 100)])
        return res

    res = run_ok(body)
    assert all(res[k] for k in res if k.startswith("calloc"))
    assert res["realloc_keeps"] and res["realloc_owner"] is OwnerKind.MID
    assert res["align64"] == 0 and res["align4096"] == 0


def test_free_null_routes_null():
    def body(ctx):
        ctx.allocator.free(0)
        return ctx.allocator.last_decision()

    d = run_ok(body)
    assert d.route is Route.NULL and d.action is Action.NONE and d.ptr == 0


def test_child_result_reports_a_failed_assertion():
    """The helpers really fail: a child whose check fails comes back as an error, not ok."""

    def body(ctx):
        a = ctx.allocator
        p = a.alloc(64)
        check_blocks(a, [(p, 64), (p + 8, 64)])  # overlapping on purpose

    result = run(body)
    assert result.outcome == "error"
    assert "overwritten" in result.error or "overlap" in result.error
