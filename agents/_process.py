"""Process helpers shared by the supervisor and the tools that spawn children."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal() -> None:
    """Ask Linux to send SIGTERM to this child when its parent dies.

    Runs in the child between fork and exec, so a supervisor killed with
    SIGKILL leaves no orphan agents behind. A no-op outside Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
