"""Android malloc_debug ``record_allocs`` files (memory_replay's input), plain or zipped.

One call per line, ``TID: OP PTR [ARGS] [START_NS END_NS] [PRESENT_BYTES]``
(system/extras/memory_replay, MemoryTrace.cpp):

    malloc PTR SIZE            calloc PTR NMEMB SIZE        memalign PTR ALIGN SIZE
    realloc NEW OLD SIZE       free PTR                     thread_done 0x0 [END_NS]

PTR and OLD are hex, the rest decimal. memalign also stands for posix_memalign and
aligned_alloc; realloc with OLD 0x0 is realloc(NULL); free 0x0 is free(NULL). The optional
timestamps are kept as time spent in the allocator per op (ImportResult.timing); the
present-bytes count (free, realloc) is accepted. Android tids become trace tids, and
thread_done becomes thread_end. The file has no pid: one trace.
"""

from __future__ import annotations

from typing import IO, Iterator

from forensics.importers import K_CALLOC, K_FREE, K_MALLOC, K_MEMALIGN, K_REALLOC, K_THREAD_END, LineErrors, iter_lines, show

_MAX_U64 = (1 << 64) - 1


class AndroidParser:
    name = "android"

    def __init__(self, errors: LineErrors) -> None:
        self.errors = errors
        self.lines = 0
        self.timing: dict[str, tuple[int, int]] = {}
        self._timed: dict[str, list[int]] = {}

    def header_meta(self, pid: int | None) -> list[tuple[str, object]]:
        return []

    def iter_calls(self, stream: IO[bytes], max_lines: int | None = None) -> Iterator[tuple]:
        bad = self.errors.bad
        timed = self._timed
        line_no = 0
        for raw in iter_lines(stream):
            line_no += 1
            if max_lines is not None and line_no > max_lines:
                line_no -= 1
                break
            parts = raw.split()
            if not parts:
                continue
            n = len(parts)
            try:
                tid_tok = parts[0]
                if n < 3 or tid_tok[-1:] != b":":
                    bad(line_no, f"expected 'TID: OP PTR ...', got {show(raw)}")
                    continue
                tid = int(tid_tok[:-1])
                op = parts[1]
                ptr = int(parts[2], 16)
                if tid < 0 or tid > 0xFFFFFFFF or ptr < 0 or ptr > _MAX_U64:
                    raise ValueError("out of range")
                if op == b"malloc":
                    if n not in (4, 6):
                        bad(line_no, f"malloc takes PTR SIZE [START END], got {show(raw)}")
                        continue
                    yield None, tid, K_MALLOC, ptr, int(parts[3]), 0, 0, line_no, None
                    times = parts[4:6]
                elif op == b"free":
                    if n not in (3, 5, 6):
                        bad(line_no, f"free takes PTR [START END [PRESENT_BYTES]], got {show(raw)}")
                        continue
                    yield None, tid, K_FREE, ptr, 0, 0, 0, line_no, None
                    times = parts[3:5]
                elif op == b"calloc":
                    if n not in (5, 7):
                        bad(line_no, f"calloc takes PTR NMEMB SIZE [START END], got {show(raw)}")
                        continue
                    yield None, tid, K_CALLOC, ptr, int(parts[3]), int(parts[4]), 0, line_no, None
                    times = parts[5:7]
                elif op == b"realloc":
                    if n not in (5, 7, 8):
                        bad(line_no, f"realloc takes NEW OLD SIZE [START END [PRESENT_BYTES]], got {show(raw)}")
                        continue
                    yield None, tid, K_REALLOC, ptr, int(parts[3], 16), int(parts[4]), 0, line_no, None
                    times = parts[5:7]
                elif op == b"memalign":
                    if n not in (5, 7):
                        bad(line_no, f"memalign takes PTR ALIGN SIZE [START END], got {show(raw)}")
                        continue
                    yield None, tid, K_MEMALIGN, ptr, int(parts[3]), int(parts[4]), 0, line_no, None
                    times = parts[5:7]
                elif op == b"thread_done":
                    if n not in (3, 4):
                        bad(line_no, f"thread_done takes 0x0 [END], got {show(raw)}")
                        continue
                    if n == 4:
                        int(parts[3])
                    yield None, tid, K_THREAD_END, 0, 0, 0, 0, line_no, None
                    continue
                else:
                    bad(line_no, f"unknown op {show(op)} (malloc, calloc, memalign, realloc, free, thread_done)")
                    continue
            except ValueError:
                bad(line_no, f"bad number in {show(raw)}")
                continue
            if times:
                try:
                    start, end = int(times[0]), int(times[1])
                except ValueError:
                    bad(line_no, f"bad timestamp in {show(raw)}")
                    continue
                acc = timed.get(op.decode())
                if acc is None:
                    acc = timed[op.decode()] = [0, 0]
                acc[0] += 1
                acc[1] += max(0, end - start)
            if line_no & 0xFFFF == 0:
                self.lines = line_no
        self.lines = line_no
        self.timing = {k: (v[0], v[1]) for k, v in timed.items()}
