"""Host and VM models of a replay, and the preset matching CloudSim's PlanetLab setup."""

from __future__ import annotations

from dataclasses import dataclass

from ..host._hardware import HOST_MODELS, SPECPOWER_WATTS

MB = 1024 * 1024
MEMORY_SEMANTICS = ("cpu-only", "enforced")
POLICIES = ("dpm", "static", "none")


@dataclass(frozen=True)
class HostType:
    name: str
    cores: int
    mips_per_core: float
    memory_bytes: int
    watts_curve: tuple[float, ...]

    @property
    def capacity_mips(self) -> float:
        return self.cores * self.mips_per_core


@dataclass(frozen=True)
class VmType:
    mips: float
    memory_bytes: int


@dataclass(frozen=True)
class Preset:
    """Hosts take `host_types` in turn, VMs (one per trace file, sorted by name) `vm_types`.

    Migration cost as CloudSim models it: the VM runs at (1 - `migration_cpu_loss`) of its
    demand for the time its RAM takes over half the host's bandwidth.
    """

    name: str
    host_types: tuple[HostType, ...]
    vm_types: tuple[VmType, ...]
    interval_s: float = 300.0
    # 1 Gbit/s as CloudSim converts it (bandwidth / 8000 MB per s, MB of 2**20 bytes here).
    bandwidth_bytes_per_s: float = 125.0 * MB
    migration_cpu_loss: float = 0.1

    def migration_s(self, memory_bytes: int) -> float:
        return memory_bytes / (self.bandwidth_bytes_per_s / 2)


def _host_type(model: str, memory_bytes: int) -> HostType:
    hardware = HOST_MODELS[model]
    return HostType(model, hardware.cores, hardware.mips_per_core, memory_bytes, SPECPOWER_WATTS[model])


# CloudSim 3.0.3 PlanetLab examples (PlanetLabConstants / Constants): HP ProLiant ML110 G4 and
# G5 alternating, 4 GB RAM and 1 Gbit/s each; VM types of 2500, 2000, 1000 and 500 MIPS with
# 870, 1740, 1740 and 613 MB; one trace sample every 300 s.
PLANETLAB = Preset(
    name="planetlab",
    host_types=(_host_type("ML110G4", 4096 * MB), _host_type("ML110G5", 4096 * MB)),
    vm_types=(
        VmType(2500.0, 870 * MB), VmType(2000.0, 1740 * MB), VmType(1000.0, 1740 * MB), VmType(500.0, 613 * MB),
    ),
)

PRESETS = {PLANETLAB.name: PLANETLAB}
