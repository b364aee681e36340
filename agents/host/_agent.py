"""The host agent process: boot, heartbeats, VMs and both sides of a migration."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import proto
from proto import subjects

from .._agent import Agent, CommandFailed, CommandTimeout, HandlerError
from .._config import ClusterConfig
from ._boot import BootFailure, verify_bank
from ._hardware import power_watts
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


def host_paths(state_dir: str, host_id: str) -> tuple[Path, Path]:
    """Boot bank and firmware `db` key file of a host."""
    root = Path(state_dir) / "hosts" / host_id
    return root / "bank", root / "firmware" / "db.key"


class HostAgent(Agent):
    kind = "host"

    def __init__(self, config: ClusterConfig, host_id: str) -> None:
        super().__init__(config, host_id)
        self.host = config.host(host_id)
        self.power_state = "On"
        self.booted = False
        self.boot_count = 0
        self.vms: dict[str, Vm] = {}
        self.outgoing: dict[str, str] = {}
        self.incoming: dict[str, Incoming] = {}
        self.rng = random.Random(zlib.crc32(host_id.encode()))
        self._boot_task: asyncio.Task | None = None

    async def start(self) -> None:
        handlers = {
            proto.HostStatusRequest: self.on_status,
            proto.VmCreate: self.on_vm_create,
            proto.HostPower: self.on_power,
            proto.MigratePrepare: self.on_migrate_prepare,
            proto.MigrateSend: self.on_migrate_send,
            proto.MigrateCommit: self.on_migrate_commit,
            proto.MigrateFinish: self.on_migrate_finish,
            proto.MigrateAbort: self.on_migrate_abort,
        }
        await self.serve(subjects.host_commands(self.id), handlers)
        self._boot_task = self.spawn(self.boot(), "boot")
        self.spawn(self.heartbeat_loop(), "heartbeat")

    # ---- boot and power ----------------------------------------------------

    async def boot(self) -> None:
        bank, key_file = host_paths(self.config.state_dir, self.id)
        try:
            firmware_key = await asyncio.to_thread(key_file.read_bytes)
            components = await asyncio.to_thread(verify_bank, bank, firmware_key)
        except FileNotFoundError:
            await self._boot_failed(BootFailure(str(key_file), "firmware-db", "firmware key file missing"))
            return
        except BootFailure as failure:
            await self._boot_failed(failure)
            return
        self.boot_count += 1
        self.booted = True
        names = [c.file for c in components]
        self.log.info("host.booted", components=len(names), boot_count=self.boot_count)
        await self.publish(proto.HostBooted(host=self.id, components=names, boot_count=self.boot_count))

    async def _boot_failed(self, failure: BootFailure) -> None:
        self.booted = False
        self.log.error("host.boot_failed", file=failure.file, check=failure.check, reason=failure.reason)
        await self.publish(
            proto.HostBootFailed(host=self.id, file=failure.file, check=failure.check, reason=failure.reason)
        )

    async def on_power(self, message: proto.HostPower, _msg: Any) -> dict[str, Any]:
        if message.action not in RESET_TYPES:
            raise HandlerError(f"invalid reset type {message.action!r}; expected one of {', '.join(RESET_TYPES)}")
        if message.action == "GracefulShutdown" and self.vms:
            raise HandlerError(f"host {self.id} runs {len(self.vms)} VMs; migrate them first or use ForceOff")
        if message.action in ("ForceOff", "GracefulShutdown", "ForceRestart") and self.power_state == "On":
            await self._power_off(message.via)
        if message.action in ("On", "ForceRestart") and self.power_state == "Off":
            self.power_state = "On"
            self.log.info("host.power_on", via=message.via)
            await self.publish(proto.HostPowerOn(host=self.id, via=message.via))
            self._boot_task = self.spawn(self.boot(), "boot")
        return {"power_state": self.power_state}

    async def _power_off(self, via: str) -> None:
        for vm_id in list(self.vms):
            del self.vms[vm_id]
            await self.publish(proto.VmLost(vm=vm_id, host=self.id, reason="host powered off"))
        for incoming in list(self.incoming.values()):
            await self._drop_incoming(incoming)
        self.outgoing.clear()
        if self._boot_task is not None:
            self._boot_task.cancel()
        self.power_state = "Off"
        self.booted = False
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
        )

    def _memory_used(self) -> int:
        used = sum(vm.memory_bytes for vm in self.vms.values())
        return used + sum(len(i.memory) for i in self.incoming.values())

    async def on_status(self, _message: proto.HostStatusRequest, _msg: Any) -> dict[str, Any]:
        return {
            "host": self.id,
            "power_state": self.power_state,
            "booted": self.booted,
            "boot_count": self.boot_count,
            "vms": {vm.id: vm.memory_bytes for vm in self.vms.values()},
            "memory_used_bytes": self._memory_used(),
            "memory_total_bytes": self.host.memory_bytes,
        }

    async def on_vm_create(self, message: proto.VmCreate, _msg: Any) -> dict[str, Any]:
        self._require_running()
        _check_vm_spec(message.vm, message.trace, message.mips, message.memory_bytes)
        if message.vm in self.vms:
            raise HandlerError(f"VM {message.vm} already runs on {self.id}")
        self._require_room(message.memory_bytes)
        vm = Vm.create(message.vm, message.trace, message.mips, message.memory_bytes, message.seed)
        self.vms[vm.id] = vm
        digest = vm.digest()
        self.log.info("vm.placed", vm=vm.id, memory_bytes=vm.memory_bytes)
        await self.publish(proto.VmPlaced(vm=vm.id, host=self.id, memory_bytes=vm.memory_bytes, digest=digest))
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
        self.incoming[message.migration] = Incoming(message.migration, message.vm, dict(spec), memory, subscription)
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
            await self._drop_incoming(incoming)
        vm_id = self.outgoing.pop(message.migration, None)
        if vm_id is not None and vm_id in self.vms:
            self.vms[vm_id].paused = False
        return {}

    # ---- migration: source side ---------------------------------------------

    async def on_migrate_send(self, message: proto.MigrateSend, _msg: Any) -> dict[str, Any]:
        vm = self.vms.get(message.vm)
        if vm is None:
            raise HandlerError(f"VM {message.vm} does not run on {self.id}")
        if message.vm in self.outgoing.values():
            raise HandlerError(f"VM {message.vm} is already migrating")
        self.outgoing[message.migration] = vm.id
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
        self.log.info("migration.departed", migration=message.migration, vm=vm_id)
        return {}

    async def stop(self) -> None:
        for incoming in list(self.incoming.values()):
            await self._drop_incoming(incoming)


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
