"""The host agent process: boot, heartbeats, VMs and both sides of a migration."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from typing import Any

import proto
from proto import subjects

from .._agent import Agent, HandlerError
from .._config import ClusterConfig
from .._vmstore import HostStore, drop_aborted_arrival, restore_host
from ..secureboot import BootRejected, InvalidInput
from ._hardware import power_watts
from ._installer import DpuInstaller
from ._packages import PackageScheduler
from ._measured_boot import boot_from_disk, quote_pcrs
from ._secure_boot import host_boot_paths
from ._tables_hooks import PageTablesMixin
from ._memory import GuestVm, HostRam
from ._memory_handlers import GuestMemoryMixin
from ._migrate_dest import MigrationDestinationMixin
from ._migrate_source import MigrationSourceMixin
from ..migration_core import PAGE_SIZE_BYTES as PAGE_SIZE
from ..migration_core import OutOfHostFrames

RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart")


class HostAgent(MigrationSourceMixin, MigrationDestinationMixin, GuestMemoryMixin, PageTablesMixin, Agent):
    kind = "host"

    def __init__(self, config: ClusterConfig, host_id: str) -> None:
        super().__init__(config, host_id)
        self.host = config.host(host_id)
        self.power_state = "On"
        self.booted = False
        self.boot_count = 0
        # Measured boot results of the running boot: SHA-256 PCRs and the failure, if any.
        self.pcrs: dict[int, bytes] = {}
        self.boot_failure: BootRejected | None = None
        self.vms: dict[str, GuestVm] = {}
        # The host's VM RAM with its memory error map; each VM's guest memory lives in it.
        self.ram = HostRam(self.host.memory_bytes)
        self.outgoing: dict[str, str] = {}
        self._sending: dict[str, asyncio.Task] = {}
        self._leases: dict[str, asyncio.Task] = {}
        self.incoming: dict[str, Any] = {}
        self.rng = random.Random(zlib.crc32(host_id.encode()))
        self._boot_task: asyncio.Task | None = None
        self.store = HostStore(config.state_dir, host_id)
        packages = max(1, min(self.host.packages, self.host.cores))
        self.packages = PackageScheduler(packages, max(1, self.host.cores // packages), self.host.mips_per_core)
        self.dpu_installer = DpuInstaller(self, host_id)

    async def start(self) -> None:
        handlers = {
            proto.HostStatusRequest: self.on_status,
            proto.QuoteRequest: self.on_quote,
            proto.VmCreate: self.on_vm_create,
            proto.HostPower: self.on_power,
            proto.MigratePrepare: self.on_migrate_prepare,
            proto.MigrateSend: self.on_migrate_send,
            proto.MigrateCommit: self.on_migrate_commit,
            proto.MigrateFinish: self.on_migrate_finish,
            proto.MigrateAbort: self.on_migrate_abort,
            proto.PagetableDumpRequest: self.on_pagetable_dump,
            proto.MemoryErrorInject: self.on_memory_error_inject,
            proto.VmRead: self.on_vm_read,
            proto.VmMemoryRequest: self.on_vm_memory,
            proto.HostProvisionDpu: self.on_provision_dpu,
        }
        restored = restore_host(self)
        if restored:
            self.log.info("host.restored", vms=restored, power_state=self.power_state)
        self._restart_leases()
        self.spawn(self.run_guests(), "guests")
        await self.serve(subjects.host_commands(self.id), handlers)
        self.spawn(self.dpu_installer.recover(), "recover DPU provisions")
        if self.power_state == "On":
            self._boot_task = self.spawn(self.boot(), "boot")
        self.spawn(self.heartbeat_loop(), "heartbeat")

    # ---- boot and power ----------------------------------------------------

    async def boot(self) -> None:
        self.pcrs, self.boot_failure = {}, None
        outcome = await asyncio.to_thread(boot_from_disk, host_boot_paths(self.config.state_dir, self.id))
        self.boot_count = outcome.boot_count
        if outcome.failure is not None:
            await self._boot_failed(outcome.failure)
            return
        if not await self._boot_tables():
            return
        self.pcrs = outcome.report.pcrs
        self.booted = True
        names = [c.path for c in outcome.report.components]
        self.log.info("host.booted", components=len(names), boot_count=self.boot_count)
        await self.publish(proto.HostBooted(host=self.id, components=names, boot_count=self.boot_count))

    async def _boot_failed(self, failure: BootRejected) -> None:
        self.booted = False
        self.boot_failure = failure
        self.log.error("host.boot_failed", file=failure.path, check=failure.check, reason=failure.reason)
        await self.publish(
            proto.HostBootFailed(host=self.id, file=failure.path, check=failure.check, reason=failure.reason)
        )
        # VMs restored from the agent's store cannot run without a booted hypervisor.
        await self._drop_all_vms(f"host failed to boot: {failure.path} {failure.check}")

    async def on_quote(self, message: proto.QuoteRequest, _msg: Any) -> dict[str, Any]:
        """Return the boot state and, once booted, a quote of the PCRs over the verifier's nonce."""
        result: dict[str, Any] = {
            "power_state": self.power_state, "booted": self.booted, "boot_count": self.boot_count,
            "boot_failure": _failure_fields(self.boot_failure), "quote": None,
        }
        if self.power_state == "On" and self.booted:
            paths = host_boot_paths(self.config.state_dir, self.id)
            try:
                result["quote"] = await asyncio.to_thread(
                    quote_pcrs, paths, self.id, self.pcrs, message.nonce, self.boot_count)
            except InvalidInput as error:
                raise HandlerError(f"cannot quote: {error}") from None
        return result

    async def on_power(self, message: proto.HostPower, _msg: Any) -> dict[str, Any]:
        if message.action not in RESET_TYPES:
            raise HandlerError(f"invalid reset type {message.action!r}; expected one of {', '.join(RESET_TYPES)}")
        if message.action == "GracefulShutdown" and self.vms:
            raise HandlerError(f"host {self.id} runs {len(self.vms)} VMs; migrate them first or use ForceOff")
        if message.action in ("ForceOff", "GracefulShutdown", "ForceRestart") and self.power_state == "On":
            await self._power_off(message.via)
        if message.action in ("On", "ForceRestart") and self.power_state == "Off":
            self.power_state = "On"
            self.store.save_power_state("On")
            self.log.info("host.power_on", via=message.via)
            await self.publish(proto.HostPowerOn(host=self.id, via=message.via))
            self._boot_task = self.spawn(self.boot(), "boot")
        return {"power_state": self.power_state}

    async def _drop_all_vms(self, reason: str) -> None:
        for vm_id in list(self.vms):
            del self.vms[vm_id]
            self.store.drop_vm(vm_id)
            self.log.warning("vm.lost", vm=vm_id, reason=reason)
            await self.publish(proto.VmLost(vm=vm_id, host=self.id, reason=reason))
        self.ram.keep_only(self.vms)

    async def _power_off(self, via: str) -> None:
        await self._drop_all_vms("host powered off")
        for incoming in list(self.incoming.values()):
            await self._drop_incoming(incoming)
        for migration in list(self.outgoing):
            self._end_lease(migration)
        self.outgoing.clear()
        self.ram.keep_only(self.vms)
        if self._boot_task is not None:
            self._boot_task.cancel()
        self.power_state = "Off"
        self.store.save_power_state("Off")
        self.booted = False
        self._drop_tables()
        # Power loss resets the TPM: the PCRs and the last boot's outcome are gone.
        self.pcrs, self.boot_failure = {}, None
        self.log.info("host.power_off", via=via)
        await self.publish(proto.HostPowerOff(host=self.id, via=via))

    def _require_running(self) -> None:
        if self.power_state != "On" or not self.booted:
            state = "powered off" if self.power_state != "On" else "not booted"
            raise HandlerError(f"host {self.id} is {state}")

    # ---- heartbeats and workload --------------------------------------------

    async def heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            await self.publish(self._heartbeat(now - last))
            last = now

    def _heartbeat(self, elapsed_s: float) -> proto.HostHeartbeat:
        step = self.clock.trace_step()
        demands: dict[str, float] = {}
        for vm in self.vms.values():
            demands[vm.id] = round(vm.demand_mips(step), 1)
        used = sum(demands.values())
        total = self.host.cpu_mips_total
        utilization = min(used / total, 1.0) if self.booted else 0.0
        watts = power_watts(self.host.model, utilization) if self.power_state == "On" else 0.0
        return proto.HostHeartbeat(
            host=self.id,
            power_state=self.power_state,
            booted=self.booted,
            utilization=round(utilization, 4),
            cpu_mips_used=round(used, 1),
            cpu_mips_total=total,
            memory_used_bytes=self._memory_used(),
            memory_total_bytes=self.host.memory_bytes,
            power_watts=round(watts, 2),
            vms=demands,
            sim_time=round(self.clock.sim_time(), 1),
            packages=self._package_report(demands),
        )

    def _package_report(self, demands: dict[str, float]) -> list[dict]:
        if self.power_state != "On":
            return []
        self.packages.sync({vm_id: (self.vms[vm_id].mips, demand) for vm_id, demand in demands.items()})
        return self.packages.report()

    def _memory_used(self) -> int:
        used = sum(vm.memory_bytes for vm in self.vms.values())
        return used + sum(i.memory_bytes for i in self.incoming.values())

    async def on_status(self, _message: proto.HostStatusRequest, _msg: Any) -> dict[str, Any]:
        return {
            "host": self.id,
            "power_state": self.power_state,
            "booted": self.booted,
            "boot_count": self.boot_count,
            "boot_failure": _failure_fields(self.boot_failure),
            "vms": {vm.id: vm.memory_bytes for vm in self.vms.values()},
            "vm_specs": {vm.id: vm.spec() for vm in self.vms.values()},
            "arrived": self.store.arrived(),
            "memory_used_bytes": self._memory_used(),
            "memory_total_bytes": self.host.memory_bytes,
            **self._table_status(),
        }

    async def on_vm_create(self, message: proto.VmCreate, _msg: Any) -> dict[str, Any]:
        self._require_running()
        _check_vm_spec(message.vm, message.trace, message.mips, message.memory_bytes)
        if message.vm in self.vms:
            raise HandlerError(f"VM {message.vm} already runs on {self.id}")
        self._require_room(message.memory_bytes)
        self._map_stage2(message.vm, message.memory_bytes)
        try:
            vm = self.ram.create_vm(message.vm, message.trace, message.mips, message.memory_bytes, message.seed,
                                    message.max_dirty_rate_pages_per_s)
        except OutOfHostFrames as exc:
            self._unmap_stage2(message.vm)
            raise HandlerError(f"host {self.id} cannot hold VM {message.vm}: {exc}") from None
        self.vms[vm.id] = vm
        self.store.save_vm(vm)
        digest = vm.digest()
        self.log.info("vm.placed", vm=vm.id, memory_bytes=vm.memory_bytes)
        await self.publish(proto.VmPlaced(vm=vm.id, host=self.id, memory_bytes=vm.memory_bytes, digest=digest))
        await self._publish_stage2_mapped(vm.id)
        return {"digest": digest}

    def _require_room(self, memory_bytes: int) -> None:
        free = self.host.memory_bytes - self._memory_used()
        if memory_bytes > free:
            raise HandlerError(f"host {self.id} has {free} bytes free, VM needs {memory_bytes}")

    # ---- migration: both sides (handlers in _migrate_dest.py and _migrate_source.py) ----

    def _check_vm_spec(self, vm: str, trace: Any, mips: Any, memory_bytes: Any) -> None:
        _check_vm_spec(vm, trace, mips, memory_bytes)

    def vm_from_store(self, stored: Any) -> GuestVm:
        """Rebuild a VM from the host's store: its spec and its saved memory image."""
        return self.ram.create_vm(stored.vm, stored.trace, stored.mips, len(stored.memory), stored.seed,
                                  contents=bytes(stored.memory))

    async def on_migrate_abort(self, message: proto.MigrateAbort, _msg: Any) -> dict[str, Any]:
        incoming = self.incoming.get(message.migration)
        if incoming is not None:
            await self._release_stage2(incoming.vm, "migration aborted")
            await self._drop_incoming(incoming)
        drop_aborted_arrival(self, message.migration)
        self.ram.keep_only(list(self.vms) + [i.vm for i in self.incoming.values()])
        await self._sync_stage2("migration aborted")
        self._abort_outgoing(message.migration)
        return {}

    async def on_provision_dpu(self, message: proto.HostProvisionDpu, _msg: Any) -> dict[str, Any]:
        """Start provisioning the management OS of the host's DPUs through its BMC (agents.host._installer)."""
        return await self.dpu_installer.provision(message.image, message.request_id)

    async def stop(self) -> None:
        await self.dpu_installer.close()
        for incoming in list(self.incoming.values()):
            await self._drop_incoming(incoming)
        sending = {vm_id: migration for migration, vm_id in self.outgoing.items()}
        for vm in self.vms.values():
            self.store.save_vm(vm, sending.get(vm.id))


def _failure_fields(failure: BootRejected | None) -> dict[str, str] | None:
    if failure is None:
        return None
    return {"file": failure.path, "check": failure.check, "reason": failure.reason}


def _check_vm_spec(vm: str, trace: Any, mips: Any, memory_bytes: Any) -> None:
    if not subjects.is_token(vm):
        raise HandlerError(f"invalid VM id {vm!r}: use letters, digits, '-' and '_'")
    if not isinstance(trace, list) or not trace or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100 for v in trace
    ):
        raise HandlerError("invalid trace: expected a non-empty list of integers 0..100")
    if not isinstance(mips, (int, float)) or isinstance(mips, bool) or mips <= 0:
        raise HandlerError(f"invalid mips {mips!r}: expected a positive number")
    if not isinstance(memory_bytes, int) or memory_bytes <= 0 or memory_bytes % PAGE_SIZE:
        raise HandlerError(f"invalid memory_bytes {memory_bytes!r}: expected a positive multiple of {PAGE_SIZE}")
