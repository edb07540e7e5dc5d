"""`hakmem-forensics record`: the LD_PRELOAD recorder on real multi-threaded programs, forks and execs."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from capture_helpers import CSRC, compile_c, counts_by_module, invoke, read_const, source_line
from forensics import record, sites
from forensics.errors import BadInputError, EXIT_BAD_INPUT
from forensics.replay import ReplayConfig, run_replay
from forensics.trace import iter_raw, read_header

PROG_SRC = CSRC / "record_prog.c"
OPS = ("malloc", "calloc", "realloc", "memalign", "free")


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    return compile_c(PROG_SRC, tmp_path_factory.mktemp("prog") / "record_prog")


def _expected(prog: Path) -> dict[str, int]:
    return {op: read_const(prog, f"rec_expected_{op}") for op in OPS}


def test_record_counts_every_call_the_program_makes(prog, tmp_path):
    trace = tmp_path / "ok.trace"
    out_json = tmp_path / "rec.json"
    result = invoke("record", "-o", trace, "--json", out_json, "--", prog, "ok")
    assert result.exit_code == 0, result.output
    counts, tids = counts_by_module(trace, prog)
    assert dict(counts) == _expected(prog)
    assert len(tids) == read_const(prog, "rec_threads")  # main + every worker thread
    header = read_header(trace)
    assert header.get_meta("source") == "record"
    assert header.get_meta("ending") == "exited"
    assert header.get_meta("exe") == str(prog)
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "hakmem-forensics/record/1"
    main = doc["outputs"][0]
    assert main["path"] == str(trace) and main["findings"] == []
    assert main["calls"]["malloc_usable_size"] >= read_const(prog, "rec_expected_usable_size")
    # every thread the program started ended (thread_end), and each trace tid has a kernel tid
    assert main["ops"]["thread_end"] >= read_const(prog, "rec_threads") - 1
    assert len([v for k, v in header.meta if k == "thread"]) == main["threads"]


def test_recorded_trace_replays_against_libc(prog, tmp_path):
    trace = tmp_path / "ok.htb"
    rec = record.run_record([str(prog), "ok"], trace, symbolize=False)
    main = rec.outputs[0]
    assert rec.exit_status == 0 and main.path == str(trace)
    # one trace event per call (usable_size is not an event), nothing repaired
    calls = sum(v for k, v in main.calls.items() if k != "malloc_usable_size")
    assert main.events == calls and main.repairs == {}
    result = run_replay(trace, ReplayConfig(libc=True, timeout=60))
    assert result.completed
    assert result.num_events == result.events_done == main.events
    assert result.outcomes == {"correct": result.frees}


def test_python_threads_are_recorded_and_replay(tmp_path):
    code = (
        "import threading\n"
        "def work():\n"
        "    keep = []\n"
        "    for i in range(1500):\n"
        "        keep.append(bytearray(1000 + i % 7))\n"  # beyond pymalloc's 512 bytes: malloc
        "        if len(keep) > 20: keep.pop(0)\n"
        "ts = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in ts]\n"
        "[t.join() for t in ts]\n"
    )
    trace = tmp_path / "py.htb"
    rec = record.run_record([sys.executable, "-c", code], trace, symbolize=False)
    assert rec.exit_status == 0
    main = rec.outputs[0]
    busy = [tid for tid, n in main.thread_counts.items() if n >= 3000]  # 1500 allocations + frees
    assert len(busy) >= 4, main.thread_counts
    # nothing freed that the recorder did not see allocated: the capture is complete
    assert not {"free_raw", "double_free", "free_interior"} & set(main.op_counts), main.findings
    result = run_replay(trace, ReplayConfig(libc=True, timeout=60))
    assert result.completed and result.events_done == main.events
    assert result.threads_used >= 5


def test_fork_and_exec_each_process_image_gets_a_trace(prog, tmp_path):
    trace = tmp_path / "fe.trace"
    rec = record.run_record([str(prog), "forkexec"], trace)
    assert rec.exit_status == 0
    by_counts = {}
    for out in rec.outputs:
        counts, _ = counts_by_module(Path(out.path), prog)
        by_counts[out.path] = (out, counts)
    # the forked child: its mallocs and frees, written although it left with _exit()
    child = [o for o, c in by_counts.values() if c.get("malloc") == read_const(prog, "rec_child_mallocs")]
    assert len(child) == 1 and child[0].pid != rec.outputs[0].pid
    assert Path(child[0].path).name == f"fe.{child[0].pid}.trace"
    assert by_counts[child[0].path][1]["free"] == read_const(prog, "rec_child_frees")
    # it freed a block its parent allocated before the fork: the trace starts with the heap it
    # inherited, so that is an ordinary free, not a free of an unknown address
    assert child[0].inherited >= 1 and child[0].findings == []
    assert "free_raw" not in child[0].op_counts
    assert read_header(Path(child[0].path)).get_meta("inherited_blocks").startswith(f"{child[0].inherited} ")
    # the image the program exec'd records too, under the same pid
    execd = [o for o, c in by_counts.values() if dict(c) == _expected(prog)]
    assert len(execd) == 1 and execd[0].pid == rec.outputs[0].pid


def test_a_crash_keeps_the_calls_before_it_and_the_bad_free_is_symbolized(prog, tmp_path):
    trace = tmp_path / "abort.trace"
    rec = record.run_record([str(prog), "abort"], trace)
    assert rec.exit_signal == signal.SIGABRT  # glibc: free(): invalid pointer
    main = rec.outputs[0]
    assert main.note == "killed by SIGABRT"
    assert main.op_counts.get("free_interior") == 1
    (finding,) = [f for f in main.findings if f.kind == "free_interior"]
    assert finding.offset == read_const(prog, "rec_interior_offset") and finding.block_size == 64
    site = sites.get_sites(read_header(trace))[finding.site]
    assert site.function == "bad_frees"
    assert Path(site.file).name == PROG_SRC.name and site.line == source_line(PROG_SRC, "interior")
    # all the calls of the workload before it are there too
    counts, _ = counts_by_module(trace, prog)
    assert counts["malloc"] == _expected(prog)["malloc"] + 1


def test_record_of_a_missing_program_is_bad_input(tmp_path):
    result = invoke("record", "-o", tmp_path / "x.trace", "--", tmp_path / "no-such-program")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "command not found" in result.output and "Traceback" not in result.output


def test_raw_log_with_a_wrong_magic_is_rejected_with_its_offset(tmp_path):
    bad = tmp_path / "1-0.hfrec"
    bad.write_bytes(b"NOTALOG!" + bytes(5000))
    with pytest.raises(BadInputError, match=r"offset 0: not a recorder log"):
        record.read_raw_log(bad)
    short = tmp_path / "2-0.hfrec"
    short.write_bytes(b"HFRECRD\0" + bytes(100))
    with pytest.raises(BadInputError, match="truncated raw log"):
        record.read_raw_log(short)


def test_output_names_of_other_processes():
    out = Path("/x/run.trace")
    assert record.output_name(out, 42, 0, True) == out
    assert record.output_name(out, 42, 0, False) == Path("/x/run.42.trace")
    assert record.output_name(out, 42, 2, False) == Path("/x/run.42-2.trace")
    assert record.output_name(Path("/x/run"), 7, 0, False) == Path("/x/run.7")


def test_recorded_events_keep_their_call_sites(prog, tmp_path):
    trace = tmp_path / "sites.trace"
    record.run_record([str(prog), "ok"], trace)
    known = sites.get_sites(read_header(trace))
    lines = {(s.function, s.line) for s in known.values() if s.module == str(prog)}
    assert ("worker", source_line(PROG_SRC, "worker_malloc")) in lines
    assert ("workload", source_line(PROG_SRC, "cross_thread_free")) in lines
    # every program event carries a site that the header explains
    assert all(raw[7] in known for raw in iter_raw(trace) if raw[7])
