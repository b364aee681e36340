"""Helpers shared by tests: process lookup, the dcfleet command, event waits, the netns skip mark."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def netns_unavailable() -> str:
    """Why this machine cannot run `dcfleet up --netns`, or "" when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command of iproute2 is not installed"
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns list` failed: {result.stderr.strip()}"
    return ""


needs_netns = pytest.mark.skipif(bool(netns_unavailable()), reason=netns_unavailable() or "available")
