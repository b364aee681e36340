"""Package scheduler and package power model of a host (pure: the host agent feeds it).

A host has processor packages of cores; each VM is a group of vCPU threads kept on
one package. A package reaches its deepest idle state only while all its cores are
idle. At low host load the scheduler consolidates groups onto the packages with the
least deep-idle residency, so the others stay in that state; above `spread_above`
it places groups on the packages with the most residency, to keep performance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PackagePower:
    """Watts of one package: all cores busy, idle in a shallow state, in the deepest state.

    NOTE: the defaults are illustrative for a 65 W desktop-class dual-core package;
    they are not measured. `deep_entry_loss` is the share of all-idle time lost to
    entering and leaving the deep state (and to interrupts), an assumption as well.
    """

    active_watts: float = 65.0
    shallow_idle_watts: float = 22.0
    deep_idle_watts: float = 6.0
    deep_entry_loss: float = 0.1

    def watts(self, deep_residency: float, core_utilization: float) -> float:
        shallow = (1.0 - deep_residency) * self.shallow_idle_watts
        busy = core_utilization * (self.active_watts - self.shallow_idle_watts)
        return deep_residency * self.deep_idle_watts + shallow + busy


@dataclass
class ThreadGroup:
    vm: str
    threads: int
    demand_mips: float = 0.0


@dataclass
class Package:
    index: int
    cores: int
    mips_per_core: float
    groups: dict[str, ThreadGroup] = field(default_factory=dict)
    deep_residency: float = 1.0
    shallow_residency: float = 0.0
    active_residency: float = 0.0
    watts: float = 0.0

    @property
    def capacity_mips(self) -> float:
        return self.cores * self.mips_per_core

    @property
    def demand_mips(self) -> float:
        return sum(g.demand_mips for g in self.groups.values())

    def core_utilizations(self) -> list[float]:
        """Per-core utilization with the package's threads spread over its cores, busiest first."""
        load = [0.0] * self.cores
        threads = sorted(
            ((g.demand_mips / g.threads, g.vm) for g in self.groups.values() for _ in range(g.threads)), reverse=True
        )
        for demand, _ in threads:
            core = min(range(self.cores), key=lambda c: (load[c], c))
            load[core] += demand
        return [min(mips / self.mips_per_core, 1.0) for mips in load]


class PackageScheduler:
    """Placement of VM thread groups on packages, with each package's residency and power."""

    def __init__(
        self, packages: int, cores_per_package: int, mips_per_core: float,
        power: PackagePower | None = None, spread_above: float = 0.5, fill_limit: float = 0.9,
    ) -> None:
        if packages < 1 or cores_per_package < 1 or mips_per_core <= 0:
            raise ValueError(f"invalid package layout {packages} x {cores_per_package} cores of {mips_per_core} MIPS")
        if not 0 < spread_above <= 1 or not 0 < fill_limit <= 1:
            raise ValueError(f"spread_above {spread_above} and fill_limit {fill_limit} must be in (0, 1]")
        self.packages = [Package(i, cores_per_package, mips_per_core) for i in range(packages)]
        self.mips_per_core = mips_per_core
        self.power = power or PackagePower()
        self.spread_above = spread_above
        self.fill_limit = fill_limit
        self.where: dict[str, int] = {}
        self.mode = "consolidate"
        self.measure()

    @property
    def capacity_mips(self) -> float:
        return sum(p.capacity_mips for p in self.packages)

    def threads_for(self, vm_mips: float) -> int:
        """vCPU threads of a VM: as many cores as its MIPS need."""
        return max(1, math.ceil(vm_mips / self.mips_per_core - 1e-9))

    def place(self, vm: str, threads: int, demand_mips: float = 0.0) -> int:
        """Put a VM's thread group on a package chosen by the current mode; return its index."""
        if vm in self.where:
            raise ValueError(f"VM {vm} is already placed on package {self.where[vm]}")
        group = ThreadGroup(vm, threads, demand_mips)
        package = self._choose(group)
        package.groups[vm] = group
        self.where[vm] = package.index
        return package.index

    def remove(self, vm: str) -> None:
        index = self.where.pop(vm, None)
        if index is not None:
            del self.packages[index].groups[vm]

    def _choose(self, group: ThreadGroup) -> Package:
        limit = self.fill_limit if self.mode == "consolidate" else 1.0
        fitting = [p for p in self.packages if p.demand_mips + group.demand_mips <= limit * p.capacity_mips]
        if not fitting:
            return min(self.packages, key=lambda p: (p.demand_mips / p.capacity_mips, p.index))
        if self.mode == "consolidate":
            # The package already least in deep idle takes the work, so the others stay there.
            return min(fitting, key=lambda p: (p.deep_residency, -p.demand_mips, p.index))
        return max(fitting, key=lambda p: (p.deep_residency, -p.demand_mips, -p.index))

    def sync(self, vms: dict[str, tuple[float, float]]) -> bool:
        """Bring the groups in line with the VMs running now, VM -> (MIPS, current demand),
        then `update`. Returns whether groups were re-placed."""
        for vm in [vm for vm in self.where if vm not in vms]:
            self.remove(vm)
        for vm, (mips, demand) in vms.items():
            if vm not in self.where:
                self.place(vm, self.threads_for(mips), demand)
        return self.update({vm: demand for vm, (_, demand) in vms.items()})

    def update(self, demands_mips: dict[str, float]) -> bool:
        """Take the VMs' current demands, switch mode and re-place if the host load crossed
        `spread_above`, then measure each package. Returns whether groups were re-placed."""
        for package in self.packages:
            for group in package.groups.values():
                group.demand_mips = float(demands_mips.get(group.vm, group.demand_mips))
        load = sum(p.demand_mips for p in self.packages) / self.capacity_mips
        mode = "spread" if load > self.spread_above else "consolidate"
        replaced = mode != self.mode
        self.mode = mode
        if replaced:
            self._replace_all()
        self.measure()
        return replaced

    def _replace_all(self) -> None:
        groups = sorted((g for p in self.packages for g in p.groups.values()), key=lambda g: (-g.demand_mips, g.vm))
        for package in self.packages:
            package.groups.clear()
        self.where.clear()
        self.measure()
        for group in groups:
            package = self._choose(group)
            package.groups[group.vm] = group
            self.where[group.vm] = package.index
            self.measure_package(package)

    def measure(self) -> None:
        for package in self.packages:
            self.measure_package(package)

    def measure_package(self, package: Package) -> None:
        """Residency of a package if its cores' busy times are independent.

        All cores idle with probability prod(1 - u); that time is in the deep state
        except the entry loss, the rest of the idle time is shallow.
        """
        cores = package.core_utilizations()
        all_idle = math.prod(1.0 - u for u in cores)
        package.active_residency = 1.0 - all_idle
        package.deep_residency = all_idle * (1.0 - self.power.deep_entry_loss)
        package.shallow_residency = all_idle * self.power.deep_entry_loss
        package.watts = self.power.watts(package.deep_residency, sum(cores) / len(cores))

    def report(self) -> list[dict]:
        """Per-package figures for a heartbeat."""
        return [
            {
                "package": p.index,
                "cores": p.cores,
                "vms": sorted(p.groups),
                "utilization": round(p.demand_mips / p.capacity_mips, 4),
                "deep_idle_residency": round(p.deep_residency, 4),
                "shallow_idle_residency": round(p.shallow_residency, 4),
                "active_residency": round(p.active_residency, 4),
                "watts": round(p.watts, 2),
            }
            for p in self.packages
        ]
