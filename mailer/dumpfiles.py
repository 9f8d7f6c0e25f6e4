"""Dump files on disk: the one way one is read, by the pipeline and by
`mailer parse` alike.

`load_dump` never blocks on a FIFO or device and never holds more than the
configured caps, whatever lands in the watch folder.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

from mailer.dumps import ParsedDump, parse_dump
from mailer.errors import DumpError

DEFAULT_MAX_DUMP_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
_CHUNK_BYTES = 1024 * 1024


class UnreadableDumpError(DumpError):
    """The file cannot be opened or read (permissions, vanished); it may be
    readable later, so it is tried again."""


class NotAFileError(DumpError):
    """Not a regular file (a FIFO, socket or device): never read, since
    reading could block for ever or never end."""

    def __init__(self, message: str, *, size: int, mtime_ns: int) -> None:
        super().__init__(message, hint="only regular files are read as dumps")
        self.size = size
        self.mtime_ns = mtime_ns


class OversizeDumpError(DumpError):
    """Over ``[watch] max_dump_bytes`` or ``max_line_bytes``: refused whole,
    like a file that is not a dump. Carries what a refusal records."""

    def __init__(self, message: str, *, hint: str, sha256: str, size: int, mtime_ns: int) -> None:
        super().__init__(message, hint=hint)
        self.sha256 = sha256
        self.size = size
        self.mtime_ns = mtime_ns


@dataclass(frozen=True, slots=True)
class DumpFile:
    """A dump file's bytes (when kept) and what identifies this version of
    it: the hash over what was read, the size read and the mtime when it
    was opened."""

    path: Path
    data: bytearray | None  # not joined into bytes: that would hold a large dump twice
    sha256: str
    size: int
    mtime_ns: int


def load_dump(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_DUMP_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> DumpFile:
    """Read a dump file, or raise a `DumpError` naming it.

    Opened with O_NONBLOCK and checked with fstat, so a FIFO put in its
    place never blocks the caller (`NotAFileError`). Read in chunks: a file
    over either cap is hashed to its end (a refusal is recorded by hash) but
    its bytes are not kept (`OversizeDumpError`).
    """
    with opened_dump(path, max_bytes=max_bytes, max_line_bytes=max_line_bytes, keep=True) as (
        loaded,
        _,
    ):
        return loaded


@contextmanager
def opened_dump(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_DUMP_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    keep: bool = False,
) -> Iterator[tuple[DumpFile, BinaryIO]]:
    """A dump file checked and hashed as `load_dump` does, and the open file
    at its start, to parse from: a large dump is then never held whole
    beside its records, and what is parsed is the file that was hashed
    (`changed_since`), not one swapped in under its name. Its bytes are
    kept in the `DumpFile` only if ``keep``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _unreadable(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotAFileError(
            f"{path}: not a regular file ({_file_kind(st.st_mode)})",
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )
    with os.fdopen(fd, "rb", buffering=_CHUNK_BYTES) as stream:
        loaded = _scan(stream, path, st, max_bytes, max_line_bytes, keep)
        try:
            stream.seek(0)
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        yield loaded, stream


def changed_since(stream: BinaryIO, loaded: DumpFile) -> bool:
    """Whether the open dump's size or mtime differ from when it was hashed:
    a writer still at it; what was parsed may not be what was hashed."""
    st = os.fstat(stream.fileno())
    return (st.st_size, st.st_mtime_ns) != (loaded.size, loaded.mtime_ns)


def _scan(
    stream: BinaryIO,
    path: Path,
    st: os.stat_result,
    max_bytes: int,
    max_line_bytes: int,
    keep: bool,
) -> DumpFile:
    try:
        digest = hashlib.sha256()
        kept: bytearray | None = bytearray() if keep else None
        size = carry = lines = 0
        problem: tuple[str, str] | None = None
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if problem is not None:
                continue
            too_long, carry = _long_line(chunk, carry, lines, max_line_bytes)
            lines += chunk.count(b"\n")
            if too_long is not None:
                problem = (
                    f"{path}:{too_long}: line longer than {max_line_bytes} bytes "
                    "([watch] max_line_bytes); not a Daily Papers dump",
                    "a dump's lines are titles and abstracts; raise [watch] max_line_bytes "
                    "if this really is one",
                )
            elif size > max_bytes:
                problem = (
                    f"{path}: larger than {max_bytes} bytes ([watch] max_dump_bytes); not read",
                    "a day's dump is well under a megabyte; raise [watch] max_dump_bytes "
                    "if this really is one",
                )
            if problem is not None:
                kept = None
            elif kept is not None:
                kept += chunk
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if problem is not None:
        message, hint = problem
        raise OversizeDumpError(
            message, hint=hint, sha256=digest.hexdigest(), size=size, mtime_ns=st.st_mtime_ns
        )
    return DumpFile(path, kept, digest.hexdigest(), size, st.st_mtime_ns)


def read_dump(
    path: Path,
    *,
    today: date,
    max_bytes: int = DEFAULT_MAX_DUMP_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ParsedDump:
    """Read and parse a dump file, as the pipeline does (`opened_dump`)."""
    with opened_dump(path, max_bytes=max_bytes, max_line_bytes=max_line_bytes) as (_, stream):
        return parse_dump(stream, source=str(path), today=today)


def _unreadable(path: Path, exc: OSError) -> UnreadableDumpError:
    return UnreadableDumpError(
        f"{path}: cannot read dump: {exc.strerror or exc}",
        hint="check that the file exists and is readable",
    )


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _long_line(chunk: bytes, carry: int, lines: int, limit: int) -> tuple[int | None, int]:
    """The number of the first line over ``limit`` bytes that this chunk
    ends or extends, and the length of the line it leaves open. ``carry`` is
    the length of the line the previous chunks left open, ``lines`` the
    newlines before this chunk."""
    parts = chunk.split(b"\n")
    if len(parts) == 1:
        carry += len(chunk)
        return (lines + 1 if carry > limit else None), carry
    if carry + len(parts[0]) > limit:
        return lines + 1, 0
    for index, part in enumerate(parts[1:], 1):
        if len(part) > limit:
            return lines + 1 + index, 0
    return None, len(parts[-1])
