"""What every fuzz target shares: the libFuzzer-style command line, atheris or a fallback, the rules.

A target module defines ``NAME``, ``seeds() -> list[bytes]`` and ``one_input(data: bytes)``, and
ends with ``main(__name__ == "__main__" and sys.argv, ...)``. The rule for every reader: it
either accepts the input or raises BadInputError (a one-line error for the user); any other
exception is a bug and ends the run as a crash, with the input saved (atheris: crash-<sha1>;
fallback: crash-<sha1> in the working directory).

    python3 scripts/fuzz/fuzz_text_trace.py [CORPUS_DIR] -max_total_time=600 -rss_limit_mb=2048 -timeout=20

With atheris installed (pip install atheris) the target runs under libFuzzer, with coverage
from the instrumented forensics package. Without it (or with --fallback) a hypothesis-free,
dependency-free mutation fuzzer runs instead with the same options and the same rules: it
mutates the seeds and the inputs it keeps (byte flips, inserts, deletions, splices, numbers
pushed to their limits) and reports executions, crashes, the slowest input and the peak RSS.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCRATCH = Path(tempfile.mkdtemp(prefix="hakmem-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def scratch(name: str) -> Path:
    """A path in this run's scratch directory (tmpfs when there is one)."""
    return SCRATCH / name


def expect_bad_input(fn: Callable[[], object]) -> object | None:
    """Run fn; BadInputError is the one allowed failure (returns None then)."""
    from forensics.errors import BadInputError

    try:
        return fn()
    except BadInputError as exc:
        text = str(exc)
        assert "\n" not in text, f"a multi-line error: {text!r}"
        assert len(text) < 2000, f"an error of {len(text)} characters"
        return None


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts, rest = {}, []
    for a in argv:
        if a.startswith("-") and "=" in a and not a.startswith("--"):
            k, v = a[1:].split("=", 1)
            opts[k] = v
        elif a != "--fallback":
            rest.append(a)
    return opts, rest


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------- fallback fuzzer
_INTERESTING = [b"0", b"-1", b"18446744073709551615", b"18446744073709551616", b"9223372036854775808",
                b"4294967295", b"4294967296", b"0x", b"0xffffffffffffffff", b"\x00", b"\xff", b"9" * 30, b"[bold]", b"[/]",
                b"\n", b"\r\n", b" ", b"#", b"@", b"(nil)"]


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        pos = rng.randint(0, len(b))
        if choice == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif choice == 1:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 2 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif choice == 3:
            b[pos:pos] = rng.choice(_INTERESTING)
        elif choice == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            b = b[:pos] + other[cut : cut + rng.randint(1, 256)] + b[pos:]
        elif choice == 5 and b:
            del b[pos:]
        else:
            digits = [i for i, c in enumerate(b) if 48 <= c <= 57]
            if digits:
                i = rng.choice(digits)
                b[i : i + 1] = rng.choice(_INTERESTING[:8])
    return bytes(b[: 1 << 20])


def _fallback(one_input: Callable[[bytes], None], seeds: list[bytes], opts: dict[str, str], corpus: Path | None) -> int:
    max_time = float(opts.get("max_total_time", "60"))
    runs = int(opts.get("runs", "-1"))
    timeout = float(opts.get("timeout", "20"))
    rss_limit = float(opts.get("rss_limit_mb", "2048"))
    rng = random.Random(int(opts.get("seed", "0")) or None)
    pool = list(seeds) or [b""]
    if corpus is not None and corpus.is_dir():
        pool += [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()][:1000]

    def on_alarm(signo, frame):
        raise TimeoutError(f"one input ran longer than {timeout:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    n = 0
    slowest = 0.0
    print(f"INFO: fallback fuzzer, {len(pool)} seed inputs, max_total_time={max_time:.0f}", flush=True)
    while (runs < 0 or n < runs) and time.monotonic() - start < max_time:
        data = pool[n] if n < len(pool) else _mutate(rng, rng.choice(pool), pool)
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            one_input(data)
        except BaseException as exc:  # noqa: BLE001 - a crash: save the input, report, stop
            signal.setitimer(signal.ITIMER_REAL, 0)
            name = f"crash-{hashlib.sha1(data).hexdigest()}"
            Path(name).write_bytes(data)
            print(f"==CRASH== {type(exc).__name__}: {exc}; input saved to {name}", flush=True)
            import traceback

            traceback.print_exc()
            print(f"Done {n} runs in {time.monotonic() - start:.0f} second(s)", flush=True)
            return 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.monotonic() - t0
        slowest = max(slowest, dt)
        n += 1
        if n > len(pool) and rng.random() < 0.02 and len(pool) < 5000:
            pool.append(data)  # keep some mutants: mutations of mutations reach deeper
        if _rss_mb() > rss_limit:
            print(f"==RSS LIMIT== peak RSS {_rss_mb():.0f} MB > {rss_limit:.0f} MB after {n} runs", flush=True)
            return 1
        if n & (n - 1) == 0:
            print(f"#{n}\tpulse exec/s: {n / max(time.monotonic() - start, 1e-9):.0f} rss: {_rss_mb():.0f}Mb", flush=True)
    elapsed = time.monotonic() - start
    print(f"Done {n} runs in {elapsed:.0f} second(s); slowest input {slowest:.2f} s; peak RSS {_rss_mb():.0f} MB", flush=True)
    return 0


def main(argv: list[str] | bool, name: str, seeds: Callable[[], list[bytes]], one_input: Callable[[bytes], None],
         instrument: Callable[[], None] | None = None) -> None:
    if not argv:
        return
    args = list(argv)  # type: ignore[arg-type]
    opts, rest = _options(args[1:])
    corpus = Path(rest[0]) if rest else None
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, s in enumerate(seeds()):
                (corpus / f"seed-{i:03d}").write_bytes(s)
    use_atheris = "--fallback" not in args
    if use_atheris:
        try:
            import atheris  # noqa: F401
        except ImportError:
            use_atheris = False
            print("INFO: atheris is not installed: running the fallback fuzzer", flush=True)
    if not use_atheris:
        if instrument is not None:
            instrument()
        sys.exit(_fallback(one_input, seeds(), opts, corpus))
    import atheris

    if instrument is not None:
        with atheris.instrument_imports(include=["forensics"]):
            instrument()
    if corpus is None:
        # libFuzzer needs the seeds as files: a corpus directory of this run's own
        corpus = scratch(f"corpus-{name}")
        corpus.mkdir()
        for i, s in enumerate(seeds()):
            (corpus / f"seed-{i:03d}").write_bytes(s)
        args.append(str(corpus))
    atheris.Setup([a for a in args if a != "--fallback"], one_input)
    atheris.Fuzz()
