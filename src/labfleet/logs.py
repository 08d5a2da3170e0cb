"""Run logs in bounded space: a capped writer and the one bounded reader.

A run's output can be anything (300 MB in under a second is easy). ``CappedLog``
keeps the first ``head`` bytes on disk as they arrive (so a live tail works) and
only the last ``tail`` bytes in memory; when the run ends it appends a line
stating how many bytes were cut, then the tail. ``run.log`` never grows past
``head + tail`` plus that line, and the harness never holds more than ``tail``.

Everyone who reads a log (the harness's metric parser, ``show``, the LLM
researcher's repair prompt, the Ray executor's shipping) goes through
``read_bounded`` or ``tail_lines``: never a whole-file read.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

LOG_HEAD_BYTES = 2 * 1024 * 1024  # kept from the start of the output, written as it arrives
LOG_TAIL_BYTES = 2 * 1024 * 1024  # kept from the end (the metric block is there)
TAIL_READ_BYTES = 64 * 1024  # what a few-lines tail reads from the end of a file


class CappedLog:
    """Append-only output sink: the head goes straight to disk, the tail waits in a ring."""

    def __init__(self, path: Path, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> None:
        self.path = path
        self._file = path.open("ab", buffering=0)
        self._room = max(0, head - self._file.tell())  # bytes of head still free
        self._head, self._tail = head, tail
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_bytes = 0
        self.cut = 0  # bytes dropped between head and tail
        self.total = 0  # bytes received

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self._room:
            now, data = data[: self._room], data[self._room :]
            self._file.write(now)
            self._room -= len(now)
        if not data:
            return
        self._ring.append(data)
        self._ring_bytes += len(data)
        while self._ring_bytes > self._tail:
            extra = self._ring_bytes - self._tail
            first = self._ring[0]
            if len(first) <= extra:
                self._ring.popleft()
                self._ring_bytes -= len(first)
                self.cut += len(first)
            else:
                self._ring[0] = first[extra:]
                self._ring_bytes -= extra
                self.cut += extra

    def close(self) -> None:
        """Write the cut notice (if anything was cut) and the tail; idempotent."""
        if self._file.closed:
            return
        if self.cut:
            self._file.write(
                f"\n[labfleet: {self.cut} bytes of output cut here; the log keeps the first "
                f"{self._head} and the last {self._tail} bytes]\n".encode()
            )
        while self._ring:
            self._file.write(self._ring.popleft())
        self._ring_bytes = 0
        self._file.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_bounded(path: Path, limit: int = LOG_HEAD_BYTES + LOG_TAIL_BYTES + 4096) -> str:
    """A file's text, or its first and last ``limit / 2`` bytes with the cut stated; '' if absent."""
    try:
        with Path(path).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= limit:
                return f.read(limit).decode(errors="replace")
            half = limit // 2
            head = f.read(half)
            f.seek(size - half)
            tail = f.read(half)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return ""
    cut = size - 2 * half
    return (head.decode(errors="replace") + f"\n[labfleet: {cut} bytes not read here]\n"
            + tail.decode(errors="replace"))


def tail_bytes(path: Path | str, limit: int) -> str:
    """The last ``limit`` bytes of a file as text ('' if absent)."""
    try:
        with Path(path).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - limit))
            return f.read(limit).decode(errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return ""


def tail_lines(path: Path | str | None, lines: int, max_bytes: int = TAIL_READ_BYTES) -> str:
    """The last ``lines`` lines of a file, reading at most ``max_bytes`` from its end."""
    if not path:
        return ""
    return "\n".join(tail_bytes(path, max_bytes).splitlines()[-lines:])
