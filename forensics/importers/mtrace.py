"""glibc ``mtrace()`` output (MALLOC_TRACE=file; glibc >= 2.34 also needs libc_malloc_debug.so).

    = Start
    @ ./prog:[0x11b0] + 0x55ec00d614a0 0x64        malloc/calloc/memalign/realloc(NULL): ptr size
    @ ./prog:[0x120e] - 0x55ec00d612a0             free (and realloc(p, 0))
    @ ./prog:[0x11d8] < 0x55ec00d614a0             realloc: the old block ...
    @ ./prog:[0x11d8] > 0x55ec00d615a0 0x1388      ... and the new one, on the next line
    @ /lib/libc.so.6:(__libc_foo+0x12)[0x7f...] ! 0x55ec00d614a0 0x1388   a realloc that failed
    = End

The caller part (``@ ...``) may be missing; its bracketed address becomes the event's site
(glibc prints it relative to the object's load address in newer versions, absolute in older
ones; either way it is kept as printed). mtrace does not say which function allocated
(calloc and memalign are ``+`` lines like malloc) nor which thread: every call is a malloc or
realloc of tid 1, in file order. Sizes are hex (``%#lx``).
"""

from __future__ import annotations

import re
from typing import IO, Iterator

from forensics.importers import K_FREE, K_MALLOC, K_REALLOC, LineErrors, iter_lines, show

_LINE = re.compile(
    r"^(?:@ (?P<caller>.*?) ?)?(?P<op>[-+<>!]) (?P<ptr>0x[0-9A-Fa-f]+|\(nil\))(?: (?P<size>0x[0-9A-Fa-f]+|\d{1,20}))?\s*$"
)
_SITE = re.compile(r"\[(0x[0-9A-Fa-f]+)\]\s*$")


def _num(text: str) -> int:
    return int(text, 16) if text.startswith(("0x", "0X")) else int(text)


class MtraceParser:
    name = "mtrace"

    def __init__(self, errors: LineErrors) -> None:
        self.errors = errors
        self.lines = 0

    def header_meta(self, pid: int | None) -> list[tuple[str, object]]:
        return [("threads", "mtrace does not log thread ids: every call is tid 1")]

    def iter_calls(self, stream: IO[bytes], max_lines: int | None = None) -> Iterator[tuple]:
        bad = self.errors.bad
        pending: tuple[int, int, int] | None = None  # realloc '<': (old, site, line)
        line_no = 0
        for raw in iter_lines(stream):
            line_no += 1
            if max_lines is not None and line_no > max_lines:
                line_no -= 1
                break
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not text.strip() or text.startswith("= "):
                continue
            m = _LINE.match(text)
            if m is None:
                bad(line_no, f"expected '@ CALLER OP PTR [SIZE]' (OP one of + - < > !), got {show(text)}")
                continue
            op, ptr_text, size_text = m.group("op"), m.group("ptr"), m.group("size")
            caller = m.group("caller") or ""
            sm = _SITE.search(caller)
            site = int(sm.group(1), 16) if sm else 0
            ptr = 0 if ptr_text == "(nil)" else int(ptr_text, 16)
            needs_size = op in "+>!"
            if needs_size != (size_text is not None):
                bad(line_no, f"'{op}' {'takes PTR SIZE' if needs_size else 'takes only PTR'}, got {show(text)}")
                continue
            if pending is not None and op != ">":
                bad(pending[2], "a realloc '<' line is not followed by its '>' line")
                pending = None
            if op == "+":
                yield None, 1, K_MALLOC, ptr, _num(size_text), 0, site, line_no, None
            elif op == "-":
                yield None, 1, K_FREE, ptr, 0, 0, site, line_no, None
            elif op == "<":
                pending = (ptr, site, line_no)
            elif op == ">":
                if pending is None:
                    bad(line_no, "a realloc '>' line without the '<' line before it")
                    continue
                old, old_site, _ = pending
                pending = None
                yield None, 1, K_REALLOC, ptr, old, _num(size_text), site or old_site, line_no, None
            # '!': a failed realloc changes nothing
            if line_no & 0xFFFF == 0:
                self.lines = line_no
        if pending is not None:
            bad(pending[2], "a realloc '<' line is not followed by its '>' line (the file ends first)")
        self.lines = line_no
