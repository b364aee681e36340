"""Helpers shared by tests: process lookup, the dcfleet command, event waits."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import proto

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def dcfleet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents", *args]


async def next_event(subscription, event_type: str, timeout_s: float = 20.0, **match):
    """Read events from a subscription until one of `event_type` whose data matches."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no {event_type} event with {match} within {timeout_s} s")
        msg = await subscription.next_msg(timeout=remaining)
        envelope = proto.decode(msg.data)
        if envelope.type == event_type and all(envelope.data.get(k) == v for k, v in match.items()):
            return envelope
