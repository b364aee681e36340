"""Host frames with a memory error map, a frame allocator, and guest page maps.

A host frame is one 4 KiB page. A frame that was never written, or was
last written with zeros, has no stored contents and reads as zeros.
"""

from __future__ import annotations

import heapq

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._frames import PAGE_SIZE_BYTES, FrameStore, SparseFrameStore

ZERO_PAGE = bytes(PAGE_SIZE_BYTES)


class FrameError(enum.Enum):
    """State of one host frame in the memory error map."""

    NONE = "none"
    # Reported by the hardware (a machine check or a patrol scrub found it).
    UNCORRECTABLE = "uncorrectable"
    # Present in the frame but unknown until something reads the frame.
    LATENT = "latent"


class FrameOutOfRange(ValueError):
    """A host frame number outside the host's memory."""

    def __init__(self, frame: int, frame_count: int) -> None:
        self.frame = frame
        self.frame_count = frame_count
        super().__init__(f"host frame {frame!r} is out of range: the host has frames 0..{frame_count - 1}")


class GuestPageOutOfRange(ValueError):
    """A guest page number outside the VM's memory."""

    def __init__(self, vm_id: str, guest_page: int, page_count: int) -> None:
        self.vm_id = vm_id
        self.guest_page = guest_page
        self.page_count = page_count
        super().__init__(
            f"guest page {guest_page!r} of VM {vm_id!r} is out of range: the VM has pages 0..{page_count - 1}"
        )


class OutOfHostFrames(RuntimeError):
    """The host has fewer free frames than requested; place the VM elsewhere."""

    def __init__(self, requested: int, free: int) -> None:
        self.requested = requested
        self.free = free
        super().__init__(f"host has {free} free frames, {requested} requested")


class MachineCheck(Exception):
    """A guest access consumed poisoned memory; deliver a machine check to that VM.

    This is the guest's fault to handle, never a host failure.
    """

    def __init__(self, vm_id: str, guest_page: int, host_frame: int) -> None:
        self.vm_id = vm_id
        self.guest_page = guest_page
        self.host_frame = host_frame
        super().__init__(f"machine check in VM {vm_id!r}: guest page {guest_page} (host frame {host_frame}) is poisoned")


def _check_frame(frame: object, frame_count: int) -> int:
    if type(frame) is not int or not 0 <= frame < frame_count:
        raise FrameOutOfRange(frame, frame_count)  # type: ignore[arg-type]
    return frame


class MemoryErrorMap:
    """Per host frame: no error, a known uncorrectable error, or a latent error."""

    def __init__(self, frame_count: int) -> None:
        if type(frame_count) is not int or frame_count <= 0:
            raise ValueError(f"invalid frame_count {frame_count!r}: expected a positive int")
        self.frame_count = frame_count
        self._errors: dict[int, FrameError] = {}

    def inject(self, frame: int, *, latent: bool = False) -> None:
        """Record an uncorrectable error on a frame, known now or latent until read."""
        _check_frame(frame, self.frame_count)
        if self._errors.get(frame) is FrameError.UNCORRECTABLE:
            return
        self._errors[frame] = FrameError.LATENT if latent else FrameError.UNCORRECTABLE

    def state(self, frame: int) -> FrameError:
        _check_frame(frame, self.frame_count)
        return self._errors.get(frame, FrameError.NONE)

    def is_known_bad(self, frame: int) -> bool:
        return self._errors.get(frame) is FrameError.UNCORRECTABLE

    def discover(self, frame: int) -> None:
        """Turn a latent error into a known one after a read hit it."""
        _check_frame(frame, self.frame_count)
        self._errors[frame] = FrameError.UNCORRECTABLE

    def frames_with_errors(self) -> set[int]:
        """Frames with a known or a latent error."""
        return set(self._errors)

    def known_frames(self) -> frozenset[int]:
        return frozenset(f for f, e in self._errors.items() if e is FrameError.UNCORRECTABLE)

    def latent_frames(self) -> frozenset[int]:
        return frozenset(f for f, e in self._errors.items() if e is FrameError.LATENT)


class HostMemory:
    """The frames of one host: contents, the error map and a frame allocator.

    `poisoned` frames are known uncorrectable frames plus frames whose
    contents were lost elsewhere (an error record received in a migration).
    The second kind is a property of the contents, so freeing the frame
    clears it, while the hardware error stays in the error map.
    """

    def __init__(self, frame_count: int, store: FrameStore | None = None) -> None:
        self.errors = MemoryErrorMap(frame_count)
        self.frame_count = frame_count
        self._contents: FrameStore = SparseFrameStore() if store is None else store
        self._lost_contents: set[int] = set()
        # Free frames are the freed ones (a min-heap, all below the cursor) plus every
        # frame from the cursor up, so a host of any size costs nothing until used.
        # Allocation drops known-bad frames from both for good.
        self._freed: list[int] = []
        self._next_unused = 0
        self._allocated: set[int] = set()

    @property
    def free_frame_count(self) -> int:
        return self.frame_count - len(self._allocated)

    def allocate(self, count: int) -> list[int]:
        """Allocate the `count` lowest free frames, skipping frames with a known error."""
        if type(count) is not int or count < 0:
            raise ValueError(f"invalid frame count {count!r}: expected a non-negative int")
        usable = self.free_frame_count - sum(1 for f in self.errors.known_frames() if f not in self._allocated)
        if usable < count:
            raise OutOfHostFrames(count, usable)
        bad = self.errors.known_frames()
        allocated: list[int] = []
        while len(allocated) < count:
            need = count - len(allocated)
            candidates: Iterable[int]
            if len(self._freed) > need:
                candidates = [heapq.heappop(self._freed) for _ in range(need)]
            elif self._freed:
                candidates, self._freed = sorted(self._freed), []
            else:
                candidates = range(self._next_unused, self._next_unused + need)
                self._next_unused += need
            # Known-bad frames leave the free pool for good.
            allocated.extend(frame for frame in candidates if frame not in bad)
        self._allocated.update(allocated)
        return allocated

    def free(self, frames: Iterable[int]) -> None:
        """Return allocated frames to the pool; raises, freeing none, if any is not allocated."""
        frames = list(frames)
        unknown = set(frames).difference(self._allocated)
        if unknown or len(set(frames)) != len(frames):
            frame = next((f for f in frames if f in unknown), None)
            if frame is None:
                raise ValueError("a host frame is listed twice")
            _check_frame(frame, self.frame_count)
            raise ValueError(f"host frame {frame} is not allocated")
        self._allocated.difference_update(frames)
        self._contents.write_many(frames, [None] * len(frames))
        self._lost_contents.difference_update(frames)
        self._freed.extend(frames)
        heapq.heapify(self._freed)

    def is_poisoned(self, frame: int) -> bool:
        return frame in self._lost_contents or self.errors.is_known_bad(frame)

    def mark_contents_lost(self, frame: int) -> None:
        """Poison a frame whose contents were lost on another host."""
        _check_frame(frame, self.frame_count)
        self._contents.clear(frame)
        self._lost_contents.add(frame)

    def write_frame(self, frame: int, data: bytes | memoryview) -> None:
        """Store a page; the frame stops being poisoned by lost contents."""
        self._lost_contents.discard(frame)
        if data == ZERO_PAGE:
            self._contents.clear(frame)
        else:
            self._contents.write(frame, data)

    def read_frame(self, frame: int) -> bytes | memoryview | None:
        """Return the frame's contents, or None for a zero page. Checks no errors."""
        return self._contents.read(frame)

    def read_frames(self, frames: Sequence[int]) -> list[bytes | memoryview | None]:
        """Return the contents of each frame as read_frame() does."""
        return self._contents.read_many(frames)

    def copy_mc(self, frame: int) -> tuple[bytes | memoryview | None, int]:
        """Read a frame the way Linux `copy_mc_to_kernel()` does.

        Returns (data, bytes_not_copied). A latent error does not crash the
        reader: it is recorded in the error map as known, and the result is
        (None, PAGE_SIZE_BYTES). A zero page returns (None, 0).
        """
        state = self.errors.state(frame)
        if state is FrameError.NONE and frame not in self._lost_contents:
            return self._contents.read(frame), 0
        if state is FrameError.LATENT:
            self.errors.discover(frame)
        return None, PAGE_SIZE_BYTES

    def read_many_for_migration(self, frames: Sequence[int]) -> tuple[list[bytes | memoryview | None], dict[int, bool]]:
        """Read frames as copy_mc() does, for a migration batch.

        Returns the contents by position (None for a zero page and for an
        unreadable frame) and, for each position whose frame is poisoned or
        held a latent error, whether this read discovered the error.
        """
        contents = self._contents.read_many(frames)
        unreadable: dict[int, bool] = {}
        suspects = self.errors.frames_with_errors()
        suspects.update(self._lost_contents)
        if suspects.isdisjoint(frames):
            return contents, unreadable
        for index, frame in enumerate(frames):
            if frame in suspects:
                was_latent = self.errors.state(frame) is FrameError.LATENT
                data, not_copied = self.copy_mc(frame)
                if not_copied:
                    contents[index] = None
                    unreadable[index] = was_latent
        return contents, unreadable

    def write_many(self, frames: Sequence[int], contents: Sequence[bytes | memoryview | None]) -> None:
        """Store pages by position (None for a zero page), as write_frame() does for each."""
        if self._lost_contents:
            self._lost_contents.difference_update(frames)
        zero = ZERO_PAGE
        self._contents.write_many(frames, [None if data is None or data == zero else data for data in contents])

    def materialized_frame_count(self) -> int:
        return self._contents.materialized_count()


class GuestPageMap(Protocol):
    """Guest page to host frame translation (a VM's stage-2 mapping)."""

    page_count: int

    def host_frame(self, guest_page: int) -> int: ...


@dataclass(frozen=True)
class AllocatedPageMap:
    """A guest page map backed by frames taken from a host allocator."""

    frames: tuple[int, ...]

    @classmethod
    def allocate(cls, host: HostMemory, page_count: int) -> AllocatedPageMap:
        return cls(tuple(host.allocate(page_count)))

    @property
    def page_count(self) -> int:
        return len(self.frames)

    def host_frame(self, guest_page: int) -> int:
        return self.frames[guest_page]
