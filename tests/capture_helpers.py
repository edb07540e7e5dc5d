"""Helpers of the recorder, importer and symbolization tests: C test programs, counts by site."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from forensics import elf, sites
from forensics.cli import app
from forensics.trace import iter_raw, read_header
from forensics.trace.records import OP_NAMES

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
ANDROID = Path("/work/shared/data/android")
CC = shutil.which("cc") or shutil.which("gcc") or "cc"
runner = CliRunner()


def compile_c(src: Path, out: Path, *flags: str) -> Path:
    """Build a test program with -g -O0 (lines map one to one); warnings off: the bad frees
    are deliberate."""
    cmd = [CC, "-g", "-O0", "-pthread", "-w", *flags, "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def read_const(path: Path, name: str) -> int:
    """A const uint32_t a test program exports (the expected values live in the binary)."""
    with elf.ElfFile(path) as f:
        value = f.get_u32(name)
    assert value is not None, f"{path} exports no {name}"
    return value


def source_line(src: Path, marker: str) -> int:
    """The line of src that carries the comment LINE:<marker>."""
    for number, text in enumerate(src.read_text().splitlines(), start=1):
        if f"LINE:{marker} " in text or text.rstrip().endswith(f"LINE:{marker} */"):
            return number
    raise AssertionError(f"no LINE:{marker} in {src}")


def counts_by_module(trace: Path, module: Path) -> tuple[Counter, set[int]]:
    """Events whose call site is in `module` (a path as mapped), by op, and their tids."""
    known = sites.get_sites(read_header(trace))
    counts: Counter = Counter()
    tids: set[int] = set()
    for raw in iter_raw(trace):
        site = known.get(raw[7])
        if site is not None and site.module == str(module):
            counts[OP_NAMES[raw[0]]] += 1
            tids.add(raw[1])
    return counts, tids


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])
