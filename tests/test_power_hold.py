"""The policy does not power-cycle a host: hold after power-on, both demand windows on evacuation."""

import math

import pytest

from agents.power._policy import HostState, Move, PowerSettings, VmLoad, evaluate

GIB = 1024**3


def host(host_id, vms=(), on=True, since_s=math.inf, idle_watts=90.0):
    loads = tuple(VmLoad(name, demand, GIB // 4) for name, demand in vms)
    return HostState(host_id, on, True, 1000.0, 4 * GIB, loads, idle_watts, since_power_change_s=since_s)


def _light_pair(since_s):
    # Both hosts below the band; h2 (one VM) is the power-off pick when it may be chosen.
    return [host("h1", [("a", 100), ("a2", 100)]), host("h2", [("b", 100)], since_s=since_s)]


def test_power_off_skips_held_host():
    settings = PowerSettings(min_on_s=2400.0)
    recommendation = evaluate(_light_pair(since_s=1800.0), settings)
    # h2 is held, so the only candidate left is h1, with two migrations.
    assert recommendation.host == "h1"
    assert "h2" not in recommendation.scores


def test_power_off_allows_host_once_hold_has_passed():
    recommendation = evaluate(_light_pair(since_s=2400.0), PowerSettings(min_on_s=2400.0))
    assert recommendation.action == "power_off"
    assert recommendation.host == "h2"


def test_power_off_never_undoes_power_on_made_at_same_time():
    settings = PowerSettings(min_on_s=0.1)
    hosts = [host("h1", [("a", 100)], since_s=0.0), host("h2", [("b", 100)], since_s=0.0)]
    assert evaluate(hosts, settings) is None


def test_hold_below_floor_rejected():
    with pytest.raises(ValueError, match="min_on_s"):
        PowerSettings(min_on_s=0.0)


def test_power_off_cost_counts_boot_just_spent():
    settings = PowerSettings(min_on_s=2400.0, expected_off_s=3600.0)
    long_on = evaluate(_light_pair(since_s=math.inf), settings).what_if["migration_and_boot_joules"]
    recent = evaluate(_light_pair(since_s=3000.0), settings).what_if["migration_and_boot_joules"]
    # 120 s of boot at 90 W, the boot of 3000 s ago, counts again.
    assert recent - long_on == pytest.approx(120 * 90.0, abs=0.2)


def test_power_off_skipped_when_two_boots_exceed_saving():
    # 90 W saved for 200 s is 18 kJ: covers one boot (10.8 kJ) and the migration, not two boots.
    settings = PowerSettings(min_on_s=100.0, expected_off_s=200.0)
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)], since_s=150.0)]
    assert evaluate(hosts, settings).host == "h1"
    hosts = [host("h1", [("a", 100)], since_s=150.0), host("h2", [("b", 100)], since_s=150.0)]
    assert evaluate(hosts, settings) is None


def test_evacuation_rejects_destination_hot_in_recent_window():
    # x has risen lately: 150 MIPS over the power-off window, 500 over the power-on window.
    recent = [host("h1", [("x", 500), ("y", 50)]), host("h2", [("b", 300)])]
    history = [host("h1", [("x", 150), ("y", 50)]), host("h2", [("b", 300)])]
    # Over the long window alone, moving b to h1 keeps it at 50%; recently it would be 85%.
    assert evaluate(history, PowerSettings()).action == "power_off"
    assert evaluate(recent, PowerSettings(), history) is None


def test_evacuation_keeps_destinations_in_band_in_both_windows():
    recent = [host("h1", [("x", 500), ("y", 50)]), host("h2", [("b", 300)]), host("h3", [("c", 460)])]
    history = [host("h1", [("x", 150), ("y", 50)]), host("h2", [("b", 300)]), host("h3", [("c", 460)])]
    # Over the long window alone, b would go to h1, the underused host, which recent demand puts at 85%.
    assert evaluate(history, PowerSettings()).moves == (Move("b", "h2", "h1"),)
    recommendation = evaluate(recent, PowerSettings(), history)
    assert recommendation.action == "power_off"
    recent_mips = {h.id: h.demand_mips for h in recent}
    moved_mips = {vm.id: vm.demand_mips for h in recent for vm in h.vms}
    for move in recommendation.moves:
        recent_mips[move.destination] += moved_mips[move.vm]
    assert all(recent_mips[move.destination] <= 810 for move in recommendation.moves)


def test_power_on_skips_host_powered_off_at_same_time():
    hosts = [
        host("h1", [("a", 700), ("b", 200)]),
        host("h2", on=False, since_s=0.0, idle_watts=86.0),
        host("h3", on=False, idle_watts=95.0),
    ]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.action == "power_on"
    # h2 is cheaper but was powered off by this same evaluation step.
    assert recommendation.host == "h3"
