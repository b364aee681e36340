"""Host frames, the memory error map, guest memory and the guest workload."""

import pytest

from agents.migration_core import (
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    ArenaFrameStore,
    FrameError,
    FrameOutOfRange,
    GuestMemory,
    GuestPageOutOfRange,
    GuestWorkload,
    HostMemory,
    MachineCheck,
    OutOfHostFrames,
    PageKind,
    page_content,
    populate,
)


def make_vm(frame_count=64, page_count=32, vm_id="vm-1"):
    host = HostMemory(frame_count)
    return GuestMemory(vm_id, host, AllocatedPageMap.allocate(host, page_count))


def test_error_map_rejects_out_of_range_frame():
    host = HostMemory(16)
    with pytest.raises(FrameOutOfRange) as caught:
        host.errors.inject(16)
    assert caught.value.frame == 16
    assert caught.value.frame_count == 16
    with pytest.raises(FrameOutOfRange):
        host.errors.inject(-1)
    with pytest.raises(FrameOutOfRange):
        host.errors.state("3")


def test_error_map_states():
    host = HostMemory(16)
    host.errors.inject(2)
    host.errors.inject(5, latent=True)
    assert host.errors.state(0) is FrameError.NONE
    assert host.errors.state(2) is FrameError.UNCORRECTABLE
    assert host.errors.state(5) is FrameError.LATENT
    assert host.errors.known_frames() == {2}
    assert host.errors.latent_frames() == {5}


def test_latent_injection_keeps_known_error():
    host = HostMemory(16)
    host.errors.inject(2)
    host.errors.inject(2, latent=True)
    assert host.errors.state(2) is FrameError.UNCORRECTABLE


def test_allocator_skips_known_bad_frames():
    host = HostMemory(8)
    host.errors.inject(0)
    host.errors.inject(3)
    frames = host.allocate(6)
    assert frames == [1, 2, 4, 5, 6, 7]
    assert host.free_frame_count == 2


def test_allocator_rejects_request_beyond_free():
    host = HostMemory(8)
    host.errors.inject(1)
    with pytest.raises(OutOfHostFrames) as caught:
        host.allocate(8)
    assert caught.value.requested == 8
    assert caught.value.free == 7


def test_allocator_takes_lowest_freed_frames_first():
    host = HostMemory(32)
    first = host.allocate(10)
    host.allocate(4)
    host.free(first[2:8])
    host.errors.inject(4)
    assert host.allocate(3) == [2, 3, 5]
    # Frame 4 left the pool for good; the rest of the freed frames come before new ones.
    assert host.allocate(4) == [6, 7, 14, 15]
    assert host.free_frame_count == 32 - 10 - 4 - 3 + 6 - 4


def test_free_of_unallocated_frame_frees_nothing():
    host = HostMemory(16)
    frames = host.allocate(4)
    with pytest.raises(ValueError, match="host frame 9 is not allocated"):
        host.free([frames[0], 9])
    with pytest.raises(FrameOutOfRange):
        host.free([frames[0], 99])
    with pytest.raises(ValueError, match="listed twice"):
        host.free([frames[0], frames[0]])
    assert host.free_frame_count == 12


def test_free_returns_frames_and_clears_contents():
    vm = make_vm(frame_count=4, page_count=4)
    vm.write(0, page_content(0, 1))
    frame = vm.host_frame(0)
    vm.host.free(vm.page_map.frames)
    assert vm.host.free_frame_count == 4
    assert vm.host.read_frame(frame) is None
    with pytest.raises(ValueError, match="not allocated"):
        vm.host.free([frame])


def test_zero_pages_not_materialized():
    vm = make_vm()
    vm.write(1, page_content(1, 1))
    vm.write(2, bytes(PAGE_SIZE_BYTES))
    assert vm.host.materialized_frame_count() == 1
    vm.write(1, bytes(PAGE_SIZE_BYTES))
    assert vm.host.materialized_frame_count() == 0
    assert vm.read(1) == bytes(PAGE_SIZE_BYTES)


def test_arena_store_keeps_zero_pages_unstored():
    host = HostMemory(8, ArenaFrameStore(8))
    vm = GuestMemory("vm-1", host, AllocatedPageMap.allocate(host, 8))
    vm.write(3, page_content(3, 1))
    vm.write(4, bytes(PAGE_SIZE_BYTES))
    assert host.materialized_frame_count() == 1
    assert vm.read(3) == page_content(3, 1)
    assert type(vm.read(3)) is bytes
    vm.write(3, bytes(PAGE_SIZE_BYTES))
    assert host.materialized_frame_count() == 0
    assert vm.read(3) == bytes(PAGE_SIZE_BYTES)


def test_arena_store_forgets_lost_contents():
    host = HostMemory(8, ArenaFrameStore(8))
    vm = GuestMemory("vm-1", host, AllocatedPageMap.allocate(host, 8))
    vm.write(2, page_content(2, 1))
    vm.poison_page(2)
    with pytest.raises(MachineCheck):
        vm.read(2)
    vm.store_page(2, page_content(2, 5))
    assert vm.read(2) == page_content(2, 5)


def test_guest_read_returns_written_bytes():
    vm = make_vm()
    vm.write(7, page_content(7, 3))
    assert vm.read(7) == page_content(7, 3)
    assert vm.read(8) == bytes(PAGE_SIZE_BYTES)


def test_guest_access_rejects_out_of_range_page():
    vm = make_vm(page_count=32)
    with pytest.raises(GuestPageOutOfRange) as caught:
        vm.read(32)
    assert caught.value.vm_id == "vm-1"
    assert caught.value.guest_page == 32
    with pytest.raises(GuestPageOutOfRange):
        vm.write(-1, page_content(0, 0))


def test_guest_write_rejects_short_page():
    vm = make_vm()
    with pytest.raises(ValueError, match="invalid page length 10"):
        vm.write(0, b"x" * 10)


def test_read_known_bad_page_raises():
    vm = make_vm()
    vm.write(4, page_content(4, 1))
    vm.host.errors.inject(vm.host_frame(4))
    with pytest.raises(MachineCheck) as caught:
        vm.read(4)
    assert caught.value.vm_id == "vm-1"
    assert caught.value.guest_page == 4
    assert caught.value.host_frame == vm.host_frame(4)


def test_read_latent_page_records_error():
    vm = make_vm()
    frame = vm.host_frame(6)
    vm.host.errors.inject(frame, latent=True)
    with pytest.raises(MachineCheck):
        vm.read(6)
    assert vm.host.errors.state(frame) is FrameError.UNCORRECTABLE


def test_write_known_bad_page_raises():
    vm = make_vm()
    vm.host.errors.inject(vm.host_frame(5))
    with pytest.raises(MachineCheck):
        vm.write(5, page_content(5, 1))


def test_write_latent_page_stays_latent():
    vm = make_vm()
    frame = vm.host_frame(5)
    vm.host.errors.inject(frame, latent=True)
    vm.write(5, page_content(5, 1))
    assert vm.host.errors.state(frame) is FrameError.LATENT


def test_copy_mc_discovers_latent_error():
    host = HostMemory(8)
    host.write_frame(3, page_content(0, 0))
    host.errors.inject(3, latent=True)
    data, not_copied = host.copy_mc(3)
    assert data is None
    assert not_copied == PAGE_SIZE_BYTES
    assert host.errors.state(3) is FrameError.UNCORRECTABLE


def test_copy_mc_reads_healthy_frame():
    host = HostMemory(8)
    host.write_frame(3, page_content(3, 0))
    assert host.copy_mc(3) == (page_content(3, 0), 0)
    assert host.copy_mc(4) == (None, 0)


def test_read_for_migration_kinds():
    vm = make_vm()
    vm.write(0, page_content(0, 1))
    vm.host.errors.inject(vm.host_frame(2))
    vm.host.errors.inject(vm.host_frame(3), latent=True)
    assert vm.read_for_migration(0).kind is PageKind.DATA
    assert vm.read_for_migration(0).data == page_content(0, 1)
    assert vm.read_for_migration(1).kind is PageKind.ZERO
    known = vm.read_for_migration(2)
    assert known.kind is PageKind.ERROR
    assert not known.discovered_error
    latent = vm.read_for_migration(3)
    assert latent.kind is PageKind.ERROR
    assert latent.discovered_error
    assert vm.read_for_migration(3).discovered_error is False


def test_poisoned_pages_include_latent_and_lost_contents():
    vm = make_vm()
    vm.host.errors.inject(vm.host_frame(1))
    vm.host.errors.inject(vm.host_frame(2), latent=True)
    vm.poison_page(3)
    assert vm.poisoned_pages() == {1, 2, 3}
    vm.store_page(3, page_content(3, 1))
    assert vm.poisoned_pages() == {1, 2}


def test_page_digests_skip_poisoned_pages():
    vm = make_vm(page_count=4)
    vm.host.errors.inject(vm.host_frame(1))
    assert sorted(vm.page_digests()) == [0, 2, 3]


def test_dirty_log_returns_written_pages_once():
    vm = make_vm()
    vm.write(9, page_content(9, 0))
    vm.start_dirty_log()
    vm.write(3, page_content(3, 0))
    vm.write(1, page_content(1, 0))
    vm.write(3, page_content(3, 1))
    assert vm.sync_dirty() == [1, 3]
    assert vm.sync_dirty() == []


def test_dirty_sync_requires_dirty_log():
    vm = make_vm()
    with pytest.raises(RuntimeError, match="start_dirty_log"):
        vm.sync_dirty()


def test_workload_rate_follows_cpu_demand():
    vm = make_vm(frame_count=2048, page_count=2048)
    workload = GuestWorkload(vm, seed=1, max_dirty_rate_pages_per_s=1000)
    assert workload.run(2.0, cpu_demand=0.5).pages_written == 1000
    assert workload.run(2.0, cpu_demand=0.5, cpu_throttle_pct=50).pages_written == 500
    assert workload.run(2.0, cpu_demand=0.0).pages_written == 0


def test_workload_carries_fractional_pages():
    vm = make_vm()
    workload = GuestWorkload(vm, seed=1, max_dirty_rate_pages_per_s=3)
    written = sum(workload.run(0.1, cpu_demand=1.0).pages_written for _ in range(10))
    assert written == 3


def test_workload_is_deterministic_for_seed():
    first, second = make_vm(), make_vm()
    for vm in (first, second):
        vm.start_dirty_log()
        GuestWorkload(vm, seed=42, max_dirty_rate_pages_per_s=100).run(0.2, cpu_demand=1.0)
    assert first.sync_dirty() == second.sync_dirty()
    assert first.page_digests() == second.page_digests()


def test_workload_retires_page_after_machine_check():
    vm = make_vm(page_count=2)
    vm.host.errors.inject(vm.host_frame(0))
    workload = GuestWorkload(vm, seed=3, max_dirty_rate_pages_per_s=100)
    tick = workload.run(1.0, cpu_demand=1.0)
    assert len(tick.machine_checks) == 1
    assert tick.machine_checks[0].guest_page == 0
    assert workload.retired_pages == {0}


def test_workload_rejects_bad_cpu_demand():
    workload = GuestWorkload(make_vm(), seed=1, max_dirty_rate_pages_per_s=10)
    with pytest.raises(ValueError, match="cpu_demand 1.5"):
        workload.run(1.0, cpu_demand=1.5)


def test_populate_skips_known_bad_pages():
    vm = make_vm(page_count=16)
    vm.host.errors.inject(vm.host_frame(0))
    written = populate(vm, seed=1, nonzero_fraction=1.0)
    assert written == 15
    assert vm.host.materialized_frame_count() == 15


def test_checksum_table_digest_matches_memory():
    from agents.host._memory import memory_digest
    from agents.migration_core import PageChecksums, encode_pages

    source = make_vm(frame_count=128, page_count=96)
    populate(source, seed=3, nonzero_fraction=0.5)
    source.host.errors.inject(source.host_frame(7))
    source.host.errors.inject(source.host_frame(40), latent=True)
    filled = PageChecksums("vm-1", source.page_count)
    recorded = PageChecksums("vm-1", source.page_count)
    for batch in encode_pages(source, range(source.page_count), records_per_batch=10, checksums=filled):
        recorded.record_batch(batch.payload)
    assert filled.error_pages == recorded.error_pages == {7, 40}
    assert filled.table == recorded.table
    assert filled.digest([7, 40]) == memory_digest(source, [7, 40])

    # A page written after it was sent has the later checksum once it is sent again.
    source.write(3, b"\x11" * PAGE_SIZE_BYTES)
    assert filled.digest([7, 40]) != memory_digest(source, [7, 40])
    list(encode_pages(source, [3], checksums=filled))
    assert filled.digest([7, 40]) == memory_digest(source, [7, 40])

    # A page that never arrived makes the digest differ.
    partial = PageChecksums("vm-1", source.page_count)
    list(encode_pages(source, range(1, source.page_count), checksums=partial))
    assert partial.digest([7, 40]) != filled.digest([7, 40])


def test_destination_table_matches_source_table():
    from agents.host._memory import memory_digest
    from agents.migration_core import MalformedPageBatch, PageChecksums, PrecopyDestination, encode_pages

    source = make_vm(frame_count=64, page_count=32)
    populate(source, seed=5, nonzero_fraction=0.8)
    source.host.errors.inject(source.host_frame(4))
    sent = PageChecksums("vm-1", source.page_count)
    destination = make_vm(frame_count=64, page_count=32)
    received = PageChecksums("vm-1", destination.page_count)
    receiver = PrecopyDestination(destination, received)
    for batch in encode_pages(source, range(source.page_count), checksums=sent):
        receiver.apply(batch.payload)
    source.write(9, b"\x22" * PAGE_SIZE_BYTES)
    for batch in encode_pages(source, [9], checksums=sent):
        receiver.apply(batch.payload)
    assert received.table == sent.table
    assert received.error_pages == {4}
    assert received.digest([4]) == memory_digest(source, [4]) == memory_digest(destination, [4])

    before = bytes(received.table)
    with pytest.raises(MalformedPageBatch):
        receiver.apply(b"DCPR\x01\x00\x00\x00\x00\x05junk")
    assert bytes(received.table) == before


def test_checksum_table_refuses_other_vm_size():
    from agents.migration_core import PageChecksums, encode_pages

    vm = make_vm(frame_count=64, page_count=32)
    with pytest.raises(ValueError, match="checksum table of 16 pages"):
        list(encode_pages(vm, [0], checksums=PageChecksums("vm-1", 16)))

