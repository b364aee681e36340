"""The migration coordinator process.

A migration runs prepare (destination) -> send (source, precopy then pause) ->
commit (destination checks the memory digest and starts the VM) -> finish
(source drops its paused copy). Until commit succeeds the source keeps the VM,
so a failure at any step aborts both sides and the VM resumes on its source.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import proto
from proto import subjects

from .. import _recovery
from .._agent import Agent, CommandFailed, CommandTimeout, HandlerError
from .._attestation import AttestationGate
from .._config import ClusterConfig
from .._workload import vm_specs

PREPARE_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 120.0
COMMIT_TIMEOUT_S = 10.0


class MigrationCoordinator(Agent):
    kind = "migration"

    def __init__(self, config: ClusterConfig, agent_id: str = "migration") -> None:
        super().__init__(config, agent_id)
        # VM -> host, learned from heartbeats and completed migrations.
        self.locations: dict[str, str] = {}
        self.specs = vm_specs(config.vms)
        self.in_flight: set[str] = set()
        # A destination must pass attestation for its current boot before a VM moves onto it.
        self.attestation = AttestationGate(self, [host.id for host in config.hosts])

    async def start(self) -> None:
        await self.nc.subscribe(subjects.event(proto.HostHeartbeat.TYPE), cb=self._on_heartbeat)
        await self.attestation.start()
        # Migrations a previous coordinator process left without an outcome end before new ones start.
        for started in _recovery.unfinished_migrations(await _recovery.read_history(self.nc)):
            self.log.info("migration.recovering", **started)
            await _recovery.resolve_migration(self, started)
        await self.serve(subjects.MIGRATION_REQUEST, {proto.MigrationRequest: self.on_request})

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            heartbeat = proto.parse(proto.decode(msg.data), proto.HostHeartbeat)
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        for vm in heartbeat.vms:
            if vm not in self.in_flight:
                self.locations[vm] = heartbeat.host

    async def on_request(self, message: proto.MigrationRequest, _msg: Any) -> dict[str, Any]:
        known_hosts = {h.id for h in self.config.hosts}
        if message.destination not in known_hosts:
            raise HandlerError(f"unknown destination host {message.destination!r}")
        source = message.source or self.locations.get(message.vm, "")
        if not source:
            raise HandlerError(f"unknown VM {message.vm!r}: no host reports it")
        if source not in known_hosts:
            raise HandlerError(f"unknown source host {source!r}")
        if source == message.destination:
            raise HandlerError(f"VM {message.vm} already runs on {source}")
        if message.vm in self.in_flight:
            raise HandlerError(f"VM {message.vm} is already migrating")
        spec = self._vm_spec(message.vm)
        verdict = await self.attestation.require(message.destination)
        if not verdict.attested:
            raise HandlerError(f"destination {message.destination} failed attestation "
                               f"({verdict.outcome}, {verdict.check}): {verdict.reason}")
        self.in_flight.add(message.vm)
        try:
            return await self._migrate(message.vm, source, message.destination, spec)
        finally:
            self.in_flight.discard(message.vm)

    def _vm_spec(self, vm_id: str) -> dict[str, Any]:
        try:
            return self.specs[vm_id]
        except KeyError:
            raise HandlerError(f"unknown VM {vm_id!r}") from None

    async def _migrate(self, vm: str, source: str, destination: str, spec: dict[str, Any]) -> dict[str, Any]:
        migration = uuid.uuid4().hex[:12]
        ids = dict(migration=migration, vm=vm, source=source, destination=destination)
        await self.publish(proto.MigrationStarted(**ids))
        self.log.info("migration.started", **ids)
        started = time.monotonic()
        step = "prepare"
        try:
            await self.request(
                subjects.host_command(destination, "migrate_prepare"),
                proto.MigratePrepare(migration, vm, spec),
                PREPARE_TIMEOUT_S,
            )
            step = "send"
            sent = await self.request(
                subjects.host_command(source, "migrate_send"),
                proto.MigrateSend(migration, vm, destination),
                SEND_TIMEOUT_S,
            )
            step = "commit"
            committed = await self.request(
                subjects.host_command(destination, "migrate_commit"),
                proto.MigrateCommit(migration, sent["source_digest"]),
                COMMIT_TIMEOUT_S,
            )
        except (CommandFailed, CommandTimeout) as exc:
            reason = f"{step} failed: {exc}"
            await self._abort(migration, source, destination)
            self.log.warning("migration.failed", reason=reason, **ids)
            await self.publish(proto.MigrationFailed(reason=reason, **ids))
            raise HandlerError(reason) from None
        # The destination runs the VM now; the source's copy is paused and may go.
        try:
            await _recovery.finish_at_source(self, source, migration)
        except (CommandFailed, CommandTimeout) as exc:
            self.log.warning("migration.finish_failed", error=str(exc), **ids)
        self.locations[vm] = destination
        total_s = time.monotonic() - started
        stats = {
            "status": "completed",
            "total-time": round(total_s * 1000),
            "downtime": round(max(0.0, time.time() - sent["paused_at"]) * 1000),
            "transferred": sent["transferred"],
            "total": sent["total"],
            "dirty-sync-count": sent["dirty-sync-count"],
            "mbps": round(sent["transferred"] * 8 / 1e6 / max(total_s, 1e-9), 2),
        }
        await self.publish(
            proto.MigrationCompleted(
                source_digest=sent["source_digest"],
                destination_digest=committed["destination_digest"],
                stats=stats,
                **ids,
            )
        )
        self.log.info("migration.completed", total_time_ms=stats["total-time"], **ids)
        return {"migration": migration, **stats}

    async def _abort(self, migration: str, source: str, destination: str) -> None:
        for host in (destination, source):
            try:
                await self.request(subjects.host_command(host, "migrate_abort"), proto.MigrateAbort(migration))
            except (CommandFailed, CommandTimeout) as exc:
                self.log.warning("migration.abort_failed", host=host, migration=migration, error=str(exc))
