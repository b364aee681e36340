"""Storage for the contents of host frames.

A frame without stored contents reads as zeros in both stores, so a zero
page is never kept as bytes.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Protocol

PAGE_SIZE_BYTES = 4096


class FrameStore(Protocol):
    def read(self, frame: int) -> bytes | memoryview | None: ...

    def read_many(self, frames: Sequence[int]) -> list[bytes | memoryview | None]: ...

    def write(self, frame: int, data: bytes | memoryview) -> None: ...

    def write_many(self, frames: Sequence[int], contents: Sequence[bytes | memoryview | None]) -> None: ...

    def clear(self, frame: int) -> None: ...

    def materialized_count(self) -> int: ...


class SparseFrameStore:
    """One bytes object per non-zero frame: memory grows with the data, not the host size."""

    def __init__(self) -> None:
        self._pages: dict[int, bytes] = {}

    def read(self, frame: int) -> bytes | None:
        return self._pages.get(frame)

    def read_many(self, frames: Sequence[int]) -> list[bytes | None]:
        get = self._pages.get
        return [get(frame) for frame in frames]

    def write(self, frame: int, data: bytes | memoryview) -> None:
        self._pages[frame] = data if type(data) is bytes else bytes(data)

    def write_many(self, frames: Sequence[int], contents: Sequence[bytes | memoryview | None]) -> None:
        """Store pages by position; None clears a frame."""
        pages = self._pages
        for frame, data in zip(frames, contents):
            if data is None:
                pages.pop(frame, None)
            else:
                pages[frame] = data if type(data) is bytes else bytes(data)

    def clear(self, frame: int) -> None:
        self._pages.pop(frame, None)

    def materialized_count(self) -> int:
        return len(self._pages)


class ArenaFrameStore:
    """All frames in one anonymous mapping, as a host's physical memory.

    The kernel backs a page of the mapping only once it is written, unless
    `prefault` populates the whole mapping up front (MAP_POPULATE), which
    moves the page-fault cost out of the copy, as QEMU's -mem-prealloc does
    for guest RAM. `read` returns a live view: copy it to keep the bytes.
    """

    def __init__(self, frame_count: int, *, prefault: bool = False) -> None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if prefault:
            flags |= mmap.MAP_POPULATE
        self._arena = mmap.mmap(-1, frame_count * PAGE_SIZE_BYTES, flags=flags)
        self._view = memoryview(self._arena)
        self._nonzero: set[int] = set()

    def read(self, frame: int) -> memoryview | None:
        if frame not in self._nonzero:
            return None
        offset = frame * PAGE_SIZE_BYTES
        return self._view[offset:offset + PAGE_SIZE_BYTES]

    def read_many(self, frames: Sequence[int]) -> list[memoryview | None]:
        nonzero, view, size = self._nonzero, self._view, PAGE_SIZE_BYTES
        return [view[frame * size:(frame + 1) * size] if frame in nonzero else None for frame in frames]

    def write(self, frame: int, data: bytes | memoryview) -> None:
        offset = frame * PAGE_SIZE_BYTES
        self._view[offset:offset + PAGE_SIZE_BYTES] = data
        self._nonzero.add(frame)

    def write_many(self, frames: Sequence[int], contents: Sequence[bytes | memoryview | None]) -> None:
        """Store pages by position; None clears a frame."""
        nonzero, view, size = self._nonzero, self._view, PAGE_SIZE_BYTES
        for frame, data in zip(frames, contents):
            if data is None:
                nonzero.discard(frame)
            else:
                view[frame * size:(frame + 1) * size] = data
                nonzero.add(frame)

    def clear(self, frame: int) -> None:
        self._nonzero.discard(frame)

    def materialized_count(self) -> int:
        return len(self._nonzero)

