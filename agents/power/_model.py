"""Inputs and outputs of the power policy: hosts, VMs, settings, recommendations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

AUTOMATION_LEVELS = ("Off", "Manual", "Automatic")

# Energy of one live migration, E = 0.512 J/MB x data moved + 20.165 J, a linear model
# of the form Liu et al. fit in "Performance and energy modeling for live migration of
# virtual machines" (HPDC 2011).
# NOTE: an estimate; these coefficients were not checked against that paper.
MIGRATION_JOULES_PER_MB = 0.512
MIGRATION_JOULES_FIXED = 20.165

# The shortest hold after a power-on: above 0, so a host powered on at the time of an
# evaluation is never powered off by the same evaluation step.
MIN_ON_FLOOR_S = 0.1


@dataclass(frozen=True)
class VmLoad:
    """A VM as the policy sees it: estimated demand and the memory it reserves.

    `transfer_bytes` is what a migration copies; it defaults to `memory_bytes`
    and differs only where a model reserves no memory for a running VM.
    """

    id: str
    demand_mips: float
    memory_bytes: int
    transfer_bytes: int | None = None

    @property
    def migration_bytes(self) -> int:
        return self.memory_bytes if self.transfer_bytes is None else self.transfer_bytes


@dataclass(frozen=True)
class HostState:
    """A host as the policy sees it. `watts_curve` holds watts at 0, 10, ..., 100% load.

    `since_power_change_s` is the simulated time since the host was last powered on or
    off by the power manager: 0 for a change made at the time of this evaluation,
    infinite for a host in its state since the cluster started.
    """

    id: str
    powered_on: bool
    available: bool
    capacity_mips: float
    memory_bytes: int
    vms: tuple[VmLoad, ...] = ()
    idle_watts: float = 0.0
    watts_curve: tuple[float, ...] = ()
    since_power_change_s: float = math.inf

    @property
    def demand_mips(self) -> float:
        return sum(vm.demand_mips for vm in self.vms)

    @property
    def memory_used(self) -> int:
        return sum(vm.memory_bytes for vm in self.vms)

    @property
    def utilization(self) -> float:
        return self.demand_mips / self.capacity_mips

    @property
    def curve(self) -> tuple[float, ...]:
        return self.watts_curve or (self.idle_watts,) * 11

    def fits(self, vm: VmLoad, max_utilization: float) -> bool:
        cpu_ok = (self.demand_mips + vm.demand_mips) / self.capacity_mips <= max_utilization
        return cpu_ok and self.memory_used + vm.memory_bytes <= self.memory_bytes

    def with_vm(self, vm: VmLoad) -> "HostState":
        return replace(self, vms=self.vms + (vm,))

    def without_vm(self, vm: VmLoad) -> "HostState":
        return replace(self, vms=tuple(v for v in self.vms if v.id != vm.id))


def curve_watts(curve: tuple[float, ...], utilization: float) -> float:
    """Watts at a utilization (0..1, clipped), linear between the 10% points of the curve."""
    u = min(max(utilization, 0.0), 1.0) * 10
    low = int(u)
    if low >= 10:
        return curve[10]
    return curve[low] + (curve[low + 1] - curve[low]) * (u - low)


def migration_joules(transfer_bytes: int) -> float:
    return MIGRATION_JOULES_PER_MB * transfer_bytes / 1e6 + MIGRATION_JOULES_FIXED


@dataclass(frozen=True)
class PowerSettings:
    """Policy settings; defaults are VMware DPM's documented ones where DPM has one.

    `threshold` 1 (conservative) to 5 (aggressive) is the lowest recommendation
    priority acted on: a recommendation of priority p is made only if p <= threshold.
    `boot_s` and `expected_off_s` feed the power-off cost check: a host must stay off
    long enough that its saving covers its migrations and booting it again.

    `min_on_s` is how long a host stays on after a power-on before it may be chosen for
    power-off; at least 0.1 s, so a power-on is never undone at the time it was made.
    The default, 1200 s, is four 300 s decision intervals. On the PlanetLab 20110303
    day (800 hosts, CPU-only) holds from 300 s to 1200 s gave the same decisions, while
    2400 s (the whole power-off window) kept hosts on longer for 1% more energy.
    """

    target_utilization: float = 0.63
    tolerance: float = 0.18
    min_hosts_on: int = 1
    threshold: int = 3
    automation: str = "Automatic"
    power_on_window_s: float = 300.0
    power_off_window_s: float = 2400.0
    boot_s: float = 120.0
    expected_off_s: float = 3600.0
    min_on_s: float = 1200.0

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization {self.target_utilization} outside (0, 1]")
        if not 0 <= self.tolerance < self.target_utilization:
            raise ValueError(f"tolerance {self.tolerance} outside [0, target)")
        if self.target_utilization + self.tolerance > 1:
            raise ValueError(
                f"target_utilization + tolerance = {self.target_utilization + self.tolerance:.2f} above 1"
            )
        if self.min_hosts_on < 1:
            raise ValueError(f"min_hosts_on {self.min_hosts_on} below 1")
        if self.threshold not in (1, 2, 3, 4, 5):
            raise ValueError(f"threshold {self.threshold} outside 1..5")
        if self.automation not in AUTOMATION_LEVELS:
            raise ValueError(f"automation {self.automation!r} is not one of {', '.join(AUTOMATION_LEVELS)}")
        for name in ("power_on_window_s", "power_off_window_s", "expected_off_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)} must be greater than 0")
        if self.boot_s < 0:
            raise ValueError(f"boot_s {self.boot_s} is negative")
        if not self.min_on_s >= MIN_ON_FLOOR_S:
            raise ValueError(f"min_on_s {self.min_on_s} below {MIN_ON_FLOOR_S} s")

    @property
    def low(self) -> float:
        return self.target_utilization - self.tolerance

    @property
    def high(self) -> float:
        return self.target_utilization + self.tolerance


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    destination: str


@dataclass(frozen=True)
class Recommendation:
    """One change the policy proposes, with the scores and what-if result behind it.

    `action` is "power_on", "power_off" or "migrate" (moves that relieve hosts above
    the band without a power change). `priority` runs from 1 (must act) to 5 (small gain).
    """

    action: str
    host: str
    reason: str
    scores: dict[str, int] = field(default_factory=dict)
    moves: tuple[Move, ...] = ()
    priority: int = 3
    what_if: dict[str, Any] = field(default_factory=dict)
