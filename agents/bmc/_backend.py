"""The Redfish backend of one host's BMC: the host agent and the DPU agent, reached over the bus.

Host power goes to `dcfleet.cmd.host.<host>.power` and DPU state and installs to
`dcfleet.cmd.dpu.<dpu>.*`. A capsule goes to the DPU agent as a file in the state dir (a
command carries its path and SHA-256), because capsules can exceed the broker's 1 MiB payload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import proto
from agents import capsule
from proto import subjects

from agents.redfish import (
    BackendUnavailable,
    Dpu,
    FirmwareComponent,
    HostSystem,
    InstallFailed,
    ProgressCallback,
    RedfishError,
)

from .._agent import CommandFailed, CommandTimeout
from .._config import HostConfig

if TYPE_CHECKING:
    from .._agent import Agent

BMC_FIRMWARE_VERSION = "1.0.0"
STATUS_TIMEOUT_S = 2.0
RESET_TIMEOUT_S = 10.0
# Covers verification, writing the slot and booting the new OS on the DPU agent.
INSTALL_TIMEOUT_S = 120.0
# How long the BMC waits for the DPU agent's reply to an install before it requests the DPU's status instead.
INSTALL_REPLY_TIMEOUT_S = 20.0
INSTALL_POLL_S = 0.5
DPU_OS_SUFFIX = "_os"
# Redfish Status.State of a DPU for each DPU agent state.
DPU_STATUS_STATES = {"Running": "Enabled", "Updating": "Updating", "Booting": "Starting"}


def dpu_os_component_id(dpu_id: str) -> str:
    """FirmwareInventory id of a DPU's management OS, e.g. `h1-dpu_os`."""
    return f"{dpu_id}{DPU_OS_SUFFIX}"


class BusBackend:
    """RedfishBackend for one host: its DPU is `<host>-dpu` on the DPU agent."""

    def __init__(self, agent: "Agent", host: HostConfig, state_dir: str | Path) -> None:
        self.agent = agent
        self.host = host
        self.dpu_ids = [f"{host.id}-dpu"]
        self.state_dir = Path(state_dir)

    async def _request(self, component: str, subject: str, message: proto.Message,
                       timeout_s: float) -> dict[str, Any]:
        try:
            return await self.agent.request(subject, message, timeout_s)
        except CommandTimeout:
            raise BackendUnavailable(component, f"no reply on {subject} within {timeout_s:g} s") from None

    async def host_system(self) -> HostSystem:
        try:
            status = await self._request(self.host.id, subjects.host_command(self.host.id, "status"),
                                         proto.HostStatusRequest(), STATUS_TIMEOUT_S)
        except CommandFailed as exc:
            raise BackendUnavailable(self.host.id, exc.error) from None
        return HostSystem(self.host.id, f"Host {self.host.id}", status.get("power_state", "Off"),
                          model=self.host.model)

    async def reset_host(self, reset_type: str) -> None:
        subject = subjects.host_command(self.host.id, "power")
        try:
            await self._request(self.host.id, subject, proto.HostPower(action=reset_type, via="redfish"),
                                RESET_TIMEOUT_S)
        except CommandFailed as exc:
            # The host refused, e.g. GracefulShutdown while it runs VMs.
            raise RedfishError(409, "Base.ResourceInUse", detail=f"Reason: {exc.error}.") from None
        self.agent.log.info("bmc.reset", host=self.host.id, reset_type=reset_type)

    async def _dpu_status(self, dpu_id: str) -> dict[str, Any]:
        try:
            return await self._request(dpu_id, subjects.dpu_command(dpu_id, "status"),
                                       proto.DpuStatusRequest(dpu_id), STATUS_TIMEOUT_S)
        except CommandFailed as exc:
            raise BackendUnavailable(dpu_id, exc.error) from None

    async def list_dpus(self) -> list[Dpu]:
        dpus = []
        for dpu_id in self.dpu_ids:
            status = await self._dpu_status(dpu_id)
            dpus.append(Dpu(dpu_id, f"DPU of {self.host.id}", status.get("model", ""), f"SN-{dpu_id}", "On",
                            state=DPU_STATUS_STATES.get(status.get("state", ""), "Enabled")))
        return dpus

    async def firmware_inventory(self) -> list[FirmwareComponent]:
        components = [FirmwareComponent("BMC", "BMC firmware", BMC_FIRMWARE_VERSION, 0, False)]
        for dpu_id in self.dpu_ids:
            status = await self._dpu_status(dpu_id)
            components.append(FirmwareComponent(
                dpu_os_component_id(dpu_id), f"DPU management OS of {dpu_id}", status["os_version"],
                int(status["monotonic_count"]), True, dpu_id))
        return components

    async def install_firmware(self, target: str, capsule_bytes: bytes, progress_cb: ProgressCallback) -> None:
        dpu_id = target.removesuffix(DPU_OS_SUFFIX)
        if not target.endswith(DPU_OS_SUFFIX) or dpu_id not in self.dpu_ids:
            raise InstallFailed(target, "not a DPU management OS of this host")
        path = self._store_capsule(dpu_id, capsule_bytes)

        async def on_state(msg: Any) -> None:
            _report_progress(msg, dpu_id, progress_cb)

        subscription = await self.agent.nc.subscribe(subjects.event(proto.DpuStateChanged.TYPE), cb=on_state)
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        try:
            await self._request(dpu_id, subjects.dpu_command(dpu_id, "install"), proto.DpuInstall(
                dpu=dpu_id, capsule_path=str(path), capsule_sha256=hashlib.sha256(capsule_bytes).hexdigest()),
                INSTALL_REPLY_TIMEOUT_S)
        except CommandFailed as exc:
            raise InstallFailed(target, exc.error) from None
        except BackendUnavailable as exc:
            # The command or its reply may have been lost (a network cut); the DPU's status shows which.
            monotonic_count = capsule.decode_capsule(capsule_bytes).monotonic_count
            if not await self._installed_after_lost_reply(dpu_id, monotonic_count, deadline):
                raise InstallFailed(target, f"{exc.reason}, and the DPU did not install the capsule") from None
        finally:
            await subscription.unsubscribe()
            path.unlink(missing_ok=True)
        progress_cb(100)

    async def _installed_after_lost_reply(self, dpu_id: str, monotonic_count: int, deadline: float) -> bool:
        """Wait until the DPU runs an OS again; return whether it installed the capsule of `monotonic_count`."""
        while time.monotonic() < deadline:
            try:
                status = await self._dpu_status(dpu_id)
            except BackendUnavailable:
                await asyncio.sleep(INSTALL_POLL_S)
                continue
            if status.get("state") == "Running":
                installed = int(status.get("monotonic_count", 0)) >= monotonic_count
                self.agent.log.info("bmc.install_checked", dpu=dpu_id, installed=installed,
                                    monotonic_count=status.get("monotonic_count"))
                return installed
            await asyncio.sleep(INSTALL_POLL_S)
        return False

    def _store_capsule(self, dpu_id: str, capsule_bytes: bytes) -> Path:
        """Write the capsule where the DPU agent reads it (agents.dpu._os.OsStore.incoming)."""
        incoming = self.state_dir / "dpus" / dpu_id / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        path = incoming / f"{uuid.uuid4().hex}.cap"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(capsule_bytes)
        return path


def _report_progress(msg: Any, dpu_id: str, progress_cb: ProgressCallback) -> None:
    try:
        event = proto.parse_event(msg.subject, msg.data, proto.DpuStateChanged)
    except proto.MessageRejected:
        return
    if event.dpu == dpu_id and event.state != "Running":
        progress_cb(event.progress_percent)
