"""The cluster power manager process: placement, evaluation, power changes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

import proto
from proto import subjects

from .. import _bus, _recovery
from .._agent import Agent, CommandFailed, CommandTimeout
from .._attestation import AttestationGate
from .._config import ClusterConfig
from .._http_errors import describe_http_error
from .._workload import vm_specs
from ._demand import DemandHistory
from ._policy import Recommendation, carried_out, evaluate
from ._views import host_states, settings_from_config

HOST_READY_TIMEOUT_S = 60.0
MIGRATION_TIMEOUT_S = 150.0
REDFISH_TIMEOUT_S = 10.0


class BmcError(RuntimeError):
    """A Redfish request to a BMC failed; the power change did not happen."""


class PowerManager(Agent):
    kind = "power"

    def __init__(self, config: ClusterConfig, agent_id: str = "power") -> None:
        super().__init__(config, agent_id)
        self.settings = settings_from_config(config.power)
        self.specs = vm_specs(config.vms)
        # Demand samples per VM, and the host that last reported each VM.
        self.demand = DemandHistory()
        self.location: dict[str, str] = {}
        self.heartbeats: dict[str, proto.HostHeartbeat] = {}
        self.failed_boot: set[str] = set()
        self.placed_before: set[str] = set()
        # Simulated time of each power change made here: the policy holds a host on for
        # a while after its power-on, and never undoes a change at the time it was made.
        self.power_changed_at_s: dict[str, float] = {}
        # Hosts get VMs only after their boot quote matches the cluster's reference manifest.
        self.attestation = AttestationGate(self, [host.id for host in config.hosts])
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        password = Path(self.config.bmc_password_file()).read_text().strip()
        self.http = aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(self.config.bmc_username, password),
            timeout=aiohttp.ClientTimeout(total=REDFISH_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=_bus.redfish_client_ssl(self.config)),
        )
        await self.nc.subscribe(subjects.event(proto.HostHeartbeat.TYPE), cb=self._on_heartbeat)
        await self.nc.subscribe(subjects.event(proto.HostBootFailed.TYPE), cb=self._on_boot_failed)
        await self.nc.subscribe(subjects.event(proto.HostBooted.TYPE), cb=self._on_booted)
        await self.attestation.start()
        self.spawn(self.main(), "power-main")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            heartbeat = proto.parse_event(msg.subject, msg.data, proto.HostHeartbeat)
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        self.heartbeats[heartbeat.host] = heartbeat
        for vm, demand in heartbeat.vms.items():
            if isinstance(demand, (int, float)) and not isinstance(demand, bool):
                try:
                    self.demand.add(vm, heartbeat.sim_time, float(demand))
                except ValueError as exc:
                    # Heartbeats of two hosts can arrive out of order during a migration.
                    self.log.debug("demand.sample_out_of_order", vm=vm, host=heartbeat.host, error=str(exc))
                    continue
                self.location[vm] = heartbeat.host

    async def _on_boot_failed(self, msg: Any) -> None:
        try:
            event = proto.parse_event(msg.subject, msg.data, proto.HostBootFailed)
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        self.failed_boot.add(event.host)
        # Quarantine the host now, not only when a VM would next be placed on it.
        self.attestation.ledger.forget(event.host)
        self.spawn(self.attestation.require(event.host), f"attest {event.host}")

    async def _on_booted(self, msg: Any) -> None:
        try:
            event = proto.parse_event(msg.subject, msg.data, proto.HostBooted)
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        self.failed_boot.discard(event.host)

    # ---- startup ------------------------------------------------------------

    async def main(self) -> None:
        # A restarted manager ends the power actions its previous process left open, and
        # does not place again a VM the history places on a host that is down right now.
        history = await _recovery.read_history(self.nc)
        for action in _recovery.unfinished_power_actions(history):
            await self.publish(proto.PowerFailed(action=action["action"], host=action["host"],
                                                 reason="power manager restarted"))
        self.placed_before = _recovery.placed_vms(history)
        statuses = await self.wait_for_hosts()
        await self.place_vms(statuses)
        interval = max(self.config.power.interval_s, 0.5)
        while True:
            await asyncio.sleep(interval)
            await self.evaluate_once()

    async def wait_for_hosts(self) -> dict[str, dict[str, Any]]:
        """Poll every host until each has booted or failed to boot."""
        deadline = time.monotonic() + HOST_READY_TIMEOUT_S
        statuses: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            for host in self.config.hosts:
                try:
                    statuses[host.id] = await self.request(
                        subjects.host_command(host.id, "status"), proto.HostStatusRequest(), 2.0
                    )
                except (CommandFailed, CommandTimeout):
                    continue
            pending = [
                h.id for h in self.config.hosts
                if not statuses.get(h.id, {}).get("booted") and h.id not in self.failed_boot
                and not statuses.get(h.id, {}).get("boot_failure")
            ]
            if not pending:
                break
            await asyncio.sleep(0.5)
        else:
            self.log.warning("hosts.not_ready", hosts=pending)
        return statuses

    async def place_vms(self, statuses: dict[str, dict[str, Any]]) -> None:
        """Spread VMs over the booted hosts, round-robin, skipping VMs already running."""
        running = {vm for s in statuses.values() for vm in s.get("vms", {})} | self.placed_before
        attested = await self.attestation.attested_hosts([h.id for h in self.config.hosts])
        hosts = [h for h in self.config.hosts if statuses.get(h.id, {}).get("booted") and h.id in attested]
        if not hosts:
            self.log.error("placement.no_hosts", vms=len(self.specs))
            return
        free = {h.id: h.memory_bytes - statuses[h.id].get("memory_used_bytes", 0) for h in hosts}
        turn = 0
        for vm_id, spec in self.specs.items():
            if vm_id in running:
                continue
            for attempt in range(len(hosts)):
                host = hosts[(turn + attempt) % len(hosts)]
                if free[host.id] >= spec["memory_bytes"]:
                    break
            else:
                self.log.error("placement.no_room", vm=vm_id, memory_bytes=spec["memory_bytes"])
                continue
            turn = (turn + attempt + 1) % len(hosts)
            try:
                await self.request(subjects.host_command(host.id, "vm_create"), proto.VmCreate(vm=vm_id, **spec), 10.0)
            except (CommandFailed, CommandTimeout) as exc:
                self.log.error("placement.failed", vm=vm_id, host=host.id, error=str(exc))
                continue
            free[host.id] -= spec["memory_bytes"]
            self.location[vm_id] = host.id

    # ---- evaluation ---------------------------------------------------------

    def sim_now_s(self) -> float:
        """Return the cluster's simulated time as the latest heartbeat reports it."""
        return max((hb.sim_time for hb in self.heartbeats.values()), default=0.0)

    def host_states(self, window_s: float) -> list:
        memory = {vm: spec["memory_bytes"] for vm, spec in self.specs.items()}
        unavailable = self.failed_boot | self.attestation.quarantined_hosts()
        return host_states(self.config.hosts, self.heartbeats, unavailable, memory, self.demand, self.sim_now_s(),
                           window_s, self.power_changed_at_s)

    async def evaluate_once(self) -> None:
        if len(self.heartbeats) < len(self.config.hosts):
            return
        # A power-on decision looks at recent demand, a power-off decision at a longer history.
        recommendation = evaluate(
            self.host_states(self.settings.power_on_window_s), self.settings,
            self.host_states(self.settings.power_off_window_s),
        )
        if recommendation is None:
            return
        acting = carried_out(recommendation, self.settings)
        await self.publish(
            proto.PowerRecommendation(
                action=recommendation.action,
                host=recommendation.host,
                reason=recommendation.reason,
                scores=recommendation.scores,
                moves=[[m.vm, m.source, m.destination] for m in recommendation.moves],
                carried_out=acting,
                priority=recommendation.priority,
                what_if=recommendation.what_if,
            )
        )
        self.log.info("power.recommendation", action=recommendation.action, host=recommendation.host,
                      priority=recommendation.priority, carried_out=acting, reason=recommendation.reason)
        if not acting:
            return
        try:
            if recommendation.action == "power_off":
                await self.power_off(recommendation)
            elif recommendation.action == "power_on":
                await self.power_on(recommendation)
            else:
                await self.migrate(recommendation)
        except (BmcError, CommandFailed, CommandTimeout) as exc:
            self.log.warning("power.action_failed", action=recommendation.action, host=recommendation.host,
                             error=str(exc))
            await self.publish(proto.PowerFailed(action=recommendation.action, host=recommendation.host,
                                                 reason=str(exc)[:500]))
            return
        await self.publish(proto.PowerCompleted(action=recommendation.action, host=recommendation.host))

    async def migrate(self, recommendation: Recommendation) -> None:
        """Carry out a recommendation's moves through the migration coordinator, one at a time."""
        for move in recommendation.moves:
            await self.request(
                subjects.MIGRATION_REQUEST,
                proto.MigrationRequest(vm=move.vm, destination=move.destination, source=move.source),
                MIGRATION_TIMEOUT_S,
            )
            self.location[move.vm] = move.destination

    async def power_off(self, recommendation: Recommendation) -> None:
        await self.migrate(recommendation)
        status = await self.request(subjects.host_command(recommendation.host, "status"), proto.HostStatusRequest())
        if status["vms"]:
            raise BmcError(f"host {recommendation.host} still runs {sorted(status['vms'])}; not powering it off")
        await self.reset(recommendation.host, "ForceOff")
        self.power_changed_at_s[recommendation.host] = self.sim_now_s()
        self.heartbeats.pop(recommendation.host, None)

    async def power_on(self, recommendation: Recommendation) -> None:
        await self.reset(recommendation.host, "On")
        self.power_changed_at_s[recommendation.host] = self.sim_now_s()
        deadline = time.monotonic() + HOST_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status = await self.request(subjects.host_command(recommendation.host, "status"), proto.HostStatusRequest())
            if status["booted"]:
                break
            if recommendation.host in self.failed_boot:
                raise BmcError(f"host {recommendation.host} failed to boot after power-on")
            await asyncio.sleep(0.5)
        else:
            raise BmcError(f"host {recommendation.host} did not boot within {HOST_READY_TIMEOUT_S} s")
        await self.migrate(recommendation)

    async def reset(self, host_id: str, reset_type: str) -> None:
        """POST ComputerSystem.Reset to the host's BMC."""
        host = self.config.host(host_id)
        url = f"{_bus.redfish_base_url(self.config, host)}/redfish/v1/Systems/{host_id}/Actions/ComputerSystem.Reset"
        try:
            async with self.http.post(url, json={"ResetType": reset_type}) as response:
                if response.status >= 300:
                    body = await response.text()
                    raise BmcError(f"Reset {reset_type} of {host_id}: HTTP {response.status}: {body[:300]}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BmcError(f"Reset {reset_type} of {host_id}: POST {url} failed: "
                           f"{describe_http_error(exc, REDFISH_TIMEOUT_S)}") from None
        self.log.info("power.reset", host=host_id, reset_type=reset_type)
