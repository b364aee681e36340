"""Power decisions around a target utilization (pure: no bus, no clock).

Hosts aim for target +/- tolerance (63% +/- 18% by default, as VMware DPM).
A power-off candidate is scored by how much its evacuation reduces the number
of less-utilized hosts; a power-on candidate by how much the moves it allows
reduce the number of highly-utilized hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class VmLoad:
    id: str
    demand_mips: float
    memory_bytes: int


@dataclass(frozen=True)
class HostState:
    id: str
    powered_on: bool
    available: bool
    capacity_mips: float
    memory_bytes: int
    vms: tuple[VmLoad, ...] = ()
    idle_watts: float = 0.0

    @property
    def demand_mips(self) -> float:
        return sum(vm.demand_mips for vm in self.vms)

    @property
    def memory_used(self) -> int:
        return sum(vm.memory_bytes for vm in self.vms)

    @property
    def utilization(self) -> float:
        return self.demand_mips / self.capacity_mips

    def fits(self, vm: VmLoad, max_utilization: float) -> bool:
        cpu_ok = (self.demand_mips + vm.demand_mips) / self.capacity_mips <= max_utilization
        return cpu_ok and self.memory_used + vm.memory_bytes <= self.memory_bytes

    def with_vm(self, vm: VmLoad) -> "HostState":
        return replace(self, vms=self.vms + (vm,))

    def without_vm(self, vm: VmLoad) -> "HostState":
        return replace(self, vms=tuple(v for v in self.vms if v.id != vm.id))


@dataclass(frozen=True)
class PowerSettings:
    target_utilization: float = 0.63
    tolerance: float = 0.18
    min_hosts_on: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization {self.target_utilization} outside (0, 1]")
        if not 0 <= self.tolerance < self.target_utilization:
            raise ValueError(f"tolerance {self.tolerance} outside [0, target)")
        if self.min_hosts_on < 1:
            raise ValueError(f"min_hosts_on {self.min_hosts_on} below 1")

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
    action: str  # "power_off" or "power_on"
    host: str
    reason: str
    scores: dict[str, int] = field(default_factory=dict)
    moves: tuple[Move, ...] = ()


def _count(hosts: list[HostState], predicate) -> int:
    return sum(1 for h in hosts if predicate(h))


def evaluate(hosts: list[HostState], settings: PowerSettings) -> Recommendation | None:
    """Return the one power change worth making now, or None."""
    active = [h for h in hosts if h.powered_on and h.available]
    if any(h.utilization > settings.high for h in active):
        return _best_power_on(hosts, active, settings)
    if len(active) > settings.min_hosts_on and any(h.utilization < settings.low for h in active):
        return _best_power_off(active, settings)
    return None


def _best_power_off(active: list[HostState], settings: PowerSettings) -> Recommendation | None:
    under_before = _count(active, lambda h: h.utilization < settings.low)
    scores: dict[str, int] = {}
    plans: dict[str, tuple[Move, ...]] = {}
    for candidate in active:
        others = [h for h in active if h.id != candidate.id]
        moves = _evacuate(candidate, others, settings)
        if moves is None:
            continue
        after, _ = moves
        scores[candidate.id] = under_before - _count(after, lambda h: h.utilization < settings.low)
        plans[candidate.id] = moves[1]
    useful = [h for h in active if scores.get(h.id, 0) > 0]
    if not useful:
        return None
    # Highest score; then fewer migrations; then the host that costs more to keep on.
    best = max(useful, key=lambda h: (scores[h.id], -len(h.vms), h.idle_watts))
    reason = (
        f"{under_before} hosts below {settings.low:.0%}; evacuating {best.id} "
        f"({best.utilization:.0%}) removes {scores[best.id]} of them"
    )
    return Recommendation("power_off", best.id, reason, scores, plans[best.id])


def _evacuate(
    candidate: HostState, others: list[HostState], settings: PowerSettings
) -> tuple[list[HostState], tuple[Move, ...]] | None:
    """Place the candidate's VMs on the other hosts without pushing any above the band.

    Each VM goes to an underused host if one fits (that may lift it into the
    band), else to the most loaded host that fits. None if some VM fits nowhere.
    """
    hosts = {h.id: h for h in others}
    moves: list[Move] = []
    for vm in sorted(candidate.vms, key=lambda v: v.demand_mips, reverse=True):
        fitting = [h for h in hosts.values() if h.fits(vm, settings.high)]
        if not fitting:
            return None
        destination = max(fitting, key=lambda h: (h.utilization < settings.low, h.utilization, h.id))
        hosts[destination.id] = destination.with_vm(vm)
        moves.append(Move(vm.id, candidate.id, destination.id))
    return list(hosts.values()), tuple(moves)


def _best_power_on(
    hosts: list[HostState], active: list[HostState], settings: PowerSettings
) -> Recommendation | None:
    standby = [h for h in hosts if not h.powered_on]
    hot_before = _count(active, lambda h: h.utilization > settings.high)
    scores: dict[str, int] = {}
    plans: dict[str, tuple[Move, ...]] = {}
    for candidate in standby:
        after, moves = _relieve(active, candidate, settings)
        scores[candidate.id] = hot_before - _count(after, lambda h: h.utilization > settings.high)
        plans[candidate.id] = moves
    useful = [h for h in standby if scores[h.id] > 0]
    if not useful:
        return None
    best = max(useful, key=lambda h: (scores[h.id], -h.idle_watts, h.id))
    reason = f"{hot_before} hosts above {settings.high:.0%}; powering on {best.id} relieves {scores[best.id]}"
    return Recommendation("power_on", best.id, reason, scores, plans[best.id])


def _relieve(
    active: list[HostState], new_host: HostState, settings: PowerSettings
) -> tuple[list[HostState], tuple[Move, ...]]:
    """Move VMs from hot hosts to an empty new host until they are back in the band."""
    target = replace(new_host, powered_on=True, vms=())
    hosts = {h.id: h for h in active}
    moves: list[Move] = []
    for hot in sorted(active, key=lambda h: h.utilization, reverse=True):
        current = hot
        for vm in sorted(hot.vms, key=lambda v: v.demand_mips):
            if current.utilization <= settings.high:
                break
            if not target.fits(vm, settings.target_utilization):
                continue
            target = target.with_vm(vm)
            current = current.without_vm(vm)
            moves.append(Move(vm.id, hot.id, target.id))
        hosts[hot.id] = current
    return list(hosts.values()) + [target], tuple(moves)
