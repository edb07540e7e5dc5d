"""The C test driver (csrc/tests/) runs every allocator path clean, plain and under ASan+UBSan."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"


def _make(target: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(CSRC), f"OUT={out}", target],
        capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make and a C compiler")
@pytest.mark.parametrize("target", ["test", "check-asan"])
def test_c_driver_passes(target, tmp_path):
    res = _make(target, tmp_path / "build")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", res.stdout, re.M)
    assert summary, out[-4000:]
    for passed, failed in summary:
        assert int(failed) == 0 and int(passed) > 100, out[-4000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out
