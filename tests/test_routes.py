"""`hakmem-forensics routes`: hakmem's lines in logs of any size, plain or gzip, and what they add up to."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import forensics
from forensics import abi, routelog
from forensics.cli import app
from forensics.errors import EXIT_BAD_INPUT
from forensics.trace import convert

REPO_ROOT = Path(forensics.__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"  # the checkout's, not the installed package's

SS0, SS1, MID = 0x7F0000000000, 0x7F0000100000, 0x7F0000200020

# One of each kind of line hakmem-ref prints, and the kinds of junk a real stderr log holds.
LOG = (
    b"program output line\n"
    b"[hakmem] PROCESS: pid=100 ppid=1 start=exec free_seq=0 mode=ldpreload probe=safe\n"
    b"[hakmem-reg] seq=1 free_seq=0 tid=7 op=register reg=ss base=0x7f0000000000 addr=0x7f0000000000 live=0\n"
    b"[hakmem-reg] seq=2 free_seq=0 tid=7 op=capacity_error reg=ss base=0x7f0000100000 addr=0x7f0000100000 live=0\n"
    b"[hakmem-alloc] seq=1 free_seq=0 tid=7 ptr=0x7f0000000000 size=16 align=0 path=tiny\n"
    b"[hakmem-alloc] seq=2 free_seq=0 tid=7 ptr=0x7f0000100000 size=16 align=0 path=tiny\n"
    b"[hakmem-alloc] seq=3 free_seq=0 tid=7 ptr=0x7f0000200020 size=3000 align=0 path=mid\n"
    b"[hakmem-route] seq=1 tid=7 ptr=0x7f0000000000 route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-\n"
    b"[hakmem] ERROR: Invalid magic 0x0 (expected 0x48414B4D)\n"
    b"[hakmem] reqtrace for 0x7f0000100000 (region 0x7f0000100000):\n"
    b"[hakmem-reg] seq=2 free_seq=0 tid=7 op=capacity_error reg=ss base=0x7f0000100000 addr=0x7f0000100000 live=0\n"
    b"[hakmem] WARNING: Skipping free of invalid pointer 0x7f0000100000 (may leak memory)\n"
    b"[hakmem-route] seq=2 tid=7 ptr=0x7f0000100000 route=invalid_magic_skip action=none tried=ss,mid,l25,probe,magic "
    b"hit=probe probe=readable magic=0x0 method=-\n"
    b"[hakmem-route] seq=3 tid=8 ptr=0x7f0000200020 route=mid_hit action=pool_free tried=ss,mid hit=mid probe=- magic=- method=-\n"
    b"[hakmem-route] seq=4 tid=8 ptr=0x7f0000200020 route=mid_hit action=pool_free tried=ss,mid hit=mid probe=- magic=- method=-\n"
    b"[hakmem] ERROR: Unknown allocation method: 99\n"
    b"[hakmem-route] seq=5 tid=7 ptr=0x7f0000300020 route=unknown_method action=none tried=ss,mid,l25,probe,magic,method "
    b"hit=probe,magic probe=readable magic=0x48414B4D method=99\n"
    b"[hakmem-route] seq=6 tid=7 ptr=0x0 route=null action=none tried=- hit=- probe=- magic=- method=-\n"
    b"[hakmem-route] seq=abc tid=7 ptr=0x1 route=ss_hit\n"
    b"[hakmem] WARNING: ignoring HAKMEM_HEADER_PROBE: 'nope' is not one of off, safe\n"
    b"\x00\xff\xfe binary junk \x00\n"
    b"[hakmem-alloc] seq=4 free_seq=6 tid=7 ptr=0x7f0000000000 size=8 align=0 path=tiny\n"
    b"partial program output[hakmem-route] seq=7 tid=7 ptr=0x7f0000000000 route=ss_hit action=tiny_free tried=ss "
    b"hit=ss probe=- magic=- method=-\n"
    b"[hakmem-alloc] seq=5 free_seq=7 tid=7 ptr=0x7f0000000000 size=8 align=0 path=tiny\n"
    b"[hakmem-route] seq=8 tid=7 ptr=0x7f0000000000 route=mmap_munmap action=munmap tried=ss hit=- probe=- magic=- method=-\r\n"
    b"[hakmem] STATS: pid=100 allocs=5 frees=8\n"
    + b"x" * 70000 + b"\n"
    b"[hakmem] CRASH: SIGSEGV fault=0x7f00003fffe0 ptr=0x7f0000400000 stage=magic_read event=- free_seq=9\n"
    b"[hakmem-route] seq=9 tid=7 ptr=0x7f00"
)
LOG_LINES = LOG.count(b"\n") + 1


def check_log_result(r, name: str) -> None:
    (f,) = r.files
    assert f.lines == LOG_LINES
    assert f.route_lines == 8 and f.alloc_lines == 5
    assert f.reg_lines == 3  # two live, one in the allocator's dump
    assert f.other_lines == 2 and f.binary_lines == 1  # "program output line" and the junk
    assert f.malformed_lines == 2  # seq=abc, and the truncated last line
    assert f.overlong_lines == 1 and f.truncated_last_line
    assert r.routes == {"ss_hit": 2, "mid_hit": 2, "invalid_magic_skip": 1, "unknown_method": 1, "null": 1,
                        "mmap_munmap": 1}
    assert r.alloc_paths == {"tiny": 4, "mid": 1}
    assert r.lifecycle["tiny"] == {"ss_hit": 2, "invalid_magic_skip": 1, "mmap_munmap": 1}
    assert r.lifecycle["mid"] == {"mid_hit": 2}
    assert r.verdicts == {"correct": 5, "misrouted": 1, "leaked": 1, "invalid_magic": 1, "unjudged": 0}
    assert r.double_frees == 1  # the second mid_hit of the same block
    # the invalid magic: the route line's pointer, the allocator's own dump, the log's history
    (ev,) = r.invalid_magic
    assert (ev.seq, ev.ptr, ev.magic, ev.route, ev.path) == (2, SS1, 0, "invalid_magic_skip", "tiny")
    assert [(d.seq, d.op) for d in ev.dump] == [(2, "capacity_error")]
    assert [(h.seq, h.op, h.base) for h in ev.history] == [(2, "capacity_error", SS1)]
    assert r.skip_warnings == [SS1]
    (um,) = r.unknown_methods
    assert (um.seq, um.ptr, um.method) == (5, 0x7F0000300020, 99)
    # the escaped Tiny block's region, with the registry change that explains it
    esc = {e.base: e for e in r.escapes}
    assert esc[SS1].path == "tiny" and esc[SS1].first_route == "invalid_magic_skip"
    assert [h.op for h in esc[SS1].history] == ["capacity_error"]
    (crash,) = r.crashes
    assert (crash.signal, crash.fault, crash.ptr, crash.stage, crash.free_seq) == (
        "SIGSEGV", 0x7F00003FFFE0, 0x7F0000400000, "magic_read", 9)
    (img,) = r.processes
    assert (img.pid, img.start, img.stats_frees, img.route_lines_at_stats, img.consistent) == (100, "exec", 8, 8, True)
    assert r.knob_warnings and "HAKMEM_HEADER_PROBE" in r.knob_warnings[0]
    assert r.registry_ops == {"ss": {"register": 1, "capacity_error": 1}}
    kinds = {p.ptr: p.anomalies for p in r.anomalous_pointers}
    assert kinds[SS1] == ["invalid_magic", "escaped"]
    assert kinds[MID] == ["double_free"]
    assert "misrouted" in kinds[SS0]  # a tiny block freed by munmap
    assert r.malformed[0].file == name and r.malformed[0].line == LOG.split(b"\n").index(
        b"[hakmem-route] seq=abc tid=7 ptr=0x1 route=ss_hit") + 1


def test_every_kind_of_line(tmp_path):
    path = tmp_path / "h.log"
    path.write_bytes(LOG)
    check_log_result(routelog.analyze([path]), str(path))


def test_gzip_is_sniffed_and_reads_the_same(tmp_path):
    path = tmp_path / "h.log.anything"
    path.write_bytes(gzip.compress(LOG))
    r = routelog.analyze([path])
    assert r.files[0].compressed
    check_log_result(r, str(path))


def test_same_result_whatever_the_chunk_boundaries(tmp_path, monkeypatch):
    path = tmp_path / "h.log"
    path.write_bytes(LOG)
    for chunk in (1, 7, 100, 4096):
        monkeypatch.setattr(routelog, "CHUNK", chunk)
        check_log_result(routelog.analyze([path]), str(path))


def test_damaged_gzip_is_reported_with_what_came_before(tmp_path):
    body = b"".join(
        b"[hakmem-route] seq=%d tid=1 ptr=0x%x route=ss_hit action=tiny_free tried=ss hit=ss probe=- magic=- method=-\n"
        % (i + 1, 0x7F0000000000 + 16 * i) for i in range(200_000)
    )
    packed = gzip.compress(body, compresslevel=1)
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    r = routelog.analyze([cut])
    assert r.files[0].error and "truncated gzip stream" in r.files[0].error
    assert 0 < r.routes["ss_hit"] < 200_000
    flipped = bytearray(packed)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 64):
        flipped[i] ^= 0x5A
    bad = tmp_path / "bad.log.gz"
    bad.write_bytes(bytes(flipped))
    r = routelog.analyze([bad])
    assert r.files[0].error and "gzip" in r.files[0].error
    # the CLI prints the report of what it read, then exits with the bad-input status
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["routes", str(cut), "--json", str(out)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    doc = json.loads(out.read_text())
    assert doc["errors"] and doc["routes"]["ss_hit"] > 0


def test_garbage_only_log_is_counted_not_a_traceback(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(os.urandom(300_000) + b"\n[hakmem-route] \xff\xfe\n[hakmem] CRASH: garbage\n")
    result = CliRunner().invoke(app, ["routes", str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    f = doc["files"][0]
    assert f["malformed_lines"] == 2 and f["other_lines"] + f["overlong_lines"] + f["malformed_lines"] >= 2
    assert doc["routes"] == {}


def test_missing_log_is_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["routes", str(tmp_path / "nope.log")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "cannot read log" in result.output


USER_FORMAT = textwrap.dedent("""\
    myalloc: free #1 route=ss_hit p=7f0000001000 t=3
    myalloc: free #2 route=header_fallback p=7f0000002000 t=3
    myalloc: free #3 route=ss_hit p=7f0000003000 t=4
    something else
""").encode()
USER_PATTERN = r"myalloc: free #(?P<seq>\d+) route=(?P<route>\w+) p=(?P<ptr>[0-9a-f]+) t=(?P<tid>\d+)"


def test_pattern_reads_a_users_own_format(tmp_path):
    path = tmp_path / "user.log"
    path.write_bytes(USER_FORMAT + LOG)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["routes", str(path), "--pattern", USER_PATTERN, "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["files"][0]["pattern_lines"] == 3
    assert doc["routes"]["ss_hit"] == 2 + 2 and doc["routes"]["header_fallback"] == 1
    assert doc["files"][0]["other_lines"] == 3  # "something else" + the two of LOG
    assert doc["pattern"] == USER_PATTERN


@pytest.mark.parametrize("pattern, words", [(r"route=(?P<route>\w+)", "ptr"), (r"(?P<route>[", "not a regular expression")])
def test_bad_pattern_is_bad_input(tmp_path, pattern, words):
    path = tmp_path / "user.log"
    path.write_bytes(USER_FORMAT)
    result = CliRunner().invoke(app, ["routes", str(path), "--pattern", pattern])
    assert result.exit_code == EXIT_BAD_INPUT
    assert words in result.output


def test_json_to_stdout_and_schema(tmp_path):
    path = tmp_path / "h.log"
    path.write_bytes(LOG)
    result = CliRunner().invoke(app, ["routes", str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "hakmem-forensics/routes/1"
    assert doc["frees_seen_by_allocator"] == 8
    assert doc["invalid_magic"][0]["ptr_hex"] == hex(SS1)
    assert doc["timeline"]["slices"][0]["routes"]["ss_hit"] == 2
    assert doc["caps"]["max_pointers"] == routelog.DEFAULT_MAX_POINTERS


def test_terminal_report_names_the_evidence(tmp_path):
    path = tmp_path / "h.log"
    path.write_bytes(LOG)
    result = CliRunner().invoke(app, ["routes", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "invalid_magic_skip" in out and hex(SS1) in out
    assert "capacity_error" in out
    assert "CRASH" in out and "fault = ptr - 32" in out


def test_pointer_cap_bounds_what_is_kept(tmp_path):
    lines = []
    for i in range(5000):
        p = 0x7F0000000000 + 64 * i
        lines.append(b"[hakmem-alloc] seq=%d free_seq=%d tid=1 ptr=0x%x size=32 align=0 path=tiny\n" % (i + 1, i, p))
    for i in range(5000):
        p = 0x7F0000000000 + 64 * i
        lines.append(b"[hakmem-route] seq=%d tid=1 ptr=0x%x route=ss_hit action=tiny_free tried=ss hit=ss probe=- "
                     b"magic=- method=-\n" % (i + 1, p))
    path = tmp_path / "cap.log"
    path.write_bytes(b"".join(lines))
    r = routelog.analyze([path], max_pointers=1000)
    assert r.pointers_evicted == 4000
    # the first 4000 frees lost their allocation to the cap: unjudged, never misjudged
    assert r.verdicts["correct"] == 1000 and r.verdicts["unjudged"] == 4000 and r.verdicts["misrouted"] == 0


# ------------------------------------------------------------------ bounded memory
# getrusage's peak RSS of a process includes what it inherited at fork (Linux keeps the
# high-water mark across exec), and the test process may be big: so a fresh interpreter starts
# the analysis as its own child and reads RUSAGE_CHILDREN, which then only holds the analysis.
ANALYZE = textwrap.dedent("""\
    import sys
    from forensics import routelog
    r = routelog.analyze(sys.argv[1:])
    assert r.num_route_lines() > 0 and not r.get_errors(), r.get_errors()
    print(r.num_lines())
""")
MEASURE = textwrap.dedent("""\
    import resource, subprocess, sys
    out = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, out.stdout.strip())
""")


def _write_log(path: Path, n_allocs: int, gz: bool = False) -> None:
    """Allocations and frees of distinct pointers (every one new to the reader), registry
    lines, an invalid magic every 997 frees, program noise."""
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if gz else (lambda p: open(p, "wb"))
    with opener(path) as fh:
        seq = 0
        batch = []
        for i in range(n_allocs):
            p = 0x7F0000000000 + 48 * i
            batch.append(b"[hakmem-alloc] seq=%d free_seq=%d tid=7 ptr=0x%x size=40 align=0 path=tiny\n" % (i + 1, seq, p))
            if i % 2:
                seq += 1
                q = p - 48
                if seq % 997 == 0:
                    batch.append(b"[hakmem] ERROR: Invalid magic 0x0 (expected 0x48414B4D)\n")
                    batch.append(b"[hakmem-route] seq=%d tid=7 ptr=0x%x route=invalid_magic_skip action=none "
                                 b"tried=ss,mid,l25,probe,magic hit=probe probe=readable magic=0x0 method=-\n" % (seq, q))
                else:
                    batch.append(b"[hakmem-route] seq=%d tid=7 ptr=0x%x route=ss_hit action=tiny_free tried=ss "
                                 b"hit=ss probe=- magic=- method=-\n" % (seq, q))
            if i % 4096 == 0:
                batch.append(b"[hakmem-reg] seq=%d free_seq=%d tid=7 op=register reg=ss base=0x%x addr=0x%x live=0\n"
                             % (i // 4096 + 1, seq, p & ~0xFFFFF, p & ~0xFFFFF))
                batch.append(b"some program output %d\n" % i)
            if len(batch) > 4096:
                fh.write(b"".join(batch))
                batch.clear()
        fh.write(b"".join(batch))


def _peak_rss(paths: list[Path]) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run([sys.executable, "-c", MEASURE, ANALYZE, *map(str, paths)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    rss, lines = res.stdout.split()
    return int(rss), int(lines)


def test_memory_stays_bounded_whatever_the_log_size(tmp_path):
    small, big, big_gz = tmp_path / "small.log", tmp_path / "big.log", tmp_path / "big.log.gz"
    _write_log(small, 70_000)
    _write_log(big, 450_000)
    _write_log(big_gz, 450_000, gz=True)
    assert big.stat().st_size > max(50_000_000, 6 * small.stat().st_size)
    rss_small, lines_small = _peak_rss([small])
    rss_big, lines_big = _peak_rss([big])
    rss_gz, lines_gz = _peak_rss([big_gz])
    assert lines_big == lines_gz > 6 * lines_small
    # Past the pointer cap, six times the log costs next to nothing more; absolute bound too.
    assert rss_big - rss_small < 24, (rss_small, rss_big)
    assert rss_gz - rss_small < 24, (rss_small, rss_gz)
    assert rss_big < 160 and rss_gz < 160, (rss_big, rss_gz)


# ------------------------------------------------------------------ correlation
def _replay_log(tmp_path: Path, fixture: str, *knobs: str) -> tuple[Path, Path, int]:
    htb = tmp_path / (fixture + ".htb")
    convert(FIXTURES / (fixture + ".trace"), htb)
    args = [str(abi.find_replay_exe()), str(htb), "--lib", str(abi.find_allocator())]
    for k in ("HAKMEM_FREE_ROUTE_TRACE=1", "HAKMEM_SUPER_REG_REQTRACE=1", *knobs):
        args += ["--knob", k]
    res = subprocess.run(args, capture_output=True, timeout=60)
    log = tmp_path / (fixture + ".log")
    log.write_bytes(res.stderr)
    return htb, log, res.returncode


def test_trace_join_of_invalid_magics(tmp_path):
    htb, log, rc = _replay_log(tmp_path, "scenario-mixed-libc")
    assert rc == 0
    r = routelog.analyze([log])
    c = routelog.correlate(r, htb)
    assert r.invalid_magic_total >= 1
    assert c.trace_frees == r.num_route_lines()  # the rule: one route line per free of the trace
    for ev in r.invalid_magic:
        j = c.joins[ev.seq]
        assert j.op == "free_libc" and j.alloc_op == "libc_malloc" and j.alloc_index < j.event_index
    assert c.disagreements == 0 and c.note == ""


def test_trace_join_is_checked_against_wild_frees(tmp_path):
    htb, log, rc = _replay_log(tmp_path, "scenario-wild-free", "HAKMEM_HEADER_PROBE=safe")
    assert rc == 0
    r = routelog.analyze([log])
    c = routelog.correlate(r, htb)
    raw = [j for j in c.joins.values() if j.op == "free_raw"]
    assert raw and all(j.agrees for j in raw)
    assert c.checked >= len(raw) and c.disagreements == 0
    # joined against the wrong trace, the same log no longer agrees
    other, _, _ = _replay_log(tmp_path, "scenario-mixed-libc")
    wrong = routelog.correlate(r, other)
    assert wrong.disagreements > 0 or "not the same run" in wrong.note


def test_trace_join_of_the_crash(tmp_path):
    htb, log, rc = _replay_log(tmp_path, "segv-registry-escape")
    assert rc < 0  # the seed's SEGV
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["routes", str(log), "--trace", str(htb), "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    (crash,) = doc["crashes"]
    assert crash["stage"] == "magic_read" and crash["fault"] == crash["ptr"] - 32
    j = crash["trace"]
    assert j["event_index"] == crash["event"] and j["op"] == "free"
    assert j["alloc_op"] == "malloc" and j["alloc_index"] < j["event_index"]
    assert any(h["op"] == "capacity_error" for h in crash["history"]) or doc["registry"]["ops"] == {}
