"""Host hardware models: capacity and power drawn at a given CPU utilization."""

from __future__ import annotations

from dataclasses import dataclass

# SPECpower results used by CloudSim's PlanetLab examples: watts at 0, 10, ..., 100% load.
SPECPOWER_WATTS = {
    "ML110G4": (86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0),
    "ML110G5": (93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0),
}


@dataclass(frozen=True)
class HostModel:
    name: str
    cores: int
    mips_per_core: float


# HP ProLiant ML110 G4 (Xeon 3040) and G5 (Xeon 3075), as in CloudSim's PlanetLab setup.
HOST_MODELS = {
    "ML110G4": HostModel("ML110G4", 2, 1860.0),
    "ML110G5": HostModel("ML110G5", 2, 2660.0),
}


def power_watts(model: str, utilization: float) -> float:
    """Power at a CPU utilization (0..1), linear between the measured points."""
    table = SPECPOWER_WATTS[model]
    u = min(max(utilization, 0.0), 1.0) * 10
    low = int(u)
    if low >= 10:
        return table[10]
    return table[low] + (table[low + 1] - table[low]) * (u - low)
