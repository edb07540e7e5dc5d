#!/usr/bin/env python3
"""Render an HTML report in headless Chromium and save a screenshot (PNG).

    python3 scripts/screenshot_html.py REPORT.html OUT.png [--width 1200 --height 1600]

Exits non-zero if Chromium is missing or fails. The report must be self-contained: Chromium
runs with networking disabled, so anything the page tried to fetch would be missing."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 1600) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args()
    res = screenshot(args.html, args.png, args.width, args.height)
    if res.returncode != 0 or not args.png.exists():
        print(res.stderr, file=sys.stderr)
        return 1
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
