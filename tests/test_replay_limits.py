"""Nothing lost, nothing unbounded (issue 11): a replay child killed mid-run, Ctrl-C, the memory limit, and
outputs that are written whole or not at all (a full disk leaves the previous file)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import model
from forensics.cli import app
from forensics.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from forensics.replay import ReplayConfig, run_replay
from forensics.saved import open_result, save_result

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
BIG = 64 << 20


@pytest.fixture(scope="module")
def slow_trace(tmp_path_factory) -> Path:
    """4,000 events of about a millisecond each (calloc of 64 MiB, then its free): seconds of replay."""
    path = tmp_path_factory.mktemp("slow") / "slow.trace"
    path.write_text("# hakmem-trace v1\n" + f"1 calloc 1 1 {BIG}\n1 free 1\n" * 2000)
    return path


def _hfreplay_children() -> list[int]:
    """The pids of this process's hfreplay children."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            pids += [int(p) for p in Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return [p for p in pids if b"hfreplay" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_a_child_killed_mid_run_leaves_a_partial_result_with_every_event_before_the_kill(slow_trace, tmp_path):
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= 40 and not killed:
            for pid in _hfreplay_children():
                os.kill(pid, signal.SIGKILL)  # the OOM killer, or a user: no crash record
                killed.append(pid)

    config = ReplayConfig(threads=False)
    r = run_replay(slow_trace, config, progress=progress, keep_events=True)
    assert killed
    assert (r.status, r.exit_signal, r.crash, r.hang) == ("killed", signal.SIGKILL, None, False)
    assert r.partial and not r.completed
    assert 40 <= r.events_done < r.num_events == 4000
    assert r.in_flight == [r.events_done]  # the event it was running: cut off, not crashed
    assert "crashed" not in r.outcomes and r.anomaly_count == 0
    assert r.outcomes["correct"] == r.events_done // 2  # every free before the kill was judged
    # saved, reopened: the events before the kill are there, DONE; the rest never ran
    saved = save_result(r, config, tmp_path / "killed.hfres")
    with open_result(saved) as s:
        assert s.doc["status"] == "killed" and s.doc["partial"] is True and s.doc["in_flight"] == [r.events_done]
        assert all(s.get_event(i).status is model.EventStatus.DONE for i in range(r.events_done))
        assert s.get_event(r.events_done - 1).outcome is model.Outcome.CORRECT or r.events_done % 2 == 1
        assert s.get_event(r.events_done + 1).status is model.EventStatus.PENDING


def test_ctrl_c_reports_and_saves_the_partial_result_then_exits_130(slow_trace, tmp_path):
    out, saved, page = tmp_path / "r.json", tmp_path / "r.hfres", tmp_path / "r.html"
    out.write_text("the previous report\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "forensics", "replay", str(slow_trace), "--serial", "--json", str(out),
                             "--save", str(saved), "--html", str(page)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        child = None
        while child is None and time.monotonic() < deadline:
            for task in os.listdir(f"/proc/{proc.pid}/task"):
                try:
                    kids = Path(f"/proc/{proc.pid}/task/{task}/children").read_text().split()
                except OSError:
                    continue
                child = next((int(k) for k in kids if b"hfreplay" in Path(f"/proc/{k}/cmdline").read_bytes()), None)
            time.sleep(0.02)
        assert child is not None, "the replay child never started"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr.decode()
    assert "Interrupted (Ctrl-C)" in stdout.decode()
    doc = json.loads(out.read_text())
    assert (doc["status"], doc["interrupted"], doc["partial"]) == ("interrupted", True, True)
    assert 0 < doc["events_done"] < doc["events"]
    with open_result(saved) as s:
        assert s.doc["status"] == "interrupted" and s.num_events == 4000
    assert "interrupted" in page.read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_memory_limit_is_reported_where_it_is_reached(tmp_path):
    trace = tmp_path / "grow.trace"
    trace.write_text("# hakmem-trace v1\n" + "".join(f"1 malloc {i} {BIG}\n" for i in range(1, 17)))
    result = runner.invoke(app, ["replay", str(trace), "--max-memory", "256M", "--explain", "0", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    f = doc["memory_limit"]
    assert doc["status"] == "memory_limit" and doc["max_memory"] == 256 << 20 and doc["crash"] is None
    assert f["op"] == "malloc" and f["size"] == BIG and f["limit"] == 256 << 20 and not f["over_limit"]
    assert 1 <= f["event_index"] <= 3  # four 64 MiB blocks (and their headers) do not fit in 256 MiB
    assert doc["events_done"] == 16 and not doc["partial"]  # the replay went on: later allocations got NULL too
    result = runner.invoke(app, ["replay", str(trace), "--max-memory", "256M", "--explain", "0"])
    assert f"Memory limit (256 MiB) reached at event #{f['event_index']}: malloc of 67,108,864 bytes returned NULL" in result.stdout
    result = runner.invoke(app, ["replay", str(trace), "--max-memory", "none", "--explain", "0", "--json", "-"])
    assert json.loads(result.stdout)["memory_limit"] is None
    result = runner.invoke(app, ["replay", str(trace), "--max-memory", "lots"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == "hakmem-forensics: error: --max-memory 'lots': not a size (write it as 8G, 512M, 65536 or none)\n"


def _limited(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_write_that_fails_half_way_leaves_the_previous_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    src = ROOT / "fixtures" / "random-mixed.trace"
    for out in (tmp_path / "t.htb", tmp_path / "t.trace"):
        out.write_bytes(b"the previous version\n")
        proc = subprocess.run([sys.executable, "-m", "forensics", "convert", str(src), str(out)], env=env, capture_output=True,
                              text=True, preexec_fn=_limited(64 << 10), timeout=120)
        assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
        assert proc.stderr == f"hakmem-forensics: error: {out}: cannot write: File too large\n"
        assert out.read_bytes() == b"the previous version\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.htb", "t.trace"]  # no temporary file left behind
    log = tmp_path / "vg.log"
    log.write_bytes(b"".join(b"--1-- malloc(16) = 0x%x\n" % (0x1000 + 32 * i) for i in range(20_000)))
    proc = subprocess.run([sys.executable, "-m", "forensics", "import", "valgrind", str(log), "-o", str(tmp_path / "t.trace")],
                          env=env, capture_output=True, text=True, preexec_fn=_limited(128 << 10), timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr.endswith(": cannot write: File too large\n"), proc.stderr
    assert (tmp_path / "t.trace").read_bytes() == b"the previous version\n"


def test_json_html_and_saved_results_are_written_whole(tmp_path, monkeypatch):
    import zipfile

    trace = ROOT / "fixtures" / "random-mixed.trace"
    out = tmp_path / "r.hfres"
    out.write_bytes(b"previous")

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "writestr", full_disk)
        result = runner.invoke(app, ["replay", str(trace), "--serial", "--explain", "0", "--save", str(out)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"hakmem-forensics: error: {out}: cannot write the saved result: No space left on device\n"
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["r.hfres"]
    # a device is written in place (never renamed over); a full one is a one-line error
    result = runner.invoke(app, ["replay", str(trace), "--serial", "--explain", "0", "--json", "/dev/full"])
    assert result.exit_code == EXIT_BAD_INPUT and result.stderr == "hakmem-forensics: error: /dev/full: cannot write: No space left on device\n"
    result = runner.invoke(app, ["replay", str(trace), "--serial", "--explain", "0", "--json", "/dev/null", "--html", str(tmp_path / "p.html")])
    assert result.exit_code == 0, result.output
    assert Path("/dev/null").exists() and not Path("/dev/null").is_file()  # still the device
    assert (tmp_path / "p.html").stat().st_mode & 0o777 == 0o666 & ~_umask()
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")
    result = runner.invoke(app, ["replay", str(trace), "--serial", "--explain", "0", "--json", str(link)])
    assert result.exit_code == 0 and link.is_symlink() and json.loads((tmp_path / "target.json").read_text())["status"] == "completed"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
