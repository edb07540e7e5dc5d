"""Shared fixtures: the real bundled libraries, a pinned console width, isolated children."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Rich reads the width from $COLUMNS; pin it so rendered reports are the same everywhere.
os.environ["COLUMNS"] = "120"
os.environ.pop("NO_COLOR", None)
# Knobs leaking in from the caller's environment would change what the tests measure.
for _name in list(os.environ):
    if _name.startswith("HAKMEM_"):
        del os.environ[_name]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for `import hf_helpers`
try:
    import forensics  # noqa: F401  (installed: use it)
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(HERE.parent))

from forensics import abi, native  # noqa: E402


@pytest.fixture(scope="session")
def allocator_path() -> Path:
    return abi.find_allocator()


@pytest.fixture(scope="session")
def debug_allocator_path() -> Path:
    return abi.find_allocator(debug=True)


@pytest.fixture(scope="session")
def driver_path() -> Path:
    return abi.find_driver()


@pytest.fixture(scope="session")
def allocator() -> native.Allocator:
    """The bundled release allocator. The test process itself allocates nothing with it:
    tests that allocate do so in isolated children, so every child starts from the same heap."""
    return native.Allocator()


@pytest.fixture(scope="session")
def geometry(allocator):
    return allocator.geometry()


@pytest.fixture(scope="session")
def driver() -> native.Driver:
    return native.Driver()
