"""Addresses to object ids: the logic every address-level source (recorder, importers) shares.

A recorder or an external log sees addresses; a trace names objects. AddressMapper turns one
call at a time into trace events (raw tuples, records.RawEvent):

* an allocation gets a fresh object id; an address allocated again after its free is a new
  object (address reuse);
* a free of a live block's start frees that object; a free of an address inside a live block
  becomes ``free_interior OBJ OFFSET``; of a block already freed, ``double_free OBJ``; of an
  address nobody allocated, ``free_raw ADDR`` — so the replay reproduces it;
* an allocation that returns an address still live (a free the source never showed, or two
  threads racing in the source's own ordering) frees the old object first, and is counted
  (a new block overlapping a live one at another start is let be: it replays fine).

Memory is bounded by the live set plus a bounded memory of freed blocks (``freed_limit``,
oldest forgotten first; a double free of a forgotten block becomes free_raw). Object ids are
recycled once nothing can refer to them, so a trace's highest id stays near the peak of
live + remembered blocks, never the number of allocations. "Inside which live block?" is a
floor lookup in a sorted index of block starts (SortedStarts: O(log n) lookups, O(sqrt n)
updates), built the first time a free misses and kept up to date from then on: a source
whose frees all hit pays nothing for it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from forensics.model import AddressFinding
from forensics.trace.records import (
    OP_DOUBLE_FREE,
    OP_FREE,
    OP_FREE_INTERIOR,
    OP_FREE_RAW,
    OP_MALLOC,
    OP_REALLOC,
    OP_THREAD_END,
)

_I64_MAX = (1 << 63) - 1
DEFAULT_FREED_LIMIT = 1 << 18  # ~40 MB at most; valgrind keeps 20 MB of freed blocks
MAX_FINDINGS = 1000


class SortedStarts:
    """A sorted multiset-free set of ints with add, remove and floor, in buckets of ~LOAD
    (the layout of sortedcontainers' SortedList, reduced to what the mapper needs)."""

    LOAD = 512

    __slots__ = ("_lists", "_maxes")

    def __init__(self) -> None:
        self._lists: list[list[int]] = []
        self._maxes: list[int] = []

    @classmethod
    def from_sorted(cls, values: list[int]) -> SortedStarts:
        out = cls()
        step = cls.LOAD
        out._lists = [values[i : i + step] for i in range(0, len(values), step)]
        out._maxes = [lst[-1] for lst in out._lists]
        return out

    def __len__(self) -> int:
        return sum(len(lst) for lst in self._lists)

    def add(self, x: int) -> None:
        maxes = self._maxes
        if not maxes:
            self._lists.append([x])
            maxes.append(x)
            return
        i = bisect_left(maxes, x)
        if i == len(maxes):
            i -= 1
            lst = self._lists[i]
            lst.append(x)
            maxes[i] = x
        else:
            lst = self._lists[i]
            insort(lst, x)
        if len(lst) > 2 * self.LOAD:
            half = self.LOAD
            self._lists[i : i + 1] = [lst[:half], lst[half:]]
            maxes[i : i + 1] = [lst[half - 1], lst[-1]]

    def remove(self, x: int) -> None:
        """Remove x, which must be present."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        lst = self._lists[i]
        j = bisect_left(lst, x)
        del lst[j]
        if not lst:
            del self._lists[i]
            del maxes[i]
        elif j == len(lst):
            maxes[i] = lst[-1]

    def floor(self, x: int) -> int | None:
        """The largest element <= x, or None."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i == len(maxes):
            return maxes[-1] if maxes else None
        lst = self._lists[i]
        j = bisect_right(lst, x)
        if j:
            return lst[j - 1]
        return maxes[i - 1] if i else None

    def __iter__(self):
        for lst in self._lists:
            yield from lst


class AddressMapper:
    """Turns address-level calls into trace events (see the module docstring).

    Events accumulate in ``events`` (raw tuples); a caller takes them with ``drain()`` and
    writes them. ``where`` is set by the caller to the source location of the call it is
    about to pass (kept in findings). ``counts`` counts repairs and oddities by name."""

    __slots__ = ("_live", "_starts", "_freed", "_free_ids", "_next_id", "_freed_limit", "events", "_base",
                 "where", "counts", "findings", "max_findings", "_pending")

    def __init__(self, *, freed_limit: int = DEFAULT_FREED_LIMIT, max_findings: int = MAX_FINDINGS) -> None:
        self._live: dict[int, tuple[int, int]] = {}  # address -> (obj, extent in bytes)
        self._starts: SortedStarts | None = None  # built at the first lookup that needs it
        self._freed: dict[int, tuple[int, int]] = {}  # address -> (obj, extent); insertion order = age
        self._free_ids: list[int] = []
        self._next_id = 1
        self._freed_limit = max(1, freed_limit)
        self.events: list[tuple[int, int, int, int, int, int, int, int]] = []
        self._base = 0  # events drained so far
        self.where = 0
        self.counts: dict[str, int] = {}
        self.findings: list[AddressFinding] = []
        self.max_findings = max_findings
        self._pending: dict[int, tuple[int, int, int] | None] = {}  # key -> detached (addr, obj, extent)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_live(self) -> int:
        return len(self._live)

    @property
    def num_events(self) -> int:
        return self._base + len(self.events)

    def drain(self) -> list[tuple[int, int, int, int, int, int, int, int]]:
        out = self.events
        self._base += len(out)
        self.events = []
        return out

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _new_id(self) -> int:
        if self._free_ids:
            return self._free_ids.pop()
        obj = self._next_id
        self._next_id = obj + 1
        return obj

    def _remember_freed(self, addr: int, obj: int, extent: int) -> None:
        freed = self._freed
        if len(freed) >= self._freed_limit:
            old_addr = next(iter(freed))
            self._free_ids.append(freed.pop(old_addr)[0])
            self._count("freed_forgotten")
        freed[addr] = (obj, extent)

    def _finding(self, kind: str, tid: int, addr: int, obj: int, offset: int, size: int, site: int, call: str) -> None:
        self._count(kind)
        if len(self.findings) < self.max_findings:
            self.findings.append(AddressFinding(self._base + len(self.events) - 1, kind, tid, addr, obj, offset, size, site,
                                         self.where, call))

    def _index(self, addr: int) -> None:
        if self._starts is not None:
            self._starts.add(addr)

    def _unindex(self, addr: int) -> None:
        if self._starts is not None:
            self._starts.remove(addr)

    def _containing(self, addr: int) -> tuple[int, int, int] | None:
        """(start, obj, extent) of the live block that has addr strictly inside it."""
        if self._starts is None:
            self._starts = SortedStarts.from_sorted(sorted(self._live))
        start = self._starts.floor(addr)
        if start is None or start == addr:
            return None
        obj, extent = self._live[start]
        if addr < start + max(extent, 1) and addr - start <= _I64_MAX:  # OFFSET is a signed 64-bit field
            return start, obj, extent
        return None

    def _claim(self, tid: int, addr: int, site: int) -> None:
        """Make addr free to be allocated now: end a live object there (the source never showed
        its free), and drop the memory of a freed block there (its id can be reused).

        A new block that overlaps a live one at another start is let be: two live objects
        overlap in the trace, which replays fine (the old one leaks)."""
        live = self._live.pop(addr, None)
        if live is not None:
            self._unindex(addr)
            self.events.append((OP_FREE, tid, live[0], 0, 0, 0, 0, 0))
            self._free_ids.append(live[0])
            self._finding("implicit_free", tid, addr, live[0], 0, live[1], site, "alloc")
            return
        freed = self._freed.pop(addr, None)
        if freed is not None:
            self._free_ids.append(freed[0])

    def _bad_free(self, tid: int, addr: int, site: int, call: str) -> None:
        """A free of an address that starts no live block: the matching forensic op."""
        inside = self._containing(addr)
        if inside is not None:
            start, obj, extent = inside
            self.events.append((OP_FREE_INTERIOR, tid, obj, 0, 0, addr - start, 0, site))
            self._finding("free_interior", tid, addr, obj, addr - start, extent, site, call)
            return
        freed = self._freed.get(addr)
        if freed is not None:
            self.events.append((OP_DOUBLE_FREE, tid, freed[0], 0, 0, 0, 0, site))
            self._finding("double_free", tid, addr, freed[0], 0, freed[1], site, call)
            return
        self.events.append((OP_FREE_RAW, tid, 0, 0, 0, addr, 0, site))
        self._finding("free_raw", tid, addr, 0, 0, 0, site, call)

    # ------------------------------------------------------------------ calls
    def alloc(self, tid: int, code: int, addr: int, size: int, arg: int, site: int, extent: int) -> int:
        """A malloc (code OP_MALLOC, arg 0), calloc (OP_CALLOC, arg NMEMB, size = element size)
        or memalign (OP_MEMALIGN, arg ALIGN) that returned addr; extent = the bytes it covers.
        Returns the object id (0 for a failed allocation, which makes no event)."""
        if addr == 0:
            self._count("failed_alloc")
            return 0
        live = self._live
        if addr in live:
            self._claim(tid, addr, site)
        elif self._freed:
            freed = self._freed.pop(addr, None)
            if freed is not None:
                self._free_ids.append(freed[0])
        if self._free_ids:
            obj = self._free_ids.pop()
        else:
            obj = self._next_id
            self._next_id = obj + 1
        live[addr] = (obj, extent)
        if self._starts is not None:
            self._starts.add(addr)
        self.events.append((code, tid, obj, 0, size, arg, 0, site))
        return obj

    def free(self, tid: int, addr: int, site: int) -> None:
        if addr == 0:
            self.events.append((OP_FREE, tid, 0, 0, 0, 0, 0, site))
            return
        entry = self._live.pop(addr, None)
        if entry is None:
            self._bad_free(tid, addr, site, "free")
            return
        if self._starts is not None:
            self._starts.remove(addr)
        self.events.append((OP_FREE, tid, entry[0], 0, 0, 0, 0, site))
        freed = self._freed
        if len(freed) >= self._freed_limit:
            self._remember_freed(addr, entry[0], entry[1])
        else:
            freed[addr] = entry

    def realloc(self, tid: int, old: int, new: int, size: int, site: int) -> None:
        """new = realloc(old, size), as one call."""
        self._realloc_from(tid, old, self._detach(tid, old, site), new, size, site)

    def realloc_begin(self, key: int, tid: int, old: int, site: int) -> None:
        """The first half of a realloc seen as two records (the recorder): old leaves the
        address space now, so another thread may get its address before realloc returns."""
        self._pending[key] = (old, *self._detach(tid, old, site)) if old else None

    def realloc_end(self, key: int, tid: int, old: int, new: int, size: int, site: int) -> None:
        pending = self._pending.pop(key, None)
        if old and (pending is None or pending[0] != old):
            self._count("realloc_without_begin")
            pending = (old, *self._detach(tid, old, site))
        detached = (pending[1], pending[2]) if pending is not None else (0, 0)
        self._realloc_from(tid, old, detached, new, size, site)

    def _detach(self, tid: int, old: int, site: int) -> tuple[int, int]:
        """Take old out of the live set; (obj, extent), or (0, 0) for NULL or a bad pointer
        (which gets its forensic op here)."""
        if old == 0:
            return 0, 0
        entry = self._live.pop(old, None)
        if entry is None:
            self._bad_free(tid, old, site, "realloc")
            self._count("bad_realloc")
            return 0, 0
        self._unindex(old)
        return entry

    def _realloc_from(self, tid: int, old: int, detached: tuple[int, int], new: int, size: int, site: int) -> None:
        obj, extent = detached
        events = self.events
        if obj == 0:
            # realloc(NULL) or of a bad pointer: what it returned is a fresh block
            if new == 0:
                if size:
                    self._count("failed_alloc")
                return
            if old == 0 and size == 0:
                # realloc(NULL, 0) that returned a block is malloc(0): a trace realloc to size 0
                # frees OLD and has no NEW (found by fuzzing the Android importer)
                self.alloc(tid, OP_MALLOC, new, 0, 0, site, 0)
                return
            if old == 0:
                self._claim(tid, new, site)
                nid = self._new_id()
                self._live[new] = (nid, size)
                self._index(new)
                events.append((OP_REALLOC, tid, nid, 0, size, 0, 0, site))
            else:
                self.alloc(tid, OP_MALLOC, new, size, 0, site, size)
            return
        if new == 0:
            if size == 0:  # realloc(p, 0) freed p
                events.append((OP_REALLOC, tid, 0, obj, 0, 0, 0, site))
                self._remember_freed(old, obj, extent)
            else:  # failed: the old block stays
                self._live[old] = (obj, extent)
                self._index(old)
                self._count("failed_alloc")
            return
        if size == 0:
            # an allocator that returns a block for realloc(p, 0): the trace says free + malloc
            events.append((OP_FREE, tid, obj, 0, 0, 0, 0, site))
            if new != old:
                self._remember_freed(old, obj, extent)
            else:
                self._free_ids.append(obj)
            self.alloc(tid, OP_MALLOC, new, 0, 0, site, 0)
            self._count("realloc_zero_returned_block")
            return
        if new == old:
            self._live[old] = (obj, size)
            self._index(old)
            events.append((OP_REALLOC, tid, obj, obj, size, 0, 0, site))
            return
        self._remember_freed(old, obj, extent)
        self._claim(tid, new, site)
        nid = self._new_id()
        self._live[new] = (nid, size)
        self._index(new)
        events.append((OP_REALLOC, tid, nid, obj, size, 0, 0, site))

    def thread_end(self, tid: int) -> None:
        self.events.append((OP_THREAD_END, tid, 0, 0, 0, 0, 0, 0))


__all__ = ["AddressMapper", "SortedStarts", "DEFAULT_FREED_LIMIT"]
