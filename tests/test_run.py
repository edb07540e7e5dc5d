"""`hakmem-forensics run`: the program's own output untouched, how it ended, what the log says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import forensics
from forensics.cli import app
from forensics.errors import EXIT_BAD_INPUT

REPO_ROOT = Path(forensics.__file__).resolve().parent.parent
PY = sys.executable


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAKMEM_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def hf_run(args: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "forensics", "run", *args], env=_env(env), input=stdin, capture_output=True,
                          timeout=timeout)


def traced(tmp_path: Path, cmd: list[str], *opts: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "run.json"
    res = hf_run(["-q", "--json", str(out), *opts, "--", *cmd], env=env)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    return res, json.loads(out.read_text())


# Binary bytes, no final newline, interleaved stdout/stderr writes, and stdin echoed back.
NOISY = r'''
import os, sys
data = sys.stdin.buffer.read()
for i in range(200):
    os.write(1, bytes([i % 256]) * (i % 7) + b"\0\xff")
    os.write(2, f"err {i}\n".encode() if i % 3 else b"\x1b[31mred\x1b[0m")
os.write(1, data[::-1])
os.write(1, b"no newline at the end")
'''


def test_stdout_and_stderr_byte_for_byte(tmp_path):
    stdin = bytes(range(256)) * 50
    plain = subprocess.run([PY, "-c", NOISY], input=stdin, capture_output=True, env=_env())
    out = tmp_path / "run.json"
    res = hf_run(["-q", "--json", str(out), "--", PY, "-c", NOISY], stdin=stdin)
    assert res.returncode == 0
    assert res.stdout == plain.stdout and len(plain.stdout) > 12_000
    assert res.stderr == plain.stderr
    doc = json.loads(out.read_text())
    # the allocator's lines went to the log, none of them to the program's stderr
    assert doc["route_lines"] > 100 and b"[hakmem" not in res.stderr


def test_report_goes_to_stderr_after_the_programs_own(tmp_path):
    plain = subprocess.run([PY, "-c", NOISY], input=b"abc", capture_output=True, env=_env())
    res = hf_run(["--", PY, "-c", NOISY], stdin=b"abc", env={"COLUMNS": "120"})
    assert res.returncode == 0
    assert res.stdout == plain.stdout
    assert res.stderr.startswith(plain.stderr)
    report = res.stderr[len(plain.stderr):].decode()
    assert "Ended" in report and "exit status 0" in report
    assert re.search(r"Frees\s+[\d,]+ route lines = [\d,]+ frees counted by the allocator", report), report


def test_exit_status_is_reported_not_propagated(tmp_path):
    res, doc = traced(tmp_path, [PY, "-c", "import sys; print('x'); sys.exit(7)"])
    assert res.stdout == b"x\n"
    assert doc["exit_status"] == 7 and doc["exit_signal"] is None and doc["crash"] is None


def test_program_crash_outside_the_allocator(tmp_path):
    res, doc = traced(tmp_path, [PY, "-c", "import ctypes; print('before', flush=True); ctypes.string_at(0)"])
    assert res.stdout == b"before\n"
    assert doc["exit_signal"] == "SIGSEGV" and doc["exit_status"] is None
    crash = doc["crash"]
    assert crash["source"] == "handler" and crash["signal"] == "SIGSEGV"
    assert crash["stage"] == "idle"  # not inside the allocator
    assert doc["main"]["crash_total"] == 1


def test_the_seeds_segv_in_a_real_program(tmp_path):
    """Registry capacity 1, no probe: the first free of a block at the start of an unregistered
    SuperSlab reads ptr - 32 in the unmapped hole below it (the seed's SEGV, in python)."""
    res, doc = traced(tmp_path, [PY, "-c", "x = [str(i) * 3 for i in range(100000)]; print(len(x))"],
                      "--probe", "off", "--knob", "HAKMEM_SS_REG_CAPACITY=1", env={"PYTHONMALLOC": "malloc"})
    assert doc["exit_signal"] == "SIGSEGV"
    crash = doc["crash"]
    assert crash["source"] == "handler" and crash["stage"] == "magic_read"
    assert crash["fault"] == crash["ptr"] - 32
    (line,) = doc["main"]["crashes"]
    # the registry history of the crashing pointer's region names the cause
    assert any(h["op"] == "capacity_error" and h["base"] == crash["ptr"] & ~0xFFFFF for h in line["history"]), line
    assert doc["frees_seen_by_allocator"] is None  # died: no STATS line
    assert res.stdout == b""


def test_the_seeds_fix_in_ldpreload_mode_hands_the_block_to_libc(tmp_path):
    """Same escape with the safe probe: unmapped_header_fallback, and in LD_PRELOAD mode the seed
    sends the Tiny block to __libc_free, which dies on it in the libc_free stage."""
    res, doc = traced(tmp_path, [PY, "-c", "x = [str(i) * 3 for i in range(100000)]; print(len(x))"],
                      "--probe", "safe", "--knob", "HAKMEM_SS_REG_CAPACITY=1", env={"PYTHONMALLOC": "malloc"})
    main = doc["main"]
    assert main["routes"].get("unmapped_header_fallback", 0) >= 1
    assert main["lifecycle"]["tiny"]["unmapped_header_fallback"] >= 1
    esc = main["escapes"][0]
    assert esc["path"] == "tiny" and esc["first_route"] == "unmapped_header_fallback"
    assert any(h["op"] == "capacity_error" for h in esc["history"])
    assert main["verdicts"]["misrouted"] >= 1  # a tiny block freed by libc_free_ptr
    assert doc["exit_signal"] in ("SIGSEGV", "SIGABRT")
    assert doc["crash"]["stage"] == "libc_free"


def test_libc_pointer_freed_through_hakmem_is_an_invalid_magic(tmp_path):
    prog = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.__libc_malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "p = libc.__libc_malloc(64)\n"
        "ctypes.memset(p, 0, 64)\n"
        "print(hex(p), flush=True)\n"
        "libc.free(p)\n"
        "sys.stderr.write('still alive\\n')\n"
    )
    res, doc = traced(tmp_path, [PY, "-c", prog])
    assert res.stderr == b"still alive\n"  # the seed's ERROR/WARNING lines went to the log
    ptr = int(res.stdout.split()[0], 16)
    main = doc["main"]
    assert main["invalid_magic_total"] == 1
    ev = main["invalid_magic"][0]
    assert ev["ptr"] == ptr and ev["route"] == "invalid_magic_skip" and ev["magic"] == 0
    assert ev["path"] is None  # never allocated by hakmem-ref
    assert main["skip_warnings"] == [ptr]
    assert main["messages"]["error_invalid_magic"] == 1
    assert doc["routes_consistent"] is True and doc["exit_status"] == 0


def test_log_is_kept_and_routes_reads_it_the_same(tmp_path):
    log = tmp_path / "prog.log"
    res, doc = traced(tmp_path, [PY, "-c", "import json; print(json.dumps(list(range(1000)))[:20])"], "--log", str(log))
    assert doc["log"] == str(log) and log.exists()
    out = tmp_path / "routes.json"
    r = subprocess.run([PY, "-m", "forensics", "routes", str(log), "--json", str(out)], env=_env(), capture_output=True)
    assert r.returncode == 0, r.stderr
    again = json.loads(out.read_text())
    assert again["routes"] == doc["main"]["routes"]
    assert again["frees_seen_by_allocator"] == doc["frees_seen_by_allocator"]
    assert not list(tmp_path.glob(".hakmem-run-*"))  # the temporary directory is gone


def test_forked_children_get_their_own_log(tmp_path):
    prog = (
        "import os\n"
        "kids = []\n"
        "for i in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        x = [bytes(i * 100 + j) for j in range(500)]\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "for k in kids: os.waitpid(k, 0)\n"
        "print('parent done')\n"
    )
    res, doc = traced(tmp_path, [PY, "-c", prog], "--log", str(tmp_path / "fork.log"))
    assert res.stdout == b"parent done\n"
    assert len(doc["child_logs"]) == 3 and all(Path(p).exists() for p in doc["child_logs"])
    kids = doc["children"]
    assert kids["processes_total"] == 3
    assert {p["start"] for p in kids["processes"]} == {"fork"}
    assert all(p["ppid"] == doc["pid"] for p in kids["processes"])
    # a forked child continues its parent's free count: its first route line follows its base
    for p in kids["processes"]:
        assert p["first_seq"] is None or p["first_seq"] == p["free_seq_base"] + 1
    assert doc["routes_consistent"] is True


def test_timeout_kills_and_reports_a_hang(tmp_path):
    t0 = time.monotonic()
    res, doc = traced(tmp_path, [PY, "-c", "import time; time.sleep(30)"], "--timeout", "1")
    assert time.monotonic() - t0 < 20
    assert doc["hang"] is True and doc["exit_signal"] == "SIGKILL"


def test_command_not_found_is_bad_input():
    res = hf_run(["--", "/nonexistent/program-xyz"])
    assert res.returncode == EXIT_BAD_INPUT
    assert b"command not found" in res.stderr


def test_missing_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2


def test_bad_knob_is_bad_input():
    result = CliRunner().invoke(app, ["run", "--knob", "NOT_A_KNOB=1", "--", "true"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    result = CliRunner().invoke(app, ["run", "--knob", "HAKMEM_TRACE_FILE=/tmp/x", "--", "true"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output


def test_options_after_the_command_belong_to_the_program(tmp_path):
    res, doc = traced(tmp_path, [PY, "-c", "import sys; print(sys.argv[1:])", "--json", "-q"])
    assert res.stdout == b"['--json', '-q']\n"
    assert doc["command"][-2:] == ["--json", "-q"]
