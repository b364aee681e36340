"""The host agent process: boot, heartbeats, VMs and both sides of a migration."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from dataclasses import dataclass
from typing import Any

import proto
from proto import subjects

from .._agent import Agent, CommandFailed, CommandTimeout, HandlerError
from .._config import ClusterConfig
from .._vmstore import HostStore, drop_aborted_arrival, restore_host
from ..secureboot import BootRejected, InvalidInput
from ._hardware import power_watts
from ._packages import PackageScheduler
from ._measured_boot import boot_from_disk, quote_pcrs
from ._secure_boot import host_boot_paths
from ._tables_hooks import PageTablesMixin
from ._vm import PAGE_SIZE, Vm, page_runs

RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart")
# Pages per page-transfer message (128 KiB), well under the broker's 1 MiB payload limit.
CHUNK_PAGES = 32
CHUNKS_IN_FLIGHT = 8
PAGE_REQUEST_TIMEOUT_S = 5.0
# Precopy: stop iterating when this few pages are dirty, or after this many passes.
SWITCHOVER_PAGES = 64
MAX_PRECOPY_PASSES = 8


@dataclass
class Incoming:
    """A VM arriving by migration, not yet running here."""

    migration: str
    vm: str
    spec: dict[str, Any]
    memory: bytearray
    subscription: Any


class HostAgent(PageTablesMixin, Agent):
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
        self.vms: dict[str, Vm] = {}
        self.outgoing: dict[str, str] = {}
        self.incoming: dict[str, Incoming] = {}
        self.rng = random.Random(zlib.crc32(host_id.encode()))
        self._boot_task: asyncio.Task | None = None
        self.store = HostStore(config.state_dir, host_id)
        packages = max(1, min(self.host.packages, self.host.cores))
        self.packages = PackageScheduler(packages, max(1, self.host.cores // packages), self.host.mips_per_core)

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
        }
        restored = restore_host(self)
        if restored:
            self.log.info("host.restored", vms=restored, power_state=self.power_state)
        await self.serve(subjects.host_commands(self.id), handlers)
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

    async def _power_off(self, via: str) -> None:
        for vm_id in list(self.vms):
            del self.vms[vm_id]
            self.store.drop_vm(vm_id)
            await self.publish(proto.VmLost(vm=vm_id, host=self.id, reason="host powered off"))
        for incoming in list(self.incoming.values()):
            await self._drop_incoming(incoming)
        self.outgoing.clear()
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
            vm.run_for(step, elapsed_s, self.rng)
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
        return used + sum(len(i.memory) for i in self.incoming.values())

    async def on_status(self, _message: proto.HostStatusRequest, _msg: Any) -> dict[str, Any]:
        return {
            "host": self.id,
            "power_state": self.power_state,
            "booted": self.booted,
            "boot_count": self.boot_count,
            "boot_failure": _failure_fields(self.boot_failure),
            "vms": {vm.id: vm.memory_bytes for vm in self.vms.values()},
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
        vm = Vm.create(message.vm, message.trace, message.mips, message.memory_bytes, message.seed)
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

    # ---- migration: destination side ----------------------------------------

    async def on_migrate_prepare(self, message: proto.MigratePrepare, _msg: Any) -> dict[str, Any]:
        self._require_running()
        spec = message.spec
        try:
            _check_vm_spec(message.vm, spec["trace"], spec["mips"], spec["memory_bytes"])
        except KeyError as exc:
            raise HandlerError(f"VM spec lacks {exc}") from None
        if message.vm in self.vms:
            raise HandlerError(f"VM {message.vm} already runs on {self.id}")
        if message.migration in self.incoming or not subjects.is_token(message.migration):
            raise HandlerError(f"invalid or duplicate migration id {message.migration!r}")
        self._require_room(spec["memory_bytes"])
        memory = bytearray(spec["memory_bytes"])
        subscription = await self.nc.subscribe(
            subjects.migration_pages(message.migration), cb=self._on_pages
        )
        try:
            self._map_stage2(message.vm, spec["memory_bytes"])
        except HandlerError:
            await subscription.unsubscribe()
            raise
        self.incoming[message.migration] = Incoming(message.migration, message.vm, dict(spec), memory, subscription)
        await self._publish_stage2_mapped(message.vm)
        return {}

    async def _on_pages(self, msg: Any) -> None:
        try:
            pages = proto.parse(proto.decode(msg.data), proto.MigratePages)
            incoming = self.incoming.get(pages.migration)
            if incoming is None:
                raise proto.MessageRejected("unknown-migration", f"no incoming migration {pages.migration!r}")
            end = pages.offset + len(pages.data)
            if pages.offset < 0 or pages.offset % PAGE_SIZE or end > len(incoming.memory):
                raise proto.MessageRejected(
                    "out-of-range", f"pages at {pages.offset}..{end} outside 0..{len(incoming.memory)}"
                )
        except proto.MessageRejected as exc:
            await self.reject(msg, exc)
            return
        incoming.memory[pages.offset : end] = pages.data
        await msg.respond(self.envelope(proto.Reply(ok=True)))

    async def on_migrate_commit(self, message: proto.MigrateCommit, _msg: Any) -> dict[str, Any]:
        incoming = self.incoming.get(message.migration)
        if incoming is None:
            raise HandlerError(f"no incoming migration {message.migration!r}")
        vm = Vm(incoming.vm, list(incoming.spec["trace"]), float(incoming.spec["mips"]), incoming.memory, int(incoming.spec["seed"]))
        digest = await asyncio.to_thread(vm.digest)
        if digest != message.source_digest:
            raise HandlerError(f"memory digest {digest} differs from the source's {message.source_digest}")
        await incoming.subscription.unsubscribe()
        del self.incoming[message.migration]
        self.vms[vm.id] = vm
        self.store.save_vm(vm)
        self.store.record_arrival(message.migration, vm.id, digest)
        self.log.info("migration.arrived", migration=message.migration, vm=vm.id)
        return {"destination_digest": digest}

    async def _drop_incoming(self, incoming: Incoming) -> None:
        self.incoming.pop(incoming.migration, None)
        try:
            await incoming.subscription.unsubscribe()
        except Exception as exc:  # already gone with the connection
            self.log.debug("unsubscribe.failed", error=str(exc))

    async def on_migrate_abort(self, message: proto.MigrateAbort, _msg: Any) -> dict[str, Any]:
        incoming = self.incoming.get(message.migration)
        if incoming is not None:
            await self._release_stage2(incoming.vm, "migration aborted")
            await self._drop_incoming(incoming)
        drop_aborted_arrival(self, message.migration)
        await self._sync_stage2("migration aborted")
        vm_id = self.outgoing.pop(message.migration, None)
        if vm_id is not None and vm_id in self.vms:
            self.vms[vm_id].paused = False
            self.store.save_vm(self.vms[vm_id], memory=False)
        return {}

    # ---- migration: source side ---------------------------------------------

    async def on_migrate_send(self, message: proto.MigrateSend, _msg: Any) -> dict[str, Any]:
        vm = self.vms.get(message.vm)
        if vm is None:
            raise HandlerError(f"VM {message.vm} does not run on {self.id}")
        if message.vm in self.outgoing.values():
            raise HandlerError(f"VM {message.vm} is already migrating")
        self.outgoing[message.migration] = vm.id
        self.store.save_vm(vm, message.migration, memory=False)
        try:
            return await self._precopy(message.migration, vm)
        except (CommandFailed, CommandTimeout) as exc:
            self.outgoing.pop(message.migration, None)
            vm.paused = False
            raise HandlerError(f"page transfer failed: {exc}") from None

    async def _precopy(self, migration: str, vm: Vm) -> dict[str, Any]:
        started = time.monotonic()
        vm.dirty_pages.clear()
        transferred = await self._send_pages(migration, vm, list(range(vm.page_count)))
        passes = 1
        while True:
            dirty = vm.take_dirty()
            if len(dirty) <= SWITCHOVER_PAGES or passes >= MAX_PRECOPY_PASSES:
                break
            transferred += await self._send_pages(migration, vm, dirty)
            passes += 1
        paused_at = time.monotonic()
        vm.paused = True
        final = sorted(set(dirty) | set(vm.take_dirty()))
        transferred += await self._send_pages(migration, vm, final)
        digest = await asyncio.to_thread(vm.digest)
        return {
            "source_digest": digest,
            "transferred": transferred,
            "total": vm.memory_bytes,
            "dirty-sync-count": passes,
            "stop-copy-pages": len(final),
            "precopy-time": round(paused_at - started, 4),
            "paused_at": time.time(),
        }

    async def _send_pages(self, migration: str, vm: Vm, pages: list[int]) -> int:
        subject = subjects.migration_pages(migration)
        limit = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

        async def send(first: int, count: int) -> int:
            offset = first * PAGE_SIZE
            data = bytes(vm.memory[offset : offset + count * PAGE_SIZE])
            async with limit:
                await self.request(subject, proto.MigratePages(migration, offset, data), PAGE_REQUEST_TIMEOUT_S)
            return len(data)

        sizes = await asyncio.gather(*(send(f, c) for f, c in page_runs(pages, CHUNK_PAGES)))
        return sum(sizes)

    async def on_migrate_finish(self, message: proto.MigrateFinish, _msg: Any) -> dict[str, Any]:
        vm_id = self.outgoing.pop(message.migration, None)
        if vm_id is None:
            raise HandlerError(f"no outgoing migration {message.migration!r}")
        self.vms.pop(vm_id, None)
        self.store.drop_vm(vm_id)
        self.log.info("migration.departed", migration=message.migration, vm=vm_id)
        await self._release_stage2(vm_id, "migrated away")
        return {}

    async def stop(self) -> None:
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
