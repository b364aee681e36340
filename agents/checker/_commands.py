"""Accepted commands and the events that end them.

Each row names the event that accepts a command, how to key it, which events
end it and which agent owns it: every agent of a kind, or only the agent that
published the start event. A command whose owner restarted after accepting it
and that never ended is a violation; the owner must end it (see
agents._recovery and agents.host._provision_journal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandKind:
    name: str
    start_type: str
    terminal_types: tuple[str, ...]
    owner_kind: str
    key: Callable[[dict[str, Any]], str]
    # Whether a start event is an accepted command at all (a power
    # recommendation is one only when the manager carries it out).
    accepted: Callable[[dict[str, Any]], bool] = lambda data: True
    # Whether only the agent that published the start event owns the command
    # (a host's provision), rather than any agent of owner_kind.
    owner_is_sender: bool = False


def _power_key(data: dict[str, Any]) -> str:
    return f"{data.get('action')}:{data.get('host')}"


COMMAND_KINDS: tuple[CommandKind, ...] = (
    CommandKind(
        name="migration",
        start_type="migration.started",
        terminal_types=("migration.completed", "migration.failed"),
        owner_kind="migration",
        key=lambda data: str(data.get("migration")),
    ),
    CommandKind(
        name="power",
        start_type="power.recommendation",
        terminal_types=("power.completed", "power.failed"),
        owner_kind="power",
        key=_power_key,
        accepted=lambda data: bool(data.get("carried_out")),
    ),
    CommandKind(
        # The host agent's installer runs the provision, through the BMC and the DPU agent.
        name="dpu-provision",
        start_type="dpu.provision_started",
        terminal_types=("dpu.provisioned", "dpu.provision_failed"),
        owner_kind="host",
        key=lambda data: str(data.get("provision")),
        owner_is_sender=True,
    ),
)


def kinds_by_start() -> dict[str, CommandKind]:
    return {kind.start_type: kind for kind in COMMAND_KINDS}


def kinds_by_terminal() -> dict[str, CommandKind]:
    return {t: kind for kind in COMMAND_KINDS for t in kind.terminal_types}
