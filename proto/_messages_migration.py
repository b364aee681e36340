"""Message types of live migration with memory errors: progress, machine checks, error injection."""

from __future__ import annotations

from ._messages import Message, message


# ---- events -----------------------------------------------------------------


@message("migration.progress")
class MigrationProgress(Message):
    """A snapshot of a running migration from its source host, in QEMU `query-migrate` shape."""

    migration: str
    vm: str
    source: str
    destination: str
    stats: dict


@message("vm.machine_check")
class VmMachineCheck(Message):
    """A guest access consumed poisoned memory; the VM got a machine check, the host runs on."""

    vm: str
    host: str
    guest_page: int
    host_frame: int
    access: str


@message("host.memory_error")
class HostMemoryError(Message):
    """A host frame got an uncorrectable memory error: injected, or found by an error-safe read."""

    host: str
    frame: int
    latent: bool
    vm: str
    guest_page: int
    origin: str


@message("vm.resumed")
class VmResumed(Message):
    """A migration's source host ran its paused VM again on its own; not an outcome of the migration."""

    vm: str
    host: str
    migration: str
    reason: str


# ---- commands ---------------------------------------------------------------


@message("host.memory_error_inject")
class MemoryErrorInject(Message):
    """Mark a host frame bad: by frame number, or by a VM's guest page (frame -1)."""

    frame: int = -1
    vm: str = ""
    guest_page: int = -1
    latent: bool = False


@message("host.vm_read")
class VmRead(Message):
    """Make a VM's guest read one of its pages, as a guest load instruction would."""

    vm: str
    guest_page: int


@message("host.vm_memory")
class VmMemoryRequest(Message):
    """Ask for a VM's per-page checksums and its poisoned guest pages."""

    vm: str
