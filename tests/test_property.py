"""Property: any mix of sizes, freed in any order, is usable memory and routed by its owner."""

from __future__ import annotations

from hf_helpers import check_blocks, run_ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.model import Action, BlockState, OwnerKind, Route

EXPECTED = {
    OwnerKind.TINY: (Route.SS_HIT, Action.TINY_FREE, BlockState.FREE),
    OwnerKind.MID: (Route.MID_HIT, Action.POOL_FREE, BlockState.FREE),
    OwnerKind.L25: (Route.L25_HIT, Action.L25_FREE, BlockState.FREE),
}


def _owner_for(size, g) -> OwnerKind:
    if size <= g.tiny_max:
        return OwnerKind.TINY
    if size <= g.mid_max:
        return OwnerKind.MID
    if size <= g.l25_max:
        return OwnerKind.L25
    return OwnerKind.MMAP


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_sizes_any_free_order(geometry, data):
    g = geometry
    size = st.one_of(
        st.integers(1, g.tiny_max),
        st.integers(g.tiny_max + 1, g.mid_max),
        st.integers(g.mid_max + 1, g.l25_max),
        st.integers(g.l25_max + 1, 3 * g.bigcache_min),
    )
    # At most 8 blocks: the whale cache (8 slots) and BigCache (16) never fill, so every
    # large free has exactly one right answer.
    sizes = data.draw(st.lists(size, min_size=1, max_size=8), label="sizes")
    order = data.draw(st.permutations(range(len(sizes))), label="free order")

    def body(ctx):
        a = ctx.allocator
        ptrs = [a.alloc(s) for s in sizes]
        check_blocks(a, list(zip(ptrs, sizes)))
        owners = [a.owner(p) for p in ptrs]
        out = []
        for i in order:
            a.free(ptrs[i])
            out.append((i, a.last_decision(), a.owner(ptrs[i])))
        return ptrs, owners, out

    ptrs, owners, freed = run_ok(body)
    for i, d, after in freed:
        kind = _owner_for(sizes[i], g)
        assert owners[i].kind is kind, (sizes[i], owners[i])
        if kind is OwnerKind.MMAP:
            big = owners[i].class_bytes >= g.bigcache_min
            route, action = (Route.BIGCACHE, Action.BIGCACHE_PUT) if big else (Route.MMAP_WHALE, Action.WHALE_PUT)
            state = BlockState.CACHED
        else:
            route, action, state = EXPECTED[kind]
        assert d.ptr == ptrs[i]
        assert (d.route, d.action) == (route, action), (sizes[i], d)
        assert after.state is state
