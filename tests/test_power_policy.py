import pytest

from agents.power._policy import HostState, Move, PowerSettings, VmLoad, carried_out, evaluate

GIB = 1024**3


def host(host_id, vms=(), on=True, capacity=1000.0, memory=4 * GIB, idle_watts=90.0, available=True):
    loads = tuple(VmLoad(name, demand, GIB // 4) for name, demand in vms)
    return HostState(host_id, on, available, capacity, memory, loads, idle_watts)


def test_power_off_scores_by_underused_hosts_removed():
    hosts = [
        host("h1", [("a", 200), ("a2", 150)]),
        host("h2", [("b", 100)]),
        host("h3", [("c", 700)]),
    ]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.action == "power_off"
    # Evacuating h3 leaves h1 below the band; h1 and h2 both leave none, h2 with one move.
    assert recommendation.scores == {"h1": 2, "h2": 2, "h3": 1}
    assert recommendation.host == "h2"
    # b goes to the underused h1 (to 45%), not to the fuller h3.
    assert recommendation.moves == (Move("b", "h2", "h1"),)


def test_power_off_skipped_when_evacuation_overloads():
    hosts = [host("h1", [("a", 440)]), host("h2", [("b", 440)])]
    assert evaluate(hosts, PowerSettings()) is None


def test_power_off_respects_memory():
    small = 3 * GIB // 4
    hosts = [host("h1", [("a", 100), ("b", 100), ("c", 100)], memory=small), host("h2", [("d", 100)], memory=small)]
    # Either evacuation would need four VMs of 1/4 GiB on a host with 3/4 GiB.
    assert evaluate(hosts, PowerSettings()) is None


def test_power_off_keeps_min_hosts_on():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)])]
    assert evaluate(hosts, PowerSettings(min_hosts_on=2)) is None


def test_power_off_prefers_fewer_migrations_on_tie():
    hosts = [host("h1", [("a", 100), ("b", 100)]), host("h2", [("c", 200)]), host("h3", [("d", 500)])]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.host == "h2"


def test_power_on_picks_host_that_relieves_most():
    hosts = [
        host("h1", [("a", 500), ("b", 300), ("c", 100)]),
        host("h2", on=False, capacity=100.0, idle_watts=80.0),
        host("h3", on=False, capacity=1000.0, idle_watts=95.0),
    ]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.action == "power_on"
    # h2 is too small to take any VM within its target, so only h3 relieves h1.
    assert recommendation.host == "h3"
    assert recommendation.scores == {"h2": 0, "h3": 1}
    assert recommendation.moves == (Move("c", "h1", "h3"),)


def test_power_on_tie_goes_to_cheaper_host():
    hosts = [
        host("h1", [("a", 700), ("b", 200)]),
        host("h2", on=False, idle_watts=95.0),
        host("h3", on=False, idle_watts=86.0),
    ]
    assert evaluate(hosts, PowerSettings()).host == "h3"


def test_no_change_inside_band():
    hosts = [host("h1", [("a", 600)]), host("h2", [("b", 500)])]
    assert evaluate(hosts, PowerSettings()) is None


def test_unavailable_host_receives_nothing():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)], available=False), host("h3", [("c", 100)])]
    recommendation = evaluate(hosts, PowerSettings())
    assert all(move.destination != "h2" for move in recommendation.moves)
    assert recommendation.host != "h2"


@pytest.mark.parametrize("kwargs", [{"target_utilization": 0}, {"tolerance": 0.7}, {"min_hosts_on": 0}])
def test_settings_reject_invalid_values(kwargs):
    with pytest.raises(ValueError):
        PowerSettings(**kwargs)


def test_threshold_drops_power_off_above_it():
    # Evacuating h2 leaves the cluster at 50%, at or below the target: priority 3.
    light = [host("h1", [("a", 300)]), host("h2", [("b", 200)])]
    recommendation = evaluate(light, PowerSettings(threshold=3))
    assert recommendation.priority == 3
    assert evaluate(light, PowerSettings(threshold=2)) is None


def test_power_off_priority_four_needs_threshold_four():
    hosts = [host("h1", [("a", 400)]), host("h2", [("b", 300)])]
    # Evacuating h2 leaves 700 of 1000 MIPS on: 70%, between target and target + tolerance/2.
    assert evaluate(hosts, PowerSettings(threshold=3)) is None
    recommendation = evaluate(hosts, PowerSettings(threshold=4))
    assert recommendation.action == "power_off"
    assert recommendation.priority == 4


def test_automation_off_makes_no_recommendation():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)])]
    assert evaluate(hosts, PowerSettings(automation="Off")) is None


def test_manual_recommends_without_carrying_out():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)])]
    recommendation = evaluate(hosts, PowerSettings(automation="Manual"))
    assert recommendation.action == "power_off"
    assert not carried_out(recommendation, PowerSettings(automation="Manual"))
    assert carried_out(recommendation, PowerSettings(automation="Automatic"))


def test_power_off_skipped_when_cost_exceeds_saving():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)])]
    # 90 W saved for 60 s is 5.4 kJ; booting again at 90 W for 120 s costs 10.8 kJ.
    assert evaluate(hosts, PowerSettings(expected_off_s=60.0)) is None
    assert evaluate(hosts, PowerSettings(expected_off_s=600.0)).action == "power_off"


def test_power_off_what_if_reports_saving_and_cost():
    hosts = [host("h1", [("a", 100)]), host("h2", [("b", 100)])]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.what_if["saving_watts"] == 90.0
    assert recommendation.what_if["under_before"] == 2
    assert recommendation.what_if["under_after"] == 1
    assert recommendation.what_if["migration_and_boot_joules"] > 90.0 * 120


def test_hot_host_relieved_by_moves_before_power_on():
    hosts = [host("h1", [("a", 500), ("b", 400)]), host("h2", [("c", 100)]), host("h3", on=False)]
    recommendation = evaluate(hosts, PowerSettings())
    # b alone brings h1 back into the band, and h2 takes it within the 63% target.
    assert recommendation.action == "migrate"
    assert recommendation.moves == (Move("b", "h1", "h2"),)
    assert recommendation.what_if["hot_after"] == 0


def test_overloaded_host_power_on_is_priority_one():
    hosts = [host("h1", [("a", 700), ("b", 400)]), host("h2", on=False)]
    recommendation = evaluate(hosts, PowerSettings(threshold=1))
    assert recommendation.action == "power_on"
    assert recommendation.priority == 1
    assert recommendation.what_if["hot_after"] == 0


def test_power_on_when_below_minimum_hosts():
    hosts = [host("h1", on=False, idle_watts=95.0), host("h2", on=False, idle_watts=86.0)]
    recommendation = evaluate(hosts, PowerSettings(min_hosts_on=1))
    assert recommendation.action == "power_on"
    assert recommendation.host == "h2"


def test_power_on_scores_every_standby_host():
    hosts = [host("h1", [("a", 700), ("b", 200)])] + [host(f"s{i}", on=False) for i in range(5)]
    recommendation = evaluate(hosts, PowerSettings())
    assert recommendation.scores == {f"s{i}": 1 for i in range(5)}
    assert recommendation.host == "s0"
