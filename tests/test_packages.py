"""The package scheduler: consolidate at low load, spread at high load."""

import pytest

from agents.host._packages import PackagePower, PackageScheduler


def scheduler():
    return PackageScheduler(packages=4, cores_per_package=4, mips_per_core=1000.0)


def test_low_load_consolidates_onto_one_package():
    s = scheduler()
    demands = {f"vm{i}": (1000.0, 300.0) for i in range(4)}
    s.sync(demands)
    busy = [p for p in s.report() if p["vms"]]
    assert len(busy) == 1
    idle = [p for p in s.report() if not p["vms"]]
    assert all(p["deep_idle_residency"] == pytest.approx(0.9) for p in idle)


def test_high_load_spreads_over_packages():
    s = scheduler()
    demands = {f"vm{i}": (2000.0, 1800.0) for i in range(8)}
    s.sync(demands)
    assert s.mode == "spread"
    assert all(len(p["vms"]) == 2 for p in s.report())


def test_rising_load_switches_to_spread_and_back():
    s = scheduler()
    s.sync({f"vm{i}": (2000.0, 200.0) for i in range(8)})
    assert s.mode == "consolidate"
    assert sum(1 for p in s.report() if p["vms"]) <= 2
    assert s.sync({f"vm{i}": (2000.0, 1500.0) for i in range(8)}) is True
    assert s.mode == "spread"
    assert sum(1 for p in s.report() if p["vms"]) == 4
    s.sync({f"vm{i}": (2000.0, 200.0) for i in range(8)})
    assert sum(1 for p in s.report() if p["vms"]) <= 2


def test_consolidation_saves_package_power():
    demands = {f"vm{i}": (1000.0, 300.0) for i in range(4)}
    consolidated = scheduler()
    consolidated.sync(demands)
    spread = PackageScheduler(4, 4, 1000.0, spread_above=0.01)
    spread.sync(demands)
    assert sum(p["watts"] for p in consolidated.report()) < sum(p["watts"] for p in spread.report())


def test_vm_removed_when_it_stops_running():
    s = scheduler()
    s.sync({"a": (1000.0, 100.0), "b": (1000.0, 100.0)})
    s.sync({"a": (1000.0, 100.0)})
    assert [vm for p in s.report() for vm in p["vms"]] == ["a"]


def test_threads_follow_vm_mips():
    s = scheduler()
    assert s.threads_for(2500.0) == 3
    assert s.threads_for(1000.0) == 1


def test_package_power_endpoints():
    power = PackagePower()
    assert power.watts(0.0, 1.0) == power.active_watts
    assert power.watts(1.0, 0.0) == power.deep_idle_watts


def test_invalid_layout_rejected():
    with pytest.raises(ValueError):
        PackageScheduler(0, 4, 1000.0)
