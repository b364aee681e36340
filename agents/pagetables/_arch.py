"""Host architectures and the table format each uses at each stage."""

from __future__ import annotations

import enum

from ._aarch64 import AArch64Stage1Format, AArch64Stage2Format
from ._format import TableFormat
from ._x86_64 import X86_64Format


class Architecture(enum.Enum):
    AARCH64 = "aarch64"
    X86_64 = "x86_64"

    @classmethod
    def parse(cls, value: str) -> "Architecture":
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise ValueError(f"architecture {value!r} is not one of: {choices}") from None


def table_format(architecture: Architecture, stage: int = 1) -> TableFormat:
    """Return the descriptor format of ``architecture`` for translation ``stage`` 1 or 2.

    Stage 2 on x86-64 is AMD nested paging, which reuses the long-mode entry layout.
    """
    if stage not in (1, 2):
        raise ValueError(f"translation stage {stage!r} must be 1 or 2")
    if architecture is Architecture.AARCH64:
        return AArch64Stage1Format() if stage == 1 else AArch64Stage2Format()
    if architecture is Architecture.X86_64:
        return X86_64Format(nested=stage == 2)
    raise ValueError(f"architecture {architecture!r} is not supported")
