"""`hakmem-forensics import android`: the real surfaceflinger recording, crafted bad frees, timestamps."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from capture_helpers import ANDROID, invoke
from forensics.errors import EXIT_BAD_INPUT
from forensics.importers import ImportFormatError, import_file
from forensics.replay import ReplayConfig, run_replay
from forensics.trace import read_header

SURFACEFLINGER = ANDROID / "surfaceflinger.zip"
TEST_TXT = ANDROID / "test.txt"
# Facts about surfaceflinger.txt (counted with awk): lines by op and by tid.
SF_LINES = 2_455_240
SF_OPS = {"malloc": 1_142_990, "calloc": 44_229, "realloc": 73_781, "free": 1_194_239, "thread_end": 1}
SF_THREADS = {186: 2_099_280, 277: 49_966, 278: 38_248, 279: 52_183, 347: 624, 348: 17_571, 349: 51_599, 350: 3_681,
              351: 23_692, 352: 2, 376: 7, 520: 51_072, 1652: 46_761, 4797: 2_922, 7331: 17_632}
SF_PREFIX = 200_000
# An import that kept every line in memory would need several times this (the text is 59 MB).
RSS_BOUND_KIB = 160 * 1024

needs_data = pytest.mark.skipif(not SURFACEFLINGER.exists(), reason="../shared/data/android is not there")


def _event_lines(trace: Path) -> list[str]:
    return [ln for ln in trace.read_text().splitlines() if not ln.startswith("#")]


@needs_data
def test_the_projects_own_sample(tmp_path):
    trace = tmp_path / "t.trace"
    (out,) = import_file("android", TEST_TXT, trace).outputs
    assert _event_lines(trace) == ["98765 memalign 1 16 124", "98765 free 1"]
    assert out.thread_counts == {98765: 2}


CRAFTED = """\
10: malloc 0x1000 64
10: free 0x1010
10: free 0x1000
10: malloc 0x1000 32
10: free 0x1000
10: free 0x1000
11: free 0xdead0
11: calloc 0x2000 2 16 100 250
11: realloc 0x3000 0x2000 100 300 400 7
11: realloc 0x0 0x3000 0
11: realloc 0x4000 0x0 10
11: memalign 0x5000 16 100

11: free 0x4000 500 600 10
11: free 0x5000
11: free 0x0
11: thread_done 0x0 700
"""


def test_addresses_become_objects_and_bad_frees_forensic_ops(tmp_path):
    src = tmp_path / "crafted.txt"
    src.write_text(CRAFTED)
    trace = tmp_path / "c.trace"
    result = import_file("android", src, trace)
    assert _event_lines(trace) == [
        "10 malloc 1 64",
        "10 free_interior 1 16",  # 0x1010 is 16 bytes into the live block at 0x1000
        "10 free 1",
        "10 malloc 1 32",  # the address again: a new object (id 1 is free to be reused)
        "10 free 1",
        "10 double_free 1",  # the block at 0x1000 was just freed
        "11 free_raw 0xdead0",  # nobody allocated it
        "11 calloc 2 2 16",
        "11 realloc 3 2 100",
        "11 realloc 0 3 0",
        "11 realloc 4 0 10",
        "11 memalign 5 16 100",
        "11 free 4",
        "11 free 5",
        "11 free 0",
        "11 thread_end",
    ]
    (out,) = result.outputs
    assert [(f.kind, f.event_index, f.where) for f in out.findings] == [
        ("free_interior", 1, 2), ("double_free", 5, 6), ("free_raw", 6, 7)]
    # the optional timestamps: time in the allocator per op; present-bytes accepted
    assert result.timing == {"calloc": (1, 150), "realloc": (1, 100), "free": (1, 100)}
    assert out.thread_counts == {10: 6, 11: 10}
    # the replay reproduces them: each forensic op is an anomaly of the replay (what hakmem-ref
    # then does with the block is its own story: its interior free takes the block with it)
    replay = run_replay(trace, ReplayConfig(probe="safe", timeout=60))
    assert replay.completed and replay.events_done == 16
    assert {1, 5, 6} <= {a.index for a in replay.anomalies}
    assert {a.index: a.op for a in replay.anomalies if a.index in (1, 5, 6)} == {
        1: "free_interior", 5: "double_free", 6: "free_raw"}


@pytest.mark.parametrize(
    "line, reason",
    [
        ("10 malloc 0x10 5", "expected 'TID: OP PTR ...'"),
        ("10: mallok 0x10 5", "unknown op 'mallok'"),
        ("10: malloc 0x10", "malloc takes PTR SIZE"),
        ("10: malloc 0xZZ 5", "bad number"),
        ("10: calloc 0x10 1 2 3", "calloc takes PTR NMEMB SIZE"),
        ("10: free 0x10 5 x", "bad timestamp"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, reason):
    src = tmp_path / "bad.txt"
    src.write_text(f"10: malloc 0x20 8\n{line}\n")
    with pytest.raises(ImportFormatError) as info:
        import_file("android", src, tmp_path / "bad.trace")
    assert info.value.line == 2 and reason in info.value.reason
    assert str(info.value).startswith(f"{src}:2: ")
    assert not (tmp_path / "bad.trace").exists()


def test_zipped_logs_and_lenient_mode(tmp_path):
    src = tmp_path / "log.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("rec.txt", "5: malloc 0x10 8\n5: frobnicate 0x10\n5: free 0x10\n")
    res = invoke("import", "android", src, "-o", tmp_path / "z.trace")
    assert res.exit_code == EXIT_BAD_INPUT and f"{src}[rec.txt]:2: unknown op" in res.output
    res = invoke("import", "android", src, "-o", tmp_path / "z.trace", "--lenient", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["malformed"] == 1 and doc["outputs"][0]["ops"] == {"malloc": 1, "free": 1}
    header = read_header(tmp_path / "z.trace")
    assert header.get_meta("source") == "android" and header.get_meta("member") == "rec.txt"


@needs_data
def test_surfaceflinger_imports_whole_in_bounded_memory(tmp_path):
    trace = tmp_path / "sf.htb"
    code = (
        "import json, resource, sys\n"
        "from forensics.importers import import_file\n"
        "r = import_file('android', sys.argv[1], sys.argv[2])\n"
        "o = r.outputs[0]\n"
        "print(json.dumps({'lines': r.lines, 'ops': o.op_counts, 'threads': o.thread_counts, 'objects': o.objects,\n"
        "                  'findings': o.finding_count, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code, str(SURFACEFLINGER), str(trace)], capture_output=True,
                          text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["lines"] == SF_LINES
    assert doc["ops"] == SF_OPS
    assert {int(k): v for k, v in doc["threads"].items()} == SF_THREADS
    assert doc["findings"] == 0  # every free of the recording is of a live block
    assert doc["objects"] < 300_000  # ids are recycled: near the peak live set, not 1.2M allocations
    assert doc["rss"] < RSS_BOUND_KIB, f"peak RSS {doc['rss']} KiB"
    header = read_header(trace)
    assert header.get_meta("source") == "android" and header.get_meta("member") == "surfaceflinger.txt"


@needs_data
def test_surfaceflinger_replays_on_hakmem_with_the_safe_probe(tmp_path):
    # A prefix here (the whole file replays in scripts/bench_import.py): counts per op and per
    # thread from the CLI, then the replay on hakmem-ref and on libc.
    trace = tmp_path / "sf.htb"
    res = invoke("import", "android", SURFACEFLINGER, "-o", trace, "--max-lines", SF_PREFIX, "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    (out,) = doc["outputs"]
    assert doc["lines"] == SF_PREFIX and out["events"] == SF_PREFIX
    assert sum(out["ops"].values()) == SF_PREFIX and sum(out["per_thread"].values()) == SF_PREFIX
    hak = run_replay(trace, ReplayConfig(probe="safe", timeout=120))
    assert hak.completed and hak.events_done == SF_PREFIX
    assert hak.crash is None and hak.outcomes == {"correct": hak.frees}
    assert hak.threads_used > 1
    libc = run_replay(trace, ReplayConfig(libc=True, timeout=120))
    assert libc.completed and libc.outcomes == {"correct": libc.frees}
