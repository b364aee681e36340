"""Replay a trace directory through the power policy on a virtual clock.

Each step is one trace interval. At the start of step k the policy sees only the
samples of steps 0..k-1 (as the running agent sees only past heartbeats), its
changes are applied, then step k runs with that placement and is measured.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._workload import TraceError, read_trace, trace_files
from ..power._demand import window_means
from ..power._model import HostState, PowerSettings, Recommendation, VmLoad
from ..power._policy import carried_out, evaluate
from ._model import MEMORY_SEMANTICS, PLANETLAB, POLICIES, Preset
from ._placement import pack, spread

# Recommendations kept in full for the summary (the first ones); all are counted.
KEPT_RECOMMENDATIONS = 50


class ReplayError(ValueError):
    """Replay options that cannot work; the message says which and what to change."""


@dataclass
class ReplayOptions:
    trace_dir: Path
    hosts: int = 800
    policy: str = "dpm"
    memory_semantics: str = "cpu-only"
    preset: Preset = PLANETLAB
    settings: PowerSettings = field(default_factory=PowerSettings)
    vms: int | None = None
    steps: int | None = None
    max_changes_per_step: int = 20

    def check(self) -> None:
        if self.hosts < 1:
            raise ReplayError(f"hosts must be at least 1, got {self.hosts}")
        if self.policy not in POLICIES:
            raise ReplayError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.memory_semantics not in MEMORY_SEMANTICS:
            raise ReplayError(
                f"unknown memory semantics {self.memory_semantics!r}; choose one of {', '.join(MEMORY_SEMANTICS)}"
            )
        if self.vms is not None and self.vms < 1:
            raise ReplayError(f"vms must be at least 1, got {self.vms}")
        if self.steps is not None and self.steps < 1:
            raise ReplayError(f"steps must be at least 1, got {self.steps}")


@dataclass
class ReplayResult:
    summary: dict
    hosts_on: np.ndarray
    cluster_watts: np.ndarray
    migrations: np.ndarray
    host_utilization: np.ndarray
    recommendations: list[dict]


def load_demand(options: ReplayOptions) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """VM names, MIPS, memory and a VMs x steps demand matrix (MIPS) from the trace files.

    A trace shorter than the longest repeats from its start, as a host agent's VM does.
    """
    files = trace_files(Path(options.trace_dir))
    if options.vms is not None:
        files = files[: options.vms]
    traces = [read_trace(path) for path in files]
    steps = options.steps or max(len(t.utilization_pct) for t in traces)
    types = options.preset.vm_types
    mips = np.array([types[i % len(types)].mips for i in range(len(traces))])
    memory = np.array([types[i % len(types)].memory_bytes for i in range(len(traces))], dtype=np.int64)
    utilization = np.empty((len(traces), steps))
    for row, trace in enumerate(traces):
        values = np.array(trace.utilization_pct, dtype=float)
        utilization[row] = np.resize(values, steps)
    return [t.name for t in traces], mips, memory, utilization / 100.0 * mips[:, None]


class Replay:
    """State of one replay: placement, power states and the running metrics."""

    def __init__(self, options: ReplayOptions, progress: Callable[[int, int], None] | None = None) -> None:
        options.check()
        self.options = options
        self.settings = options.settings
        self.progress = progress
        preset = options.preset
        self.names, self.vm_mips, self.vm_memory, self.demand = load_demand(options)
        self.vm_ids = [f"vm{i + 1:04d}" for i in range(len(self.names))]
        types = [preset.host_types[i % len(preset.host_types)] for i in range(options.hosts)]
        self.host_ids = [f"h{i + 1}" for i in range(options.hosts)]
        self.capacity = np.array([t.capacity_mips for t in types])
        self.host_memory = np.array([t.memory_bytes for t in types], dtype=np.int64)
        self.curves = [t.watts_curve for t in types]
        self.curve_array = np.array(self.curves)
        self.enforced = options.memory_semantics == "enforced"
        self.reserved = self.vm_memory if self.enforced else np.zeros_like(self.vm_memory)
        self.placement = np.full(len(self.names), -1, dtype=np.int64)
        self.on = np.zeros(options.hosts, dtype=bool)
        # Simulated time of each host's last power change by the policy; -inf: none yet.
        self.power_changed_at_s = np.full(options.hosts, -np.inf)
        self.under_allocated = np.zeros(len(self.names))
        self.boot_joules = 0.0
        self.actions: Counter[str] = Counter()
        self.priorities: Counter[int] = Counter()
        self.kept: list[dict] = []
        self.recommendation_count = 0

    # ---- placement and policy -----------------------------------------------------

    def place_initially(self) -> None:
        first = self.demand[:, 0]
        if self.options.policy == "none":
            placement = spread(first, self.reserved, self.capacity, self.host_memory)
        else:
            placement = pack(first, self.reserved, self.capacity, self.host_memory, self.curves,
                             self.settings.target_utilization)
        unplaced = int((placement < 0).sum())
        if unplaced:
            raise ReplayError(
                f"{unplaced} of {len(placement)} VMs fit on none of the {len(self.capacity)} hosts with "
                f"{self.options.memory_semantics} memory semantics; add hosts (--hosts) or use fewer VMs"
            )
        self.placement = placement
        if self.options.policy == "none":
            self.on[:] = True
        else:
            self.on[np.unique(placement)] = True

    def host_states(self, estimate: np.ndarray, now_s: float = 0.0) -> list[HostState]:
        loads: list[list[VmLoad]] = [[] for _ in self.host_ids]
        for vm, host in enumerate(self.placement):
            loads[host].append(
                VmLoad(self.vm_ids[vm], float(estimate[vm]), int(self.reserved[vm]), int(self.vm_memory[vm]))
            )
        since_s = now_s - self.power_changed_at_s
        return [
            HostState(host_id, bool(self.on[h]), True, float(self.capacity[h]), int(self.host_memory[h]),
                      tuple(loads[h]), self.curves[h][0], self.curves[h], float(since_s[h]))
            for h, host_id in enumerate(self.host_ids)
        ]

    def decide(self, step: int) -> None:
        """Let the policy act on the samples of the steps before `step`."""
        interval = self.options.preset.interval_s
        on_window = max(1, math.floor(self.settings.power_on_window_s / interval))
        off_window = max(1, math.floor(self.settings.power_off_window_s / interval))
        on_estimate = window_means(self.demand, step, on_window)
        off_estimate = window_means(self.demand, step, off_window)
        now_s = step * interval
        for _ in range(self.options.max_changes_per_step):
            recommendation = evaluate(
                self.host_states(on_estimate, now_s), self.settings, self.host_states(off_estimate, now_s)
            )
            if recommendation is None:
                return
            acting = carried_out(recommendation, self.settings)
            self.record(step, recommendation, acting)
            if not acting:
                return
            self.apply(step, recommendation)

    def record(self, step: int, recommendation: Recommendation, acting: bool) -> None:
        self.recommendation_count += 1
        self.actions[recommendation.action] += 1
        self.priorities[recommendation.priority] += 1
        if len(self.kept) < KEPT_RECOMMENDATIONS:
            self.kept.append({
                "sim_time_s": step * self.options.preset.interval_s, "action": recommendation.action,
                "host": recommendation.host, "priority": recommendation.priority, "carried_out": acting,
                "reason": recommendation.reason, "what_if": recommendation.what_if,
                "moves": len(recommendation.moves),
            })

    def apply(self, step: int, recommendation: Recommendation) -> None:
        index = {host_id: h for h, host_id in enumerate(self.host_ids)}
        host = index[recommendation.host]
        if recommendation.action in ("power_on", "power_off"):
            self.power_changed_at_s[host] = step * self.options.preset.interval_s
        if recommendation.action == "power_on":
            self.on[host] = True
            # The boot: peak power for boot_s, on top of the step's own energy.
            self.boot_joules += self.settings.boot_s * self.curves[host][10]
        for move in recommendation.moves:
            vm = int(move.vm[2:]) - 1
            self.placement[vm] = index[move.destination]
            self.migrations[step] += 1
            seconds = self.options.preset.migration_s(int(self.vm_memory[vm]))
            self.under_allocated[vm] += self.options.preset.migration_cpu_loss * self.demand[vm, step] * seconds
        if recommendation.action == "power_off":
            if (self.placement == host).any():
                raise AssertionError(f"power-off of {recommendation.host} left VMs on it")
            self.on[host] = False

    # ---- measurement ----------------------------------------------------------------

    def run(self) -> ReplayResult:
        steps = self.demand.shape[1]
        interval = self.options.preset.interval_s
        self.migrations = np.zeros(steps, dtype=np.int64)
        hosts_on = np.zeros(steps, dtype=np.int64)
        watts = np.zeros(steps)
        utilization_samples: list[np.ndarray] = []
        overloaded_host_steps = 0
        active_host_steps = 0
        self.place_initially()
        for step in range(steps):
            if self.options.policy == "dpm" and step > 0:
                self.decide(step)
            demand = np.bincount(self.placement, weights=self.demand[:, step], minlength=len(self.host_ids))
            utilization = demand[self.on] / self.capacity[self.on]
            hosts_on[step] = int(self.on.sum())
            watts[step] = _watts(self.curve_array[self.on], utilization)
            overloaded_host_steps += int((utilization >= 1.0).sum())
            active_host_steps += int(self.on.sum())
            utilization_samples.append(utilization)
            if self.progress is not None:
                self.progress(step + 1, steps)
        energy_j = float(watts.sum()) * interval + self.boot_joules
        summary = self.summary(energy_j, overloaded_host_steps, active_host_steps, hosts_on, watts)
        return ReplayResult(summary, hosts_on, watts, self.migrations, np.concatenate(utilization_samples), self.kept)

    def summary(self, energy_j: float, overloaded: int, active: int, hosts_on: np.ndarray, watts: np.ndarray) -> dict:
        requested = self.demand.sum(axis=1) * self.options.preset.interval_s
        with_demand = requested > 0
        pdm = float((self.under_allocated[with_demand] / requested[with_demand]).mean()) if with_demand.any() else 0.0
        slatah = overloaded / active if active else 0.0
        settings = self.settings
        return {
            "policy": self.options.policy,
            "memory_semantics": self.options.memory_semantics,
            "memory_semantics_meaning": _SEMANTICS[self.options.memory_semantics],
            "preset": self.options.preset.name,
            "trace_dir": str(self.options.trace_dir),
            "hosts": len(self.host_ids),
            "vms": len(self.names),
            "steps": int(self.demand.shape[1]),
            "interval_s": self.options.preset.interval_s,
            "energy_kwh": round(energy_j / 3.6e6, 3),
            "boot_energy_kwh": round(self.boot_joules / 3.6e6, 3),
            "migrations": int(self.migrations.sum()),
            "slatah": slatah,
            "pdm": pdm,
            "slav": slatah * pdm,
            "hosts_on_mean": round(float(hosts_on.mean()), 2),
            "hosts_on_min": int(hosts_on.min()),
            "hosts_on_max": int(hosts_on.max()),
            "mean_cluster_watts": round(float(watts.mean()), 1),
            "recommendations": self.recommendation_count,
            "recommendations_by_action": dict(self.actions),
            "recommendations_by_priority": {str(p): n for p, n in sorted(self.priorities.items())},
            "settings": {
                "target_utilization": settings.target_utilization, "tolerance": settings.tolerance,
                "threshold": settings.threshold, "automation": settings.automation,
                "min_hosts_on": settings.min_hosts_on, "power_on_window_s": settings.power_on_window_s,
                "power_off_window_s": settings.power_off_window_s, "boot_s": settings.boot_s,
                "expected_off_s": settings.expected_off_s, "min_on_s": settings.min_on_s,
            },
            "definitions": _DEFINITIONS,
        }


_SEMANTICS = {
    "cpu-only": "a running VM reserves no host memory (as CloudSim's PlanetLab examples, whose RAM "
    "utilization model is null); placement is bound by CPU alone; migrations still copy the VM's RAM",
    "enforced": "a VM reserves its full RAM on its host; placement is bound by CPU and memory",
}

_DEFINITIONS = {
    "energy_kwh": "sum over steps of each powered-on host's SPECpower watts at its utilization (capped at "
    "100%) times the interval, plus boot_s at peak watts per power-on",
    "slatah": "share of powered-on host-intervals in which the host's demand reached or exceeded its capacity",
    "pdm": "mean over VMs of the CPU lost to migrations (10% of the VM's demand for RAM / half the "
    "bandwidth seconds per migration) over the VM's total requested CPU",
    "slav": "slatah x pdm",
    "decisions": "the policy at step k sees only the samples of steps before k; the first placement uses "
    "step 0's demand",
}


def _watts(curves: np.ndarray, utilization: np.ndarray) -> float:
    u = np.clip(utilization, 0.0, 1.0) * 10
    low = np.minimum(u.astype(int), 9)
    rows = np.arange(len(u))
    return float((curves[rows, low] + (curves[rows, low + 1] - curves[rows, low]) * (u - low)).sum())


def run_replay(options: ReplayOptions, progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay the traces; raises TraceError for a bad trace file, ReplayError for bad options."""
    return Replay(options, progress).run()


__all__ = ["ReplayError", "ReplayOptions", "ReplayResult", "TraceError", "run_replay"]
