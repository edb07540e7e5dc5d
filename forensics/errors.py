"""Domain errors of the toolkit; each carries the CLI exit status it maps to."""

from __future__ import annotations

# Exit statuses, documented in `hakmem-forensics --help`. 2 (usage) is typer/click's own.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130  # Ctrl-C during a replay: the partial result was still reported (128 + SIGINT)


class ForensicsError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = EXIT_INTERNAL


class BadInputError(ForensicsError):
    """The user handed us something unusable: a missing file, a non-ELF file, a bad value."""

    exit_code = EXIT_BAD_INPUT


class LibraryError(BadInputError):
    """A native library could not be loaded or is not the ABI we speak."""


class FeatureUnavailable(BadInputError):
    """The loaded library lacks the optional symbol(s) a feature needs."""

    def __init__(self, feature: str, symbols: tuple[str, ...], path: str) -> None:
        self.feature = feature
        self.symbols = symbols
        self.path = path
        super().__init__(
            f"feature '{feature}' is unavailable: {path} does not export "
            f"{', '.join(symbols)} (an older or stripped-down build of the allocator?)"
        )


class ClosedError(ForensicsError):
    """A native handle was used after close()."""


class NativeError(ForensicsError):
    """A C function returned a negative status; message from hak_last_error()/hfd_last_error()."""

    def __init__(self, function: str, code: int, message: str) -> None:
        self.function = function
        self.code = code
        self.message = message
        super().__init__(f"{function}: {message} (status {code})")


class InvalidValueError(NativeError):
    """HAK_EINVAL / HFD_EINVAL: the C side rejected a value."""

    exit_code = EXIT_BAD_INPUT


class UnknownKnobError(NativeError):
    """HAK_ENOKNOB: no such knob."""

    exit_code = EXIT_BAD_INPUT


class BufferTooSmallError(NativeError):
    """HAK_ERANGE: a caller buffer was too small."""


class CheckFailedError(NativeError):
    """HAK_ECHECK: hak_debug_check() found a broken invariant (in .message)."""


class SymbolMissingError(NativeError):
    """HFD_ENOSYM: the allocator the driver binds lacks a required symbol."""

    exit_code = EXIT_BAD_INPUT


class OpenFailedError(NativeError):
    """HFD_EDLOPEN: the driver could not dlopen the allocator."""

    exit_code = EXIT_BAD_INPUT


class NotBoundError(NativeError):
    """HFD_ENOTBOUND: the driver has no allocator bound."""


class SystemCallError(NativeError):
    """HFD_ESYS: a system call failed inside the driver."""


class IsolationError(ForensicsError):
    """The isolated child could not be started or talked to."""
