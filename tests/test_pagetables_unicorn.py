"""Independent check of the page tables on unicorn's emulated CPU with its MMU on.

For a sample of addresses, loads and stores run on the emulated CPU must reach the
physical address the walker predicts, and must fault exactly where the walker faults.
AArch64 fault kinds and levels are read from PAR_EL1 after an AT instruction, because
unicorn passes exceptions to the interrupt hook only and does not deliver them.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import arm64_const as arm64  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402

from agents.pagetables import (  # noqa: E402
    MAIR_VALUE,
    Access,
    Architecture,
    BootLayout,
    Fault,
    FaultKind,
    GuestMemoryRange,
    MemoryKind,
    MemoryMap,
    MemoryType,
    PhysicalMemory,
    Region,
    Rights,
    TableAllocator,
    TableBuilder,
    Translation,
    boot_host_tables,
    build_stage2_tables,
    table_format,
    translate,
)

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096
MARKER = 0x5A5A_0000_0000_0000
STORED = 0xC0DE_0000_0000_0000

# AArch64 instruction encodings (Arm ARM C6): X0 holds the address, X1 the data, X2 PAR_EL1.
LDR_X1_X0 = 0xF9400001
STR_X1_X0 = 0xF9000001
AT_S1E1R_X0 = 0xD5087800
AT_S1E1W_X0 = 0xD5087820
AT_S12E1R_X0 = 0xD50C7880
AT_S12E1W_X0 = 0xD50C78A0
ISB = 0xD5033FDF
MRS_X2_PAR_EL1 = 0xD5387402
ERET = 0xD69F03E0

# System registers as (CRn, CRm, op0, op1, op2) for UC_ARM64_REG_CP_REG.
SCR_EL3 = (1, 1, 3, 6, 0)
HCR_EL2 = (1, 1, 3, 4, 0)
SCTLR_EL1 = (1, 0, 3, 0, 0)
TCR_EL1 = (2, 0, 3, 0, 2)
VTTBR_EL2 = (2, 1, 3, 4, 0)
VTCR_EL2 = (2, 1, 3, 4, 2)
SPSR_EL2 = (4, 0, 3, 4, 0)

SCR_EL3_NS_RW = 0x531  # NS, RES1 bits 4-5, HCE, RW: lower levels non-secure and AArch64
HCR_EL2_RW = 1 << 31
HCR_EL2_VM = 1 << 0
PSTATE_EL2H = 0x3C9  # DAIF masked, EL2 with SP_EL2
PSTATE_EL1H = 0x3C5
SCTLR_EL1_MMU_ON = 0x30D00800 | (1 << 12) | (1 << 2) | (1 << 0)  # RES1 bits, I, C, M
# T0SZ 16, inner/outer write-back walks, inner shareable, 4 KiB granule, EPD1, IPS 44 bits.
TCR_EL1_VALUE = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (0b100 << 32)
# unicorn 2.1's CPUs all report PARange 44 bits (ID_AA64MMFR0_EL1 0x1124), and QEMU faults
# any stage-2 walk whose IPA size exceeds it, so the IPA size is 44 bits (T0SZ 20). The walk
# still starts at level 0 (SL0 0b10) and indexes the same tables for IPAs below 2**44.
# Walks are write-back, inner shareable, PS 44 bits, RES1 bit 31.
VTCR_EL2_VALUE = 20 | (0b10 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (0b100 << 16) | (1 << 31)


def words(*instructions: int) -> bytes:
    return struct.pack(f"<{len(instructions)}I", *instructions)


@dataclass(frozen=True)
class Observed:
    """What the emulated CPU did for one access."""

    faulted: bool
    physical_address: int | None = None  # where a load or store landed
    fault_kind: FaultKind | None = None
    fault_level: int | None = None


def host_memory_map(memory: PhysicalMemory) -> MemoryMap:
    return MemoryMap(
        [
            Region("firmware-code", MemoryKind.FIRMWARE_CODE, 0, MIB),
            Region("firmware-data", MemoryKind.FIRMWARE_DATA, MIB, MIB),
            Region("gic", MemoryKind.DEVICE, 0x0800_0000, 0x2_0000),
            Region("uart", MemoryKind.DEVICE, 0x0900_0000, PAGE),
            Region("ram", MemoryKind.RAM, GIB, 2 * GIB),
            Region("ram-high", MemoryKind.RAM, 0x1_0000_3000, 0x3F_D000),
            Region(
                "ram-read-only", MemoryKind.RAM, 0x1_2000_0000, 2 * MIB,
                rights=Rights(writable=False, executable=False),
            ),
        ],
        output_limit_bytes=memory.size_bytes,
    )


def boot_layout() -> BootLayout:
    return BootLayout(
        firmware_tables=Region("firmware-tables", MemoryKind.FIRMWARE_DATA, MIB + 0x8_0000, 0x4_0000),
        staging=Region("staging-tables", MemoryKind.RAM, GIB, MIB),
        work=Region("work-tables", MemoryKind.RAM, GIB + MIB, MIB),
        final=Region("final-tables", MemoryKind.RAM, GIB + 2 * MIB, MIB),
    )


def host_sample_addresses(memory_map: MemoryMap, count_per_region: int, input_bits: int) -> list[int]:
    rng = random.Random(7)
    samples = set()
    for region in memory_map.regions:
        samples.update({region.base, region.end - 8, region.end, region.base - 8})
        for _ in range(count_per_region):
            samples.add(rng.randrange(region.base, region.end) & ~7)
    # Holes between regions, beyond the last region and in other level-0 entries.
    samples.update({0x0020_0000, 0x0802_0000, 0x2_0000_0000, 0x80_0000_0000,
                    (1 << input_bits) - PAGE})
    return sorted(address for address in samples if 0 <= address < 1 << input_bits)


def map_into_unicorn(uc, memory: PhysicalMemory, extra_frames: set[int]) -> None:
    """Map every allocated frame of ``memory`` and ``extra_frames`` into unicorn, copied."""
    frames = sorted(set(memory.allocated_frames()) | extra_frames)
    start = previous = None
    runs = []
    for frame in frames:
        if start is None:
            start = previous = frame
        elif frame == previous + 1:
            previous = frame
        else:
            runs.append((start, previous))
            start = previous = frame
    if start is not None:
        runs.append((start, previous))
    for first, last in runs:
        uc.mem_map(first * PAGE, (last - first + 1) * PAGE)
        uc.mem_write(first * PAGE, memory.read_bytes(first * PAGE, (last - first + 1) * PAGE))


def predicted_frames(memory, fmt, root, samples) -> set[int]:
    frames = set()
    for address in samples:
        for access in (Access.READ, Access.WRITE):
            result = translate(memory, fmt, root, address, access)
            if isinstance(result, Translation):
                frames.add(result.output_address // PAGE)
    return frames


def write_markers(uc, memory, fmt, root, samples) -> None:
    for address in samples:
        result = translate(memory, fmt, root, address, Access.READ)
        if isinstance(result, Translation):
            uc.mem_write(result.output_address, struct.pack("<Q", MARKER | result.output_address))


def decode_par(par: int) -> Observed | int:
    """Return the fault in PAR_EL1, or the physical address when F is clear."""
    if not par & 1:
        return par & 0x0000_FFFF_FFFF_F000
    status = (par >> 1) & 0x3F
    kinds = {0b0001: FaultKind.TRANSLATION, 0b0010: FaultKind.ACCESS_FLAG,
             0b0011: FaultKind.PERMISSION}
    kind = kinds.get(status >> 2)
    assert kind is not None, f"PAR_EL1 {par:#x} reports unexpected fault status {status:#08b}"
    return Observed(True, fault_kind=kind, fault_level=status & 0b11)


class Arm64Cpu:
    """unicorn AArch64 CPU with helpers to run one access at EL1 and one AT at EL2 or EL1."""

    def __init__(self, code_base: int) -> None:
        self.uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self.code_base = code_base
        self.interrupts: list[int] = []
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)

    def _on_interrupt(self, uc, intno, user_data) -> None:
        self.interrupts.append(intno)
        uc.emu_stop()

    def write_sysreg(self, encoding: tuple[int, ...], value: int) -> None:
        self.uc.reg_write(arm64.UC_ARM64_REG_CP_REG, (*encoding, value))

    def enter_el2(self) -> None:
        # Writing PSTATE alone leaves the cached exception level; a CP_REG write rebuilds it.
        self.uc.reg_write(arm64.UC_ARM64_REG_PSTATE, PSTATE_EL2H)
        self.write_sysreg(SCR_EL3, SCR_EL3_NS_RW)

    def run(self, start: int, stop: int, **registers: int) -> bool:
        """Run from ``start`` until ``stop``; return True when an exception was raised."""
        for name, value in registers.items():
            self.uc.reg_write(getattr(arm64, f"UC_ARM64_REG_{name.upper()}"), value)
        self.interrupts.clear()
        self.uc.emu_start(start, stop, count=16)
        return bool(self.interrupts)


def compare(predicted: Translation | Fault, observed: Observed, address: int, access: Access,
            *, compare_level: bool = True) -> list[str]:
    problems = []
    label = f"{access.value} at {address:#x}"
    if isinstance(predicted, Translation):
        if observed.faulted:
            problems.append(f"{label}: walker maps it to {predicted.output_address:#x}, CPU faulted "
                            f"({observed.fault_kind}, level {observed.fault_level})")
        elif observed.physical_address != predicted.output_address:
            problems.append(f"{label}: walker predicts {predicted.output_address:#x}, CPU reached "
                            f"{observed.physical_address!r}")
        return problems
    if not observed.faulted:
        problems.append(f"{label}: walker predicts a {predicted.kind.value} fault at level "
                        f"{predicted.level}, CPU reached {observed.physical_address!r}")
    elif observed.fault_kind is not predicted.kind:
        problems.append(f"{label}: walker predicts {predicted.kind.value}, CPU reports "
                        f"{observed.fault_kind}")
    elif compare_level and observed.fault_level != predicted.level:
        problems.append(f"{label}: walker predicts level {predicted.level}, CPU reports "
                        f"level {observed.fault_level}")
    return problems


def arm64_observe_el1(cpu: Arm64Cpu, address: int, access: Access) -> Observed:
    """Run a load or store at EL1 with stage 1 on, then classify it with AT S1E1R/W."""
    entry = cpu.code_base + (0x10 if access is Access.WRITE else 0)
    faulted = cpu.run(entry, entry + 4, x0=address, x1=STORED | address)
    at_entry = cpu.code_base + (0x40 if access is Access.WRITE else 0x30)
    return classify(cpu, address, access, faulted, at_entry)


def arm64_observe_stage2(cpu: Arm64Cpu, address: int, access: Access) -> Observed:
    """ERET from EL2 into the guest for one load or store, then classify it with AT S12E1R/W.

    The guest runs with its stage-1 MMU off, so its load and store code sits at IPA 0.
    """
    guest_entry = 0x10 if access is Access.WRITE else 0
    cpu.enter_el2()
    cpu.write_sysreg(SPSR_EL2, PSTATE_EL1H)
    cpu.uc.reg_write(arm64.UC_ARM64_REG_ELR_EL2, guest_entry)
    faulted = cpu.run(cpu.code_base + 0x100, guest_entry + 4, x0=address, x1=STORED | address)
    cpu.enter_el2()
    at_entry = cpu.code_base + (0x260 if access is Access.WRITE else 0x250)
    return classify(cpu, address, access, faulted, at_entry)


def classify(cpu: Arm64Cpu, address: int, access: Access, faulted: bool, at_entry: int) -> Observed:
    assert not cpu.run(at_entry, at_entry + 12, x0=address), f"AT for {address:#x} raised"
    par = decode_par(cpu.uc.reg_read(arm64.UC_ARM64_REG_X2))
    if isinstance(par, Observed):
        assert faulted, f"{access.value} at {address:#x} ran although AT reports {par}"
        return par
    assert not faulted, f"{access.value} at {address:#x} faulted although AT translates it"
    physical = par | (address & 0xFFF)
    if access is Access.READ:
        loaded = cpu.uc.reg_read(arm64.UC_ARM64_REG_X1)
        assert loaded & 0xFFFF_0000_0000_0000 == MARKER, f"load at {address:#x} read {loaded:#x}"
        return Observed(False, physical_address=loaded & ~MARKER)
    stored = struct.unpack("<Q", cpu.uc.mem_read(physical, 8))[0]
    assert stored == STORED | address, f"store at {address:#x} is not at {physical:#x}"
    return Observed(False, physical_address=physical)


def arm64_stage1_code(memory: PhysicalMemory, code_base: int) -> None:
    memory.write_bytes(code_base, words(LDR_X1_X0))
    memory.write_bytes(code_base + 0x10, words(STR_X1_X0))
    memory.write_bytes(code_base + 0x30, words(AT_S1E1R_X0, ISB, MRS_X2_PAR_EL1))
    memory.write_bytes(code_base + 0x40, words(AT_S1E1W_X0, ISB, MRS_X2_PAR_EL1))


def check_outcomes(outcomes: dict[str, int], problems: list[str]) -> None:
    assert not problems, "\n".join(problems[:20])
    for outcome in ("translated", "translation", "permission"):
        assert outcomes.get(outcome, 0) > 0, f"sample has no {outcome} case: {outcomes}"


def test_unicorn_aarch64_stage1_matches_walker():
    memory = PhysicalMemory(16 * GIB)
    memory_map = host_memory_map(memory)
    fmt = table_format(Architecture.AARCH64, stage=1)
    code_base = 0x1000
    arm64_stage1_code(memory, code_base)
    root = boot_host_tables(memory, memory_map, fmt, boot_layout()).root_address
    samples = host_sample_addresses(memory_map, count_per_region=12, input_bits=fmt.input_bits)

    cpu = Arm64Cpu(code_base)
    map_into_unicorn(cpu.uc, memory, predicted_frames(memory, fmt, root, samples))
    write_markers(cpu.uc, memory, fmt, root, samples)
    cpu.write_sysreg(SCR_EL3, SCR_EL3_NS_RW)
    cpu.write_sysreg(HCR_EL2, HCR_EL2_RW)
    cpu.uc.reg_write(arm64.UC_ARM64_REG_MAIR_EL1, MAIR_VALUE)
    cpu.write_sysreg(TCR_EL1, TCR_EL1_VALUE)
    cpu.uc.reg_write(arm64.UC_ARM64_REG_TTBR0_EL1, root)
    cpu.write_sysreg(SCTLR_EL1, SCTLR_EL1_MMU_ON)

    problems: list[str] = []
    outcomes: dict[str, int] = {}
    for address in samples:
        for access in (Access.READ, Access.WRITE):
            predicted = translate(memory, fmt, root, address, access)
            observed = arm64_observe_el1(cpu, address, access)
            problems.extend(compare(predicted, observed, address, access))
            key = "translated" if isinstance(predicted, Translation) else predicted.kind.value
            outcomes[key] = outcomes.get(key, 0) + 1
    check_outcomes(outcomes, problems)


def build_guest_stage2(memory: PhysicalMemory, fmt, allocator: TableAllocator, code_frame: int):
    """Stage-2 tables with guest RAM, read-only, no-access and execute-never ranges."""
    builder = TableBuilder(memory, fmt, allocator, allow_writable_executable=True)
    guest_ram = Rights(writable=True, executable=True)
    builder.map_range(0, code_frame * PAGE, PAGE, guest_ram, region_name="guest-code")
    builder.map_range(2 * MIB, 0x8000_0000, 4 * MIB, guest_ram, region_name="guest-ram-blocks")
    builder.map_range(2 * GIB, 0x1_0000_0000, GIB, guest_ram, region_name="guest-ram-1g")
    builder.map_range(0x4000_1000, 0x9000_5000, 0x3000, guest_ram, region_name="guest-ram-pages")
    builder.map_range(0x4001_0000, 0x9001_0000, PAGE, Rights(writable=False),
                      region_name="guest-rom")
    builder.map_range(0x4002_0000, 0x9002_0000, PAGE, Rights(readable=False, writable=False),
                      region_name="guest-no-access")
    builder.map_range(0x4003_0000, 0x0900_0000, PAGE,
                      Rights(writable=True, memory_type=MemoryType.DEVICE_nGnRE),
                      region_name="guest-uart")
    return builder.root_address


def test_unicorn_aarch64_stage2_matches_walker():
    memory = PhysicalMemory(16 * GIB)
    fmt = table_format(Architecture.AARCH64, stage=2)
    el2_code = 0x10_0000
    code_frame = 0x10_0000 // PAGE
    arm64_stage1_code(memory, el2_code)  # the guest sees this page at IPA 0
    memory.write_bytes(el2_code + 0x100, words(ERET))
    memory.write_bytes(el2_code + 0x250, words(AT_S12E1R_X0, ISB, MRS_X2_PAR_EL1))
    memory.write_bytes(el2_code + 0x260, words(AT_S12E1W_X0, ISB, MRS_X2_PAR_EL1))
    allocator = TableAllocator(memory, "vm-stage2-tables", 0x20_0000, MIB)
    root = build_guest_stage2(memory, fmt, allocator, code_frame)

    rng = random.Random(11)
    samples = {0x8, 0x1000, 2 * MIB, 6 * MIB - 8, 6 * MIB, 2 * GIB - 8, 2 * GIB, 3 * GIB - 8, 3 * GIB,
               0x4000_0ff8, 0x4000_1000, 0x4000_3ff8, 0x4000_4000, 0x4001_0010, 0x4002_0000,
               0x4003_0008, 0x80_0000_0000, 0x7F_FFFF_F000}
    samples.update(rng.randrange(2 * GIB, 3 * GIB) & ~7 for _ in range(10))
    samples.update(rng.randrange(2 * MIB, 6 * MIB) & ~7 for _ in range(10))
    samples = sorted(samples)

    cpu = Arm64Cpu(el2_code)
    map_into_unicorn(cpu.uc, memory, predicted_frames(memory, fmt, root, samples))
    write_markers(cpu.uc, memory, fmt, root, samples)
    cpu.enter_el2()
    cpu.write_sysreg(HCR_EL2, HCR_EL2_RW | HCR_EL2_VM)
    cpu.write_sysreg(VTCR_EL2, VTCR_EL2_VALUE)
    cpu.write_sysreg(VTTBR_EL2, root)
    cpu.write_sysreg(SCTLR_EL1, 0)  # guest stage 1 off: input addresses are IPAs

    problems: list[str] = []
    outcomes: dict[str, int] = {}
    for address in samples:
        for access in (Access.READ, Access.WRITE):
            predicted = translate(memory, fmt, root, address, access)
            observed = arm64_observe_stage2(cpu, address, access)
            problems.extend(compare(predicted, observed, address, access))
            key = "translated" if isinstance(predicted, Translation) else predicted.kind.value
            outcomes[key] = outcomes.get(key, 0) + 1
    check_outcomes(outcomes, problems)


# x86-64 encodings: mov rax, [rdi] and mov [rdi], rsi.
MOV_RAX_FROM_RDI = bytes.fromhex("488b07")
MOV_RSI_TO_RDI = bytes.fromhex("488937")
EFER_MSR = 0xC000_0080
EFER_LME_LMA_NXE = (1 << 8) | (1 << 10) | (1 << 11)
CR4_PAE = 1 << 5
CR0_PE_ET_WP_PG = 1 | (1 << 4) | (1 << 16) | (1 << 31)  # WP makes ring-0 writes honour RW
PAGE_FAULT_VECTOR = 14


class X86Cpu:
    def __init__(self) -> None:
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        # 1 GiB pages need CPUID PDPE1GB, which the default qemu64 model lacks.
        self.uc.ctl_set_cpu_model(x86.UC_CPU_X86_SKYLAKE_SERVER)
        self.interrupts: list[int] = []
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)

    def _on_interrupt(self, uc, intno, user_data) -> None:
        self.interrupts.append(intno)
        uc.emu_stop()

    def enable_paging(self, root: int) -> None:
        self.uc.reg_write(x86.UC_X86_REG_CR4, CR4_PAE)
        self.uc.msr_write(EFER_MSR, EFER_LME_LMA_NXE)
        self.uc.reg_write(x86.UC_X86_REG_CR3, root)
        self.uc.reg_write(x86.UC_X86_REG_CR0, CR0_PE_ET_WP_PG)
        # unicorn does not deliver the #PF, so QEMU keeps it as the pending exception and turns
        # the next #PF into a double fault. Each access starts from this saved clean context.
        self.clean_context = self.uc.context_save()

    def run(self, start: int, length: int, address: int, value: int) -> bool:
        self.uc.context_restore(self.clean_context)
        self.uc.reg_write(x86.UC_X86_REG_RDI, address)
        self.uc.reg_write(x86.UC_X86_REG_RSI, value)
        self.uc.reg_write(x86.UC_X86_REG_RAX, 0)
        self.interrupts.clear()
        self.uc.emu_start(start, start + length, count=4)
        if not self.interrupts:
            return False
        assert self.interrupts == [PAGE_FAULT_VECTOR], f"{address:#x} raised {self.interrupts}"
        cr2 = self.uc.reg_read(x86.UC_X86_REG_CR2)
        assert cr2 == address, f"page fault at {address:#x} reports CR2 {cr2:#x}"
        return True


def x86_observe(cpu: X86Cpu, code_base: int, predicted_read, address: int,
                access: Access) -> Observed:
    """Run one load or store at ring 0 and report where it landed or what fault it raised.

    The page-fault error code is not exposed by unicorn, so the kind is inferred: a ring-0
    read faults only on a non-present entry, and a write that faults where a read succeeds
    is a protection fault. x86-64 reports no level, so levels are not compared.
    """
    value = STORED | address
    if access is Access.READ:
        if cpu.run(code_base, 3, address, value):
            return Observed(True, fault_kind=FaultKind.TRANSLATION)
        loaded = cpu.uc.reg_read(x86.UC_X86_REG_RAX)
        assert loaded & 0xFFFF_0000_0000_0000 == MARKER, f"load at {address:#x} read {loaded:#x}"
        return Observed(False, physical_address=loaded & ~MARKER)
    if cpu.run(code_base + 0x10, 3, address, value):
        readable = not cpu.run(code_base, 3, address, value)
        kind = FaultKind.PERMISSION if readable else FaultKind.TRANSLATION
        return Observed(True, fault_kind=kind)
    assert isinstance(predicted_read, Translation), f"store at {address:#x} ran, read is {predicted_read}"
    physical = predicted_read.output_address
    stored = struct.unpack("<Q", cpu.uc.mem_read(physical, 8))[0]
    assert stored == value, f"store at {address:#x} did not reach {physical:#x}"
    return Observed(False, physical_address=physical)


def test_unicorn_x86_64_long_mode_matches_walker():
    memory = PhysicalMemory(16 * GIB)
    memory_map = host_memory_map(memory)
    fmt = table_format(Architecture.X86_64, stage=1)
    code_base = 0x1000
    memory.write_bytes(code_base, MOV_RAX_FROM_RDI)
    memory.write_bytes(code_base + 0x10, MOV_RSI_TO_RDI)
    root = boot_host_tables(memory, memory_map, fmt, boot_layout()).root_address
    samples = host_sample_addresses(memory_map, count_per_region=12, input_bits=fmt.input_bits)

    cpu = X86Cpu()
    map_into_unicorn(cpu.uc, memory, predicted_frames(memory, fmt, root, samples))
    write_markers(cpu.uc, memory, fmt, root, samples)
    cpu.enable_paging(root)

    problems: list[str] = []
    outcomes: dict[str, int] = {}
    for address in samples:
        predicted_read = translate(memory, fmt, root, address, Access.READ)
        for access in (Access.READ, Access.WRITE):
            predicted = translate(memory, fmt, root, address, access)
            observed = x86_observe(cpu, code_base, predicted_read, address, access)
            problems.extend(compare(predicted, observed, address, access, compare_level=False))
            key = "translated" if isinstance(predicted, Translation) else predicted.kind.value
            outcomes[key] = outcomes.get(key, 0) + 1
    check_outcomes(outcomes, problems)


def test_unicorn_stage2_lookup_matches_cpu():
    """Stage-2 tables from guest page lists place guest accesses where host_frame() says."""
    memory = PhysicalMemory(16 * GIB)
    fmt = table_format(Architecture.AARCH64, stage=2)
    el2_code = 0x10_0000
    arm64_stage1_code(memory, el2_code)
    memory.write_bytes(el2_code + 0x100, words(ERET))
    memory.write_bytes(el2_code + 0x250, words(AT_S12E1R_X0, ISB, MRS_X2_PAR_EL1))
    memory.write_bytes(el2_code + 0x260, words(AT_S12E1W_X0, ISB, MRS_X2_PAR_EL1))
    rng = random.Random(5)
    scattered = [(0x4_0000 + index, 0x9_0000 + rng.randrange(0, 0x1_0000)) for index in range(64)]
    mappings = [
        (0, el2_code // PAGE),
        GuestMemoryRange(guest_page=0x200, host_frame=0x8_0000, page_count=0x400),
        *scattered,
    ]
    allocator = TableAllocator(memory, "vm-stage2-tables", 0x20_0000, MIB)
    tables = build_stage2_tables(memory, fmt, mappings, allocator)

    guest_pages = [0x200, 0x3FF, 0x5FF, 0x600] + [page for page, _ in scattered[::7]]
    samples = [page * PAGE + 8 for page in guest_pages]
    cpu = Arm64Cpu(el2_code)
    map_into_unicorn(cpu.uc, memory, predicted_frames(memory, fmt, tables.root_address, samples))
    write_markers(cpu.uc, memory, fmt, tables.root_address, samples)
    cpu.enter_el2()
    cpu.write_sysreg(HCR_EL2, HCR_EL2_RW | HCR_EL2_VM)
    cpu.write_sysreg(VTCR_EL2, VTCR_EL2_VALUE)
    cpu.write_sysreg(VTTBR_EL2, tables.root_address)
    cpu.write_sysreg(SCTLR_EL1, 0)

    for page, address in zip(guest_pages, samples):
        observed = arm64_observe_stage2(cpu, address, Access.READ)
        if page >= 0x600 and page < 0x4_0000:
            assert observed.faulted, f"unmapped guest page {page:#x} did not fault"
            continue
        assert not observed.faulted, f"guest page {page:#x} faulted: {observed}"
        assert observed.physical_address // PAGE == tables.host_frame(page)
        assert tables.host_frame_cached(page) == tables.host_frame(page)
