"""A VM's guest memory: guest pages on host frames, with dirty logging."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ._checksums import ZERO_PAGE_CHECKSUM, page_checksum
from ._memory import (
    PAGE_SIZE_BYTES,
    ZERO_PAGE,
    FrameError,
    GuestPageMap,
    GuestPageOutOfRange,
    HostMemory,
    MachineCheck,
)


class PageKind(enum.IntEnum):
    """Kind of a sent page record. The values are the record kinds on the wire."""

    DATA = 1
    ZERO = 2
    ERROR = 3


@dataclass(frozen=True, slots=True)
class SafeRead:
    """The result of an error-safe read of one guest page."""

    kind: PageKind
    # A view into an arena store is live: copy it before the page can change.
    data: bytes | memoryview | None
    # True when this read hit a latent error and added it to the error map.
    discovered_error: bool = False


class GuestMemory:
    """Guest-physical memory of one VM, backed by frames of one host."""

    def __init__(self, vm_id: str, host: HostMemory, page_map: GuestPageMap) -> None:
        if not isinstance(vm_id, str) or not vm_id:
            raise ValueError(f"invalid vm_id {vm_id!r}: expected a non-empty string")
        self.vm_id = vm_id
        self.host = host
        self.page_map = page_map
        self.page_count = page_map.page_count
        self._dirty: set[int] | None = None

    @property
    def size_bytes(self) -> int:
        return self.page_count * PAGE_SIZE_BYTES

    def host_frame(self, guest_page: int) -> int:
        self.check_page(guest_page)
        return self.page_map.host_frame(guest_page)

    def host_frames(self, guest_pages: Sequence[int]) -> list[int]:
        """Host frames of pages already checked with check_page(), in order."""
        frames = getattr(self.page_map, "frames", None)
        if frames is not None:
            return [frames[page] for page in guest_pages]
        host_frame = self.page_map.host_frame
        return [host_frame(page) for page in guest_pages]

    def check_page(self, guest_page: object) -> int:
        if type(guest_page) is not int or not 0 <= guest_page < self.page_count:
            raise GuestPageOutOfRange(self.vm_id, guest_page, self.page_count)  # type: ignore[arg-type]
        return guest_page

    # Guest accesses.

    def read(self, guest_page: int) -> bytes:
        """Read a page as the guest does; a poisoned page raises MachineCheck."""
        frame = self.host_frame(guest_page)
        data, not_copied = self.host.copy_mc(frame)
        if not_copied:
            raise MachineCheck(self.vm_id, guest_page, frame)
        return ZERO_PAGE if data is None else bytes(data)

    def write(self, guest_page: int, data: bytes) -> None:
        """Write a whole page as the guest does.

        A page with a known error is unmapped from the guest, so writing it
        raises MachineCheck. A latent error is not detected by a write.
        """
        frame = self.host_frame(guest_page)
        if len(data) != PAGE_SIZE_BYTES:
            raise ValueError(f"invalid page length {len(data)}: expected {PAGE_SIZE_BYTES} bytes")
        if self.host.is_poisoned(frame):
            raise MachineCheck(self.vm_id, guest_page, frame)
        self.host.write_frame(frame, data)
        if self._dirty is not None:
            self._dirty.add(guest_page)

    # Dirty logging.

    def start_dirty_log(self) -> None:
        self._dirty = set()

    def stop_dirty_log(self) -> None:
        self._dirty = None

    def sync_dirty(self) -> list[int]:
        """Return the pages written since the last sync, ascending, and clear the log."""
        if self._dirty is None:
            raise RuntimeError(f"dirty logging is off for VM {self.vm_id!r}: call start_dirty_log() first")
        pages = sorted(self._dirty)
        self._dirty = set()
        return pages

    # Migration source and destination.

    def read_for_migration(self, guest_page: int) -> SafeRead:
        """Read a page without crashing on its errors.

        A known bad page is an ERROR record without being read. Any other
        page is read with copy_mc semantics, so a latent error becomes a
        known error in the host's error map and an ERROR record.
        """
        frame = self.page_map.host_frame(guest_page)
        host = self.host
        if host.is_poisoned(frame):
            return SafeRead(PageKind.ERROR, None)
        was_latent = host.errors.state(frame) is FrameError.LATENT
        data, not_copied = host.copy_mc(frame)
        if not_copied:
            return SafeRead(PageKind.ERROR, None, discovered_error=was_latent)
        if data is None:
            return SafeRead(PageKind.ZERO, None)
        return SafeRead(PageKind.DATA, data)

    def store_page(self, guest_page: int, data: bytes | memoryview) -> None:
        """Store a received page; it replaces any poison from an earlier error record."""
        self.host.write_frame(self.page_map.host_frame(guest_page), data)

    def store_zero(self, guest_page: int) -> None:
        self.host.write_frame(self.page_map.host_frame(guest_page), ZERO_PAGE)

    def poison_page(self, guest_page: int) -> None:
        """Back a page whose contents were lost with a poisoned frame."""
        self.host.mark_contents_lost(self.page_map.host_frame(guest_page))

    # Inspection.

    def poisoned_pages(self) -> set[int]:
        """Guest pages whose frame is poisoned or has a latent error."""
        errors = self.host.errors
        result = set()
        for page in range(self.page_count):
            frame = self.page_map.host_frame(page)
            if self.host.is_poisoned(frame) or errors.state(frame) is FrameError.LATENT:
                result.add(page)
        return result

    def page_digests(self) -> dict[int, bytes]:
        """Checksums (XXH3-128) of every readable page, keyed by guest page.

        Pages with a known or latent error are left out. The host's own view
        is used, so the check discovers no latent error.
        """
        poisoned = self.poisoned_pages()
        digests = {}
        for page in range(self.page_count):
            if page in poisoned:
                continue
            data = self.host.read_frame(self.page_map.host_frame(page))
            digests[page] = ZERO_PAGE_CHECKSUM if data is None else page_checksum(data)
        return digests
