"""Object semantics of a trace: every id used is live (or freed, for double_free) when the op says so.

Streaming: the state is one entry per object id seen (live ids with the location of their
allocation, freed ids with the location of their free), so memory follows the number of
distinct ids (the binary header's num_objects), never the number of events. Traces that reuse
ids, as the generators do, keep it at the live set.
"""

from __future__ import annotations

from typing import Sequence

from forensics.trace.records import (
    OP_CALLOC,
    OP_CORRUPT,
    OP_DOUBLE_FREE,
    OP_FREE,
    OP_FREE_INTERIOR,
    OP_FREE_LIBC,
    OP_LIBC_MALLOC,
    OP_MALLOC,
    OP_MEMALIGN,
    OP_NAMES,
    OP_REALLOC,
)


class ObjectValidator:
    """Checks one event after another; ``check`` returns the reason the event is wrong, or None.

    The rules are those of the native replay's validation (hfd_trace_validate in
    csrc/hfreplay.c), so a trace this accepts is one the replay accepts. A libc_malloc object
    is live like any other: plain free and realloc may take it (the mixed-pointer case);
    free_libc takes only libc_malloc objects.

    ``unit`` names locations in messages ("line" for text, "event" for binary traces)."""

    __slots__ = ("live", "libc", "freed", "unit")

    def __init__(self, unit: str = "line") -> None:
        self.live: dict[int, int] = {}   # id -> where it was allocated
        self.libc: set[int] = set()      # live ids that came from libc_malloc
        self.freed: dict[int, int] = {}  # id -> where it was last freed (not live now)
        self.unit = unit

    @property
    def num_live(self) -> int:
        return len(self.live)

    def check(self, raw: Sequence[int], where: int) -> str | None:
        code = raw[0]
        obj = raw[2]
        live = self.live
        if code == OP_FREE:
            if obj == 0:
                return None
            if obj not in live:
                return self._not_live("free", obj)
            del live[obj]
            if self.libc:
                self.libc.discard(obj)
            self.freed[obj] = where
            return None
        if code == OP_MALLOC or code == OP_CALLOC or code == OP_MEMALIGN or code == OP_LIBC_MALLOC:
            if obj in live:
                return f"{OP_NAMES[code]} of object {obj}, which is already live (allocated at {self.unit} {live[obj]})"
            live[obj] = where
            if self.freed:
                self.freed.pop(obj, None)
            if code == OP_LIBC_MALLOC:
                self.libc.add(obj)
            return None
        if code == OP_REALLOC:
            old = raw[3]
            if old:
                if old not in live:
                    return self._not_live("realloc", old)
            if obj and obj != old and obj in live:
                return f"realloc to object {obj}, which is already live (allocated at {self.unit} {live[obj]})"
            if old:
                del live[old]
                self.libc.discard(old)
                self.freed[old] = where
            if obj:
                live[obj] = where
                self.freed.pop(obj, None)
            return None
        if code == OP_FREE_INTERIOR or code == OP_CORRUPT:
            if obj not in live:
                return self._not_live(OP_NAMES[code], obj)
            return None
        if code == OP_FREE_LIBC:
            if obj not in live:
                return self._not_live("free_libc", obj)
            if obj not in self.libc:
                return f"free_libc of object {obj}, which is not a libc_malloc object (allocated at {self.unit} {live[obj]})"
            del live[obj]
            self.libc.discard(obj)
            self.freed[obj] = where
            return None
        if code == OP_DOUBLE_FREE:
            if obj in live:
                return f"double_free of object {obj}, which is live (allocated at {self.unit} {live[obj]}): only a freed object can be freed again"
            if obj not in self.freed:
                return f"double_free of object {obj}, which was never allocated"
            return None
        return None  # thread_end, free_raw: no object

    def _not_live(self, what: str, obj: int) -> str:
        if obj in self.freed:
            return f"{what} of object {obj}, which is not live (freed at {self.unit} {self.freed[obj]})"
        return f"{what} of object {obj}, which was never allocated"
