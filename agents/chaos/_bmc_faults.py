"""Redfish faults a BMC agent plays on request: answer 500, answer slowly, stop answering.

The BMC agent serves `bmc.fault` commands on BMC_FAULT_SUBJECT and asks
`before_request()` ahead of every Redfish request it handles.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from proto import subjects

from .._durations import MAX_DELAY_S

BMC_FAULT_SUBJECT = f"{subjects.PREFIX}.cmd.bmc.fault"
MODES = ("none", "error", "slow", "hang")


class BmcFaultRejected(ValueError):
    """A bmc.fault command with an unknown host or mode, or a delay out of range."""


@dataclass
class _Fault:
    mode: str
    delay_s: float
    cleared: asyncio.Event


class BmcFaults:
    def __init__(self, host_ids: list[str]) -> None:
        self.host_ids = set(host_ids)
        self.faults: dict[str, _Fault] = {}

    def set(self, host: str, mode: str, delay_s: float) -> None:
        if host not in self.host_ids:
            raise BmcFaultRejected(f"unknown host {host!r}; hosts are {', '.join(sorted(self.host_ids))}")
        if mode not in MODES:
            raise BmcFaultRejected(f"invalid mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "slow" and not 0 < delay_s <= MAX_DELAY_S:
            raise BmcFaultRejected(f"delay_s {delay_s} outside (0, {MAX_DELAY_S:g}] for mode 'slow'")
        previous = self.faults.pop(host, None)
        if previous is not None:
            previous.cleared.set()
        if mode != "none":
            self.faults[host] = _Fault(mode, delay_s, asyncio.Event())

    async def before_request(self, host: str, error_response: Callable[[], Any]) -> Any | None:
        """Delay or block a request as the host's fault asks; return a response to send instead, or None."""
        fault = self.faults.get(host)
        if fault is None:
            return None
        if fault.mode == "error":
            return error_response()
        if fault.mode == "slow":
            await asyncio.sleep(fault.delay_s)
            return None
        # "hang": hold the request until the fault is cleared; the client times out first.
        await fault.cleared.wait()
        return None
