"""`hakmem-forensics info`: the bundled libraries described from their ELF files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forensics import abi
from forensics.cli import app
from forensics.report.info import SCHEMA

runner = CliRunner()


def test_info_release_report(allocator_path):
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert str(allocator_path) in out
    assert "ABI version     1" in out
    assert "Build mode      release" in out
    assert "Header size     32 bytes" in out
    assert "Magic           0x48414b4d" in out
    assert "SuperSlab size  1048576 bytes" in out
    assert "Tiny classes    8, 16, 32, 64, 128, 256, 512, 1024" in out
    assert "hak_super_reg_reqtrace_get" in out
    assert "MISSING" not in out and "│ missing" not in out
    n = len(abi.HAKMEM_SYMBOLS)
    assert f"{n}/{n} ABI symbols present" in out


def test_info_json_stdout(allocator_path):
    result = runner.invoke(app, ["info", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == SCHEMA == "hakmem-forensics/info/1"
    assert doc["path"] == str(allocator_path)
    assert doc["library_kind"] == "allocator"
    assert doc["abi_version"] == 1
    assert doc["build_mode"] == "release"
    assert doc["header_size"] == 32
    assert doc["magic"] == 0x48414B4D and doc["magic_hex"] == "0x48414b4d"
    assert doc["superslab_size"] == 1 << 20
    assert doc["tiny_class_sizes"] == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert doc["missing_required"] == [] and doc["missing_optional"] == []
    names = {s["name"]: s for s in doc["symbols"]}
    assert names["hak_free_at"]["required"] and names["hak_free_at"]["present"]
    assert not names["hak_owner"]["required"] and names["hak_owner"]["feature"] == "owner"


def test_info_debug_build(debug_allocator_path, geometry):
    for args in (["info", "--debug", "--json", "-"], ["info", "--lib", str(debug_allocator_path), "--json", "-"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["build_mode"] == "debug" and doc["path"] == str(debug_allocator_path)
        # the ELF constants agree with what the loaded library reports
        assert doc["tiny_class_sizes"] == list(geometry.tiny_class_sizes)


def test_info_honours_hakmem_lib(debug_allocator_path):
    result = runner.invoke(app, ["info", "--json", "-"], env={"HAKMEM_LIB": str(debug_allocator_path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["build_mode"] == "debug"


def test_info_json_file_and_report(tmp_path):
    target = tmp_path / "info.json"
    result = runner.invoke(app, ["info", "--json", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["build_mode"] == "release"
    assert "Build mode      release" in result.stdout


@pytest.mark.parametrize(
    "path, reason",
    [("/nonexistent", "no such file"), ("/etc/passwd", "not an ELF file"), ("/", "is a directory")],
)
def test_info_bad_library_exits_3(path, reason):
    result = runner.invoke(app, ["info", "--lib", path])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("hakmem-forensics: error:"), err
    assert path in err and reason in err
    assert result.stdout == ""


def test_info_unwritable_json_exits_3(tmp_path):
    result = runner.invoke(app, ["info", "--json", str(tmp_path / "no" / "such" / "dir.json")])
    assert result.exit_code == 3, result.output
    assert "cannot write JSON" in result.stderr


def test_usage_error_exits_2():
    result = runner.invoke(app, ["info", "--no-such-option"])
    assert result.exit_code == 2, result.output


def test_help_documents_exit_codes():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for fragment in ("0 analysis completed", "2 usage error", "3 bad input", "4 internal error"):
        assert fragment in text, fragment


def test_python_dash_m_forensics_runs():
    import subprocess
    import sys
    from pathlib import Path

    import forensics

    env = {"PYTHONPATH": str(Path(forensics.__file__).resolve().parent.parent), "COLUMNS": "120", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "forensics", "info", "--json", "-"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"] == SCHEMA


def test_internal_error_exits_4_without_traceback(monkeypatch):
    from forensics import elf

    def broken(path):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(elf, "read_library_info", broken)
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert "internal error: RuntimeError: simulated bug" in result.stderr


@pytest.mark.parametrize("nbytes", [200, 20000])
def test_info_truncated_library_exits_3(tmp_path, allocator_path, nbytes):
    cut = tmp_path / "libcut.so"
    cut.write_bytes(allocator_path.read_bytes()[:nbytes])
    result = runner.invoke(app, ["info", "--lib", str(cut)])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and str(cut) in result.stderr
