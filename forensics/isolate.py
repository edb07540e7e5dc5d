"""Run allocator work in a forked child so a SIGSEGV, SIGBUS, SIGABRT or hang never kills the toolkit.

The crash record lives in a MAP_SHARED anonymous mapping made before fork: the driver's
signal handler fills it in the child, the parent reads it after the child died. The child's
fd 2 is a pipe the parent drains while it waits, so the allocator's stderr (route trace,
"[hakmem] ERROR" lines, the crash line) comes back as text.
"""

from __future__ import annotations

import mmap
import os
import pickle
import resource
import selectors
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from forensics import native
from forensics.errors import IsolationError
from forensics.model import CrashRecord

DEFAULT_TIMEOUT = 30.0
MAX_STDERR = 1 << 20  # keep at most this much of the child's stderr
MAX_RESULT = 64 << 20


@dataclass
class ChildContext:
    """What the callable gets in the child: the allocator and the driver bound to it."""

    allocator: native.Allocator
    driver: native.Driver

    def set_event_index(self, index: int) -> None:
        """Tell the crash handler which event is running (reported as event_index)."""
        self.driver.set_event_index(index)


@dataclass
class ChildResult:
    value: Any = None
    crash: CrashRecord | None = None
    exit_status: int | None = None  # exit code when the child exited
    signal: int | None = None  # signal that ended the child
    stderr: str = ""
    stderr_truncated: bool = False
    hang: bool = False  # killed after the timeout
    error: str | None = None  # traceback of an exception raised in the child
    duration: float = 0.0
    knobs: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """"ok", "crash" (died by a signal), "hang", "error" (raised) or "exit" (odd exit)."""
        if self.hang:
            return "hang"
        if self.signal is not None:
            return "crash"
        if self.error is not None:
            return "error"
        if self.exit_status == 0:
            return "ok"
        return "exit"

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def unwrap(self) -> Any:
        """The callable's return value; IsolationError describing what happened otherwise."""
        if self.outcome == "ok":
            return self.value
        detail = {
            "hang": "hung and was killed",
            "crash": f"died with {self.signal_name}",
            "error": f"raised:\n{self.error}",
            "exit": f"exited with status {self.exit_status}",
        }[self.outcome]
        tail = self.stderr[-2000:]
        raise IsolationError(f"isolated child {detail}\n--- child stderr ---\n{tail}")


def run_isolated(
    fn: Callable[[ChildContext], Any],
    *,
    lib: str | os.PathLike[str] | None = None,
    debug: bool = False,
    driver_lib: str | os.PathLike[str] | None = None,
    knobs: Mapping[str, object] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ChildResult:
    """Call fn(ctx) in a forked child; knobs are set in the child before fn runs."""
    # Load in the parent first: a missing or wrong library is the caller's error, reported
    # here with the loader's message rather than as a child that exited oddly.
    native.load_allocator(lib, debug=debug)
    native.load_driver(driver_lib)
    knob_items = [(str(k), v) for k, v in (knobs or {}).items()]

    record = mmap.mmap(-1, native.CRASH_RECORD_SIZE, flags=mmap.MAP_SHARED)
    res_r, res_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (res_r, res_w, err_r, err_w):
            os.close(fd)
        record.close()
        raise IsolationError(f"fork failed: {exc}") from None

    if pid == 0:  # child: never returns
        _child(fn, lib, debug, driver_lib, knob_items, record, res_r, res_w, err_r, err_w)

    os.close(res_w)
    os.close(err_w)
    try:
        result = _parent(pid, res_r, err_r, timeout)
    finally:
        os.close(res_r)
        os.close(err_r)
    result.duration = time.monotonic() - start
    result.knobs = {k: native._knob_value(v).decode() for k, v in knob_items}
    result.crash = native.read_crash_record(record)
    record.close()
    return result


def _child(fn, lib, debug, driver_lib, knob_items, record, res_r, res_w, err_r, err_w) -> None:
    status = 3
    try:
        os.close(res_r)
        os.close(err_r)
        os.dup2(err_w, 2)
        os.close(err_w)
        # The parent's sys.stderr may be a capture object (pytest); write to the real fd 2.
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is data, not a core file
        try:
            allocator = native.Allocator(lib, debug=debug)
            driver = native.Driver(driver_lib)
            driver.bind_library(allocator)
            driver.install_crash_handler(native.get_buffer_address(record))
            for name, value in knob_items:
                allocator.set_knob(name, value)
            value = fn(ChildContext(allocator, driver))
            try:
                payload = pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                payload = pickle.dumps(("error", f"result not picklable: {exc!r}"))
            status = 0
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            payload = pickle.dumps(("error", traceback.format_exc()))
            status = 1
        view = memoryview(payload)
        while view:
            n = os.write(res_w, view)
            view = view[n:]
        os.close(res_w)
        sys.stderr.flush()
    finally:
        os._exit(status)


def _parent(pid: int, res_r: int, err_r: int, timeout: float) -> ChildResult:
    result = ChildResult()
    deadline = time.monotonic() + timeout
    payload = bytearray()
    errbuf = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(res_r, selectors.EVENT_READ, "res")
    sel.register(err_r, selectors.EVENT_READ, "err")
    wait_status: int | None = None
    open_fds = 2
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for key, _ in sel.select(min(remaining, 0.05)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                open_fds -= 1
            elif key.data == "res":
                if len(payload) + len(chunk) > MAX_RESULT:
                    raise IsolationError("isolated child sent an oversized result")
                payload += chunk
            elif len(errbuf) < MAX_STDERR:
                errbuf += chunk[: MAX_STDERR - len(errbuf)]
            else:
                result.stderr_truncated = True
        if wait_status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                wait_status = st
                # A grandchild may still hold the pipes; take what is there and stop.
                deadline = min(deadline, time.monotonic() + 0.2)
    sel.close()

    if wait_status is None:
        while time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                wait_status = st
                break
            time.sleep(0.005)
    if wait_status is None:
        result.hang = True
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, wait_status = os.waitpid(pid, 0)

    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if not (result.hang and sig == signal.SIGKILL):
            result.signal = sig
    elif os.WIFEXITED(wait_status):
        result.exit_status = os.WEXITSTATUS(wait_status)
    result.stderr = errbuf.decode("utf-8", "replace")

    if payload and not result.hang:
        try:
            kind, value = pickle.loads(bytes(payload))
        except Exception as exc:  # noqa: BLE001 - a child that died mid-write
            result.error = f"unreadable result from child: {exc!r}"
        else:
            if kind == "ok":
                result.value = value
            else:
                result.error = value
    return result
