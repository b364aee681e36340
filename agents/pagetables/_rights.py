"""Access rights and memory types shared by every table format."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MemoryType(enum.Enum):
    NORMAL = "MEM/NORMAL"  # write-back cacheable
    NORMAL_NC = "MEM/NORMAL-NC"
    DEVICE_nGnRE = "DEVICE/nGnRE"
    DEVICE_nGnRnE = "DEVICE/nGnRnE"


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"


@dataclass(frozen=True)
class Rights:
    """Rights of a mapping as the CPU applies them, after table-level limits."""

    readable: bool = True
    writable: bool = False
    executable: bool = False
    user: bool = False  # EL0 (AArch64 AP[1]) or user mode (x86-64 US)
    memory_type: MemoryType = MemoryType.NORMAL

    def allows(self, access: Access) -> bool:
        if access is Access.READ:
            return self.readable
        if access is Access.WRITE:
            return self.writable
        return self.executable

    def describe(self) -> str:
        """Format the rights as ptdump does: ``RW``/``ro``/``--``, then ``x`` or ``NX``."""
        if self.writable and self.readable:
            access = "RW"
        elif self.writable:
            access = "wo"
        elif self.readable:
            access = "ro"
        else:
            access = "--"
        parts = [access, "x " if self.executable else "NX"]
        if self.user:
            parts.append("USR")
        return " ".join(parts)


CODE_RIGHTS = Rights(writable=False, executable=True)
DATA_RIGHTS = Rights(writable=True, executable=False)
READ_ONLY_DATA_RIGHTS = Rights(writable=False, executable=False)
DEVICE_RIGHTS = Rights(writable=True, executable=False, memory_type=MemoryType.DEVICE_nGnRE)
