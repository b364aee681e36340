"""The DPU agent process: one DPU per host, its state, and management OS installs.

An install (`dpu.install`) reads a capsule the BMC stored in the state dir, verifies it
(format, image type, signature against the cluster's capsule root, MonotonicCount above the
installed one), writes the image to the slot that is not running, boots it, and only then
records it as installed. Every step is a `dpu.state_changed` event.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import proto
from proto import subjects

from .._agent import Agent, HandlerError
from .._capsule_keys import load_trusted_cert
from .._config import ClusterConfig
from ._os import InstalledOs, InstallRejected, OsStore, boot_version, check_capsule

DPU_MODEL = "BlueField-3"
# Emulated time the DPU takes to boot a newly written OS.
BOOT_S = 1.0


@dataclass
class Dpu:
    id: str
    host: str
    model: str
    state: str
    installed: InstalledOs
    store: OsStore
    installing: bool = False


class DpuAgent(Agent):
    kind = "dpu"

    def __init__(self, config: ClusterConfig, agent_id: str = "dpu") -> None:
        super().__init__(config, agent_id)
        self.trusted_cert = load_trusted_cert(config.state_dir)
        self.dpus: dict[str, Dpu] = {}
        for host in config.hosts:
            dpu_id = f"{host.id}-dpu"
            store = OsStore(config.state_dir, dpu_id)
            self.dpus[dpu_id] = Dpu(dpu_id, host.id, DPU_MODEL, "Running", store.load(), store)

    async def start(self) -> None:
        await self.serve(subjects.dpu_commands(), {
            proto.DpuStatusRequest: self.on_status,
            proto.DpuInstall: self.on_install,
        })
        for dpu in self.dpus.values():
            await self.publish(proto.DpuRegistered(dpu=dpu.id, host=dpu.host, model=dpu.model, state=dpu.state,
                                                   os_version=dpu.installed.version))

    def _dpu(self, dpu_id: str) -> Dpu:
        dpu = self.dpus.get(dpu_id)
        if dpu is None:
            raise HandlerError(f"unknown DPU {dpu_id!r}; DPUs are {', '.join(sorted(self.dpus))}")
        return dpu

    async def on_status(self, message: proto.DpuStatusRequest, _msg: Any) -> dict[str, Any]:
        dpu = self._dpu(message.dpu)
        return {"dpu": dpu.id, "host": dpu.host, "model": dpu.model, "state": dpu.state,
                "os_version": dpu.installed.version, "fw_version": dpu.installed.fw_version,
                "monotonic_count": dpu.installed.monotonic_count, "image": dpu.installed.image}

    # ---- installs ---------------------------------------------------------------

    async def on_install(self, message: proto.DpuInstall, _msg: Any) -> dict[str, Any]:
        dpu = self._dpu(message.dpu)
        if dpu.installing:
            raise HandlerError(f"DPU {dpu.id} is already installing an OS; retry when it is Running")
        data = self._read_capsule(dpu, message.capsule_path, message.capsule_sha256)
        dpu.installing = True
        try:
            return await self._install(dpu, data)
        except InstallRejected as exc:
            self.log.warning("dpu.install_rejected", dpu=dpu.id, check=exc.check, reason=exc.reason)
            await self._set_state(dpu, "Running", reason=f"install abandoned: {exc}")
            raise HandlerError(f"DPU {dpu.id} rejected the image ({exc}); {dpu.installed.version} stays "
                               "installed") from None
        finally:
            dpu.installing = False

    def _read_capsule(self, dpu: Dpu, capsule_path: str, capsule_sha256: str) -> bytes:
        """Read the capsule the BMC stored; only files in this DPU's incoming directory are accepted."""
        incoming = dpu.store.incoming.resolve()
        path = Path(capsule_path).resolve()
        if path.parent != incoming:
            raise HandlerError(f"capsule_path {capsule_path!r} is not in {incoming}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise HandlerError(f"cannot read capsule {path}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != capsule_sha256.lower():
            raise HandlerError(f"capsule {path} does not match capsule_sha256 {capsule_sha256!r}")
        return data

    async def _install(self, dpu: Dpu, data: bytes) -> dict[str, Any]:
        await self._set_state(dpu, "Updating", progress_percent=10)
        decoded = check_capsule(data, dpu.installed, self.trusted_cert)
        slot = dpu.installed.other_slot
        await asyncio.to_thread(dpu.store.write_slot, slot, decoded.image)
        await self._set_state(dpu, "Updating", progress_percent=50)

        await self._set_state(dpu, "Booting", progress_percent=70)
        await asyncio.sleep(BOOT_S)
        version = boot_version(decoded.image, decoded.fw_version)
        installed = InstalledOs(version=version, fw_version=decoded.fw_version,
                                monotonic_count=decoded.monotonic_count,
                                lowest_supported_version=decoded.lowest_supported_version,
                                image=f"slot-{slot} sha256:{hashlib.sha256(decoded.image).hexdigest()[:16]}",
                                slot=slot)
        await asyncio.to_thread(dpu.store.commit, installed)
        dpu.installed = installed
        self.log.info("dpu.os_installed", dpu=dpu.id, version=version, monotonic_count=installed.monotonic_count,
                      slot=slot)
        await self._set_state(dpu, "Running")
        return {"dpu": dpu.id, "os_version": version, "monotonic_count": installed.monotonic_count}

    async def _set_state(self, dpu: Dpu, state: str, progress_percent: int = 100, reason: str = "") -> None:
        dpu.state = state
        await self.publish(proto.DpuStateChanged(dpu=dpu.id, host=dpu.host, state=state,
                                                 os_version=dpu.installed.version,
                                                 progress_percent=progress_percent, reason=reason))
