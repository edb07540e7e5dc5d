"""Where the bundled traces are: inside the installed package, or in a source checkout's fixtures/."""

from __future__ import annotations

from pathlib import Path

from forensics.errors import BadInputError

# The default replay input: random-mixed 50000 2048 1234567 with the SuperSlab registry
# capacity scenario, which reproduces the seed's SEGV with the probe off.
DEFAULT_TRACE = "segv-registry-escape.trace"

_HERE = Path(__file__).resolve().parent
_SEARCH = (_HERE / "fixtures", _HERE.parent / "fixtures")  # installed (setup.py copies them), checkout


def find_fixture(name: str = DEFAULT_TRACE) -> Path:
    for folder in _SEARCH:
        path = folder / name
        if path.is_file():
            return path
    raise BadInputError(f"bundled trace {name} not found (looked in {', '.join(str(f) for f in _SEARCH)}); reinstall the package")
