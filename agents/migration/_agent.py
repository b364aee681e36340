"""The migration coordinator process.

A migration runs prepare (destination) -> send (source, precopy then pause) ->
commit (destination checks the memory digest and starts the VM) -> finish
(source drops its paused copy). Until commit succeeds the source keeps the VM,
so a failure at any step aborts both sides and the VM resumes on its source.
The steps are in _run.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import proto
from proto import subjects

from .. import _recovery
from .._agent import Agent, CommandFailed, CommandTimeout, HandlerError
from .._attestation import AttestationGate
from .._config import ClusterConfig
from .._workload import vm_specs
from ._run import PeerWatch, run_migration

STATUS_TIMEOUT_S = 5.0


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
        # Heartbeat times of hosts, to end a migration whose source or destination goes silent.
        self.peers = PeerWatch(config.heartbeat_interval_s)

    async def start(self) -> None:
        await self.nc.subscribe(subjects.event(proto.HostHeartbeat.TYPE), cb=self._on_heartbeat)
        await self.attestation.start()
        # Migrations a previous coordinator process left without an outcome end before new ones start.
        for started in _recovery.unfinished_migrations(await _recovery.read_history(self.nc)):
            self.log.info("migration.recovering", **started)
            await _recovery.resolve_migration(self, started)
        await self.serve(subjects.MIGRATION_REQUEST, {proto.MigrationRequest: self.on_request}, match_operation=False)

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            heartbeat = proto.parse_event(msg.subject, msg.data, proto.HostHeartbeat)
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        self.peers.seen(heartbeat.host)
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
        if message.downtime_limit_ms <= 0:
            raise HandlerError(f"invalid downtime limit {message.downtime_limit_ms} ms: expected a positive number")
        if message.max_iterations < 0:
            raise HandlerError(f"invalid max_iterations {message.max_iterations}: expected 0 or more")
        spec = await self._source_spec(message.vm, source)
        await self._require_room(message.destination, message.vm, spec["memory_bytes"])
        verdict = await self.attestation.require(message.destination)
        if not verdict.attested:
            raise HandlerError(f"destination {message.destination} failed attestation "
                               f"({verdict.outcome}, {verdict.check}): {verdict.reason}")
        self.in_flight.add(message.vm)
        try:
            return await self._migrate(message.vm, source, message.destination, spec, message)
        finally:
            self.in_flight.discard(message.vm)

    async def _host_status(self, host: str) -> dict[str, Any]:
        try:
            return await self.request(subjects.host_command(host, "status"), proto.HostStatusRequest(),
                                      STATUS_TIMEOUT_S)
        except (CommandFailed, CommandTimeout) as exc:
            raise HandlerError(f"host {host} did not report its status: {exc}") from None

    async def _source_spec(self, vm_id: str, source: str) -> dict[str, Any]:
        """The VM's spec as its source host runs it, else as the cluster configuration has it."""
        status = await self._host_status(source)
        if vm_id not in status.get("vms", {}):
            raise HandlerError(f"VM {vm_id} does not run on {source}")
        return status.get("vm_specs", {}).get(vm_id) or self._vm_spec(vm_id)

    async def _require_room(self, destination: str, vm_id: str, memory_bytes: int) -> None:
        status = await self._host_status(destination)
        if status.get("power_state") != "On" or not status.get("booted"):
            raise HandlerError(f"destination {destination} is not running (power {status.get('power_state')}, "
                               f"booted {status.get('booted')})")
        free = status["memory_total_bytes"] - status["memory_used_bytes"]
        if memory_bytes > free:
            raise HandlerError(f"destination {destination} has {free} bytes of memory free; VM {vm_id} "
                               f"needs {memory_bytes}")

    def _vm_spec(self, vm_id: str) -> dict[str, Any]:
        try:
            return self.specs[vm_id]
        except KeyError:
            raise HandlerError(f"unknown VM {vm_id!r}") from None

    async def _migrate(self, vm: str, source: str, destination: str, spec: dict[str, Any],
                       request: proto.MigrationRequest) -> dict[str, Any]:
        migration = uuid.uuid4().hex[:12]
        ids = dict(migration=migration, vm=vm, source=source, destination=destination)
        await self.publish(proto.MigrationStarted(**ids))
        self.log.info("migration.started", **ids)
        result = await run_migration(self, ids, spec, request)
        self.locations[vm] = destination
        return result
