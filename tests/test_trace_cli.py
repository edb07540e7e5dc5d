"""`hakmem-forensics convert` and `gen`: through the CLI, exit statuses and one-line errors included."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from forensics.cli import ForensicsGroup
from forensics.cli import app as main_app
from forensics.cli import convert as convert_cmd
from forensics.cli import gen as gen_cmd
from forensics.errors import EXIT_BAD_INPUT, EXIT_USAGE
from forensics.trace import iter_events, read_header, sniff

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
runner = CliRunner()


def _app() -> typer.Typer:
    """The main app once it registers convert and gen; until then a local app with the same error mapping."""
    names = {c.name for c in main_app.registered_commands}
    names |= {g.name or (g.typer_instance.info.name if g.typer_instance else None) for g in main_app.registered_groups}
    if {"convert", "gen"} <= names:
        return main_app
    app = typer.Typer(cls=ForensicsGroup, no_args_is_help=True, add_completion=False)
    app.command("convert", epilog=convert_cmd.EPILOG)(convert_cmd.convert)
    app.add_typer(gen_cmd.app, name="gen")
    return app


APP = _app()


def invoke(*args: str):
    return runner.invoke(APP, [str(a) for a in args])


def test_gen_random_mixed_text(tmp_path):
    out = tmp_path / "rm.trace"
    result = invoke("gen", "random-mixed", "50000", "2048", "1234567", "-o", out, "--scenario", "registry-capacity")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"wrote {out} (text): 51,056 events, 2,048 objects, 1 thread, "
        "knobs HAKMEM_MODE=direct HAKMEM_SS_REG_CAPACITY=4\n"
    )
    assert out.read_bytes() == (FIXTURES / "segv-registry-escape.trace").read_bytes()


def test_gen_larson_binary(tmp_path):
    for out, extra in ((tmp_path / "l.htb", []), (tmp_path / "l.trace", ["--binary"])):
        result = invoke("gen", "larson", "1", "8", "128", "256", "2", "12345", "4", "-o", out, *extra)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"wrote {out} (binary): 8,196 events, 1,024 objects, 4 threads, no knobs\n"
        assert sniff(out) == "binary"
        assert list(iter_events(out)) == list(iter_events(FIXTURES / "larson-tiny.trace"))


def test_gen_knob_option(tmp_path):
    out = tmp_path / "p.trace"
    result = invoke("gen", "random-mixed", "5000", "512", "1234567", "-o", out, "--scenario", "registry-capacity",
                    "--knob", "HAKMEM_HEADER_PROBE=safe")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (FIXTURES / "probe-safe.trace").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["larson", "1", "128", "8", "256", "2", "1", "4"], "larson: need 0 <= MIN_SIZE <= MAX_SIZE, got 128 and 8"),
        (["larson", "1", "8", "128", "256", "2", "1", "0"], "larson: THREADS must be in 1..4096, got 0"),
        (["random-mixed", "10", "0", "1"], "random-mixed: WORKING_SET must be in 1..2147483647, got 0"),
        (["random-mixed", "10", "10", "1", "--scenario", "nope"],
         "unknown scenario 'nope' (choose from: registry-capacity, registry-drop, early-release, mixed-libc, "
         "double-free, interior-free, wild-free, header-corruption)"),
        (["random-mixed", "10", "10", "1", "--knob", "HAKMEM_X"],
         "--knob: malformed knob line '# knob HAKMEM_X': expected '# knob NAME=VALUE'"),
    ],
)
def test_gen_bad_values(tmp_path, args, message):
    out = tmp_path / "x.trace"
    result = invoke("gen", *args, "-o", out)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stderr == f"hakmem-forensics: error: {message}\n"
    assert not out.exists()


def test_gen_unwritable_output(tmp_path):
    out = tmp_path / "no" / "such" / "dir.trace"
    result = invoke("gen", "random-mixed", "10", "10", "1", "-o", out)
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"hakmem-forensics: error: {out}: cannot write: No such file or directory\n"


def test_gen_usage_errors():
    assert invoke("gen", "random-mixed", "10", "10", "x", "-o", "y.trace").exit_code == EXIT_USAGE
    assert invoke("gen", "random-mixed", "10", "10", "1").exit_code == EXIT_USAGE  # -o is required


def test_convert_round_trip(tmp_path):
    src = FIXTURES / "scenario-mixed-libc.trace"
    binary, back = tmp_path / "m.htb", tmp_path / "m.trace"
    result = invoke("convert", src, binary)
    assert result.exit_code == 0, result.output
    n = sum(1 for line in src.read_text().splitlines() if not line.startswith("#"))
    assert n > 3000
    assert result.stdout == (
        f"converted {src} (text) -> {binary} (binary): {n:,} events, 262 objects, 1 thread, knobs HAKMEM_MODE=ldpreload\n"
    )
    result = invoke("convert", binary, back)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"converted {binary} (binary) -> {back} (text): {n:,} events")
    assert back.read_bytes() == src.read_bytes()


def test_convert_output_encoding_from_name(tmp_path):
    src = FIXTURES / "random-mixed.trace"
    assert invoke("convert", src, tmp_path / "x.out").exit_code == 0
    assert sniff(tmp_path / "x.out") == "binary"  # unknown suffix: the other encoding
    assert invoke("convert", src, tmp_path / "y.txt").exit_code == 0
    assert (tmp_path / "y.txt").read_bytes() == src.read_bytes()  # same encoding: canonical copy
    assert read_header(tmp_path / "x.out") == read_header(src)


@pytest.mark.parametrize("bad", sorted(p.name for p in (FIXTURES / "bad").iterdir() if p.is_file() and p.suffix != ".err"))
def test_convert_bad_input(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out.any"
    result = invoke("convert", f"fixtures/bad/{bad}", out)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    expected = (FIXTURES / "bad" / f"{bad}.err").read_text()
    assert result.stderr == f"hakmem-forensics: error: {expected}"
    assert result.stdout == ""
    assert not out.exists()


def test_convert_no_check(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke("convert", "--no-check", "fixtures/bad/never-allocated.trace", tmp_path / "n.htb")
    assert result.exit_code == 0, result.output
    assert sniff(tmp_path / "n.htb") == "binary"


def test_convert_missing_input(tmp_path):
    result = invoke("convert", tmp_path / "nope.trace", tmp_path / "o.htb")
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"hakmem-forensics: error: {tmp_path / 'nope.trace'}: no such file\n"
