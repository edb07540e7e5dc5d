"""forensics.isolate: the toolkit survives whatever the child does, and hears about it."""

from __future__ import annotations

import os
import signal
import time

from forensics import isolate


def test_value_stderr_and_knobs_come_back(allocator):
    def body(ctx):
        os.write(2, b"from the child's fd 2\n")
        return {"probe": ctx.allocator.get_knob("HAKMEM_HEADER_PROBE"), "pid": os.getpid()}

    r = isolate.run_isolated(body, knobs={"HAKMEM_HEADER_PROBE": "safe"}, timeout=30)
    assert r.outcome == "ok" and r.exit_status == 0 and r.signal is None and r.crash is None
    assert r.value["probe"] == "safe" and r.value["pid"] != os.getpid()
    assert "from the child's fd 2" in r.stderr
    assert r.knobs == {"HAKMEM_HEADER_PROBE": "safe"}
    assert allocator.get_knob("HAKMEM_HEADER_PROBE") == "off"


def test_exception_in_child():
    def body(ctx):
        raise RuntimeError("boom in child")

    r = isolate.run_isolated(body, timeout=30)
    assert r.outcome == "error" and "RuntimeError: boom in child" in r.error and r.exit_status == 1


def test_unpicklable_result_is_an_error():
    r = isolate.run_isolated(lambda ctx: (lambda: 1), timeout=30)
    assert r.outcome == "error" and "not picklable" in r.error


def test_hang_is_killed_and_reported():
    start = time.monotonic()
    r = isolate.run_isolated(lambda ctx: time.sleep(60), timeout=1.0)
    assert r.outcome == "hang" and r.hang and r.value is None
    assert time.monotonic() - start < 10


def test_abort_is_recorded_by_the_crash_handler():
    def body(ctx):
        ctx.set_event_index(1234)
        os.abort()

    r = isolate.run_isolated(body, timeout=30)
    assert r.outcome == "crash" and r.signal == signal.SIGABRT and r.signal_name == "SIGABRT"
    assert r.crash is not None and r.crash.signal_name == "SIGABRT"
    assert r.crash.event_index == 1234
    assert r.crash.tid > 0 and r.crash.ptr is None
    assert "libhakmem.so" in r.crash.maps and "libhfdriver.so" in r.crash.maps


def test_segv_outside_the_allocator_has_no_free_pointer():
    def body(ctx):
        import ctypes

        ctypes.string_at(8, 1)  # read address 8: SIGSEGV

    r = isolate.run_isolated(body, timeout=30)
    assert r.outcome == "crash" and r.signal == signal.SIGSEGV
    assert r.crash is not None and r.crash.fault_address == 8
    assert r.crash.ptr is None and r.crash.event_index is None


def test_large_stderr_is_bounded():
    def body(ctx):
        chunk = b"x" * 65536 + b"\n"
        for _ in range(40):
            os.write(2, chunk)
        return "done"

    r = isolate.run_isolated(body, timeout=30)
    assert r.value == "done" and r.stderr_truncated and len(r.stderr) == isolate.MAX_STDERR
