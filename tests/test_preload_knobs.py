"""The knobs the preload mode added to hakmem-ref: trace fd/file, alloc trace, reqtrace level 4, defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from hf_helpers import run, run_ok

from forensics import preload, routelog

ALLOC_LINE = re.compile(
    r"^\[hakmem-alloc\] seq=(?P<seq>\d+) free_seq=(?P<free_seq>\d+) tid=\d+ ptr=0x(?P<ptr>[0-9a-f]+) "
    r"size=(?P<size>\d+) align=(?P<align>\d+) path=(?P<path>tiny|mid|l25|mmap|malloc)$"
)


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks).decode()


def test_trace_fd_takes_the_lines_off_stderr():
    def body(ctx):
        a = ctx.allocator
        r, w = os.pipe()
        a.set_knob("HAKMEM_TRACE_FD", w)
        p = a.alloc(100)
        a.free(p)
        a.set_knob("HAKMEM_TRACE_FD", 2)
        return p, _drain(r)

    res = run(body, HAKMEM_FREE_ROUTE_TRACE=1)
    p, piped = res.unwrap()
    assert f"ptr={p:#x} route=ss_hit" in piped
    assert "[hakmem-route]" not in res.stderr


def test_alloc_trace_names_each_path(geometry):
    g = geometry
    sizes = {"tiny": g.tiny_max, "mid": g.mid_max, "l25": g.l25_max, "mmap": g.l25_max + 1}

    def body(ctx):
        a = ctx.allocator
        r, w = os.pipe()
        a.set_knob("HAKMEM_TRACE_FD", w)
        ptrs = {path: a.alloc(n) for path, n in sizes.items()}
        ptrs["memalign"] = a.memalign(4096, 5000)
        a.set_knob("HAKMEM_POOL", 0)
        ptrs["malloc"] = a.alloc(g.mid_max)
        a.set_knob("HAKMEM_POOL", 1)
        a.set_knob("HAKMEM_TRACE_FD", 2)
        return ptrs, _drain(r)

    ptrs, text = run_ok(body, HAKMEM_ALLOC_TRACE=1)
    lines = [ALLOC_LINE.match(x) for x in text.splitlines()]
    assert all(lines), text
    by_ptr = {int(m["ptr"], 16): m for m in lines}
    for path in ("tiny", "mid", "l25", "mmap", "malloc"):
        m = by_ptr[ptrs[path]]
        assert m["path"] == path, (path, m.group(0))
    m = by_ptr[ptrs["memalign"]]
    assert (m["path"], m["align"], m["size"]) == ("mmap", "4096", "5000")
    assert [int(m["seq"]) for m in lines] == list(range(1, len(lines) + 1))
    # and the log reader agrees about every line
    an = routelog.RouteLogAnalyzer()
    an._feed_lines([x.encode() for x in text.splitlines()], routelog.LogFileStats(path="-", compressed=False), 0)
    assert an.result().alloc_paths == {"tiny": 1, "mid": 1, "l25": 1, "mmap": 2, "malloc": 1}


def test_reqtrace_level_4_prints_changes_only():
    def body(ctx):
        a = ctx.allocator
        r, w = os.pipe()
        a.set_knob("HAKMEM_TRACE_FD", w)
        out = {}
        for level in (2, 3, 4):
            a.set_knob("HAKMEM_SUPER_REG_REQTRACE", level)
            a.reqtrace_clear()
            _drain(r)
            p = a.alloc({2: 100, 3: 200, 4: 1000}[level])  # a Tiny class of its own: a new SuperSlab, registered
            a.free(p)
            out[level] = (_drain(r), [x.op.value for x in a.reqtrace()])
        a.set_knob("HAKMEM_TRACE_FD", 2)
        return out

    out = run_ok(body)
    printed2, ring2 = out[2]
    assert "op=register" in printed2 and "op=lookup_hit" in printed2
    printed3, ring3 = out[3]
    assert printed3 == "" and ring3 == ["register"]
    printed4, ring4 = out[4]
    assert "op=register" in printed4 and "lookup" not in printed4 and ring4 == ["register"]


def test_memalign_of_a_small_size_gets_the_alignment():
    def body(ctx):
        a = ctx.allocator
        return [a.memalign(16, n) for n in (1, 2, 4, 8) for _ in range(8)]

    ptrs = run_ok(body)
    assert all(p % 16 == 0 for p in ptrs), [hex(p) for p in ptrs if p % 16]


def _preloaded(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HAKMEM_")}
    full.update(env)
    full["LD_PRELOAD"] = str(preload.find_preload())
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, timeout=60)


def test_untraced_preload_prints_nothing(tmp_path):
    code = "import json, sys; print(json.dumps(list(range(50)))); sys.stderr.write('e\\n')"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True)
    res = _preloaded(code, {})
    assert (res.returncode, res.stdout, res.stderr) == (plain.returncode, plain.stdout, plain.stderr)


def test_trace_file_per_process_and_preload_defaults(tmp_path):
    pattern = str(tmp_path / "t.%p.log")
    res = _preloaded("import os; print(os.getpid())", {"HAKMEM_TRACE_FILE": pattern, "HAKMEM_FREE_ROUTE_TRACE": "1"})
    assert res.returncode == 0 and res.stderr == b""
    pid = int(res.stdout)
    log = tmp_path / f"t.{pid}.log"
    lines = log.read_text().splitlines()
    # the image's first line says what it runs with: LD_PRELOAD names libhakmem, the safe probe
    assert re.match(rf"^\[hakmem\] PROCESS: pid={pid} ppid=\d+ start=exec free_seq=0 mode=ldpreload probe=safe$", lines[0])
    assert re.match(rf"^\[hakmem\] STATS: pid={pid} allocs=\d+ frees=\d+$", lines[-1])
    frees = int(lines[-1].rsplit("=", 1)[1])
    assert sum(1 for x in lines if x.startswith("[hakmem-route]")) >= frees > 0
    res = _preloaded("pass", {"HAKMEM_TRACE_FILE": pattern, "HAKMEM_FREE_ROUTE_TRACE": "1",
                              "HAKMEM_HEADER_PROBE": "off", "HAKMEM_MODE": "direct"})
    (other,) = [p for p in tmp_path.glob("t.*.log") if p != log]
    assert "mode=direct probe=off" in other.read_text().splitlines()[0]
