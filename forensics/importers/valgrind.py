"""Valgrind ``--trace-malloc=yes`` logs (any tool; memcheck's error reports are used too).

Valgrind's malloc replacements print each call, then its result:

    --4242-- malloc(100) = 0x4A8B040          --4242-- calloc(4,32) = 0x4A8B0F0
    --4242-- realloc(0x4A8B040,5000) = 0x4A8B1C0
    --4242-- memalign(al 64, size 200) = 0x4A8C600   (also posix_memalign, aligned_alloc, valloc)
    --4242-- _Znwm(24) = 0x...   _Znam, nothrow and align_val_t forms: _ZnwmSt11align_val_t(size 64, al 128)
    --4242-- free(0x4A8B1C0)     _ZdlPv(0x...) _ZdaPv _ZdlPvm ... (every operator delete)
    --4242-- realloc(0x4A8B040,0)free(0x4A8B040)
    --4242--  = 0                             realloc(p, 0): the free it makes, then the result

Versions differ: the result on the same line or the next one (older versions end every
message with a newline), no ``--PID--`` prefix, ``--time-stamp=yes`` prefixes
(``--00:00:00:00.486 4242--``), realloc(NULL) shown as the malloc it calls (or with its own
result), C++ names of 32-bit builds (_Znwj). All are accepted. Other ``--PID--`` lines
(``-v`` output) are skipped; a line that starts like a traced call but does not parse is
malformed.

Each pid gets its own trace (``--trace-children=yes`` logs hold several). The log has no
thread ids and valgrind runs one thread at a time, so every call is tid 1 in the order the
log shows. Memcheck's own report on an invalid free ("Address 0x... is 16 bytes inside a
block of size 64 alloc'd") is read and set next to the importer's verdict for that free.
"""

from __future__ import annotations

import re
from typing import IO, Iterator

from forensics.importers import (
    DEFAULT_MAX_PROCESSES,
    ImportFormatError,
    K_CALLOC,
    K_FREE,
    K_MALLOC,
    K_MEMALIGN,
    K_REALLOC,
    K_VERDICT,
    LineErrors,
    iter_lines,
    show,
)

_PREFIX = re.compile(r"^(--|==|\*\*)(?:\d\d:\d\d:\d\d:\d\d\.\d+ )?(\d{1,10})(?::\d+)?(?:--|==|\*\*) ?")
# Decimal numbers have at most 20 digits (2**64-1 has 20): a longer one is malformed, never a
# multi-thousand-digit int() (the import driver range-checks the rest).
_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)\(([^()]*)\)|=\s*(0x[0-9A-Fa-f]+|\(nil\)|\d{1,20}(?!\d)))")
_CALL_START = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\(")
_NUM = r"(\d{1,20})"
_PTR = r"(0x[0-9A-Fa-f]+|\(nil\)|0)"

# name -> (kind, argument pattern). Kinds: 'size', 'size_al' (size N, al A), 'al_size' (al A,
# size N), 'calloc', 'realloc', 'free', 'usable', 'valloc', 'ignore'.
_ARGS = {
    "size": re.compile(rf"^\s*{_NUM}\s*$"),
    "size_al": re.compile(rf"^\s*size\s+{_NUM},\s*al\s+{_NUM}\s*$"),
    "al_size": re.compile(rf"^\s*al\s+{_NUM},\s*size\s+{_NUM}\s*$"),
    "calloc": re.compile(rf"^\s*{_NUM}\s*,\s*{_NUM}\s*$"),
    "realloc": re.compile(rf"^\s*{_PTR}\s*,\s*{_NUM}\s*$"),
    "free": re.compile(rf"^\s*{_PTR}(?:\s*,.*)?$"),
    "usable": re.compile(rf"^\s*{_PTR}\s*$"),
    "valloc": re.compile(rf"^\s*{_NUM}\s*$"),
}
_NEW_PLAIN = {"malloc", "__builtin_new", "__builtin_vec_new", "builtin_new", "builtin_vec_new"}
_IGNORED = {"mallinfo", "mallinfo2", "mallopt", "malloc_trim", "malloc_stats", "malloc_info", "malloc_size"}
_NEW_RE = re.compile(r"^_Zn[wa][jm](RKSt9nothrow_t)?$")
_NEW_ALIGN_RE = re.compile(r"^_Zn[wa][jm]St11align_val_t(RKSt9nothrow_t)?$")
_DELETE_RE = re.compile(r"^(_Zd[la]Pv\w*|free|cfree|__builtin_delete|__builtin_vec_delete|builtin_delete|builtin_vec_delete)$")

_VERDICT_START = "Invalid free() / delete / delete[] / realloc()"
_INSIDE = re.compile(r"Address (0x[0-9A-Fa-f]+) is (\d+) bytes inside a block of size (\d+) (alloc'd|free'd)")
_OUTSIDE = re.compile(r"Address (0x[0-9A-Fa-f]+) is (\d+) bytes (?:after|before) a block of size (\d+)")
_UNKNOWN = re.compile(r"Address (0x[0-9A-Fa-f]+) is not stack'd, malloc'd or \(recently\) free'd")
_ADDRESS = re.compile(r"Address (0x[0-9A-Fa-f]+) is ")


def classify(name: str) -> str | None:
    """The kind of a traced function name, or None if valgrind does not trace it."""
    if name in _NEW_PLAIN or _NEW_RE.match(name):
        return "size"
    if _NEW_ALIGN_RE.match(name):
        return "size_al"
    if name in ("memalign", "posix_memalign", "aligned_alloc"):
        return "al_size"
    if name == "calloc":
        return "calloc"
    if name == "realloc":
        return "realloc"
    if name == "valloc" or name == "pvalloc":
        return "valloc"
    if name == "malloc_usable_size":
        return "usable"
    if _DELETE_RE.match(name):
        return "free"
    if name in _IGNORED:
        return "ignore"
    return None


def _ptr(text: str) -> int:
    return 0 if text in ("(nil)", "0") else int(text, 16)


class _Pending:
    __slots__ = ("name", "kind", "args", "line", "nested_free")

    def __init__(self, name: str, kind: str, args: tuple[int, ...], line: int) -> None:
        self.name = name
        self.kind = kind
        self.args = args
        self.line = line
        self.nested_free = False


class ValgrindParser:
    name = "valgrind"
    verdicts = True  # it yields K_VERDICT: the driver remembers each free's event for them

    def __init__(self, errors: LineErrors) -> None:
        self.errors = errors
        self.lines = 0
        self.max_processes = DEFAULT_MAX_PROCESSES  # distinct pids: every per-pid dict below is bounded by it
        self._pids: set[int] = set()
        self._meta: dict[int | None, list[tuple[str, str]]] = {}
        self._pending: dict[int | None, _Pending | None] = {}
        self._verdict_due: dict[int | None, int] = {}  # pid -> line of the "Invalid free()" heading
        self.traced = 0  # lines with a traced call or result

    def header_meta(self, pid: int | None) -> list[tuple[str, object]]:
        meta: list[tuple[str, object]] = list(self._meta.get(pid, []))
        meta.append(("threads", "valgrind runs one thread at a time and does not log thread ids: every call is tid 1"))
        return meta

    # -------------------------------------------------------------------- lines
    def iter_calls(self, stream: IO[bytes], max_lines: int | None = None) -> Iterator[tuple]:
        line_no = 0
        for raw in iter_lines(stream):
            line_no += 1
            if max_lines is not None and line_no > max_lines:
                line_no -= 1
                break
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            m = _PREFIX.match(text)
            if m:
                kind, pid, body = m.group(1), int(m.group(2)), text[m.end():]
                if pid not in self._pids:
                    if len(self._pids) >= self.max_processes:
                        raise ImportFormatError(self.errors.name, line_no, f"more than {self.max_processes} processes "
                                                "in the log (one trace each; --max-processes N raises the limit)")
                    self._pids.add(pid)
                if kind == "==":
                    yield from self._tool_line(pid, body, line_no)
                    continue
                if kind == "**":
                    continue
            else:
                pid, body = None, text
            stripped = body.lstrip()
            if not stripped:
                continue
            if stripped[0] != "=":
                call = _CALL_START.match(body)
                if call is None or classify(call.group(1)) is None:
                    continue  # not a traced call (-v output, the program's own output, ...)
            self.traced += 1
            yield from self._trace_body(pid, body, line_no)
            if line_no & 0xFFFF == 0:
                self.lines = line_no
        self.lines = line_no
        if line_no and not self.traced and not self._meta:
            self.errors.bad(1, "no valgrind output here (expected lines like '--PID-- malloc(100) = 0x...' "
                               "from valgrind --trace-malloc=yes)")
        for pid, pending in self._pending.items():
            if pending is not None:
                self.errors.bad(pending.line, f"{pending.name}(...) has no result (the log ends first)")

    def _tool_line(self, pid: int, body: str, line_no: int) -> Iterator[tuple]:
        """A tool message: provenance, and memcheck's verdict on an invalid free."""
        text = body.strip()
        if pid not in self._meta:
            self._meta[pid] = []
        meta = self._meta[pid]
        if text.startswith("Command: ") and not any(k == "command" for k, _ in meta):
            meta.append(("command", text[len("Command: "):]))
        elif text.startswith("Using Valgrind-") and not any(k == "valgrind" for k, _ in meta):
            meta.append(("valgrind", text[len("Using "):].split(" ")[0]))
        elif text.startswith("Parent PID: ") and not any(k == "ppid" for k, _ in meta):
            meta.append(("ppid", text[len("Parent PID: "):]))
        elif ", a " in text and text.endswith("detector") and not any(k == "tool" for k, _ in meta):
            meta.append(("tool", text.split(",")[0]))
        if text == _VERDICT_START:
            self._verdict_due[pid] = line_no
            return
        if pid not in self._verdict_due or not text.startswith("Address "):
            return
        start = self._verdict_due.pop(pid)
        m = _INSIDE.search(text)
        if m:
            kind = "inside_live" if m.group(4) == "alloc'd" else "inside_freed"
            yield pid, 1, K_VERDICT, 0, 0, 0, 0, start, (kind, int(m.group(2)), int(m.group(3)))
            return
        m = _OUTSIDE.search(text)
        if m or _UNKNOWN.search(text):
            yield pid, 1, K_VERDICT, 0, 0, 0, 0, start, ("unknown", None, int(m.group(3)) if m else None)
            return
        if _ADDRESS.search(text):
            yield pid, 1, K_VERDICT, 0, 0, 0, 0, start, ("other", None, None)

    def _trace_body(self, pid: int | None, body: str, line_no: int) -> Iterator[tuple]:
        bad = self.errors.bad
        pos = 0
        n = len(body)
        while pos < n:
            m = _TOKEN.match(body, pos)
            if m is None:
                if body[pos:].strip():
                    bad(line_no, f"cannot read {show(body[pos:])} in a traced call line")
                return
            pos = m.end()
            if m.group(3) is not None:
                yield from self._result(pid, m.group(3), line_no)
                continue
            name, args = m.group(1), m.group(2)
            kind = classify(name)
            if kind is None:
                bad(line_no, f"unknown traced function {show(name)}(...)")
                return  # the rest of a malformed line means nothing
            if kind == "ignore":
                continue
            am = _ARGS[kind].match(args)
            if am is None:
                bad(line_no, f"cannot read the arguments of {name}({show(args)[1:-1]})")
                return
            pending = self._pending.get(pid)
            if kind == "free":
                ptr = _ptr(am.group(1))
                if pending is not None and pending.kind == "realloc" and pending.args[1] == 0 and pending.args[0] == ptr:
                    pending.nested_free = True  # the free realloc(p, 0) makes: part of the realloc
                    continue
                if pending is not None:
                    bad(pending.line, f"{pending.name}(...) has no result before the next call")
                    self._pending[pid] = None
                yield pid, 1, K_FREE, ptr, 0, 0, 0, line_no, None
                continue
            if pending is not None:
                if pending.kind == "realloc" and pending.args[0] == 0 and kind == "size":
                    continue  # realloc(NULL, n) shown with the malloc it calls: the realloc's result follows
                bad(pending.line, f"{pending.name}(...) has no result before the next call")
            if kind == "realloc":
                values = (_ptr(am.group(1)), int(am.group(2)))
            elif kind == "usable":
                values = (_ptr(am.group(1)),)
            else:
                values = tuple(int(g) for g in am.groups())
            self._pending[pid] = _Pending(name, kind, values, line_no)

    def _result(self, pid: int | None, text: str, line_no: int) -> Iterator[tuple]:
        pending = self._pending.get(pid)
        if pending is None:
            self.errors.bad(line_no, f"a result ({show(text)[1:-1]}) with no call before it")
            return
        self._pending[pid] = None
        value = _ptr(text) if text.startswith("0x") or text == "(nil)" else int(text)
        kind, args, line = pending.kind, pending.args, pending.line
        if kind == "size":
            yield pid, 1, K_MALLOC, value, args[0], 0, 0, line, None
        elif kind == "size_al":
            yield pid, 1, K_MEMALIGN, value, args[1], args[0], 0, line, None
        elif kind == "al_size":
            yield pid, 1, K_MEMALIGN, value, args[0], args[1], 0, line, None
        elif kind == "valloc":
            yield pid, 1, K_MEMALIGN, value, 4096, args[0], 0, line, None
        elif kind == "calloc":
            yield pid, 1, K_CALLOC, value, args[0], args[1], 0, line, None
        elif kind == "realloc":
            yield pid, 1, K_REALLOC, value, args[0], args[1], 0, line, None
        # usable: nothing happens to the heap
