"""The DPU agent process: registers one DPU per host and reports its state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import proto
from proto import subjects

from .._agent import Agent, HandlerError
from .._config import ClusterConfig

DPU_MODEL = "BlueField-3"
FACTORY_OS_VERSION = "dpu-os-1.0.0"


@dataclass
class Dpu:
    id: str
    host: str
    model: str
    state: str
    os_version: str


class DpuAgent(Agent):
    kind = "dpu"

    def __init__(self, config: ClusterConfig, agent_id: str = "dpu") -> None:
        super().__init__(config, agent_id)
        self.dpus = {
            f"{h.id}-dpu": Dpu(f"{h.id}-dpu", h.id, DPU_MODEL, "Running", FACTORY_OS_VERSION)
            for h in config.hosts
        }

    async def start(self) -> None:
        await self.serve(subjects.dpu_commands(), {proto.DpuStatusRequest: self.on_status})
        for dpu in self.dpus.values():
            await self.publish(
                proto.DpuRegistered(dpu=dpu.id, host=dpu.host, model=dpu.model, state=dpu.state,
                                    os_version=dpu.os_version)
            )

    async def on_status(self, message: proto.DpuStatusRequest, _msg: Any) -> dict[str, Any]:
        dpu = self.dpus.get(message.dpu)
        if dpu is None:
            raise HandlerError(f"unknown DPU {message.dpu!r}")
        return {"dpu": dpu.id, "host": dpu.host, "model": dpu.model, "state": dpu.state, "os_version": dpu.os_version}
