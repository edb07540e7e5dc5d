"""Files in and out, hardened: one clear error for any unusable input path, outputs that are never half-written.

Inputs: ``open_input`` opens a path the way every reader needs it and turns whatever is wrong
with it into a one-line BadInputError: missing, a dangling symbolic link (named with its
target), a directory, a FIFO / socket / device where a seekable file is needed, unreadable.
It never blocks: a FIFO is opened non-blocking first, so a reader that needs a regular file
says so instead of waiting for a writer that never comes.

Outputs: ``AtomicOutput`` writes into a temporary file next to the destination and renames it
into place on ``commit()``; ``discard()`` (or any exception, in the context manager) removes
the temporary file. An interrupted or failed write (Ctrl-C, a killed process, a full disk)
therefore leaves either the complete previous file or the complete new one. A destination
that exists and is not a regular file (``/dev/null``, a FIFO, a terminal) is written in place:
renaming over it would replace the device node. A symbolic link is followed: the file it
points to is replaced, the link stays.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

from forensics.errors import BadInputError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def missing_message(path: str | os.PathLike[str]) -> str:
    """'PATH: no such file', or the dangling link's target when PATH is one."""
    p = os.fspath(path)
    if os.path.islink(p):
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return f"{p}: dangling symbolic link (to {target!r}, which does not exist)"
    return f"{p}: no such file"


def open_input(path: str | os.PathLike[str], what: str = "file", *, stream_ok: bool = False) -> IO[bytes]:
    """The file at path opened for binary reading, or a one-line BadInputError saying why not.

    what names the expected content in messages ("trace", "log", ...). stream_ok: a FIFO or a
    character device (a pipe from another program, /dev/stdin) is accepted and opened
    blocking, as `cat` would; otherwise only a regular file is."""
    p = os.fspath(path)
    try:
        if stat.S_ISFIFO(os.stat(p).st_mode):
            if not stream_ok:
                raise BadInputError(f"{p}: is {_kind(stat.S_IFIFO)}, not a {what} file")
            # a stream reader waits for the writer, as `cat` would (never opened non-blocking first:
            # that would let a writer in and out before the real open, and its data would be lost)
            return open(p, "rb")
    except OSError:
        pass  # the open below says what is wrong
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInputError(missing_message(p)) from None
    except IsADirectoryError:
        raise BadInputError(f"{p}: is a directory, not a {what}") from None
    except PermissionError:
        raise BadInputError(f"{p}: cannot read: permission denied") from None
    except OSError as exc:
        raise BadInputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadInputError(f"{p}: is a directory, not a {what}")
        if not stat.S_ISREG(mode) and not (stream_ok and stat.S_ISCHR(mode)):
            raise BadInputError(f"{p}: is {_kind(mode)}, not a {what} file")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        fh = os.fdopen(fd, "rb")
        fd = -1
        return fh
    finally:
        if fd >= 0:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A file written whole or not at all (see the module docstring).

    ``path`` is the destination; ``file`` the open temporary file (binary, or text with
    ``encoding``); ``commit()`` renames it into place, ``discard()`` removes it. Errors are
    BadInputError naming the destination."""

    def __init__(self, path: str | os.PathLike[str], *, text: bool = False, encoding: str = "utf-8",
                 newline: str | None = "\n", buffering: int = -1) -> None:
        self.path = Path(path)
        target = self.path
        if target.is_symlink():
            target = Path(os.path.realpath(target))
        self.target = target
        self.tmp: Path | None = None
        direct = False
        try:
            direct = target.exists() and not target.is_file()
        except OSError:
            direct = False
        mode = ("w" if text else "wb")
        kwargs: dict[str, Any] = {"encoding": encoding, "newline": newline} if text else {}
        try:
            if direct:
                self.file: IO[Any] = open(target, mode, buffering=buffering, **kwargs)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=str(target.parent))
                self.tmp = Path(tmp)
                self.file = os.fdopen(fd, mode, buffering=buffering, **kwargs)
        except IsADirectoryError:
            raise BadInputError(f"{self.path}: is a directory; name the file to write") from None
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def commit(self) -> None:
        """Flush, close and rename the temporary file into place."""
        f = self.file
        try:
            if not f.closed:
                f.close()
            if self.tmp is not None:
                os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp made it 0600: an output is an ordinary file
                os.replace(self.tmp, self.target)
                self.tmp = None
        except OSError as exc:
            self.discard()
            raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def discard(self) -> None:
        """Close and remove the temporary file; the destination keeps what it had."""
        try:
            if not self.file.closed:
                self.file.close()
        except OSError:
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.discard()
            raise BadInputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with AtomicOutput(path) as out:
        out.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with AtomicOutput(path, text=True) as out:
        out.write(text)


__all__ = [
    "AtomicOutput",
    "missing_message",
    "open_input",
    "write_bytes_atomic",
    "write_text_atomic",
]
