"""The interface between the Redfish service and the systems it manages, and an in-memory model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from agents import capsule

RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart")
ProgressCallback = Callable[[int], None]

class BackendUnavailable(Exception):
    """The component behind the backend does not respond; the caller may retry later."""

    def __init__(self, component: str, reason: str) -> None:
        self.component = component
        self.reason = reason
        super().__init__(f"{component} is unavailable: {reason}")

class InstallFailed(Exception):
    """The target rejected or failed to install an image; the old version stays installed."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"install on {target} failed: {reason}")

@dataclass(frozen=True)
class HostSystem:
    """The host computer system the BMC manages."""

    system_id: str
    name: str
    power_state: str
    manufacturer: str = "dcfleet"
    model: str = "emulated host"
    uuid: str | None = None

@dataclass(frozen=True)
class Dpu:
    """One DPU card in the host: its own system and chassis."""

    dpu_id: str
    name: str
    model: str
    serial_number: str
    power_state: str
    state: str = "Enabled"
    health: str = "OK"

@dataclass(frozen=True)
class FirmwareComponent:
    """One entry of the firmware inventory.

    `monotonic_count` is the MonotonicCount of the installed capsule; an update must carry a
    larger one. `dpu_id` names the DPU this component runs on, or is None for the host or BMC.
    """

    component_id: str
    name: str
    version: str
    monotonic_count: int
    updateable: bool
    dpu_id: str | None = None

class RedfishBackend(Protocol):
    """Operations the Redfish service calls on the systems behind it.

    Every method may raise BackendUnavailable. `install_firmware` receives a capsule the service
    has already verified, reports 0-100 through `progress_cb`, and raises InstallFailed when the
    target rejects the image, leaving the installed version in place.
    """

    async def host_system(self) -> HostSystem: ...

    async def reset_host(self, reset_type: str) -> None: ...

    async def list_dpus(self) -> list[Dpu]: ...

    async def firmware_inventory(self) -> list[FirmwareComponent]: ...

    async def install_firmware(self, target: str, capsule_bytes: bytes,
                               progress_cb: ProgressCallback) -> None: ...

def format_fw_version(fw_version: int) -> str:
    """Render an FMP FwVersion as major.minor.patch from its bytes 3, 2 and 1..0."""
    return f"{fw_version >> 24}.{(fw_version >> 16) & 0xFF}.{fw_version & 0xFFFF}"

@dataclass
class MemoryBackend:
    """One host with one DPU, kept in memory: power follows resets and installs decode the capsule.

    `available` set to False makes every call raise BackendUnavailable, as a DPU agent that is
    down would. `install_step_delay_s` spaces the progress reports of an install.
    """

    host_id: str = "host"
    dpu_id: str = "dpu0"
    host_power: str = "On"
    dpu_power: str = "On"
    available: bool = True
    install_step_delay_s: float = 0.0
    fail_install_reason: str | None = None
    resets: list[str] = field(default_factory=list)
    firmware: dict[str, FirmwareComponent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.firmware:
            for component in (
                FirmwareComponent("BMC", "BMC firmware", "1.0.0", 0, False),
                FirmwareComponent(f"{self.dpu_id}_os", "DPU management OS", "1.0.0", 1, True,
                                  self.dpu_id),
            ):
                self.firmware[component.component_id] = component

    @property
    def dpu_os_component_id(self) -> str:
        return f"{self.dpu_id}_os"

    def _check_available(self, component: str) -> None:
        if not self.available:
            raise BackendUnavailable(component, "the in-memory backend is marked unavailable")

    async def host_system(self) -> HostSystem:
        self._check_available(self.host_id)
        return HostSystem(self.host_id, f"Host {self.host_id}", self.host_power)

    async def reset_host(self, reset_type: str) -> None:
        self._check_available(self.host_id)
        if reset_type not in RESET_TYPES:
            raise ValueError(f"invalid reset type {reset_type!r}; expected one of {RESET_TYPES}")
        self.resets.append(reset_type)
        self.host_power = "Off" if reset_type in ("ForceOff", "GracefulShutdown") else "On"

    async def list_dpus(self) -> list[Dpu]:
        self._check_available(self.dpu_id)
        return [Dpu(self.dpu_id, f"DPU {self.dpu_id}", "dcfleet-dpu", f"SN-{self.dpu_id}",
                    self.dpu_power)]

    async def firmware_inventory(self) -> list[FirmwareComponent]:
        self._check_available(self.dpu_id)
        return list(self.firmware.values())

    async def install_firmware(self, target: str, capsule_bytes: bytes,
                               progress_cb: ProgressCallback) -> None:
        self._check_available(self.dpu_id)
        current = self.firmware.get(target)
        if current is None or not current.updateable:
            raise InstallFailed(target, "no updateable component with this id")
        decoded = capsule.decode_capsule(capsule_bytes)
        for percent in (25, 50, 75):
            await asyncio.sleep(self.install_step_delay_s)
            progress_cb(percent)
        if self.fail_install_reason:
            raise InstallFailed(target, self.fail_install_reason)
        self.firmware[target] = replace(
            current, version=format_fw_version(decoded.fw_version),
            monotonic_count=decoded.monotonic_count,
        )
        progress_cb(100)
