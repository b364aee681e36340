"""How a restarted coordinator or power manager rebuilds its view from the event stream.

The pure functions read event records (as the checker reads them); the async
ones ask hosts what they run and publish the outcome the previous process did
not get to publish.
"""

from __future__ import annotations

from typing import Any

import proto
from proto import subjects

from ._agent import CommandFailed, CommandTimeout
from ._supervise import retry

# How long recovery keeps asking a host that is down (restarting) before giving up.
HOST_RETRY_S = 30.0


async def read_history(nc: Any) -> list[dict[str, Any]]:
    from .checker._history import _read_all

    return await _read_all(nc)


def unfinished(records: list[dict[str, Any]], start_type: str, terminal_types: tuple[str, ...],
               key: Any) -> list[dict[str, Any]]:
    """Data of each `start_type` event with no later terminal event of the same key, oldest first."""
    open_: dict[Any, dict[str, Any]] = {}
    for record in records:
        if record["type"] == start_type:
            open_[key(record["data"])] = record["data"]
        elif record["type"] in terminal_types:
            open_.pop(key(record["data"]), None)
    return list(open_.values())


def unfinished_migrations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return unfinished(records, "migration.started", ("migration.completed", "migration.failed"),
                      lambda data: data.get("migration"))


def unfinished_power_actions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    started = [r for r in records if r["type"] != "power.recommendation" or r["data"].get("carried_out")]
    return unfinished(started, "power.recommendation", ("power.completed", "power.failed"),
                      lambda data: (data.get("action"), data.get("host")))


def placed_vms(records: list[dict[str, Any]]) -> set[str]:
    """VMs the history places on a host and has not reported lost."""
    placed: set[str] = set()
    for record in records:
        vm = record["data"].get("vm")
        if record["type"] == "vm.placed":
            placed.add(vm)
        elif record["type"] == "vm.lost":
            placed.discard(vm)
    return placed


async def _ask(agent: Any, host: str, operation: str, message: proto.Message) -> dict[str, Any]:
    return await retry(lambda: agent.request(subjects.host_command(host, operation), message, 5.0),
                       (CommandTimeout,), HOST_RETRY_S)


async def finish_at_source(agent: Any, source: str, migration: str) -> None:
    """Tell the source to drop its paused copy, waiting out a source that restarts."""
    await _ask(agent, source, "migrate_finish", proto.MigrateFinish(migration))


async def resolve_migration(agent: Any, started: dict[str, Any]) -> None:
    """End a migration whose coordinator died: completed if it committed, else aborted on both sides.

    The source still running the VM means it never finished: aborting the
    destination first drops a copy that may have committed, then the source
    resumes. Without the VM on the source, the destination's record of the
    commit (with the digest it verified against the source's) completes it.
    """
    ids = {k: started[k] for k in ("migration", "vm", "source", "destination")}
    try:
        source_status = await _ask(agent, ids["source"], "status", proto.HostStatusRequest())
        if ids["vm"] in source_status.get("vms", {}):
            await _ask(agent, ids["destination"], "migrate_abort", proto.MigrateAbort(ids["migration"]))
            await _ask(agent, ids["source"], "migrate_abort", proto.MigrateAbort(ids["migration"]))
            await agent.publish(proto.MigrationFailed(reason="coordinator restarted before commit", **ids))
            return
        destination_status = await _ask(agent, ids["destination"], "status", proto.HostStatusRequest())
    except (CommandFailed, CommandTimeout) as exc:
        await agent.publish(proto.MigrationFailed(reason=f"coordinator restarted; recovery failed: {exc}", **ids))
        return
    arrival = destination_status.get("arrived", {}).get(ids["migration"])
    if arrival is None:
        await agent.publish(proto.MigrationFailed(
            reason="coordinator restarted; the VM is on neither host", **ids))
        return
    await agent.publish(proto.MigrationCompleted(
        source_digest=arrival["digest"], destination_digest=arrival["digest"],
        stats={"status": "completed", "recovered": True}, **ids))
