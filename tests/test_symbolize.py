"""Call sites to function and file:line with pyelftools: PIE, fixed-address and shared-library code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from capture_helpers import ANDROID, CC, CSRC, compile_c, invoke, source_line
from forensics import elf, model, record, sites
from forensics.trace import read_header

LIB_SRC = CSRC / "libsite.c"
PROG_SRC = CSRC / "site_prog.c"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sites")
    lib = compile_c(LIB_SRC, d / "libsite.so", "-fPIC", "-shared")
    link = (f"-L{d}", "-lsite", "-Wl,-rpath," + str(d))
    # the library goes after the source: with --as-needed linkers it must follow its user
    pie = d / "site_pie"
    nopie = d / "site_nopie"
    for out, extra in ((pie, ("-fPIE", "-pie")), (nopie, ("-fno-pie", "-no-pie"))):
        proc = subprocess.run([CC, "-g", "-O0", "-w", *extra, "-o", str(out), str(PROG_SRC), *link],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    return {"lib": lib, "pie": pie, "nopie": nopie}


def _by_line(found: dict[int, model.SiteInfo]) -> set[tuple[str | None, str | None, int | None]]:
    return {(s.function, Path(s.file).name if s.file else None, s.line) for s in found.values()}


@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_recorded_sites_name_the_right_function_and_line(built, tmp_path, kind):
    trace = tmp_path / f"{kind}.trace"
    rec = record.run_record([str(built[kind])], trace)
    assert rec.exit_status == 0
    found = _by_line(sites.get_sites(read_header(trace)))
    expected = {
        ("lib_alloc", LIB_SRC.name, source_line(LIB_SRC, "lib_malloc")),  # a shared library: load bias
        ("lib_free", LIB_SRC.name, source_line(LIB_SRC, "lib_free")),
        ("make", PROG_SRC.name, source_line(PROG_SRC, "make_calloc")),  # a static function
        ("main", PROG_SRC.name, source_line(PROG_SRC, "main_malloc")),
        ("main", PROG_SRC.name, source_line(PROG_SRC, "main_free")),
    }
    assert expected <= found


def test_symbols_command_symbolizes_later_and_caches_per_build_id(built, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HAKMEM_FORENSICS_CACHE", str(cache))
    monkeypatch.setattr(sites, "_CODE", {})
    trace = tmp_path / "late.trace"
    record.run_record([str(built["pie"])], trace, symbolize=False)
    assert sites.get_sites(read_header(trace)) == {}  # only the memory map so far
    res = invoke("symbols", trace, "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == "hakmem-forensics/sites/1" and doc["symbolized"]
    texts = {s["site"]["text"] for s in doc["sites"]}
    assert f"lib_alloc ({LIB_SRC.name}:{source_line(LIB_SRC, 'lib_malloc')})" in texts
    assert f"main ({PROG_SRC.name}:{source_line(PROG_SRC, 'main_malloc')})" in texts
    assert sites.get_sites(read_header(trace))  # written back into the trace's header
    # the cache: one file per build id, read again on the next run
    lib_cache = cache / f"{elf.get_build_id(built['lib'])}.json"
    assert lib_cache.exists()
    cached = json.loads(lib_cache.read_text())
    assert cached["module"] == str(built["lib"])
    for entry in cached["sites"].values():
        if entry[0] == "lib_alloc":
            entry[0] = "from_the_cache"
    lib_cache.write_text(json.dumps(cached))
    monkeypatch.setattr(sites, "_CODE", {})
    res = invoke("symbols", trace, "--refresh", "-o", tmp_path / "again.trace")
    assert res.exit_code == 0, res.output
    functions = {s.function for s in sites.get_sites(read_header(tmp_path / "again.trace")).values()}
    assert "from_the_cache" in functions and "lib_alloc" not in functions


def test_symbols_of_a_trace_without_a_memory_map(tmp_path):
    trace = tmp_path / "a.trace"
    res = invoke("import", "android", ANDROID / "test.txt", "-o", trace)
    assert res.exit_code == 0, res.output
    res = invoke("symbols", trace)
    assert res.exit_code == 0, res.output
    assert "no memory map" in res.output


def test_site_lines_round_trip_with_spaces():
    site = model.SiteInfo(0x55D4C3A1B2C4, "/opt/my app/bin/x", 0x12C4, "operator new", "/src/a b%.c", 42)
    text = sites.format_site(site)
    assert len(text.split(" ")) == 4  # the spaces inside fields are escaped
    assert sites.parse_site(text) == site
    unknown = model.SiteInfo(0x10)
    assert sites.format_site(unknown) == "0x10 ? ? ?" and sites.parse_site("0x10 ? ? ?") == unknown
    assert sites.parse_site("0x10 main") is None


def test_maps_lines_keep_executable_file_mappings_only():
    text = (
        "55d4c3a1a000-55d4c3a1b000 r--p 00000000 fe:00 123 /tmp/prog\n"
        "55d4c3a1b000-55d4c3a1c000 r-xp 00001000 fe:00 123 /tmp/prog\n"
        "7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]\n"
        "7f0000000000-7f0000001000 r-xp 00002000 fe:00 9 /usr/lib/lib x.so (deleted)\n"
    )
    assert sites.parse_proc_maps(text) == [
        model.MappedFile(0x55D4C3A1B000, 0x55D4C3A1C000, 0x1000, "/tmp/prog"),
        model.MappedFile(0x7F0000000000, 0x7F0000001000, 0x2000, "/usr/lib/lib x.so"),
    ]
