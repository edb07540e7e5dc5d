"""Hostile input through the real CLI: every case of fixtures/bad/<reader>/ gives its one-line error and exit
status, big and file-system cases made here (10 MB lines, gzip and zip bombs, 10,000 threads, symlinks,
FIFOs, unreadable files) do too, and memory stays bounded (issue 11).

The trace readers' own cases (fixtures/bad/*.trace, *.htb) run through `convert` in test_trace_cli.py.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics.browse import from_log
from forensics.cli import app
from forensics.errors import EXIT_BAD_INPUT

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "fixtures" / "bad"
runner = CliRunner()
PREFIX = "hakmem-forensics: error: "

COMMANDS = {
    "valgrind": lambda f, out: ["import", "valgrind", f, "-o", out],
    "android": lambda f, out: ["import", "android", f, "-o", out],
    "mtrace": lambda f, out: ["import", "mtrace", f, "-o", out],
    "routes": lambda f, out: ["routes", f],
    "tui-log": lambda f, out: ["tui", f],
    "saved": lambda f, out: ["explain", f],
    "replay": lambda f, out: ["replay", f, "--explain", "0"],
}
CASES = sorted(
    (d.name, p.name)
    for d in BAD.iterdir() if d.is_dir()
    for p in d.iterdir() if p.suffix not in (".err", ".ok")
)


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result, expected: str) -> None:
    """Exit status 3, the expected line last on stderr, the only line there, no traceback anywhere."""
    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert lines == [PREFIX + expected], result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


def test_every_reader_has_a_corpus():
    groups = {g for g, _ in CASES}
    assert groups == set(COMMANDS)
    assert len(CASES) >= 50


@pytest.mark.parametrize("group, name", CASES, ids=[f"{g}/{n}" for g, n in CASES])
def test_corpus_case(group, name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rel = f"fixtures/bad/{group}/{name}"
    out = tmp_path / "out.trace"
    err = BAD / group / f"{name}.err"
    if err.exists():
        result = invoke(*COMMANDS[group](rel, out))
        _one_error_line(result, err.read_text().rstrip("\n"))
        if group != "routes":  # routes reports what came before the damage, then fails
            assert result.stdout == ""
        assert not out.exists() and not list(tmp_path.iterdir())  # no output, no temporary file left
    else:
        facts = dict(kv.split("=") for kv in (BAD / group / f"{name}.ok").read_text().split())
        result = invoke("routes", rel, "--json", "-")
        assert result.exit_code == 0, result.output
        entry = json.loads(result.stdout)["files"][0]
        assert {k: str(entry[k]).lower() for k in facts} == facts


# --------------------------------------------------------------------------- big inputs, made once
TEN_MB = 10 << 20
VG_HEAD = b"==42== Memcheck, a memory error detector\n==42== Command: ./prog\n"
ROUTE = (b"[hakmem-route] seq=1 tid=42 ptr=0x7f0000100000 route=ss_hit action=tiny_free tried=ss hit=ss probe=- "
         b"magic=- method=-\n")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("big")
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = d / name
        files[name].write_bytes(data)

    long = b"1" * TEN_MB
    put("long-line.trace", b"# hakmem-trace v1\n1 malloc 1 " + long + b"\n")
    put("long-line.vg.log", VG_HEAD + b"--42-- malloc(" + long + b") = 0x10\n")
    put("long-line.android.txt", b"1000: malloc 0x10 " + long + b"\n")
    put("long-line.mtrace.txt", b"@ " + long + b" + 0x10 0x10\n")
    put("long-line.route.log", b"[hakmem-route] " + b"x" * TEN_MB + b"\n" + ROUTE)
    zeros = bytes(256 << 20)  # the bombs: 256 MiB of NUL bytes, no newline, in ~250 KiB
    put("bomb.log.gz", gzip.compress(zeros, compresslevel=9, mtime=0))
    put("bomb.android.gz", files["bomb.log.gz"].read_bytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("record_allocs.txt", zeros)
    put("bomb.android.zip", buf.getvalue())
    del zeros
    text = [b"# hakmem-trace v1\n"] + [b"%d malloc %d 16\n" % (t, t) for t in range(1, 10_001)]
    text += [b"%d free %d\n" % (t, t) for t in range(1, 10_001)]
    put("threads-10k.trace", b"".join(text))
    put("threads-10k.android.txt", b"".join(b"%d: malloc 0x%x 16\n" % (t, 0x10000 + 32 * t) for t in range(1, 10_001)))
    put("pids-300.vg.log", b"".join(b"--%d-- malloc(16) = 0x1000\n" % p for p in range(1, 301)))
    put("size-2-63.trace", b"# hakmem-trace v1\n1 malloc 1 9223372036854775808\n1 free 1\n")
    return files


def test_ten_megabyte_lines(big):
    _one_error_line(invoke("convert", big["long-line.trace"], big["long-line.trace"].with_suffix(".htb")),
                    f"{big['long-line.trace']}:2: line longer than 65536 bytes")
    out = big["long-line.trace"].parent / "o.trace"
    shown = "1" * 53 + "..."
    _one_error_line(invoke("import", "valgrind", big["long-line.vg.log"], "-o", out),
                    f"{big['long-line.vg.log']}:3: cannot read 'malloc({shown}' in a traced call line")
    _one_error_line(invoke("import", "android", big["long-line.android.txt"], "-o", out),
                    f"{big['long-line.android.txt']}:1: malloc takes PTR SIZE [START END], got '1000: malloc 0x10 "
                    f"{'1' * 42}...'")
    _one_error_line(invoke("import", "mtrace", big["long-line.mtrace.txt"], "-o", out),
                    f"{big['long-line.mtrace.txt']}:1: expected '@ CALLER OP PTR [SIZE]' (OP one of + - < > !), got "
                    f"'@ {'1' * 58}...'")
    assert not out.exists()
    result = invoke("routes", big["long-line.route.log"], "--json", "-")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["files"][0]
    assert (entry["lines"], entry["route_lines"], entry["overlong_lines"]) == (2, 1, 1)
    cols = from_log(big["long-line.route.log"])  # the TUI's reader: the line is skipped, never held
    assert cols.n == 1 and cols.get_row(0).route == "ss_hit"


def _peak_rss_mib(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI in a child; its peak RSS in MiB (ru_maxrss of the children so far, so: the largest)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "forensics", *args], capture_output=True, text=True, env=env, timeout=300)
    return proc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def test_gzip_and_zip_bombs_stay_in_bounded_memory(big, tmp_path):
    # 256 MiB of decompressed NUL bytes in one line: read in bounded chunks, skipped as overlong
    proc, rss = _peak_rss_mib(["routes", str(big["bomb.log.gz"]), "--json", "-"])
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert entry["overlong_lines"] == 1 and entry["bytes"] == 256 << 20
    assert rss < 200, f"routes on a gzip bomb peaked at {rss:.0f} MiB"
    out = tmp_path / "o.trace"
    for name in ("bomb.android.gz", "bomb.android.zip"):
        member = "[record_allocs.txt]" if name.endswith(".zip") else ""
        proc, rss = _peak_rss_mib(["import", "android", str(big[name]), "-o", str(out)])
        assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
        assert proc.stderr.startswith(f"{PREFIX}{big[name]}{member}:1: expected 'TID: OP PTR ...', got ")
        assert len(proc.stderr.splitlines()) == 1 and not out.exists()
        assert rss < 200, f"import of {name} peaked at {rss:.0f} MiB"
    result = invoke("tui", big["bomb.log.gz"])
    _one_error_line(result, f"{big['bomb.log.gz']}: no [hakmem-route] or [hakmem-alloc] lines (is HAKMEM_FREE_ROUTE_TRACE=1 set?)")


def _saved_with(tmp_path: Path, name: str, **replace: bytes) -> Path:
    """The committed two-event saved result with members replaced (compressed: a bomb stays small)."""
    src = zipfile.ZipFile(BAD / "saved" / "index-out-of-range.hfres")
    members = {n: src.read(n) for n in src.namelist()}
    doc = json.loads(members["result.json"])
    doc["replay"]["anomalies"] = []
    members["result.json"] = json.dumps(doc).encode()
    members.update(replace)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return path


def test_saved_result_bombs_are_refused_before_they_are_unpacked(tmp_path):
    good = _saved_with(tmp_path, "good.hfres")
    from forensics.saved import open_result

    with open_result(good) as s:
        assert s.num_events == 2
    huge = bytes(100 << 20)
    path = _saved_with(tmp_path, "json-bomb.hfres", **{"result.json": huge})
    assert path.stat().st_size < 1 << 20
    _one_error_line(invoke("explain", path), f"{path}: corrupt saved result: result.json is 104,857,600 bytes, more than the 64 MiB a report can be")
    path = _saved_with(tmp_path, "events-bomb.hfres", **{"events.bin": huge})
    _one_error_line(invoke("explain", path), f"{path}: corrupt saved result: 104,857,600 bytes of events for 2 trace events (expected 96)")


def test_ten_thousand_threads(big, tmp_path):
    trace = big["threads-10k.trace"]
    result = invoke("convert", trace, tmp_path / "t.htb")
    assert result.exit_code == 0, result.output
    assert "20,000 events, 10,000 objects, 10,000 threads" in result.stdout
    # a threaded replay runs at most 1024 threads at once: a clear error that names the way out
    _one_error_line(invoke("replay", trace, "--explain", "0"),
                    f"{trace}: event 1024: the trace has more than 1024 threads, the most a threaded replay runs at once "
                    "(replay it with --serial)")
    result = invoke("replay", trace, "--serial", "--explain", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["events_done"], doc["partial"]) == ("completed", 20_000, False)
    result = invoke("import", "android", big["threads-10k.android.txt"], "-o", tmp_path / "a.trace", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["threads"] == 10_000
    # valgrind logs hold processes, one trace each: bounded too
    _one_error_line(invoke("import", "valgrind", big["pids-300.vg.log"], "-o", tmp_path / "v.trace"),
                    f"{big['pids-300.vg.log']}:257: more than 256 processes in the log (one trace each; --max-processes N raises the limit)")
    assert not list(tmp_path.glob("v*.trace"))


def test_import_live_set_is_bounded(tmp_path):
    log = tmp_path / "leak.txt"
    log.write_bytes(b"".join(b"1: malloc 0x%x 16\n" % (0x10000 + 32 * i) for i in range(10_000)))
    _one_error_line(invoke("import", "android", log, "-o", tmp_path / "o.trace", "--max-live", "1000"),
                    f"{log}:4096: more than 1,000 blocks live at once (the importer's memory bound; --max-live N raises it)")
    result = invoke("import", "android", log, "-o", tmp_path / "o.trace")
    assert result.exit_code == 0, result.output


def test_an_allocation_of_two_to_the_63_bytes_is_reported_not_crashed(big):
    result = invoke("replay", big["size-2-63.trace"], "--explain", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["memory_limit"] == {"event_index": 0, "op": "malloc", "size": 1 << 63, "limit": 8 << 30, "over_limit": True}
    assert doc["status"] == "completed" and doc["crash"] is None


# --------------------------------------------------------------------------- the file system
def _good_files(tmp_path: Path) -> dict[str, Path]:
    vg = tmp_path / "good.log"
    vg.write_bytes(VG_HEAD + b"--42-- malloc(16) = 0x4A8B040\n--42-- free(0x4A8B040)\n")
    route = tmp_path / "route.log"
    route.write_bytes(ROUTE)
    return {"trace": ROOT / "fixtures" / "random-mixed.trace", "valgrind": vg, "routes": route}


def test_symlinks(tmp_path):
    good = _good_files(tmp_path)
    for kind, target in good.items():
        link = tmp_path / f"link-{kind}"
        link.symlink_to(target)
        args = {"trace": ["convert", link, tmp_path / "o.htb"], "valgrind": ["import", "valgrind", link, "-o", tmp_path / "o.trace"],
                "routes": ["routes", link]}[kind]
        result = invoke(*args)
        assert result.exit_code == 0, (kind, result.output)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    why = f"dangling symbolic link (to {str(tmp_path / 'nowhere')!r}, which does not exist)"
    for args in (["convert", dangling, tmp_path / "x.htb"], ["import", "mtrace", dangling, "-o", tmp_path / "x.trace"],
                 ["explain", dangling], ["tui", dangling], ["replay", dangling, "--explain", "0"]):
        _one_error_line(invoke(*args), f"{dangling}: {why}")
    _one_error_line(invoke("routes", dangling), f"{dangling}: cannot read log: {why}")


def test_directories_fifos_and_unreadable_files(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    _one_error_line(invoke("convert", d, tmp_path / "o.htb"), f"{d}: is a directory, not a trace")
    _one_error_line(invoke("import", "android", d, "-o", tmp_path / "o.trace"), f"{d}: is a directory, not a log")
    _one_error_line(invoke("explain", d), f"{d}: is a directory, not a saved result or trace")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # readers that need a file say so at once: nothing waits for a writer that never comes
    _one_error_line(invoke("convert", fifo, tmp_path / "o.htb"), f"{fifo}: is a FIFO (named pipe), not a trace file")
    _one_error_line(invoke("import", "valgrind", fifo, "-o", tmp_path / "o.trace"), f"{fifo}: is a FIFO (named pipe), not a log file")
    _one_error_line(invoke("tui", fifo), f"{fifo}: is a FIFO (named pipe), not a saved result, trace or log file")
    _one_error_line(invoke("replay", fifo, "--explain", "0"), f"{fifo}: is a FIFO (named pipe), not a trace file")
    _one_error_line(invoke("info", "--lib", fifo), f"{fifo}: is a FIFO (named pipe), not a library file")
    result = invoke("replay", ROOT / "fixtures" / "random-mixed.trace", "--lib", fifo, "--explain", "0")
    assert result.exit_code == EXIT_BAD_INPUT and "not a regular file" in result.stderr  # dlopen would have waited
    # routes streams: a pipe from another program is a log like any other

    def writer() -> None:
        with open(fifo, "wb") as w:
            w.write(ROUTE * 3)

    t = threading.Thread(target=writer)
    t.start()
    result = invoke("routes", fifo, "--json", "-")
    t.join()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"][0]["route_lines"] == 3
    if os.geteuid() != 0:  # root reads a mode-000 file anyway (CI runs as root)
        locked = tmp_path / "locked.trace"
        locked.write_bytes(b"# hakmem-trace v1\n")
        locked.chmod(0)
        _one_error_line(invoke("convert", locked, tmp_path / "o.htb"), f"{locked}: cannot read: permission denied")
        _one_error_line(invoke("routes", locked), f"{locked}: cannot read log: cannot read: permission denied")
