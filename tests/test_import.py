"""`hakmem-forensics import valgrind|mtrace`: real logs made here, other versions' formats, bad input."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capture_helpers import CSRC, compile_c, invoke, read_const
from forensics.errors import EXIT_BAD_INPUT
from forensics.importers import ImportFormatError, import_file
from forensics.replay import ReplayConfig, run_replay
from forensics.trace import iter_raw, read_header
from forensics.trace.records import OP_NAMES

VALGRIND = shutil.which("valgrind")


def _ops(trace: Path) -> list[str]:
    return [OP_NAMES[r[0]] for r in iter_raw(trace)]


def _events(trace: Path) -> list[tuple]:
    return list(iter_raw(trace))


# ---------------------------------------------------------------------------- valgrind, real
@pytest.fixture(scope="module")
def valgrind_log(tmp_path_factory) -> tuple[Path, Path]:
    if VALGRIND is None:
        pytest.skip("valgrind is not installed")
    d = tmp_path_factory.mktemp("vg")
    prog = compile_c(CSRC / "record_prog.c", d / "record_prog")
    log = d / "vg.log"
    subprocess.run([VALGRIND, "--trace-malloc=yes", f"--log-file={log}", str(prog), "badfree"], check=True,
                   capture_output=True, timeout=120)
    return prog, log


def test_valgrind_log_imports_and_each_bad_free_matches_memcheck(valgrind_log, tmp_path):
    prog, log = valgrind_log
    trace = tmp_path / "vg.trace"
    result = import_file("valgrind", log, trace)
    (out,) = result.outputs
    kinds = [(f.kind, f.offset) for f in out.findings]
    assert kinds == [("free_interior", read_const(prog, "rec_interior_offset")), ("double_free", 0), ("free_raw", 0)]
    # memcheck's own report on that run, one per bad free, says the same thing
    assert [(c.memcheck, c.memcheck_offset) for c in out.memcheck] == [("inside_live", 16), ("inside_freed", 0), ("unknown", None)]
    assert all(c.agrees for c in out.memcheck)
    assert [c.event_index for c in out.memcheck] == [f.event_index for f in out.findings]
    ops = _ops(trace)
    assert [ops[f.event_index] for f in out.findings] == ["free_interior", "double_free", "free_raw"]
    # at least the program's own calls (valgrind also shows libc's)
    assert out.op_counts["malloc"] >= read_const(prog, "rec_expected_malloc") + 1
    assert out.op_counts["memalign"] >= read_const(prog, "rec_expected_memalign")
    assert set(out.thread_counts) == {1}
    header = read_header(trace)
    assert header.get_meta("source") == "valgrind"
    assert header.get_meta("pid") == str(out.pid)
    assert header.get_meta("command").endswith("record_prog badfree")
    assert header.get_meta("valgrind").startswith("Valgrind-")


def test_valgrind_trace_replays_and_reproduces_the_bad_frees(valgrind_log, tmp_path):
    _, log = valgrind_log
    trace = tmp_path / "vg.htb"
    (out,) = import_file("valgrind", log, trace).outputs
    result = run_replay(trace, ReplayConfig(probe="safe", timeout=60))
    assert result.completed and result.events_done == out.events
    anomalies = {a.index: a.op for a in result.anomalies}
    for f in out.findings:
        assert anomalies.get(f.event_index) == f.kind


def test_valgrind_import_cli_reports_counts_and_memcheck(valgrind_log, tmp_path):
    _, log = valgrind_log
    res = invoke("import", "valgrind", log, "-o", tmp_path / "t.trace", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == "hakmem-forensics/import/1" and doc["format"] == "valgrind"
    (out,) = doc["outputs"]
    assert out["ops"]["free_interior"] == 1 and out["per_thread"] == {"1": out["events"]}
    assert [c["agrees"] for c in out["memcheck"]] == [True, True, True]
    res = invoke("import", "valgrind", log, "-o", tmp_path / "t2.trace")
    assert res.exit_code == 0, res.output
    assert "memcheck agrees on 3 of 3" in res.output


# ---------------------------------------------------------------------------- valgrind, versions
CANONICAL = """\
==100== Memcheck, a memory error detector
==100== Using Valgrind-3.19.0 and LibVEX; rerun with -h for copyright info
==100== Command: ./prog
==100==
--100-- malloc(100) = 0x4A00040
--100-- calloc(4,32) = 0x4A000F0
--100-- realloc(0x4A00040,5000) = 0x4A001A0
--100-- memalign(al 64, size 200) = 0x4A01600
--100-- _Znwm(24) = 0x4A01700
--100-- _ZdlPvm(0x4A01700)
--100-- _ZnamSt11align_val_t(size 64, al 128) = 0x4A01780
--100-- _ZdaPvSt11align_val_t(0x4A01780)
--100-- malloc(8) = 0x4A01800
--100-- realloc(0x4A01800,0)free(0x4A01800)
--100--  = 0
--100-- malloc_usable_size(0x4A000F0) = 128
--100-- free(0x4A001A0)
--100-- free(0x4A000F0)
--100-- free(0x4A01600)
--100-- free(0x0)
"""
CANONICAL_OPS = ["malloc", "calloc", "realloc", "memalign", "malloc", "free", "memalign", "free", "malloc",
                 "realloc", "free", "free", "free", "free"]


def _variant_no_prefix(text: str) -> str:
    return "".join(re.sub(r"^--100-- ", "", ln) + "\n" for ln in text.splitlines() if not ln.startswith("=="))


def _variant_next_line(text: str) -> str:
    out = []
    for ln in text.splitlines():
        m = re.match(r"^(--100-- .*\))( = .*)$", ln)
        out += [m.group(1), "--100-- " + m.group(2)] if m else [ln]
    return "\n".join(out) + "\n"


def _variant_timestamps(text: str) -> str:
    return re.sub(r"^(--|==)100(--|==)", lambda m: f"{m.group(1)}00:00:00:01.234 100{m.group(2)}", text, flags=re.M)


def _variant_32bit(text: str) -> str:
    return text.replace("_Znwm(", "_Znwj(").replace("_ZdlPvm(", "_ZdlPvj(").replace("_ZnamSt11", "_ZnajSt11")


@pytest.mark.parametrize("variant", [_variant_no_prefix, _variant_next_line, _variant_timestamps, _variant_32bit])
def test_valgrind_versions_import_to_the_same_trace(tmp_path, variant):
    canonical = tmp_path / "canonical.log"
    canonical.write_text(CANONICAL)
    other = tmp_path / "other.log"
    other.write_text(variant(CANONICAL))
    import_file("valgrind", canonical, tmp_path / "a.trace")
    import_file("valgrind", other, tmp_path / "b.trace")
    assert _ops(tmp_path / "a.trace") == CANONICAL_OPS
    assert _events(tmp_path / "b.trace") == _events(tmp_path / "a.trace")


def test_valgrind_realloc_forms(tmp_path):
    log = tmp_path / "r.log"
    log.write_text(
        "--7-- realloc(0x0,50)malloc(50) = 0x5000\n"  # older: realloc(NULL) shown with the malloc it calls
        "--7-- realloc(0x5000,0)free(0x5000)\n"  # realloc(p, 0), the result on the next line
        "--7--  = 0\n"
        "--7-- realloc(0x0,60) = 0x6000\n"
        "--7-- realloc(0x6000,70) = 0x6000\n"  # in place
        "--7-- free(0x6000)\n"
    )
    import_file("valgrind", log, tmp_path / "r.trace")
    lines = [ln for ln in (tmp_path / "r.trace").read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["1 realloc 1 0 50", "1 realloc 0 1 0", "1 realloc 2 0 60", "1 realloc 2 2 70", "1 free 2"]


def test_valgrind_log_of_several_processes_gives_one_trace_each(tmp_path):
    log = tmp_path / "kids.log"
    log.write_text(
        "--10-- malloc(16) = 0x1000\n"
        "--11-- malloc(32) = 0x1000\n"  # the same address in another process: another object
        "--11-- free(0x1000)\n"
        "--10-- free(0x1000)\n"
    )
    result = import_file("valgrind", log, tmp_path / "k.trace")
    assert [Path(o.path).name for o in result.outputs] == ["k.trace", "k.11.trace"]
    assert [o.pid for o in result.outputs] == [10, 11]
    assert all(o.op_counts == {"malloc": 1, "free": 1} for o in result.outputs)
    assert read_header(tmp_path / "k.11.trace").get_meta("pid") == "11"


def test_valgrind_malformed_line_is_a_file_line_error(tmp_path):
    log = tmp_path / "bad.log"
    log.write_text("--5-- malloc(16) = 0x1000\n--5-- malloc(abc) = 0x2000\n--5-- free(0x1000)\n")
    with pytest.raises(ImportFormatError) as info:
        import_file("valgrind", log, tmp_path / "bad.trace")
    assert (info.value.line, str(info.value)) == (2, f"{log}:2: cannot read the arguments of malloc(abc)")
    assert not (tmp_path / "bad.trace").exists()  # no partial output
    res = invoke("import", "valgrind", log, "-o", tmp_path / "bad.trace")
    assert res.exit_code == EXIT_BAD_INPUT and f"{log}:2:" in res.output and "Traceback" not in res.output
    res = invoke("import", "valgrind", log, "-o", tmp_path / "ok.trace", "--lenient", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["malformed"] == 1 and doc["malformed_samples"] == [f"{log}:2: cannot read the arguments of malloc(abc)"]
    assert doc["outputs"][0]["ops"] == {"malloc": 1, "free": 1}


def test_valgrind_result_without_a_call_and_call_without_result(tmp_path):
    log = tmp_path / "r.log"
    log.write_text("--5--  = 0x1000\n")
    with pytest.raises(ImportFormatError, match=r":1: a result \(0x1000\) with no call"):
        import_file("valgrind", log, tmp_path / "r.trace")
    log.write_text("--5-- malloc(16) = 0x1000\n--5-- malloc(32)\n")
    with pytest.raises(ImportFormatError, match=r":2: malloc\(...\) has no result"):
        import_file("valgrind", log, tmp_path / "r.trace")


def test_import_of_a_missing_file_or_unknown_format(tmp_path):
    res = invoke("import", "android", tmp_path / "none.txt", "-o", tmp_path / "x.trace")
    assert res.exit_code == EXIT_BAD_INPUT and "no such file" in res.output
    res = invoke("import", "heaptrack", tmp_path / "none.txt", "-o", tmp_path / "x.trace")
    assert res.exit_code == 2


# ---------------------------------------------------------------------------- mtrace
def _malloc_debug() -> str | None:
    for pattern in ("/lib/*/libc_malloc_debug.so.0", "/usr/lib/*/libc_malloc_debug.so.0", "/lib64/libc_malloc_debug.so.0"):
        found = glob.glob(pattern)
        if found:
            return found[0]
    return None


def test_mtrace_log_of_a_real_program(tmp_path):
    prog = compile_c(CSRC / "mtrace_prog.c", tmp_path / "mtrace_prog")
    log = tmp_path / "mtrace.log"
    env = dict(os.environ, MALLOC_TRACE=str(log))
    preload = _malloc_debug()
    if preload:
        env["LD_PRELOAD"] = preload
    subprocess.run([str(prog)], env=env, check=True, timeout=30)
    if not log.exists() or log.stat().st_size == 0:
        pytest.skip("this libc's mtrace() wrote nothing")
    trace = tmp_path / "mt.trace"
    (out,) = import_file("mtrace", log, trace).outputs
    assert out.op_counts == {
        "malloc": read_const(prog, "mt_expected_malloc"),
        "realloc": read_const(prog, "mt_expected_realloc"),
        "free": read_const(prog, "mt_expected_free"),
    }
    assert all(raw[7] for raw in iter_raw(trace))  # the caller of every call is kept as its site
    result = run_replay(trace, ReplayConfig(libc=True, timeout=60))
    assert result.completed and result.outcomes == {"correct": result.frees}


def test_mtrace_forensic_ops_and_malformed_lines(tmp_path):
    log = tmp_path / "m.log"
    log.write_text(
        "= Start\n"
        "@ ./p:[0x11b0] + 0x1000 0x40\n"
        "@ ./p:[0x11c0] - 0x1010\n"  # 16 bytes inside
        "@ ./p:[0x11d0] - 0x1000\n"
        "@ ./p:[0x11e0] - 0x1000\n"  # again
        "- 0x9999\n"  # never allocated, no caller part
        "@ ./p:[0x11f0] < 0x2000\n"  # realloc of a pointer never allocated
        "@ ./p:[0x11f0] > 0x3000 0x10\n"
        "= End\n"
    )
    import_file("mtrace", log, tmp_path / "m.trace")
    lines = [ln for ln in (tmp_path / "m.trace").read_text().splitlines() if not ln.startswith("#")]
    assert lines == [
        "1 malloc 1 64 @0x11b0",
        "1 free_interior 1 16 @0x11c0",
        "1 free 1 @0x11d0",
        "1 double_free 1 @0x11e0",
        "1 free_raw 0x9999",
        "1 free_raw 0x2000 @0x11f0",
        "1 malloc 2 16 @0x11f0",
    ]
    log.write_text("= Start\n@ ./p:[0x11b0] + 0x1000\n")
    with pytest.raises(ImportFormatError, match=r":2: '\+' takes PTR SIZE"):
        import_file("mtrace", log, tmp_path / "m2.trace")
    log.write_text("@ ./p:[0x11b0] < 0x1000\n@ ./p:[0x11b0] + 0x1000 0x10\n")
    with pytest.raises(ImportFormatError, match=r":1: a realloc '<' line is not followed"):
        import_file("mtrace", log, tmp_path / "m3.trace")


def test_hostile_inputs_are_bad_input_never_a_traceback(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 64 + b"\n" + b"\xff" * 100)
    text = tmp_path / "prose.txt"
    text.write_text("hello\nthis is not a log\n")
    long = tmp_path / "long.txt"
    long.write_bytes(b"10: malloc 0x10 " + b"9" * 300_000 + b"\n10: free 0x10\n")
    for fmt, src, where in (("valgrind", text, ":1: no valgrind output here"), ("android", junk, ":1: "),
                            ("mtrace", junk, ":1: "), ("android", long, ":1: malloc takes PTR SIZE")):
        res = invoke("import", fmt, src, "-o", tmp_path / "x.trace")
        assert res.exit_code == EXIT_BAD_INPUT, (fmt, res.output)
        assert where in res.output and "Traceback" not in res.output
        assert len(res.output) < 400  # one line, input shown shortened
