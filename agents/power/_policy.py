"""Power decisions around a target utilization (pure: no bus, no clock).

Hosts aim for target +/- tolerance (63% +/- 18% by default, as VMware DPM).
A power-off candidate is scored by how much its evacuation reduces the number
of less-utilized hosts. A power-on candidate is scored by how much the moves it
allows reduce the number of highly-utilized hosts. The running power agent and the
replay call the same `evaluate`.

Power-on looks at recent demand (the short window), power-off at a longer history.
An evacuation must keep every destination within the band under both, or a VM the
long window sees as quiet would land on a host the next power-on check finds hot,
and the host just emptied would be powered on again for it.
"""

from __future__ import annotations

import numpy as np

from ._model import (
    AUTOMATION_LEVELS, MIN_ON_FLOOR_S, HostState, Move, PowerSettings, Recommendation, VmLoad, curve_watts,
    migration_joules,
)

__all__ = [
    "AUTOMATION_LEVELS", "HostState", "Move", "PowerSettings", "Recommendation", "VmLoad", "evaluate",
    "carried_out",
]

# Comparisons of utilization against the band allow this much float rounding.
EPSILON = 1e-9


class _Cluster:
    """Array view of the hosts, so what-ifs over a thousand hosts stay fast."""

    def __init__(self, hosts: list[HostState]) -> None:
        self.hosts = hosts
        self.index = {h.id: i for i, h in enumerate(hosts)}
        self.capacity = np.array([h.capacity_mips for h in hosts], dtype=float)
        self.memory = np.array([h.memory_bytes for h in hosts], dtype=float)
        self.demand = np.array([h.demand_mips for h in hosts], dtype=float)
        self.memory_used = np.array([h.memory_used for h in hosts], dtype=float)
        self.on = np.array([h.powered_on for h in hosts], dtype=bool)
        self.active = self.on & np.array([h.available for h in hosts], dtype=bool)
        self.curves = np.array([h.curve for h in hosts], dtype=float).reshape(len(hosts), 11)

    def utilization(self, demand: np.ndarray | None = None) -> np.ndarray:
        return (self.demand if demand is None else demand) / self.capacity

    def watts(self, demand: np.ndarray, mask: np.ndarray) -> float:
        """Total watts of the masked hosts at the given demands."""
        u = np.clip(demand[mask] / self.capacity[mask], 0.0, 1.0) * 10
        low = np.minimum(u.astype(int), 9)
        curves = self.curves[mask]
        rows = np.arange(len(u))
        watts = curves[rows, low] + (curves[rows, low + 1] - curves[rows, low]) * (u - low)
        return float(watts.sum())


def carried_out(recommendation: Recommendation, settings: PowerSettings) -> bool:
    """Whether the automation level lets a recommendation be carried out without a user."""
    return settings.automation == "Automatic" and recommendation.priority <= settings.threshold


def evaluate(
    hosts: list[HostState], settings: PowerSettings, power_off_hosts: list[HostState] | None = None
) -> Recommendation | None:
    """Return the one change worth making now, or None.

    `hosts` carries demand over the power-on window; `power_off_hosts` (same hosts,
    same order) over the longer power-off window, defaulting to `hosts`. A
    recommendation whose priority is above the threshold is not made.
    """
    if settings.automation == "Off" or not hosts:
        return None
    cluster = _Cluster(hosts)
    recommendation = _relieve_or_power_on(cluster, settings)
    if recommendation is None:
        # Power-off moves VMs only among active hosts, so the what-if needs no others.
        view = hosts if power_off_hosts is None else power_off_hosts
        recommendation = _best_power_off(
            _Cluster([h for h in view if h.powered_on and h.available]),
            _Cluster([h for h in hosts if h.powered_on and h.available]),
            settings,
        )
    if recommendation is None or recommendation.priority > settings.threshold:
        return None
    return recommendation


# ---- power-on and relief ---------------------------------------------------------


def _hot_priority(utilization: float, settings: PowerSettings) -> int:
    if utilization >= 1.0 - EPSILON:
        return 1
    if utilization >= settings.high + (1.0 - settings.high) / 2:
        return 2
    return 3


def _relieve_or_power_on(cluster: _Cluster, settings: PowerSettings) -> Recommendation | None:
    active_count = int(cluster.active.sum())
    standby = [i for i, h in enumerate(cluster.hosts) if not h.powered_on and h.available]
    if active_count < settings.min_hosts_on and standby:
        return _power_on_for_minimum(cluster, standby, settings)
    util = cluster.utilization()
    hot = [i for i in np.flatnonzero(cluster.active & (util > settings.high + EPSILON))]
    if not hot:
        return None
    hot.sort(key=lambda i: (-util[i], i))
    priority = _hot_priority(float(util[hot[0]]), settings)
    balance_demand, balance_moves = _balance(cluster, hot, settings)
    hot_after_balance = _count_hot(cluster, balance_demand, settings)
    if balance_moves and hot_after_balance == 0:
        what_if = {"hot_before": len(hot), "hot_after": 0, "moves": len(balance_moves)}
        reason = (
            f"{len(hot)} hosts above {settings.high:.0%}; moving {len(balance_moves)} VMs to powered-on "
            f"hosts below {settings.target_utilization:.0%} relieves all of them without a power-on"
        )
        return Recommendation("migrate", cluster.hosts[hot[0]].id, reason, {}, tuple(balance_moves), priority, what_if)
    power_on = _best_power_on(cluster, hot, standby, settings, priority)
    if power_on is not None:
        return power_on
    if balance_moves and hot_after_balance < len(hot):
        what_if = {"hot_before": len(hot), "hot_after": hot_after_balance, "moves": len(balance_moves)}
        reason = (
            f"{len(hot)} hosts above {settings.high:.0%} and no standby host helps; moving "
            f"{len(balance_moves)} VMs leaves {hot_after_balance} above"
        )
        return Recommendation("migrate", cluster.hosts[hot[0]].id, reason, {}, tuple(balance_moves), priority, what_if)
    return None


def _count_hot(cluster: _Cluster, demand: np.ndarray, settings: PowerSettings) -> int:
    return int((cluster.active & (demand / cluster.capacity > settings.high + EPSILON)).sum())


def _pick_vm(vms: list[VmLoad], excess_mips: float) -> VmLoad:
    """The VM whose departure brings a host back into the band with the fewest moves.

    The smallest VM that covers the excess alone, else the largest one.
    """
    covering = [vm for vm in vms if vm.demand_mips >= excess_mips]
    if covering:
        return min(covering, key=lambda vm: (vm.demand_mips, vm.id))
    return max(vms, key=lambda vm: (vm.demand_mips, vm.id))


def _balance(cluster: _Cluster, hot: list[int], settings: PowerSettings) -> tuple[np.ndarray, list[Move]]:
    """Move VMs off hot hosts to powered-on hosts that stay at or below the target."""
    demand = cluster.demand.copy()
    memory_used = cluster.memory_used.copy()
    moves: list[Move] = []
    receivers = cluster.active.copy()
    receivers[hot] = False
    for source in hot:
        remaining = list(cluster.hosts[source].vms)
        while remaining and demand[source] / cluster.capacity[source] > settings.high + EPSILON:
            vm = _pick_vm(remaining, demand[source] - settings.high * cluster.capacity[source])
            remaining.remove(vm)
            fit = receivers & (
                (demand + vm.demand_mips) / cluster.capacity <= settings.target_utilization + EPSILON
            ) & (memory_used + vm.memory_bytes <= cluster.memory)
            if not fit.any():
                continue
            # Best fit: the fullest receiver that still stays at or below the target.
            destination = int(np.argmax(np.where(fit, demand / cluster.capacity, -1.0)))
            demand[destination] += vm.demand_mips
            memory_used[destination] += vm.memory_bytes
            demand[source] -= vm.demand_mips
            memory_used[source] -= vm.memory_bytes
            moves.append(Move(vm.id, cluster.hosts[source].id, cluster.hosts[destination].id))
    return demand, moves


def _power_on_for_minimum(cluster: _Cluster, standby: list[int], settings: PowerSettings) -> Recommendation:
    best = min(standby, key=lambda i: (cluster.hosts[i].curve[0], i))
    active = int(cluster.active.sum())
    reason = f"{active} hosts on, fewer than the minimum of {settings.min_hosts_on}"
    what_if = {"hosts_on_before": active, "hosts_on_after": active + 1}
    return Recommendation("power_on", cluster.hosts[best].id, reason, {}, (), 1, what_if)


def _relief_plan(
    cluster: _Cluster, hot: list[int], new_host: HostState, settings: PowerSettings
) -> tuple[np.ndarray, float, list[Move]]:
    """Move VMs from hot hosts to an empty new host until they are back in the band.

    The new host takes VMs only up to the target. Returns the hosts' demands after,
    the new host's demand and the moves.
    """
    demand = cluster.demand.copy()
    new_demand = 0.0
    new_memory = 0
    moves: list[Move] = []
    for source in hot:
        remaining = list(cluster.hosts[source].vms)
        while remaining and demand[source] / cluster.capacity[source] > settings.high + EPSILON:
            vm = _pick_vm(remaining, demand[source] - settings.high * cluster.capacity[source])
            remaining.remove(vm)
            fits_cpu = (new_demand + vm.demand_mips) / new_host.capacity_mips <= settings.target_utilization + EPSILON
            if not fits_cpu or new_memory + vm.memory_bytes > new_host.memory_bytes:
                continue
            new_demand += vm.demand_mips
            new_memory += vm.memory_bytes
            demand[source] -= vm.demand_mips
            moves.append(Move(vm.id, cluster.hosts[source].id, new_host.id))
    return demand, new_demand, moves


def _best_power_on(
    cluster: _Cluster, hot: list[int], standby: list[int], settings: PowerSettings, priority: int
) -> Recommendation | None:
    """Simulate each standby host's power-on and pick the one that relieves the most hosts.

    Identical empty standby hosts (same capacity, memory and power curve) have
    identical what-ifs, so each such profile is simulated once.
    """
    hot_before = len(hot)
    watts_before = cluster.watts(cluster.demand, cluster.active)
    scores: dict[str, int] = {}
    results: dict[int, tuple[int, float, list[Move]]] = {}
    simulated: dict[tuple, tuple[int, float, list[Move]]] = {}
    # A host powered off at the time of this evaluation was judged unneeded on these same
    # estimates, so powering it on again would undo that decision within one step.
    standby = [i for i in standby if cluster.hosts[i].since_power_change_s >= MIN_ON_FLOOR_S]
    for i in standby:
        host = cluster.hosts[i]
        profile = (host.capacity_mips, host.memory_bytes, host.curve)
        if profile not in simulated:
            demand, new_demand, moves = _relief_plan(cluster, hot, host, settings)
            score = hot_before - _count_hot(cluster, demand, settings)
            watts_after = cluster.watts(demand, cluster.active) + curve_watts(host.curve, new_demand / host.capacity_mips)
            simulated[profile] = (score, watts_after, moves)
        score, watts_after, moves = simulated[profile]
        moves = [Move(m.vm, m.source, host.id) for m in moves]
        scores[host.id] = score
        results[i] = (score, watts_after, moves)
    useful = [i for i in standby if results[i][0] > 0]
    if not useful:
        return None
    # Most hosts relieved; then the lower cluster power after the moves; then list order.
    best = min(useful, key=lambda i: (-results[i][0], results[i][1], i))
    score, watts_after, moves = results[best]
    best_id = cluster.hosts[best].id
    reason = f"{hot_before} hosts above {settings.high:.0%}; powering on {best_id} relieves {score}"
    what_if = {
        "hot_before": hot_before,
        "hot_after": hot_before - score,
        "cluster_watts_before": round(watts_before, 2),
        "cluster_watts_after": round(watts_after, 2),
        "moves": len(moves),
    }
    return Recommendation("power_on", best_id, reason, scores, tuple(moves), priority, what_if)


# ---- power-off -------------------------------------------------------------------


def _best_power_off(cluster: _Cluster, recent: _Cluster, settings: PowerSettings) -> Recommendation | None:
    """Pick the host whose evacuation removes the most underused hosts and pays for itself.

    `cluster` holds demand over the power-off window, `recent` the same hosts over the
    power-on window. A host powered on less than `min_on_s` ago is not a candidate.
    """
    util = cluster.utilization()
    active_count = int(cluster.active.sum())
    under = cluster.active & (util < settings.low - EPSILON)
    if active_count <= settings.min_hosts_on or not under.any():
        return None
    under_before = int(under.sum())
    watts_before = cluster.watts(cluster.demand, cluster.active)
    scores: dict[str, int] = {}
    plans: dict[int, dict] = {}
    for candidate in np.flatnonzero(cluster.active):
        if cluster.hosts[candidate].since_power_change_s < settings.min_on_s:
            continue
        plan = _evacuate(cluster, recent, int(candidate), settings)
        if plan is None:
            continue
        scores[cluster.hosts[candidate].id] = under_before - plan["under_after"]
        plan["watts_after"] = cluster.watts(plan["demand"], plan["active"])
        plans[int(candidate)] = plan
    useful = [i for i, p in plans.items() if scores[cluster.hosts[i].id] > 0]
    if not useful:
        return None
    # Highest score; then fewer migrations; then the host with the most watts per MIPS.
    for best in sorted(useful, key=lambda i: _power_off_rank(cluster, i, scores, settings)):
        plan = plans[best]
        saving_w = watts_before - plan["watts_after"]
        cost_j = _power_cycle_joules(cluster.hosts[best], settings)
        if saving_w * settings.expected_off_s >= cost_j:
            return _power_off_recommendation(cluster, best, plan, scores, under_before, saving_w, cost_j, settings)
    return None


def _power_cycle_joules(host: HostState, settings: PowerSettings) -> float:
    """Energy a power-off commits to: its migrations and booting the host again.

    A host powered on less than `expected_off_s` ago also carries the boot energy just
    spent on it: a cycle that short costs two boots, and the saving must cover both.
    """
    boot_j = settings.boot_s * host.curve[10]
    cost_j = sum(migration_joules(vm.migration_bytes) for vm in host.vms) + boot_j
    if host.since_power_change_s < settings.expected_off_s:
        cost_j += boot_j
    return cost_j


def _power_off_rank(cluster: _Cluster, i: int, scores: dict[str, int], settings: PowerSettings) -> tuple:
    host = cluster.hosts[i]
    watts_per_mips = host.curve[round(settings.target_utilization * 10)] / host.capacity_mips
    return (-scores[host.id], len(host.vms), -watts_per_mips, i)


def _evacuate(cluster: _Cluster, recent: _Cluster, candidate: int, settings: PowerSettings) -> dict | None:
    """Place the candidate's VMs on the other hosts without pushing any above the band.

    A destination must stay within the band under both the power-off window's demand
    (`cluster`) and the power-on window's (`recent`). Each VM, largest first, goes to an
    underused host if one fits (that may lift it into the band), else to the most
    loaded host that fits. None if some VM fits nowhere.
    """
    others = cluster.active.copy()
    others[candidate] = False
    host = cluster.hosts[candidate]
    demand = cluster.demand.copy()
    recent_demand = recent.demand.copy()
    memory_used = cluster.memory_used.copy()
    limit = settings.high * cluster.capacity
    if host.demand_mips > float((limit[others] - demand[others]).clip(min=0).sum()):
        return None
    recent_mips = {vm.id: vm.demand_mips for vm in recent.hosts[candidate].vms}
    moves: list[Move] = []
    for vm in sorted(host.vms, key=lambda v: (-v.demand_mips, v.id)):
        vm_recent_mips = recent_mips.get(vm.id, vm.demand_mips)
        util = demand / cluster.capacity
        fit = (
            others
            & ((demand + vm.demand_mips) / cluster.capacity <= settings.high + EPSILON)
            & ((recent_demand + vm_recent_mips) / cluster.capacity <= settings.high + EPSILON)
            & (memory_used + vm.memory_bytes <= cluster.memory)
        )
        if not fit.any():
            return None
        key = np.where(fit, (util < settings.low - EPSILON) * 2.0 + util, -1.0)
        destination = int(np.argmax(key))
        demand[destination] += vm.demand_mips
        recent_demand[destination] += vm_recent_mips
        memory_used[destination] += vm.memory_bytes
        moves.append(Move(vm.id, host.id, cluster.hosts[destination].id))
    demand[candidate] = 0.0
    under_after = int((others & (demand / cluster.capacity < settings.low - EPSILON)).sum())
    cluster_util_after = float(demand[others].sum() / cluster.capacity[others].sum()) if others.any() else 0.0
    return {
        "demand": demand, "active": others, "moves": tuple(moves), "under_after": under_after,
        "cluster_utilization_after": cluster_util_after,
    }


def _power_off_priority(host: HostState, cluster_util_after: float, settings: PowerSettings) -> int:
    if not host.vms:
        return 2
    if cluster_util_after <= settings.target_utilization + EPSILON:
        return 3
    if cluster_util_after <= settings.target_utilization + settings.tolerance / 2 + EPSILON:
        return 4
    return 5


def _power_off_recommendation(
    cluster: _Cluster, best: int, plan: dict, scores: dict[str, int], under_before: int,
    saving_w: float, cost_j: float, settings: PowerSettings,
) -> Recommendation:
    host = cluster.hosts[best]
    priority = _power_off_priority(host, plan["cluster_utilization_after"], settings)
    reason = (
        f"{under_before} hosts below {settings.low:.0%}; evacuating {host.id} "
        f"({host.utilization:.0%}) removes {scores[host.id]} of them"
    )
    what_if = {
        "under_before": under_before,
        "under_after": plan["under_after"],
        "cluster_utilization_after": round(plan["cluster_utilization_after"], 4),
        "saving_watts": round(saving_w, 2),
        "expected_off_s": settings.expected_off_s,
        "on_for_s": host.since_power_change_s if np.isfinite(host.since_power_change_s) else None,
        "migration_and_boot_joules": round(cost_j, 1),
        "moves": len(plan["moves"]),
    }
    return Recommendation("power_off", host.id, reason, scores, plan["moves"], priority, what_if)
