"""Real programs on hakmem-ref (libhakmem_preload.so): the same bytes out as on glibc, every free traced.

Each program runs twice: plainly, and under `hakmem-forensics run` (LD_PRELOAD, route,
registry and allocation tracing on). stdout, stderr and the exit status must be identical,
the program's log must hold one route line per free the allocator counted, and no free may
be misrouted.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import forensics
from forensics import preload

REPO_ROOT = Path(forensics.__file__).resolve().parent.parent

PROGRAM = r'''
import hashlib, json, sqlite3, sys, threading

N = int(sys.argv[1])

def work(i, out):
    data = [{"id": j, "name": "x" * (j % 700), "blob": bytes(j % 5000)} for j in range(N)]
    big = [bytearray(200000 + i * 1000) for _ in range(4)] + [bytearray(3 << 20)]   # L25 and mmap sizes
    text = json.dumps([{"id": d["id"], "name": d["name"], "n": len(d["blob"])} for d in data])
    back = json.loads(text)
    out[i] = hashlib.sha256(text.encode() + bytes(len(b) % 251 for b in big)).hexdigest() + f" {len(back)}"

out = {}
threads = [threading.Thread(target=work, args=(i, out)) for i in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
db = sqlite3.connect(":memory:")
db.execute("create table t (k integer primary key, v text, w blob)")
db.executemany("insert into t values (?, ?, ?)", [(i, "v" * (i % 3000), bytes(i % 40000)) for i in range(4 * N)])
db.execute("create index iv on t (v)")
print(db.execute("select count(*), sum(length(v)), sum(length(w)) from t").fetchone())
for i in sorted(out):
    print(i, out[i])
print(json.dumps({"ok": True, "threads": len(out)}, sort_keys=True))
sys.stderr.write("done on stderr\n")
sys.exit(3)
'''


def _forensics_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAKMEM_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_both(cmd: list[str], tmp: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None,
             stdin: bytes | None = None, run_cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, dict]:
    """(plain run, run under hakmem-forensics run, run's JSON)."""
    full_env = _forensics_env(env)
    plain = subprocess.run(cmd, env=full_env, cwd=cwd, input=stdin, capture_output=True, timeout=120)
    out = tmp / f"run-{random.getrandbits(32):08x}.json"
    traced = subprocess.run(
        [sys.executable, "-m", "forensics", "run", "-q", "--json", str(out), "--", *cmd],
        env=full_env, cwd=run_cwd or cwd, input=stdin, capture_output=True, timeout=180,
    )
    assert traced.returncode == 0, traced.stderr.decode(errors="replace")[-3000:]
    return plain, traced, json.loads(out.read_text())


def assert_same(plain: subprocess.CompletedProcess, traced: subprocess.CompletedProcess, doc: dict) -> None:
    assert traced.stdout == plain.stdout
    assert traced.stderr == plain.stderr
    assert doc["exit_status"] == plain.returncode
    assert doc["exit_signal"] is None


def assert_all_traced(doc: dict, *, min_frees: int = 1) -> None:
    """Every free the allocator counted has its route line, and none was misrouted."""
    main = doc["main"]
    assert doc["routes_consistent"] is True, main["processes"]
    assert doc["frees_seen_by_allocator"] == doc["route_lines_at_stats"] >= min_frees
    assert sum(main["routes"].values()) == doc["route_lines"]
    for part in (main, doc["children"]):
        if part is None:
            continue
        assert part["verdicts"]["misrouted"] == 0
        assert part["verdicts"]["leaked"] == 0
        assert part["invalid_magic_total"] == 0
        assert part["malformed"] == []
        assert part["crash_total"] == 0
        assert part["errors"] == []


def test_bundled_preload_library_exports_only_the_malloc_family():
    lib = preload.find_preload()
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("no nm")
    names = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    assert {"malloc", "free", "calloc", "realloc", "memalign", "posix_memalign", "aligned_alloc", "valloc", "pvalloc",
            "malloc_usable_size"} <= names
    assert not any(n.startswith("hak_") for n in names), sorted(n for n in names if n.startswith("hak_"))


@pytest.mark.parametrize("pymalloc", ["pymalloc", "malloc"])
def test_python_threads_json_sqlite(tmp_path, pymalloc):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    # every Python object through malloc makes a long log: a smaller workload keeps the test quick
    n = 300 if pymalloc == "malloc" else 1500
    plain, traced, doc = run_both([sys.executable, str(script), str(n)], tmp_path, env={"PYTHONMALLOC": pymalloc})
    assert plain.returncode == 3 and f"({4 * n},".encode() in plain.stdout
    assert_same(plain, traced, doc)
    assert_all_traced(doc, min_frees=10_000)
    main = doc["main"]
    # the workload reaches every hakmem-ref path, and the trace says what each block was
    assert {"tiny", "mid", "l25", "mmap"} <= set(main["alloc_paths"])
    assert main["lifecycle"]["mid"].get("mid_hit", 0) > 0 and main["lifecycle"]["l25"].get("l25_hit", 0) > 0
    assert main["verdicts"]["correct"] > 10_000
    # six worker threads freed: more than one thread id in the route lines is not checked here,
    # but every process image the log shows is the python process itself
    assert all(p["pid"] == doc["pid"] for p in main["processes"])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("data") / "data.txt"
    with open(path, "w") as fh:
        for _ in range(250_000):
            fh.write(f"{rng.getrandbits(32):08x} {'w' * rng.randint(0, 20)} {rng.random()}\n")
    assert path.stat().st_size > 4_000_000
    return path


@pytest.mark.skipif(shutil.which("sort") is None, reason="needs sort")
@pytest.mark.parametrize("args", [[], ["-S", "1M", "--parallel=4", "-k2,2", "-s"]], ids=["plain", "threads-tmpfiles"])
def test_sort(tmp_path, data_file, args):
    plain, traced, doc = run_both(["sort", *args, str(data_file)], tmp_path, env={"LC_ALL": "C", "TMPDIR": str(tmp_path)})
    assert plain.returncode == 0 and len(plain.stdout) == data_file.stat().st_size
    assert_same(plain, traced, doc)
    assert_all_traced(doc)


@pytest.mark.skipif(shutil.which("gzip") is None or shutil.which("gunzip") is None, reason="needs gzip")
def test_gzip_gunzip_round_trip(tmp_path, data_file):
    plain, traced, doc = run_both(["gzip", "-c", str(data_file)], tmp_path)
    assert_same(plain, traced, doc)
    assert gzip.decompress(traced.stdout) == data_file.read_bytes()
    packed = tmp_path / "data.gz"
    packed.write_bytes(traced.stdout)
    plain2, traced2, doc2 = run_both(["gunzip", "-c", str(packed)], tmp_path)
    assert_same(plain2, traced2, doc2)
    assert traced2.stdout == data_file.read_bytes()
    assert_all_traced(doc)
    assert_all_traced(doc2)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_init_add_commit(tmp_path):
    env = {
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path),
        "GIT_PAGER": "cat", "LC_ALL": "C",
    }
    repos = {}
    for side in ("plain", "traced"):
        repo = tmp_path / side
        repo.mkdir()
        for i in range(40):
            (repo / f"f{i}.txt").write_text("".join(f"{j} line {i}\n" for j in range(i * 20)))
        repos[side] = repo
    steps = [["git", "init", "-q", "-b", "main", "."], ["git", "add", "."], ["git", "commit", "-q", "-m", "first"],
             ["git", "log", "--stat"], ["git", "status", "--short", "--branch"]]
    for step in steps:
        plain = subprocess.run(step, env=_forensics_env(env), cwd=repos["plain"], capture_output=True, timeout=60)
        out = tmp_path / "run.json"
        traced = subprocess.run([sys.executable, "-m", "forensics", "run", "-q", "--json", str(out), "--", *step],
                                env=_forensics_env(env), cwd=repos["traced"], capture_output=True, timeout=120)
        assert traced.returncode == 0, traced.stderr[-2000:]
        doc = json.loads(out.read_text())
        assert traced.stdout == plain.stdout, step
        assert traced.stderr == plain.stderr, step
        assert doc["exit_status"] == plain.returncode == 0, step
        assert_all_traced(doc)
    head = lambda side: (repos[side] / ".git" / "refs" / "heads" / "main").read_text()  # noqa: E731
    assert head("plain") == head("traced")  # the same commit, byte for byte


@pytest.mark.skipif(shutil.which("ls") is None, reason="needs ls")
def test_ls_recursive(tmp_path):
    stdlib = Path(os.__file__).resolve().parent
    targets = [str(stdlib / d) for d in ("email", "json", "encodings", "concurrent")]
    plain, traced, doc = run_both(["ls", "-lR", *targets], tmp_path, env={"LC_ALL": "C", "TZ": "UTC"})
    assert plain.returncode == 0 and plain.stdout.count(b"\n") > 200
    assert_same(plain, traced, doc)
    assert_all_traced(doc, min_frees=200)
