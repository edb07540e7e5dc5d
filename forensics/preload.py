"""Runs a real program on hakmem-ref (libhakmem_preload.so via LD_PRELOAD) with tracing on, and reads its logs.

The program keeps its own stdin, stdout and stderr: hakmem's lines go to one log file per
process (HAKMEM_TRACE_FILE with "%p"), never into the program's output. After the program
ended (or was killed at the time limit) the logs are read with forensics.routelog: the main
process's log on its own, every other process's (children it started, forks) together.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from forensics import abi, routelog
from forensics.errors import BadInputError, ForensicsError
from forensics.model import ProgramRun

PRELOAD_FILE = "libhakmem_preload.so"
LOG_PATTERN = "hakmem.%p.log"
# Registry trace level 4: record and print only registry changes (docs/route-trace.md); the
# lookups of level 2 would triple the log without saying anything the route lines do not.
REQTRACE_LEVEL = "4"


def find_preload(lib: str | os.PathLike[str] | None = None) -> Path:
    """The preload library: `lib`, else the bundled libhakmem_preload.so (checked to exist)."""
    path = Path(lib).expanduser() if lib else abi.NATIVE_DIR / PRELOAD_FILE
    if not path.is_file():
        hint = (
            "not built: run `pip install .` in the source tree, or `make -C csrc OUT=forensics/_native` "
            "for a source checkout" if not lib else "no such file: check the path given with --lib"
        )
        raise BadInputError(f"cannot use preload library {path}: {hint}")
    return path.resolve()


def get_region_sizes(lib: str | os.PathLike[str] | None = None) -> dict[str, int] | None:
    """Each registry's region size from an allocator library's geometry (hak_get_geometry), for
    the registry history of escaped pointers; None if the library cannot tell (the log reader
    then learns them from the bases it sees)."""
    from forensics import native

    try:
        g = native.Allocator(lib).geometry()
    except (ForensicsError, OSError):
        return None
    return {"ss": g.superslab_size, "mid": g.mid_chunk_size, "l25": g.l25_chunk_size}


@dataclass
class RunConfig:
    lib: str | None = None
    probe: str | None = None  # HAKMEM_HEADER_PROBE; the preload library's default is safe
    mode: str | None = None  # HAKMEM_MODE; default: ldpreload (LD_PRELOAD names libhakmem)
    knobs: dict[str, str] = field(default_factory=dict)
    log: str | None = None  # keep the main log here (children's next to it as LOG.<pid>)
    timeout: float | None = None
    alloc_trace: bool = True
    reqtrace: bool = True
    max_pointers: int = routelog.DEFAULT_MAX_POINTERS
    keep: int = routelog.DEFAULT_KEEP


def build_env(lib: Path, log_dir: Path, config: RunConfig, base: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(the program's whole environment, the part of it this run set)."""
    env = dict(os.environ if base is None else base)
    pre = env.get("LD_PRELOAD", "").strip()
    ours: dict[str, str] = {
        "LD_PRELOAD": str(lib) + (f":{pre}" if pre else ""),
        "HAKMEM_TRACE_FILE": str(log_dir / LOG_PATTERN),
        "HAKMEM_FREE_ROUTE_TRACE": "1",
    }
    if config.reqtrace:
        ours["HAKMEM_SUPER_REG_REQTRACE"] = REQTRACE_LEVEL
    if config.alloc_trace:
        ours["HAKMEM_ALLOC_TRACE"] = "1"
    if config.probe:
        ours["HAKMEM_HEADER_PROBE"] = config.probe
    if config.mode:
        ours["HAKMEM_MODE"] = config.mode
    for name, value in config.knobs.items():
        if not name.startswith("HAKMEM_"):
            raise BadInputError(f"--knob {name}={value}: knob names start with HAKMEM_ (see csrc/hakmem.h)")
        if name in ("HAKMEM_TRACE_FILE", "HAKMEM_TRACE_FD"):
            raise BadInputError(f"--knob {name}: run chooses where hakmem's lines go (use --log)")
        ours[name] = value
    env.update(ours)
    return env, ours


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for the program, Ctrl-C going to it, not to us. True if it was killed at the limit."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        try:
            proc.wait(timeout=timeout)
            return False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return True
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_program(command: list[str], config: RunConfig) -> ProgramRun:
    if not command:
        raise BadInputError("no command to run: give it after --, e.g. `hakmem-forensics run -- ls -l`")
    lib = find_preload(config.lib)
    keep_at = Path(config.log).expanduser().resolve() if config.log else None
    if keep_at is not None and not keep_at.parent.is_dir():
        raise BadInputError(f"--log {config.log}: no such directory {keep_at.parent}")
    log_dir = Path(tempfile.mkdtemp(prefix=".hakmem-run-", dir=str(keep_at.parent) if keep_at else None))
    try:
        env, ours = build_env(lib, log_dir, config)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(command, env=env)
        except FileNotFoundError:
            raise BadInputError(f"{command[0]}: command not found") from None
        except PermissionError:
            raise BadInputError(f"{command[0]}: permission denied") from None
        except OSError as exc:
            raise BadInputError(f"{command[0]}: cannot run: {exc.strerror}") from None
        hang = _wait(proc, config.timeout)
        seconds = time.monotonic() - t0
        rc = proc.returncode
        main_log = log_dir / LOG_PATTERN.replace("%p", str(proc.pid))
        others = sorted(p for p in log_dir.glob(LOG_PATTERN.replace("%p", "*")) if p != main_log)

        # the logs are read under the names they will have (kept) or a description (not kept)
        def shown_name(path: Path) -> str:
            pid = path.name.split(".")[1]
            if keep_at is None:
                return f"(log of pid {pid})"
            return str(keep_at) if path == main_log else str(keep_at.with_name(f"{keep_at.name}.{pid}"))

        # the bundled preload library is hakmem-ref: the bundled libhakmem.so has its geometry
        sizes = get_region_sizes() if config.lib is None else None
        main = routelog.RouteLogAnalyzer(max_pointers=config.max_pointers, keep=config.keep, region_sizes=sizes)
        if main_log.exists():
            with open(main_log, "rb") as fh:
                main.feed_stream(fh, shown_name(main_log))
        children = None
        if others:
            an = routelog.RouteLogAnalyzer(max_pointers=config.max_pointers, keep=config.keep, region_sizes=sizes)
            for p in others:
                with open(p, "rb") as fh:
                    an.feed_stream(fh, shown_name(p))
            children = an.result()

        kept_main: str | None = None
        kept_children: list[str] = []
        if keep_at is not None:
            if main_log.exists():
                os.replace(main_log, keep_at)
                kept_main = str(keep_at)
            for p in others:
                dest = Path(shown_name(p))
                os.replace(p, dest)
                kept_children.append(str(dest))
        return ProgramRun(
            command=list(command), library=str(lib), env=ours, pid=proc.pid,
            exit_status=rc if rc is not None and rc >= 0 else None,
            exit_signal=-rc if rc is not None and rc < 0 else None,
            hang=hang, seconds=seconds, log=kept_main, child_logs=kept_children,
            main=main.result(), children=children,
        )
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
