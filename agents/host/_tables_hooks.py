"""Host agent glue for page tables: boot steps, VM stage-2 tables and the dump command.

HostAgent mixes this class in; it calls the hooks at boot, power-off, VM creation and
migration. The table logic itself is in ``_tables`` and has no bus code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import proto
from proto import subjects

from .._agent import HandlerError
from ._tables import HostTables, Stage2Rejected, TableBootFailed


class PageTablesMixin:
    """Page-table state of a host agent: ``tables`` exists from a boot to the next power-off."""

    tables: HostTables | None = None

    async def _boot_tables(self) -> bool:
        """Build this boot's tables and publish one event per step; False if the boot failed.

        A failure is reported as ``host.boot_failed`` and keeps the host out of service.
        """
        self.tables = None
        try:
            tables = await asyncio.to_thread(
                HostTables.boot, self.id, self.host.arch, self.host.memory_bytes)
        except TableBootFailed as failure:
            await self._boot_failed(failure)
            return False
        self.tables = tables
        for event in tables.step_events(self.boot_count):
            self.log.info(event.TYPE, **{k: v for k, v in event.to_data().items() if k != "host"})
            await self.publish(event)
        await self._sync_stage2("host rebooted")
        return True

    async def _sync_stage2(self, reason: str) -> None:
        """Map every VM that runs or arrives here without stage-2 tables, and free those of VMs gone.

        VMs restored from the host's store before boot get their tables here, and VMs that
        leave by a path without its own hook (an aborted arrival) get theirs freed. State
        changes happen before the first await, so concurrent handlers see them whole.
        """
        if self.tables is None:
            return
        present = {vm.id: vm.memory_bytes for vm in self.vms.values()}
        present.update({incoming.vm: incoming.memory_bytes for incoming in self.incoming.values()})
        released = [vm for vm in self.tables.mapped_vms if vm not in present and self._unmap_stage2(vm)]
        mapped = []
        for vm, memory_bytes in sorted(present.items()):
            if vm in self.tables.mapped_vms:
                continue
            try:
                self._map_stage2(vm, memory_bytes)
            except HandlerError as exc:
                self.log.error("vm.stage2_failed", vm=vm, error=str(exc))
                continue
            mapped.append(vm)
        for vm in released:
            await self.publish(proto.VmStage2Unmapped(vm=vm, host=self.id, reason=reason))
        for vm in mapped:
            await self._publish_stage2_mapped(vm)

    def _drop_tables(self) -> None:
        """Forget the tables at power-off: the emulated memory and every VM's frames go with them."""
        self.tables = None

    def _table_status(self) -> dict[str, Any]:
        tables = self.tables
        return {
            "arch": self.host.arch,
            "pagetable_root_address": tables.root_address if tables else None,
            "stage2_vms": tables.mapped_vms if tables else [],
        }

    def _map_stage2(self, vm: str, memory_bytes: int) -> None:
        """Allocate host frames and build stage-2 tables for ``vm``; HandlerError if impossible."""
        if self.tables is None:
            raise HandlerError(f"host {self.id} has no page tables; it is not booted")
        try:
            mapping = self.tables.map_vm(vm, memory_bytes)
        except Stage2Rejected as exc:
            raise HandlerError(str(exc)) from None
        self.log.info("vm.stage2_mapped", vm=vm, root_address=mapping.tables.root_address,
                      host_frame_runs=len(mapping.frame_runs), table_pages=mapping.table_run[1])

    def _unmap_stage2(self, vm: str) -> bool:
        if self.tables is None or not self.tables.unmap_vm(vm):
            return False
        self.log.info("vm.stage2_unmapped", vm=vm)
        return True

    async def _publish_stage2_mapped(self, vm: str) -> None:
        if self.tables is None or vm not in self.tables.mapped_vms:
            return  # the host powered off or the VM left while the caller awaited
        mapping = self.tables.vm_mapping(vm)
        await self.publish(proto.VmStage2Mapped(
            vm=vm, host=self.id, table_format=mapping.tables.table_format.name,
            root_address=mapping.tables.root_address, guest_address=mapping.guest_address,
            size_bytes=mapping.size_bytes, host_frame_runs=len(mapping.frame_runs),
            table_pages=mapping.table_run[1],
        ))

    async def _release_stage2(self, vm: str, reason: str) -> None:
        """Free a VM's frames and tables while the host keeps running, and publish it."""
        if self._unmap_stage2(vm):
            await self.publish(proto.VmStage2Unmapped(vm=vm, host=self.id, reason=reason))

    async def on_pagetable_dump(self, message: proto.PagetableDumpRequest, _msg: Any) -> dict[str, Any]:
        """Return the hypervisor's tables, or a VM's stage-2 tables, as merged ranges."""
        self._require_running()
        if message.vm and not subjects.is_token(message.vm):
            raise HandlerError(f"invalid VM id {message.vm!r}: use letters, digits, '-' and '_'")
        if self.tables is None:
            raise HandlerError(f"host {self.id} has no page tables; it is not booted")
        try:
            return self.tables.dump(message.vm).to_result()
        except Stage2Rejected as exc:
            raise HandlerError(str(exc)) from None
