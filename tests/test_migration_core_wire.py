"""Page-record batches: encoding, strict decoding and the destination's apply."""

import struct

import pytest

from agents.migration_core import (
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    GuestMemory,
    GuestPageOutOfRange,
    HostMemory,
    MalformedPageBatch,
    PageKind,
    PageRecord,
    PrecopyDestination,
    apply_batch,
    decode_batch,
    encode_batch,
    encode_pages,
    page_content,
)


def make_vm(page_count=16, vm_id="vm-1"):
    host = HostMemory(page_count * 2)
    return GuestMemory(vm_id, host, AllocatedPageMap.allocate(host, page_count))


def sample_batch():
    return encode_batch([
        PageRecord(PageKind.DATA, 1, page_content(1, 0)),
        PageRecord(PageKind.ZERO, 2),
        PageRecord(PageKind.ERROR, 3),
    ])


def test_batch_round_trip():
    records = decode_batch(sample_batch())
    assert [(r.kind, r.guest_page) for r in records] == [(PageKind.DATA, 1), (PageKind.ZERO, 2), (PageKind.ERROR, 3)]
    assert bytes(records[0].data) == page_content(1, 0)
    assert records[1].data is None
    assert records[2].data is None


def test_empty_batch_round_trip():
    assert decode_batch(encode_batch([])) == []


def test_encode_rejects_short_data():
    with pytest.raises(ValueError, match="page 4: 100 bytes"):
        encode_batch([PageRecord(PageKind.DATA, 4, b"x" * 100)])


def test_encode_rejects_data_on_error_record():
    with pytest.raises(ValueError, match="ERROR record for page 4"):
        encode_batch([PageRecord(PageKind.ERROR, 4, page_content(4, 0))])


def test_encode_rejects_plain_int_kind():
    with pytest.raises(ValueError, match="invalid record kind 1"):
        encode_batch([PageRecord(1, 4, page_content(4, 0))])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "shorter than"),
        (b"XXXX" + sample_batch()[4:], "magic"),
        (sample_batch()[:4] + b"\x02" + sample_batch()[5:], "unsupported version 2"),
        (sample_batch()[:5] + b"\x01" + sample_batch()[6:], "flags"),
        (sample_batch()[:-1], "truncated"),
        (sample_batch()[:100], "has 81 of 4096 bytes"),
        (sample_batch() + b"\x00", "1 bytes after the last"),
        (struct.pack(">4sBBI", b"DCPR", 1, 0, 1000) + b"\x02" + bytes(8), "record count 1000"),
        (struct.pack(">4sBBI", b"DCPR", 1, 0, 1) + b"\x09" + bytes(8), "unknown kind 9"),
    ],
)
def test_decode_rejects_malformed_batch(payload, reason):
    with pytest.raises(MalformedPageBatch, match=reason):
        decode_batch(payload)


def test_decode_rejects_non_bytes():
    with pytest.raises(MalformedPageBatch, match="payload is str"):
        decode_batch("DCPR")


def test_encode_pages_splits_batches():
    vm = make_vm(page_count=10)
    for page in range(0, 10, 2):
        vm.write(page, page_content(page, 0))
    batches = list(encode_pages(vm, range(10), records_per_batch=4))
    assert [len(decode_batch(b.payload)) for b in batches] == [4, 4, 2]
    assert sum(b.normal_pages for b in batches) == 5
    assert sum(b.zero_pages for b in batches) == 5


def test_encode_pages_sends_bad_pages_as_error_records():
    vm = make_vm()
    vm.write(2, page_content(2, 0))
    vm.host.errors.inject(vm.host_frame(2))
    vm.host.errors.inject(vm.host_frame(5), latent=True)
    (batch,) = encode_pages(vm, range(16))
    assert batch.error_pages == (2, 5)
    assert batch.discovered_error_pages == (5,)
    kinds = {r.guest_page: r.kind for r in decode_batch(batch.payload)}
    assert kinds[2] is PageKind.ERROR
    assert kinds[5] is PageKind.ERROR


def test_encode_pages_rejects_out_of_range_page():
    with pytest.raises(GuestPageOutOfRange):
        list(encode_pages(make_vm(page_count=4), [0, 4]))


def test_apply_stores_pages_and_poison():
    destination = make_vm()
    destination.write(2, page_content(2, 9))
    applied = apply_batch(destination, sample_batch())
    assert applied.normal_pages == 1
    assert applied.zero_pages == 1
    assert applied.error_pages == (3,)
    assert destination.read(1) == page_content(1, 0)
    assert destination.read(2) == bytes(PAGE_SIZE_BYTES)
    assert destination.poisoned_pages() == {3}


def test_apply_rejects_out_of_range_page():
    destination = make_vm(page_count=4)
    payload = encode_batch([PageRecord(PageKind.DATA, 0, page_content(0, 0)), PageRecord(PageKind.ZERO, 4)])
    with pytest.raises(GuestPageOutOfRange) as caught:
        apply_batch(destination, payload)
    assert caught.value.guest_page == 4
    assert destination.read(0) == bytes(PAGE_SIZE_BYTES)


def test_destination_rejects_malformed_batch_and_stores_nothing():
    destination = make_vm()
    receiver = PrecopyDestination(destination)
    with pytest.raises(MalformedPageBatch):
        receiver.apply(sample_batch()[:-1])
    assert destination.host.materialized_frame_count() == 0
    assert destination.poisoned_pages() == set()
    assert receiver.batches == 0


def test_encoder_puts_data_records_first():
    vm = make_vm(page_count=8)
    for page in (1, 3, 6):
        vm.write(page, page_content(page, 0))
    vm.host.errors.inject(vm.host_frame(5))
    (batch,) = encode_pages(vm, range(8))
    records = decode_batch(batch.payload)
    assert [r.guest_page for r in records[:3]] == [1, 3, 6]
    assert all(r.kind is PageKind.DATA for r in records[:3])
    assert {r.kind for r in records[3:]} == {PageKind.ZERO, PageKind.ERROR}


def test_encoder_keeps_order_of_a_page_sent_twice():
    vm = make_vm(page_count=4)
    vm.write(2, page_content(2, 0))
    (batch,) = encode_pages(vm, [0, 2, 0])
    assert [r.guest_page for r in decode_batch(batch.payload)] == [0, 2, 0]


def test_data_after_zero_records_decodes_the_slow_way():
    payload = encode_batch([
        PageRecord(PageKind.ZERO, 2),
        PageRecord(PageKind.DATA, 1, page_content(1, 0)),
        PageRecord(PageKind.ERROR, 3),
        PageRecord(PageKind.DATA, 0, page_content(0, 0)),
    ])
    records = decode_batch(payload)
    assert [(r.kind, r.guest_page) for r in records] == [
        (PageKind.ZERO, 2), (PageKind.DATA, 1), (PageKind.ERROR, 3), (PageKind.DATA, 0)]
    assert bytes(records[3].data) == page_content(0, 0)


def test_data_first_layout_with_bad_kind_is_rejected():
    # The size fits two DATA records first, but the first kind byte is not DATA.
    payload = bytearray(encode_batch([
        PageRecord(PageKind.DATA, 1, page_content(1, 0)),
        PageRecord(PageKind.DATA, 2, page_content(2, 0)),
    ]))
    payload[10] = 9
    with pytest.raises(MalformedPageBatch, match="record 0 has unknown kind 9"):
        decode_batch(bytes(payload))


def test_apply_matches_record_order_with_error_records():
    destination = make_vm(page_count=4)
    payload = encode_batch([
        PageRecord(PageKind.ERROR, 1),
        PageRecord(PageKind.DATA, 1, page_content(1, 0)),
        PageRecord(PageKind.DATA, 2, page_content(2, 0)),
        PageRecord(PageKind.ERROR, 2),
    ])
    applied = apply_batch(destination, payload)
    assert applied.error_pages == (1, 2)
    assert destination.read(1) == page_content(1, 0)
    assert destination.poisoned_pages() == {2}
