"""One live migration as the coordinator runs it: prepare, send, commit, finish.

The source keeps the VM until the destination's commit confirms that it holds the
full state (every batch applied, memory digest equal to the source's). Any failure
before that aborts both hosts, so the VM resumes on its source, and publishes
`migration.failed` with the step and the reason. A host that stops sending
heartbeats during the copy counts as dead after PeerWatch.silence_limit_s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import proto
from proto import subjects

from .. import _recovery
from .._agent import CommandFailed, CommandTimeout, HandlerError

PREPARE_TIMEOUT_S = 5.0
# The copy itself has no deadline: PeerWatch ends it when a host goes silent.
SEND_TIMEOUT_S = 3600.0
COMMIT_TIMEOUT_S = 10.0
MIN_SILENCE_LIMIT_S = 3.0


class PeerLost(Exception):
    """A host in the migration stopped sending heartbeats; treat it as dead."""

    def __init__(self, host: str, silent_s: float) -> None:
        self.host = host
        self.silent_s = silent_s
        super().__init__(f"host {host} sent no heartbeat for {silent_s:.1f} s")


class PeerWatch:
    """Last heartbeat time of each host, and a watch that raises PeerLost for a silent one."""

    def __init__(self, heartbeat_interval_s: float) -> None:
        self.silence_limit_s = max(MIN_SILENCE_LIMIT_S, 3 * heartbeat_interval_s)
        self._last_seen: dict[str, float] = {}

    def seen(self, host: str) -> None:
        self._last_seen[host] = time.monotonic()

    def silent_host(self, hosts: list[str], since: float, now: float) -> tuple[str, float] | None:
        """Return the first host silent longer than the limit, counting from `since` at the latest."""
        for host in hosts:
            silent_s = now - max(self._last_seen.get(host, since), since)
            if silent_s > self.silence_limit_s:
                return host, silent_s
        return None

    async def watch(self, hosts: list[str]) -> None:
        since = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            silent = self.silent_host(hosts, since, time.monotonic())
            if silent is not None:
                raise PeerLost(*silent)


async def _watched(coro: Any, watch: PeerWatch, hosts: list[str]) -> Any:
    """Await `coro` unless a host goes silent first; then cancel it and raise PeerLost."""
    work = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(watch.watch(hosts))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        return watcher.result()  # raises PeerLost
    finally:
        for task in (work, watcher):
            task.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)


async def run_migration(agent: Any, ids: dict[str, str], spec: dict[str, Any],
                        request: proto.MigrationRequest) -> dict[str, Any]:
    """Move a VM; return its statistics, or raise HandlerError after `migration.failed`."""
    migration, vm, source, destination = ids["migration"], ids["vm"], ids["source"], ids["destination"]
    started = time.monotonic()
    step = "prepare"
    try:
        await agent.request(subjects.host_command(destination, "migrate_prepare"),
                            proto.MigratePrepare(migration, vm, spec), PREPARE_TIMEOUT_S)
        setup_s = time.monotonic() - started
        step = "send"
        send = proto.MigrateSend(migration, vm, destination, downtime_limit_ms=request.downtime_limit_ms,
                                 max_iterations=request.max_iterations, auto_converge=request.auto_converge)
        sent = await _watched(agent.request(subjects.host_command(source, "migrate_send"), send, SEND_TIMEOUT_S),
                              agent.peers, [source, destination])
        step = "commit"
        committed = await agent.request(
            subjects.host_command(destination, "migrate_commit"),
            proto.MigrateCommit(migration, sent["source_digest"], batches=sent["batches"],
                                poisoned_pages=sent["poisoned_pages"]),
            COMMIT_TIMEOUT_S)
    except (CommandFailed, CommandTimeout, PeerLost) as exc:
        await _fail(agent, ids, f"{step} failed: {exc}", abort=True)
    # The destination runs the VM now; the source's copy is paused and may go.
    try:
        await _recovery.finish_at_source(agent, source, migration)
    except CommandFailed as exc:
        # The source resumed the VM on its own and aborted the destination's copy.
        await _fail(agent, ids, f"finish failed: {exc}", abort=False)
    except CommandTimeout as exc:
        agent.log.warning("migration.finish_failed", error=str(exc), **ids)
    stats = completed_stats(sent, committed, setup_s, time.monotonic() - started)
    await agent.publish(proto.MigrationCompleted(
        source_digest=sent["source_digest"], destination_digest=committed["destination_digest"], stats=stats,
        poisoned_pages=committed["poisoned_pages"], differing_pages=[], **ids))
    agent.log.info("migration.completed", total_time_ms=stats["total-time"], downtime_ms=stats["downtime"],
                   poisoned_pages=len(committed["poisoned_pages"]), **ids)
    return {"migration": migration, "stop_reason": sent["stop_reason"], **stats}


def completed_stats(sent: dict[str, Any], committed: dict[str, Any], setup_s: float,
                    total_s: float) -> dict[str, Any]:
    """The source's query-migrate figures with times as the coordinator saw them.

    Downtime runs from the pause on the source to the resume on the destination,
    so it includes the stop-and-copy pass and the commit's digest check. As
    QEMU does at completion, `mbps` and `pages-per-second` average over
    total-time minus setup-time.
    """
    stats = dict(sent["stats"])
    stats["status"] = "completed"
    stats["total-time"] = round(total_s * 1000)
    stats["setup-time"] = round(setup_s * 1000)
    stats["downtime"] = round(max(0.0, committed["resumed_at"] - sent["paused_at"]) * 1000)
    transfer_s = total_s - setup_s
    ram = stats.get("ram")
    if transfer_s > 0 and isinstance(ram, dict):
        ram = stats["ram"] = dict(ram)
        pages = ram.get("normal", 0) + ram.get("duplicate", 0) + ram.get("poisoned-pages", 0)
        ram["mbps"] = ram.get("transferred", 0) * 8 / transfer_s / 1e6
        ram["pages-per-second"] = round(pages / transfer_s)
    return stats


async def _fail(agent: Any, ids: dict[str, str], reason: str, *, abort: bool) -> None:
    if abort:
        for host in (ids["destination"], ids["source"]):
            try:
                await agent.request(subjects.host_command(host, "migrate_abort"), proto.MigrateAbort(ids["migration"]))
            except (CommandFailed, CommandTimeout) as exc:
                agent.log.warning("migration.abort_failed", host=host, error=str(exc), **ids)
    agent.log.warning("migration.failed", reason=reason, **ids)
    await agent.publish(proto.MigrationFailed(reason=reason, **ids))
    raise HandlerError(reason)
