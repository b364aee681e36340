"""The cluster clock: simulated seconds since the cluster's epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass

# PlanetLab traces hold one CPU sample every 300 s of simulated time.
TRACE_STEP_S = 300


@dataclass(frozen=True)
class ClusterClock:
    epoch: float
    time_scale: float

    def sim_time(self, now: float | None = None) -> float:
        """Simulated seconds since the epoch (real seconds times the scale)."""
        real = (time.time() if now is None else now) - self.epoch
        return max(0.0, real) * self.time_scale

    def trace_step(self, now: float | None = None) -> int:
        return int(self.sim_time(now) // TRACE_STEP_S)

    def real_seconds(self, sim_seconds: float) -> float:
        """Real seconds that cover a span of simulated seconds."""
        return sim_seconds / self.time_scale
