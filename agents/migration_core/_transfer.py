"""Page batches between guest memory and the wire: the source's encoder and the destination's apply.

Both sides can fill a PageChecksums table as they go, so the digest that
proves the copy complete hashes the table instead of rereading memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ._checksums import CHECKSUM_BYTES, NO_CHECKSUM, ZERO_PAGE_CHECKSUM, page_checksum
from ._guest import GuestMemory, PageKind
from ._memory import GuestPageOutOfRange
from ._wire import BATCH_HEADER, MAGIC, RECORD_HEADER, WIRE_VERSION, decode_batch, decode_columns

# 128 data records are 525,450 bytes, under nats-server's default 1 MiB max_payload
# with room for the envelope.
DEFAULT_RECORDS_PER_BATCH = 128

_DATA, _ZERO, _ERROR = PageKind.DATA, PageKind.ZERO, PageKind.ERROR


class PageChecksums:
    """The checksum of each guest page as a migration last sent or received it.

    The table contains the pages' checksums in page order, the input of
    `digest_checksums`, so `digest()` equals the digest of memory holding
    those pages while hashing only the table. A page not yet recorded has
    NO_CHECKSUM, which no page's XXH3-128 equals in practice, so a page that
    never arrived makes digests differ.
    """

    def __init__(self, vm_id: str, page_count: int) -> None:
        if type(page_count) is not int or page_count <= 0:
            raise ValueError(f"invalid page_count {page_count!r}: expected a positive int")
        self.vm_id = vm_id
        self.page_count = page_count
        self.table = bytearray(page_count * CHECKSUM_BYTES)
        # Pages whose latest record was an ERROR record: their contents are lost.
        self.error_pages: set[int] = set()

    def record(self, guest_page: int, kind: PageKind, data: bytes | memoryview | None = None) -> None:
        """Record one page: its data's checksum, the zero page's checksum, or lost contents (ERROR)."""
        offset = guest_page * CHECKSUM_BYTES
        if kind is _DATA:
            self.table[offset:offset + CHECKSUM_BYTES] = page_checksum(data)
            self.error_pages.discard(guest_page)
        elif kind is _ZERO:
            self.table[offset:offset + CHECKSUM_BYTES] = ZERO_PAGE_CHECKSUM
            self.error_pages.discard(guest_page)
        else:
            self.table[offset:offset + CHECKSUM_BYTES] = NO_CHECKSUM
            self.error_pages.add(guest_page)

    def record_batch(self, payload: bytes | bytearray | memoryview) -> None:
        """Record every page of one encoded batch, in record order.

        Raises MalformedPageBatch or GuestPageOutOfRange, having recorded
        nothing, for a batch the destination's apply would refuse.
        """
        records = decode_batch(payload)
        for record in records:
            if record.guest_page >= self.page_count:
                raise GuestPageOutOfRange(self.vm_id, record.guest_page, self.page_count)
        for kind, page, data in records:
            self.record(page, kind, data)

    def digest(self, excluded_pages: Iterable[int]) -> str:
        """BLAKE2b-256 over the table with NO_CHECKSUM for each page in `excluded_pages`, as hex."""
        skipped = sorted({page for page in excluded_pages if 0 <= page < self.page_count})
        view = memoryview(self.table)
        digest = hashlib.blake2b(digest_size=32)
        start = 0
        for page in skipped:
            digest.update(view[start * CHECKSUM_BYTES:page * CHECKSUM_BYTES])
            digest.update(NO_CHECKSUM)
            start = page + 1
        digest.update(view[start * CHECKSUM_BYTES:])
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One batch ready to send, with what it contains."""

    payload: bytes
    normal_pages: int
    zero_pages: int
    # Guest pages sent as ERROR records, and those among them whose error this read discovered.
    error_pages: tuple[int, ...]
    discovered_error_pages: tuple[int, ...]


def encode_pages(
    memory: GuestMemory,
    guest_pages: Iterable[int],
    *,
    records_per_batch: int = DEFAULT_RECORDS_PER_BATCH,
    checksums: PageChecksums | None = None,
) -> Iterator[EncodedBatch]:
    """Read pages error-safely and yield them as wire batches of at most `records_per_batch` records.

    With `checksums`, each page's checksum as read goes into that table.
    """
    if type(records_per_batch) is not int or records_per_batch <= 0:
        raise ValueError(f"invalid records_per_batch {records_per_batch!r}: expected a positive int")
    _check_table(memory, checksums)
    page_count = memory.page_count
    batch: list[int] = []
    for page in guest_pages:
        if type(page) is not int or not 0 <= page < page_count:
            raise GuestPageOutOfRange(memory.vm_id, page, page_count)
        batch.append(page)
        if len(batch) == records_per_batch:
            yield _encode_one(memory, batch, checksums)
            batch = []
    if batch:
        yield _encode_one(memory, batch, checksums)


def _check_table(memory: GuestMemory, checksums: PageChecksums | None) -> None:
    if checksums is not None and checksums.page_count != memory.page_count:
        raise ValueError(f"checksum table of {checksums.page_count} pages for VM {memory.vm_id!r} "
                         f"of {memory.page_count} pages")


def _encode_one(memory: GuestMemory, guest_pages: list[int], checksums: PageChecksums | None) -> EncodedBatch:
    # Builds the wire layout of encode_batch directly, because this loop is the data path.
    # DATA records come first, so decode_columns() reads them in one unpack. Reordering
    # is safe only for distinct pages, so a batch that repeats a page keeps page order.
    contents, unreadable = memory.host.read_many_for_migration(memory.host_frames(guest_pages))
    parts: list[bytes | memoryview] = [BATCH_HEADER.pack(MAGIC, WIRE_VERSION, 0, len(guest_pages))]
    tail: list[bytes] = parts if len(set(guest_pages)) != len(guest_pages) else []
    append, append_tail = parts.append, tail.append
    pack = RECORD_HEADER.pack
    table = checksums.table if checksums is not None else None
    table_errors = checksums.error_pages if checksums is not None else set()
    normal = zero = 0
    errors: list[int] = []
    discovered: list[int] = []
    for index, page in enumerate(guest_pages):
        data = contents[index]
        offset = page * CHECKSUM_BYTES
        if data is not None:
            append(pack(_DATA, page))
            append(data)
            normal += 1
            if table is not None:
                table[offset:offset + CHECKSUM_BYTES] = page_checksum(data)
        elif index in unreadable:
            append_tail(pack(_ERROR, page))
            errors.append(page)
            if unreadable[index]:
                discovered.append(page)
            if table is not None:
                table[offset:offset + CHECKSUM_BYTES] = NO_CHECKSUM
                table_errors.add(page)
            continue
        else:
            append_tail(pack(_ZERO, page))
            zero += 1
            if table is not None:
                table[offset:offset + CHECKSUM_BYTES] = ZERO_PAGE_CHECKSUM
        if table_errors:
            table_errors.discard(page)
    if tail is not parts:
        parts.extend(tail)
    return EncodedBatch(b"".join(parts), normal, zero, tuple(errors), tuple(discovered))


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    normal_pages: int
    zero_pages: int
    error_pages: tuple[int, ...]


def apply_batch(
    memory: GuestMemory,
    payload: bytes | bytearray | memoryview,
    checksums: PageChecksums | None = None,
) -> AppliedBatch:
    """Decode a batch and store its pages; a bad batch changes nothing.

    With `checksums`, each stored page's checksum goes into that table.
    Raises MalformedPageBatch for bytes that do not decode and
    GuestPageOutOfRange for a page beyond the VM's memory, before any page
    is stored.
    """
    _check_table(memory, checksums)
    kinds, pages, contents = decode_columns(payload)
    page_count = memory.page_count
    if pages and max(pages) >= page_count:
        raise GuestPageOutOfRange(memory.vm_id, next(p for p in pages if p >= page_count), page_count)
    if _ERROR in kinds:
        # Rare: keep record order, so a page sent twice ends as its last record sets it.
        applied = _store_in_order(memory, kinds, pages, contents)
    else:
        memory.host.write_many(memory.host_frames(pages), contents)
        zero = contents.count(None)
        applied = AppliedBatch(len(pages) - zero, zero, ())
    if checksums is not None:
        _record_applied(checksums, kinds, pages, contents)
    return applied


def _store_in_order(memory: GuestMemory, kinds, pages, contents) -> AppliedBatch:
    normal = zero = 0
    errors: list[int] = []
    for kind, page, data in zip(kinds, pages, contents):
        if kind == _DATA:
            memory.store_page(page, data)
            normal += 1
        elif kind == _ZERO:
            memory.store_zero(page)
            zero += 1
        else:
            memory.poison_page(page)
            errors.append(page)
    return AppliedBatch(normal, zero, tuple(errors))


def _record_applied(checksums: PageChecksums, kinds, pages, contents) -> None:
    table, table_errors = checksums.table, checksums.error_pages
    for kind, page, data in zip(kinds, pages, contents):
        offset = page * CHECKSUM_BYTES
        if kind == _DATA:
            table[offset:offset + CHECKSUM_BYTES] = page_checksum(data)
        elif kind == _ZERO:
            table[offset:offset + CHECKSUM_BYTES] = ZERO_PAGE_CHECKSUM
        else:
            table[offset:offset + CHECKSUM_BYTES] = NO_CHECKSUM
            table_errors.add(page)
            continue
        if table_errors:
            table_errors.discard(page)
