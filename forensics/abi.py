"""The C surface the toolkit expects: ABI versions, symbol lists, library file locations.

This module is the one place that says which symbols are required and which optional, so
native.py (which loads libraries) and elf.py (which only reads them) cannot disagree. It
imports neither ctypes nor pyelftools.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HAK_ABI_VERSION = 1  # HAK_ABI_VERSION in csrc/hakmem.h
HFD_ABI_VERSION = 1  # HFD_ABI_VERSION in csrc/hfdriver.h



def _native_dir() -> Path:
    """Where the bundled libraries are: next to this package when it was installed (or built
    in place), else in the installed distribution. The second case is a source checkout on
    sys.path (python -m from the repository root) after `pip install .`: its own _native/
    was never built, the installed package's was."""
    here = Path(__file__).resolve().parent / "_native"
    if (here / "libhfdriver.so").exists():
        return here
    from importlib.metadata import distributions

    # Several may match: a source checkout's own hakmem_forensics.egg-info comes first on
    # sys.path and points back at the checkout; the installed one has the libraries.
    for dist in distributions(name="hakmem-forensics"):
        try:
            candidate = Path(str(dist.locate_file("forensics/_native"))).resolve()
        except OSError:  # pragma: no cover
            continue
        if (candidate / "libhfdriver.so").exists():
            return candidate
    return here


NATIVE_DIR = _native_dir()
ALLOCATOR_FILE = "libhakmem.so"
ALLOCATOR_DEBUG_FILE = "libhakmem_debug.so"
DRIVER_FILE = "libhfdriver.so"
REPLAY_EXE_FILE = "hfreplay"  # the standalone replay (csrc/hfreplay_main.c), next to the driver

# Environment overrides: HAKMEM_LIB names the allocator (the user's own build), and
# HAKMEM_FORENSICS_DRIVER the driver (rarely needed; for testing a rebuilt driver).
ENV_ALLOCATOR = "HAKMEM_LIB"
ENV_DRIVER = "HAKMEM_FORENSICS_DRIVER"


@dataclass(frozen=True)
class AbiSymbol:
    name: str
    required: bool
    feature: str  # what stops working without it
    kind: str = "function"  # "function" or "data"


def _req(name: str, feature: str = "core") -> AbiSymbol:
    return AbiSymbol(name, True, feature)


def _opt(name: str, feature: str, kind: str = "function") -> AbiSymbol:
    return AbiSymbol(name, False, feature, kind)


# Required: what any hakmem-style build must export for the toolkit to drive it at all.
# Everything else degrades one feature. Order follows csrc/hakmem.h.
HAKMEM_SYMBOLS: tuple[AbiSymbol, ...] = (
    _opt("hak_abi_version_const", "elf_constants", "data"),
    _opt("hak_header_size_const", "elf_constants", "data"),
    _opt("hak_magic_const", "elf_constants", "data"),
    _opt("hak_superslab_size_const", "elf_constants", "data"),
    _opt("hak_tiny_class_sizes_const", "elf_constants", "data"),
    _opt("hak_build_release_const", "elf_constants", "data"),
    _req("hak_init"),
    _req("hak_abi_version"),
    _req("hak_alloc_at"),
    _req("hak_free_at"),
    _req("hak_calloc_at"),
    _req("hak_realloc_at"),
    _req("hak_memalign_at"),
    _req("hak_usable_size"),
    _opt("hak_tiny_free", "tiny_free"),
    _opt("hak_set_knob", "knobs"),
    _opt("hak_get_knob", "knobs"),
    _opt("hak_knob_names", "knobs"),
    _req("hak_last_error"),
    _opt("hak_get_geometry", "geometry"),
    _opt("hak_last_free_decision", "decision"),
    _opt("hak_route_ring_get", "route_ring"),
    _opt("hak_route_ring_clear", "route_ring"),
    _opt("hak_route_name", "names"),
    _opt("hak_action_name", "names"),
    _opt("hak_stage_name", "names"),
    _opt("hak_probe_name", "names"),
    _opt("hak_reqtrace_op_name", "names"),
    _opt("hak_owner", "owner"),
    _opt("hak_owner_kind", "owner"),
    _opt("hak_alloc_owner_kind", "owner"),
    _opt("hak_free_owner_kind_at", "owner"),
    _opt("hak_debug_free_state", "free_state"),
    _opt("hak_get_stats", "stats"),
    _opt("hak_debug_check", "check"),
    _opt("hak_super_reg_reqtrace_dump", "reqtrace_dump"),
    _opt("hak_super_reg_reqtrace_get", "reqtrace"),
    _opt("hak_super_reg_reqtrace_clear", "reqtrace"),
)

# The driver is the toolkit's own library: all of it is required.
HFDRIVER_SYMBOLS: tuple[AbiSymbol, ...] = tuple(
    _req(n, "driver")
    for n in (
        "hfd_abi_version",
        "hfd_last_error",
        "hfd_bind_library",
        "hfd_bind_libc",
        "hfd_bind_table",
        "hfd_binding",
        "hfd_missing_symbols",
        "hfd_alloc",
        "hfd_free",
        "hfd_install_crash_handler",
        "hfd_uninstall_crash_handler",
        "hfd_set_event_index",
        "hfd_probe",
        "hfd_probe_time",
        "hfd_replay",
        "hfd_replay_ex",
        "hfd_step_reset",
        "hfd_step",
        "hfd_summarize",
    )
)


def get_symbol(name: str) -> AbiSymbol:
    for sym in HAKMEM_SYMBOLS + HFDRIVER_SYMBOLS:
        if sym.name == name:
            return sym
    raise KeyError(name)


def iter_feature_symbols(symbols: tuple[AbiSymbol, ...], feature: str):
    return (s for s in symbols if s.feature == feature)


def find_allocator(lib: str | os.PathLike[str] | None = None, *, debug: bool = False) -> Path:
    """Path of the allocator to use: `lib`, else $HAKMEM_LIB, else the bundled build.

    Does not check that the file exists; the loader (or ELF reader) reports that with the
    path it tried, which is the message a user needs.
    """
    if lib is not None and str(lib) != "":
        return Path(lib).expanduser()
    env = os.environ.get(ENV_ALLOCATOR)
    if env:
        return Path(env).expanduser()
    return NATIVE_DIR / (ALLOCATOR_DEBUG_FILE if debug else ALLOCATOR_FILE)


def find_driver(lib: str | os.PathLike[str] | None = None) -> Path:
    if lib is not None and str(lib) != "":
        return Path(lib).expanduser()
    env = os.environ.get(ENV_DRIVER)
    if env:
        return Path(env).expanduser()
    return NATIVE_DIR / DRIVER_FILE


def find_replay_exe() -> Path:
    """The hfreplay executable that goes with the driver in use."""
    return find_driver().parent / REPLAY_EXE_FILE


def is_bundled(path: Path) -> bool:
    try:
        return path.resolve().parent == NATIVE_DIR
    except OSError:
        return False
