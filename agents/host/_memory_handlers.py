"""Host agent glue for guest memory: the guest workload, memory-error injection, guest reads.

HostAgent mixes this class in. A machine check is the guest's event, published as
`vm.machine_check`; it never stops the host agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import proto

from .._agent import HandlerError
from ..migration_core import FrameOutOfRange, GuestPageOutOfRange, MachineCheck
from ._memory import page_checksums

WORKLOAD_TICK_S = 0.02
# 32,768 checksums of 16 bytes fit one reply well under the 1 MiB message limit.
MAX_CHECKSUM_PAGES = 32768


class GuestMemoryMixin:
    """Guest workload and memory commands of a host agent; needs `ram` and `vms`."""

    async def run_guests(self) -> None:
        """Dirty each running VM's pages at its workload rate, scaled by its CPU demand now."""
        while True:
            await asyncio.sleep(WORKLOAD_TICK_S)
            for vm in list(self.vms.values()):
                await self.run_guest(vm)

    async def run_guest(self, vm) -> None:
        """Bring one VM's workload up to now and publish the machine checks it hit."""
        tick = vm.run_workload(self.clock.trace_step())
        for check in tick.machine_checks if tick is not None else ():
            await self._machine_check(check, "write")

    async def _machine_check(self, check: MachineCheck, access: str) -> None:
        self.log.warning("vm.machine_check", vm=check.vm_id, guest_page=check.guest_page,
                         host_frame=check.host_frame, access=access)
        await self.publish(proto.VmMachineCheck(vm=check.vm_id, host=self.id, guest_page=check.guest_page,
                                                host_frame=check.host_frame, access=access))

    def _guest_vm(self, vm_id: str):
        vm = self.vms.get(vm_id)
        if vm is None:
            raise HandlerError(f"VM {vm_id!r} does not run on {self.id}")
        return vm

    async def on_memory_error_inject(self, message: proto.MemoryErrorInject, _msg: Any) -> dict[str, Any]:
        """Mark a frame bad, named by frame number or by a VM's guest page."""
        self._require_running()
        by_frame = message.frame != -1
        if by_frame == bool(message.vm):
            raise HandlerError("name either a frame, or a VM and one of its guest pages")
        try:
            if by_frame:
                frame = message.frame
                self.ram.errors.state(frame)
                vm_id, guest_page = self.ram.owner_of(frame) or ("", -1)
            else:
                vm = self._guest_vm(message.vm)
                frame, vm_id, guest_page = vm.guest.host_frame(message.guest_page), vm.id, message.guest_page
            self.ram.errors.inject(frame, latent=message.latent)
        except (FrameOutOfRange, GuestPageOutOfRange) as exc:
            raise HandlerError(str(exc)) from None
        state = self.ram.errors.state(frame).value
        self.log.info("host.memory_error", frame=frame, vm=vm_id, guest_page=guest_page, state=state)
        # A known error stays known when injected again as latent, so the event reports the frame's state.
        await self.publish(proto.HostMemoryError(host=self.id, frame=frame, latent=state == "latent", vm=vm_id,
                                                 guest_page=guest_page, origin="injected"))
        return {"frame": frame, "vm": vm_id, "guest_page": guest_page, "state": state}

    async def on_vm_read(self, message: proto.VmRead, _msg: Any) -> dict[str, Any]:
        """Read a guest page as the guest does; a poisoned page gives the VM a machine check."""
        vm = self._guest_vm(message.vm)
        try:
            vm.guest.read(message.guest_page)
        except GuestPageOutOfRange as exc:
            raise HandlerError(str(exc)) from None
        except MachineCheck as check:
            await self._machine_check(check, "read")
            return {"machine_check": True, "host_frame": check.host_frame}
        return {"machine_check": False, "host_frame": vm.guest.host_frame(message.guest_page)}

    async def on_vm_memory(self, message: proto.VmMemoryRequest, _msg: Any) -> dict[str, Any]:
        """Return per-page checksums (XXH3-128, zeros for poisoned pages) and the poisoned pages."""
        vm = self._guest_vm(message.vm)
        if vm.page_count > MAX_CHECKSUM_PAGES:
            raise HandlerError(f"VM {vm.id} has {vm.page_count} pages; checksums are served for at most "
                               f"{MAX_CHECKSUM_PAGES}")
        checksums, poisoned = page_checksums(vm.guest)
        return {"vm": vm.id, "page_count": vm.page_count, "checksums": checksums, "poisoned_pages": poisoned,
                "paused": vm.paused}
