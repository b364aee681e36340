"""Message types of the page tables: boot-time table steps, VM stage-2 tables, the dump command."""

from __future__ import annotations

from ._messages import Message, message


# ---- events -----------------------------------------------------------------


@message("host.pagetable_step")
class HostPagetableStep(Message):
    """One step of a host's boot-time tables: the firmware's tables or a boot-loader step.

    ``step`` is ``firmware_tables``, ``copy_firmware_tables``, ``reprocess_tables`` or
    ``install_final_tables``; the last one's ``root_address`` is handed to the kernel.
    Addresses are host-physical.
    """

    host: str
    boot_count: int
    arch: str
    step: str
    table_format: str
    source_root_address: int | None
    root_address: int
    region_name: str
    region_base: int
    region_size_bytes: int
    table_pages: int
    table_bytes: int
    mapped_range_count: int
    writable_executable_range_count: int


@message("vm.stage2_mapped")
class VmStage2Mapped(Message):
    """A VM's guest RAM got host frames and stage-2 tables on ``host``."""

    vm: str
    host: str
    table_format: str
    root_address: int
    guest_address: int
    size_bytes: int
    host_frame_runs: int
    table_pages: int


@message("vm.stage2_unmapped")
class VmStage2Unmapped(Message):
    """A VM's host frames and stage-2 table pages went back to the host's free pools."""

    vm: str
    host: str
    reason: str


# ---- commands ---------------------------------------------------------------


@message("host.pagetable_dump")
class PagetableDumpRequest(Message):
    """Ask a host for its hypervisor tables, or for one VM's stage-2 tables when ``vm`` is set."""

    vm: str = ""
