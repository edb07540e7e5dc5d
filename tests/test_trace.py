"""Route trace lines on stderr, and registry request records through ctypes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hf_helpers import find_first_block_of_new_superslab, reg_lines, route_lines, run

import forensics
from forensics.model import RegKind, ReqtraceOp, Route

FREE_ONE = (
    "from forensics.native import Allocator\n"
    "a = Allocator()\n"
    "p = a.alloc(16)\n"
    "a.free(p)\n"
    "print(hex(p), a.last_decision().seq)\n"
)


def _python(code: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAKMEM_")}
    env["PYTHONPATH"] = str(Path(forensics.__file__).resolve().parent.parent)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_route_trace_on():
    proc = _python(FREE_ONE, HAKMEM_FREE_ROUTE_TRACE="1")
    assert proc.returncode == 0, proc.stderr
    ptr_text, seq = proc.stdout.split()
    lines = route_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert int(line["ptr"], 16) == int(ptr_text, 16)
    assert int(line["seq"]) == int(seq)
    assert line["route"] == "ss_hit" and line["action"] == "tiny_free"
    assert line["tried"] == "ss" and line["hit"] == "ss"
    assert line["probe"] == "-" and line["magic"] == "-" and line["method"] == "-"


@pytest.mark.parametrize("value", [None, "0"])
def test_route_trace_off(value):
    env = {} if value is None else {"HAKMEM_FREE_ROUTE_TRACE": value}
    proc = _python(FREE_ONE, **env)
    assert proc.returncode == 0, proc.stderr
    assert "[hakmem-route]" not in proc.stderr


def test_route_trace_knob_set_through_the_abi():
    code = "from forensics.native import Allocator\na = Allocator()\na.set_knob('HAKMEM_FREE_ROUTE_TRACE', 1)\n" + FREE_ONE.split("\n", 2)[2]
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert [line["route"] for line in route_lines(proc.stderr)] == ["ss_hit"]


def test_reqtrace_register_then_lookup_hit(geometry):
    size = geometry.tiny_class_sizes[-1]

    def body(ctx):
        a = ctx.allocator
        a.reqtrace_clear()
        p = find_first_block_of_new_superslab(a, size)  # a SuperSlab registered under the trace
        base = a.owner(p).region_base
        a.free(p)
        d = a.last_decision()
        a.reqtrace_dump(p)
        return p, base, d, a.reqtrace(p), a.reqtrace()

    result = run(body, HAKMEM_SUPER_REG_REQTRACE=1)
    p, base, d, region, everything = result.unwrap()
    assert d.route is Route.SS_HIT
    ops = [(r.op, r.reg, r.base) for r in region]
    assert (ReqtraceOp.REGISTER, RegKind.SS, base) in ops
    register = next(r for r in region if r.op is ReqtraceOp.REGISTER and r.base == base)
    hit = next(r for r in region if r.op is ReqtraceOp.LOOKUP_HIT and r.addr == p)
    assert register.seq < hit.seq
    assert register.addr == base and hit.base == base and hit.reg is RegKind.SS
    assert hit.free_seq == d.seq
    assert all(r.base == base for r in region)  # only that region's records
    assert set(region) <= set(everything) and len(everything) >= len(region)
    # the dump prints the same records, one [hakmem-reg] line each
    printed = [(line["op"], int(line["base"], 16), int(line["addr"], 16)) for line in reg_lines(result.stderr)]
    assert ("register", base, base) in printed and ("lookup_hit", base, p) in printed


def test_reqtrace_off_records_nothing(geometry):
    def body(ctx):
        a = ctx.allocator
        a.reqtrace_clear()
        p = find_first_block_of_new_superslab(a, geometry.tiny_class_sizes[-1])
        a.free(p)
        return a.reqtrace()

    assert run(body, HAKMEM_SUPER_REG_REQTRACE=0).unwrap() == []


def test_reqtrace_capacity_error(geometry):
    def body(ctx):
        a = ctx.allocator
        a.reqtrace_clear()
        a.alloc(geometry.tiny_class_sizes[0])
        p = find_first_block_of_new_superslab(a, geometry.tiny_class_sizes[-1])
        return p, a.reqtrace(p)

    p, records = run(body, HAKMEM_SUPER_REG_REQTRACE=1, HAKMEM_SS_REG_CAPACITY=1).unwrap()
    assert [r.op for r in records if r.base == p][:1] == [ReqtraceOp.CAPACITY_ERROR]
