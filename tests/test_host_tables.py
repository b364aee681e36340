"""A host's memory layout, frame pools and per-boot tables, without a bus."""

import pytest

from agents._cmd_pagetable import InvalidDumpReply, parse_dump_reply, render_dump
from agents.host._host_memory import (
    FramePool,
    FramesExhausted,
    build_host_layout,
    host_arch,
    stage2_table_pages_bound,
)
from agents.host._tables import HostTables, Stage2Rejected, TableBootFailed
from agents.pagetables import (
    Access,
    FaultKind,
    MemoryKind,
    Region,
    RegionBeyondOutputSize,
    RegionMisaligned,
    translate,
)

MIB = 1 << 20
PAGE = 4096


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_layout_places_vm_ram_after_stage2_pool(arch):
    layout = build_host_layout(arch, 256 * MIB)
    assert layout.vm_ram.size_bytes == 256 * MIB
    assert layout.stage2_tables.end == layout.vm_ram.base
    assert layout.vm_ram.base % (2 * MIB) == 0
    assert layout.memory_size_bytes == layout.vm_ram.end
    kinds = {region.kind for region in layout.memory_map.regions}
    assert {MemoryKind.DEVICE, MemoryKind.FIRMWARE_CODE, MemoryKind.HOLE} <= kinds


def test_layout_rejects_ram_beyond_48_bit_output():
    with pytest.raises(RegionBeyondOutputSize) as raised:
        build_host_layout("aarch64", 1 << 48)
    assert raised.value.region_name == "vm-ram"


def test_layout_rejects_misaligned_ram():
    with pytest.raises(RegionMisaligned) as raised:
        build_host_layout("x86_64", 256 * MIB + 100)
    assert raised.value.region_name == "vm-ram"


def test_layout_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="sparc"):
        build_host_layout("sparc", 256 * MIB)


def test_mixed_arch_alternates_by_host():
    assert [host_arch("mixed", index) for index in range(4)] == ["aarch64", "x86_64", "aarch64", "x86_64"]
    assert host_arch("x86_64", 0) == "x86_64"
    with pytest.raises(ValueError):
        host_arch("riscv", 0)


def test_frame_pool_prefers_aligned_run():
    pool = FramePool(Region("ram", MemoryKind.RAM, 4 * MIB + PAGE, 8 * MIB))
    runs = pool.allocate(10, align_frames=512)
    assert runs == [(6 * MIB // PAGE, 10)]


def test_frame_pool_scatters_when_fragmented():
    pool = FramePool(Region("ram", MemoryKind.RAM, 0, 8 * PAGE))
    first = pool.allocate_run(3)
    middle = pool.allocate_run(2)
    pool.allocate_run(3)
    pool.release(first, 3)
    pool.release(middle + 1, 1)
    assert pool.allocate(4) == [(0, 3), (middle + 1, 1)]
    assert pool.free_frame_count == 0


def test_frame_pool_merges_released_runs():
    pool = FramePool(Region("ram", MemoryKind.RAM, 0, 16 * PAGE))
    runs = [pool.allocate_run(4) for _ in range(4)]
    for start in (runs[1], runs[3], runs[0], runs[2]):
        pool.release(start, 4)
    assert pool.free_runs() == [(0, 16)]


def test_frame_pool_rejects_double_release():
    pool = FramePool(Region("ram", MemoryKind.RAM, 0, 16 * PAGE))
    start = pool.allocate_run(4)
    pool.release(start, 4)
    with pytest.raises(ValueError, match="already free"):
        pool.release(start + 1, 1)


def test_frame_pool_reports_exhaustion():
    pool = FramePool(Region("ram", MemoryKind.RAM, 0, 4 * PAGE))
    with pytest.raises(FramesExhausted) as raised:
        pool.allocate(5)
    assert (raised.value.requested_frames, raised.value.free_frames) == (5, 4)


def test_stage2_bound_counts_touched_windows():
    # 1024 pages from a 1 GiB-aligned guest page: one table per level, two level-3 tables.
    assert stage2_table_pages_bound(0x40000, 1024) == 1 + 1 + 1 + 2
    # One page more crosses into a third 2 MiB window.
    assert stage2_table_pages_bound(0x40000, 1025) == 1 + 1 + 1 + 3


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_boot_tables_final_step_has_no_writable_executable(arch):
    tables = HostTables.boot("h1", arch, 64 * MIB)
    events = tables.step_events(boot_count=1)
    assert [event.step for event in events] == [
        "firmware_tables", "copy_firmware_tables", "reprocess_tables", "install_final_tables"]
    assert events[0].writable_executable_range_count > 0  # firmware maps RAM RWX
    assert events[-1].writable_executable_range_count == 0
    assert events[-1].root_address == tables.root_address
    assert tables.dump().to_result()["writable_executable_count"] == 0


def test_boot_failure_names_region():
    with pytest.raises(TableBootFailed) as raised:
        HostTables.boot("h1", "aarch64", 1 << 48)
    assert raised.value.path == "vm-ram"
    assert raised.value.check == "page-tables"


def test_boot_failure_names_config_for_unknown_arch():
    with pytest.raises(TableBootFailed) as raised:
        HostTables.boot("h1", "sparc", 64 * MIB)
    assert (raised.value.path, raised.value.check) == ("cluster.json", "architecture")


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_vm_stage2_maps_guest_ram_to_vm_frames(arch):
    tables = HostTables.boot("h1", arch, 64 * MIB)
    mapping = tables.map_vm("vm1", 4 * MIB + PAGE)
    guest_page = mapping.guest_address // PAGE
    vm_ram = tables.layout.vm_ram
    for offset in (0, 1, 1024):
        frame = tables.host_frame("vm1", guest_page + offset)
        assert vm_ram.base <= frame * PAGE < vm_ram.end
    beyond = translate(tables.memory, tables.stage2_format, mapping.tables.root_address,
                       mapping.guest_address + 4 * MIB + PAGE, Access.READ)
    assert beyond.kind is FaultKind.TRANSLATION
    dump = tables.dump("vm1")
    assert dump.stage == 2
    assert dump.ranges[0].start == mapping.guest_address
    assert dump.ranges[-1].end == mapping.guest_address + 4 * MIB + PAGE


def test_vm_unmap_returns_frames_and_table_pages():
    tables = HostTables.boot("h1", "aarch64", 64 * MIB)
    free_frames, free_tables = tables.free_vm_frames, tables.free_table_frames
    tables.map_vm("vm1", 4 * MIB)
    tables.map_vm("vm2", 8 * MIB)
    assert tables.free_vm_frames == free_frames - 3 * 1024
    assert tables.unmap_vm("vm1") is True
    assert tables.unmap_vm("vm2") is True
    assert (tables.free_vm_frames, tables.free_table_frames) == (free_frames, free_tables)
    assert tables.unmap_vm("vm1") is False


def test_vm_map_rejects_exhaustion_without_leaking():
    tables = HostTables.boot("h1", "aarch64", 8 * MIB)
    tables.map_vm("vm1", 6 * MIB)
    free_frames, free_tables = tables.free_vm_frames, tables.free_table_frames
    with pytest.raises(Stage2Rejected, match="frames requested"):
        tables.map_vm("vm2", 4 * MIB)
    assert (tables.free_vm_frames, tables.free_table_frames) == (free_frames, free_tables)
    assert tables.mapped_vms == ["vm1"]


def test_vm_map_rejects_second_mapping():
    tables = HostTables.boot("h1", "aarch64", 8 * MIB)
    tables.map_vm("vm1", MIB)
    with pytest.raises(Stage2Rejected, match="already mapped"):
        tables.map_vm("vm1", MIB)


def test_dump_of_unknown_vm_is_rejected():
    tables = HostTables.boot("h1", "aarch64", 8 * MIB)
    with pytest.raises(Stage2Rejected, match="does not run here"):
        tables.dump("vm9")


def test_dump_reply_parse_flags_writable_executable():
    result = HostTables.boot("h1", "x86_64", 8 * MIB).dump().to_result()
    result["ranges"][0]["executable"] = True  # low RAM is RW NX; pretend it were executable
    reply = parse_dump_reply(result)
    assert reply.writable_executable_lines == [result["lines"][0]]
    assert "VIOLATION: 1 range is both writable and executable" in render_dump(reply)


@pytest.mark.parametrize("field, value", [("lines", "text"), ("root_address", "0x1"), ("stage", True)])
def test_dump_reply_parse_rejects_bad_field(field, value):
    result = HostTables.boot("h1", "aarch64", 8 * MIB).dump().to_result()
    result[field] = value
    with pytest.raises(InvalidDumpReply, match=field):
        parse_dump_reply(result)
