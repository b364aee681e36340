"""Unit tests of the page-table library: descriptors, builder, walker, boot steps, dump."""

from __future__ import annotations

import pytest

import agents.pagetables as pagetables
from agents.pagetables import (
    CODE_RIGHTS,
    DATA_RIGHTS,
    DEVICE_RIGHTS,
    Access,
    AArch64Stage1Format,
    AArch64Stage2Format,
    Architecture,
    BootLayout,
    BootOrderViolation,
    BootStep,
    EntryKind,
    Fault,
    FaultKind,
    GuestMemoryRange,
    GuestPageNotMapped,
    InputAddressOutOfRange,
    InvalidRegion,
    MappingConflict,
    MemoryKind,
    MemoryMap,
    MemoryType,
    PhysicalMemory,
    Region,
    RegionBeyondOutputSize,
    RegionMisaligned,
    RegionOverlap,
    Rights,
    TableAllocator,
    TableBuilder,
    TableRegionExhausted,
    Translation,
    WritableExecutableRejected,
    X86_64Format,
    boot_host_tables,
    build_stage2_tables,
    copy_firmware_tables,
    dump_mappings,
    find_writable_executable,
    format_ptdump,
    install_final_tables,
    run_firmware,
    table_format,
    translate,
)

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096


def make_builder(fmt, memory_size=8 * GIB, **kwargs):
    memory = PhysicalMemory(memory_size)
    allocator = TableAllocator(memory, "tables", 0x10_0000, MIB)
    return memory, TableBuilder(memory, fmt, allocator, **kwargs)


def host_map(memory):
    return MemoryMap(
        [
            Region("firmware-code", MemoryKind.FIRMWARE_CODE, 0, MIB),
            Region("firmware-data", MemoryKind.FIRMWARE_DATA, MIB, MIB),
            Region("uart", MemoryKind.DEVICE, 0x0900_0000, PAGE),
            Region("mmio-hole", MemoryKind.HOLE, 0x0A00_0000, MIB),
            Region("ram", MemoryKind.RAM, GIB, 2 * GIB),
        ],
        output_limit_bytes=memory.size_bytes,
    )


def layout():
    return BootLayout(
        firmware_tables=Region("firmware-tables", MemoryKind.FIRMWARE_DATA, MIB + 0x8_0000, 0x4_0000),
        staging=Region("staging", MemoryKind.RAM, GIB, MIB),
        work=Region("work", MemoryKind.RAM, GIB + MIB, MIB),
        final=Region("final", MemoryKind.RAM, GIB + 2 * MIB, MIB),
    )


def test_package_exports_public_surface():
    for name in pagetables.__all__:
        assert hasattr(pagetables, name), name
    assert "translate" in pagetables.__all__
    assert not [name for name in pagetables.__all__ if name.startswith("_")]


# Descriptor formats


def test_aarch64_stage1_page_bits():
    raw = AArch64Stage1Format().encode_leaf(3, 0x4000_1000, DATA_RIGHTS)
    assert raw & 0b11 == 0b11
    assert (raw >> 2) & 0b111 == 0  # AttrIndx 0: Normal write-back in MAIR
    assert (raw >> 6) & 0b11 == 0b00  # AP[2:1]: EL1 read-write, no EL0
    assert (raw >> 8) & 0b11 == 0b11  # SH inner shareable
    assert raw & (1 << 10)  # AF
    assert not raw & (1 << 11)  # nG clear: global
    assert raw & (1 << 53)  # PXN
    assert raw & (1 << 54)  # UXN
    assert raw & 0x0000_FFFF_FFFF_F000 == 0x4000_1000


def test_aarch64_stage1_code_block_bits():
    raw = AArch64Stage1Format().encode_leaf(2, 0x20_0000, CODE_RIGHTS)
    assert raw & 0b11 == 0b01
    assert (raw >> 6) & 0b11 == 0b10  # AP[2] read-only
    assert not raw & (1 << 53)
    assert raw & (1 << 54)


def test_aarch64_stage1_device_attr_index():
    raw = AArch64Stage1Format().encode_leaf(3, 0x0900_0000, DEVICE_RIGHTS)
    assert (raw >> 2) & 0b111 == 1
    assert (pagetables.MAIR_VALUE >> 8) & 0xFF == 0x04  # Device-nGnRE
    assert pagetables.MAIR_VALUE & 0xFF == 0xFF


def test_aarch64_stage1_table_bits():
    raw = AArch64Stage1Format().encode_table(0x12_3000)
    assert raw == 0x12_3000 | 0b11


def test_aarch64_stage1_decode_round_trip():
    fmt = AArch64Stage1Format()
    for rights in (CODE_RIGHTS, DATA_RIGHTS, DEVICE_RIGHTS, Rights(user=True)):
        for level in (1, 2, 3):
            entry = fmt.decode(fmt.encode_leaf(level, 0x4000_0000, rights), level)
            assert entry.rights == rights
            assert entry.address == 0x4000_0000


def test_aarch64_stage1_el0_writable_is_pxn():
    raw = (1 << 0) | (1 << 1) | (1 << 10) | (0b01 << 6)
    assert not AArch64Stage1Format().decode(raw, 3).rights.executable


def test_aarch64_stage1_block_reserved_at_level3():
    assert AArch64Stage1Format().decode(0x1000 | 0b01, 3).kind is EntryKind.INVALID
    assert AArch64Stage1Format().decode(0x1000 | 0b01, 0).kind is EntryKind.INVALID


def test_aarch64_stage2_page_bits():
    raw = AArch64Stage2Format().encode_leaf(3, 0x8000_0000, Rights(writable=True))
    assert (raw >> 2) & 0b1111 == 0b1111  # MemAttr Normal write-back
    assert (raw >> 6) & 0b11 == 0b11  # S2AP read-write
    assert raw & (1 << 10)
    assert raw & (1 << 54)  # XN


def test_aarch64_stage2_device_read_only():
    rights = Rights(writable=False, memory_type=MemoryType.DEVICE_nGnRE)
    raw = AArch64Stage2Format().encode_leaf(3, 0x0900_0000, rights)
    assert (raw >> 2) & 0b1111 == 0b0001
    assert (raw >> 6) & 0b11 == 0b01
    assert AArch64Stage2Format().decode(raw, 3).rights == rights


def test_x86_64_page_bits():
    raw = X86_64Format().encode_leaf(3, 0x4000_1000, DATA_RIGHTS)
    assert raw & 0x1FF == 0x1 | 0x2 | 0x20 | 0x40 | 0x100  # P RW A D G
    assert raw & (1 << 63)
    assert raw & 0x000F_FFFF_FFFF_F000 == 0x4000_1000


def test_x86_64_large_page_sets_ps():
    raw = X86_64Format().encode_leaf(1, GIB, CODE_RIGHTS)
    assert raw & (1 << 7)
    assert not raw & (1 << 1)
    assert not raw & (1 << 63)


def test_x86_64_device_is_uncached():
    raw = X86_64Format().encode_leaf(3, 0x0900_0000, DEVICE_RIGHTS)
    assert raw & (1 << 3)  # PWT
    assert raw & (1 << 4)  # PCD


def test_x86_64_nested_sets_us():
    fmt = X86_64Format(nested=True)
    assert fmt.encode_table(0x1000) & (1 << 2)
    assert fmt.encode_leaf(3, 0x1000, DATA_RIGHTS) & (1 << 2)


def test_x86_64_table_rw_limits_leaf():
    memory, builder = make_builder(X86_64Format())
    builder.map_range(GIB, GIB, PAGE, DATA_RIGHTS, region_name="ram")
    pml4e = memory.read_u64(builder.root_address)
    memory.write_u64(builder.root_address, pml4e & ~0x2)
    result = translate(memory, X86_64Format(), builder.root_address, GIB, Access.WRITE)
    assert isinstance(result, Fault)
    assert result.kind is FaultKind.PERMISSION


def test_table_format_by_architecture():
    assert isinstance(table_format(Architecture.AARCH64, 1), AArch64Stage1Format)
    assert isinstance(table_format(Architecture.AARCH64, 2), AArch64Stage2Format)
    assert table_format(Architecture.X86_64, 2).nested
    with pytest.raises(ValueError, match="stage"):
        table_format(Architecture.X86_64, 3)
    with pytest.raises(ValueError, match="sparc"):
        Architecture.parse("sparc")


# Builder and walker


@pytest.mark.parametrize("fmt", [AArch64Stage1Format(), X86_64Format()], ids=lambda f: f.name)
def test_builder_uses_blocks_when_aligned(fmt):
    memory, builder = make_builder(fmt)
    builder.map_range(GIB, GIB, GIB + 2 * MIB + PAGE, DATA_RIGHTS, region_name="ram")
    levels = [translate(memory, fmt, builder.root_address, address).level
              for address in (GIB, 2 * GIB, 2 * GIB + 2 * MIB)]
    assert levels == [1, 2, 3]
    assert builder.allocator.pages_used == 4


@pytest.mark.parametrize("fmt", [AArch64Stage1Format(), X86_64Format()], ids=lambda f: f.name)
def test_walker_translates_offset(fmt):
    memory, builder = make_builder(fmt)
    builder.map_range(0x4000_0000, 0x1_0000_0000, 4 * MIB, DATA_RIGHTS, region_name="ram")
    result = translate(memory, fmt, builder.root_address, 0x4030_1238, Access.WRITE)
    assert isinstance(result, Translation)
    assert result.output_address == 0x1_0030_1238
    assert result.rights == DATA_RIGHTS


@pytest.mark.parametrize("fmt", [AArch64Stage1Format(), X86_64Format()], ids=lambda f: f.name)
def test_walker_faults_on_unmapped_hole(fmt):
    memory, builder = make_builder(fmt)
    builder.map_range(GIB, GIB, PAGE, DATA_RIGHTS, region_name="ram")
    assert translate(memory, fmt, builder.root_address, GIB + PAGE) == Fault(
        GIB + PAGE, 3, FaultKind.TRANSLATION, Access.READ
    )
    assert translate(memory, fmt, builder.root_address, 2 * GIB).level == 1
    assert translate(memory, fmt, builder.root_address, 1 << 40).level == 0


@pytest.mark.parametrize("fmt", [AArch64Stage1Format(), X86_64Format()], ids=lambda f: f.name)
def test_walker_permission_faults(fmt):
    memory, builder = make_builder(fmt)
    builder.map_range(0, 0, 2 * MIB, CODE_RIGHTS, region_name="code")
    builder.map_range(2 * MIB, 2 * MIB, PAGE, DATA_RIGHTS, region_name="data")
    write = translate(memory, fmt, builder.root_address, 0x10, Access.WRITE)
    assert (write.kind, write.level) == (FaultKind.PERMISSION, 2)
    execute = translate(memory, fmt, builder.root_address, 2 * MIB, Access.EXECUTE)
    assert (execute.kind, execute.level) == (FaultKind.PERMISSION, 3)
    assert isinstance(translate(memory, fmt, builder.root_address, 0x10, Access.EXECUTE),
                      Translation)


def test_walker_access_flag_fault():
    fmt = AArch64Stage1Format()
    memory, builder = make_builder(fmt)
    builder.map_range(GIB, GIB, PAGE, DATA_RIGHTS, region_name="ram")
    # Clear AF on the level-3 entry of 1 GiB: level-0 index 0, level-1 index 1, then index 0.
    l1 = memory.read_u64(builder.root_address) & 0xFFFF_FFFF_F000
    l2 = memory.read_u64(l1 + 8) & 0xFFFF_FFFF_F000
    l3 = memory.read_u64(l2) & 0xFFFF_FFFF_F000
    memory.write_u64(l3, memory.read_u64(l3) & ~(1 << 10))
    result = translate(memory, fmt, builder.root_address, GIB, Access.READ)
    assert (result.kind, result.level) == (FaultKind.ACCESS_FLAG, 3)


def test_walker_rejects_noncanonical_x86_address():
    memory, builder = make_builder(X86_64Format())
    with pytest.raises(InputAddressOutOfRange, match="0x800000000000"):
        translate(memory, X86_64Format(), builder.root_address, 1 << 47)


# Bad input


def test_memory_map_rejects_overlap():
    with pytest.raises(RegionOverlap, match="'ram-b'.*'ram-a'"):
        MemoryMap([Region("ram-a", MemoryKind.RAM, 0, 2 * MIB),
                   Region("ram-b", MemoryKind.RAM, MIB, 2 * MIB)], output_limit_bytes=GIB)


def test_memory_map_rejects_misaligned_region():
    with pytest.raises(RegionMisaligned, match="'uart'"):
        MemoryMap([Region("uart", MemoryKind.DEVICE, 0x0900_0800, PAGE)], output_limit_bytes=GIB)


def test_memory_map_rejects_region_beyond_output():
    with pytest.raises(RegionBeyondOutputSize, match="'ram'"):
        MemoryMap([Region("ram", MemoryKind.RAM, GIB - MIB, 2 * MIB)], output_limit_bytes=GIB)


def test_memory_map_rejects_writable_executable_region():
    rights = Rights(writable=True, executable=True)
    with pytest.raises(WritableExecutableRejected, match="'jit'"):
        MemoryMap([Region("jit", MemoryKind.RAM, 0, MIB, rights=rights)], output_limit_bytes=GIB)


def test_builder_rejects_writable_executable_request():
    _, builder = make_builder(AArch64Stage1Format())
    with pytest.raises(WritableExecutableRejected, match="'loader'"):
        builder.map_range(0, 0, PAGE, Rights(writable=True, executable=True), region_name="loader")


def test_builder_rejects_output_beyond_memory():
    _, builder = make_builder(AArch64Stage1Format(), memory_size=GIB)
    with pytest.raises(RegionBeyondOutputSize, match="'ram'"):
        builder.map_range(0, GIB - PAGE, 2 * PAGE, DATA_RIGHTS, region_name="ram")


def test_builder_rejects_misaligned_request():
    _, builder = make_builder(AArch64Stage1Format())
    with pytest.raises(RegionMisaligned, match="'ram'"):
        builder.map_range(0x800, 0, PAGE, DATA_RIGHTS, region_name="ram")


def test_builder_rejects_double_mapping():
    _, builder = make_builder(AArch64Stage1Format())
    builder.map_range(0, 0, 2 * MIB, DATA_RIGHTS, region_name="first")
    with pytest.raises(MappingConflict, match="'second'"):
        builder.map_range(MIB, MIB, PAGE, DATA_RIGHTS, region_name="second")


def test_allocator_reports_exhausted_region():
    memory = PhysicalMemory(GIB)
    allocator = TableAllocator(memory, "tiny", 0, 2 * PAGE)
    builder = TableBuilder(memory, AArch64Stage1Format(), allocator)
    with pytest.raises(TableRegionExhausted, match="'tiny'"):
        builder.map_range(0, 0, PAGE, DATA_RIGHTS, region_name="ram")


def test_physical_memory_reads_zero_without_allocating():
    memory = PhysicalMemory(GIB)
    assert memory.read_u64(0x1000) == 0
    assert memory.allocated_frame_count == 0
    memory.write_u64(0x2008, 7)
    assert memory.read_bytes(0x2008, 1) == b"\x07"
    assert memory.allocated_frame_count == 1
    with pytest.raises(ValueError, match="outside memory"):
        memory.read_u64(GIB)


# Boot loader steps


@pytest.mark.parametrize("architecture", list(Architecture), ids=lambda a: a.value)
def test_boot_tables_apply_region_rights(architecture):
    memory = PhysicalMemory(8 * GIB)
    fmt = table_format(architecture)
    result = boot_host_tables(memory, host_map(memory), fmt, layout())
    root = result.root_address
    assert translate(memory, fmt, root, 0x10).rights == CODE_RIGHTS
    assert translate(memory, fmt, root, MIB).rights == DATA_RIGHTS
    assert translate(memory, fmt, root, 0x0900_0000).rights == DEVICE_RIGHTS
    assert isinstance(translate(memory, fmt, root, 0x0A00_0000), Fault)
    assert translate(memory, fmt, root, GIB + 5 * PAGE).level == 1


@pytest.mark.parametrize("architecture", list(Architecture), ids=lambda a: a.value)
def test_boot_tables_have_no_writable_executable_range(architecture):
    memory = PhysicalMemory(8 * GIB)
    fmt = table_format(architecture)
    result = boot_host_tables(memory, host_map(memory), fmt, layout())
    firmware_ranges = dump_mappings(memory, fmt, result.records[0].root_address)
    assert find_writable_executable(firmware_ranges)
    assert find_writable_executable(dump_mappings(memory, fmt, result.root_address)) == []


def test_boot_records_name_each_step():
    memory = PhysicalMemory(8 * GIB)
    result = boot_host_tables(memory, host_map(memory), AArch64Stage1Format(), layout())
    steps = [record.step for record in result.records]
    assert steps == [BootStep.FIRMWARE_TABLES, BootStep.COPY_FIRMWARE_TABLES,
                     BootStep.REPROCESS_TABLES, BootStep.INSTALL_FINAL_TABLES]
    final = result.records[-1].as_event()
    assert final["root_address"] == result.root_address
    assert final["region_name"] == "final"
    assert final["table_bytes"] == final["table_pages"] * PAGE > 0
    assert result.records[-1].source_root_address == result.records[2].root_address


def test_boot_install_rejects_running_firmware():
    memory = PhysicalMemory(8 * GIB)
    memory_map = host_map(memory)
    fmt = AArch64Stage1Format()
    firmware = run_firmware(memory, memory_map, fmt, layout().firmware_tables)
    with pytest.raises(BootOrderViolation, match="quiesce"):
        install_final_tables(firmware, memory_map, fmt, firmware.root_address, layout().final)


def test_boot_copy_rejects_quiesced_firmware():
    memory = PhysicalMemory(8 * GIB)
    memory_map = host_map(memory)
    firmware = run_firmware(memory, memory_map, AArch64Stage1Format(), layout().firmware_tables)
    firmware.quiesce()
    with pytest.raises(BootOrderViolation, match="copy_firmware_tables"):
        copy_firmware_tables(firmware, memory_map, layout().staging)


def test_boot_rejects_table_region_in_hole():
    memory = PhysicalMemory(8 * GIB)
    bad = Region("tables-in-hole", MemoryKind.RAM, 0x0A00_0000, MIB)
    with pytest.raises(InvalidRegion, match="'tables-in-hole'"):
        run_firmware(memory, host_map(memory), AArch64Stage1Format(), bad)


# Dump


def test_dump_merges_and_prints_ptdump_lines():
    fmt = AArch64Stage1Format()
    memory, builder = make_builder(fmt)
    builder.map_range(GIB, GIB, GIB + 4 * MIB, DATA_RIGHTS, region_name="ram")
    builder.map_range(0x0900_0000, 0x0900_0000, PAGE, DEVICE_RIGHTS, region_name="uart")
    ranges = dump_mappings(memory, fmt, builder.root_address)
    assert [(r.start, r.end) for r in ranges] == [(0x0900_0000, 0x0900_1000),
                                                  (GIB, 2 * GIB + 4 * MIB)]
    text = format_ptdump(ranges, title="host")
    lines = text.splitlines()
    assert lines[0] == "---[ host ]---"
    assert lines[1].startswith("0x0000000009000000-0x0000000009001000        4K  RW NX")
    assert "DEVICE/nGnRE" in lines[1]
    assert "1028M" in lines[2] and "MEM/NORMAL" in lines[2]


# Stage 2


def test_stage2_lookup_both_directions():
    memory = PhysicalMemory(8 * GIB)
    allocator = TableAllocator(memory, "vm1-tables", 0x10_0000, MIB)
    tables = build_stage2_tables(
        memory, AArch64Stage2Format(),
        [(0x10, 0x9000), (0x11, 0x9001), GuestMemoryRange(0x200, 0x8_0000, 0x200)],
        allocator,
    )
    assert tables.host_frame(0x11) == 0x9001
    assert tables.host_frame(0x3FF) == 0x8_01FF
    assert tables.host_frame_cached(0x3FF) == 0x8_01FF
    assert tables.guest_pages_for_host_frame(0x8_0005) == [0x205]
    assert tables.guest_pages_for_host_frame(0x7) == []
    assert translate(memory, tables.table_format, tables.root_address, 0x200 * PAGE).level == 2
    with pytest.raises(GuestPageNotMapped):
        tables.host_frame(0x12)
    with pytest.raises(GuestPageNotMapped):
        tables.host_frame_cached(0x12)


def test_stage2_rejects_guest_page_mapped_twice():
    memory = PhysicalMemory(GIB)
    allocator = TableAllocator(memory, "vm1-tables", 0, MIB)
    with pytest.raises(MappingConflict, match="guest page 0x10"):
        build_stage2_tables(memory, AArch64Stage2Format(), [(0x10, 1), (0x10, 2)], allocator)


def test_stage2_rejects_host_frame_beyond_memory():
    memory = PhysicalMemory(GIB)
    allocator = TableAllocator(memory, "vm1-tables", 0, MIB)
    with pytest.raises(RegionBeyondOutputSize, match="guest page 0x10"):
        build_stage2_tables(memory, AArch64Stage2Format(), [(0x10, GIB // PAGE)], allocator)


@pytest.mark.parametrize("item", [(1,), ("a", 2), (1, -2), (1, 2, 0), "x"])
def test_stage2_rejects_malformed_item(item):
    memory = PhysicalMemory(GIB)
    allocator = TableAllocator(memory, "vm1-tables", 0, MIB)
    with pytest.raises(InvalidRegion):
        build_stage2_tables(memory, AArch64Stage2Format(), [item], allocator)
