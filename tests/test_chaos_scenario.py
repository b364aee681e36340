"""Scenario files: parsing, rejection of bad input, and the seeded fault plan."""

import math
from pathlib import Path

import pytest

from agents.chaos import KINDS, ScenarioError, load_scenario, parse_scenario, plan

REPO = Path(__file__).resolve().parent.parent


def test_shipped_scenarios_load():
    for path in sorted((REPO / "scenarios").glob("*.toml")):
        scenario = load_scenario(path)
        assert plan(scenario, seed=1), path


def test_fifty_faults_has_fifty_on_four_hosts():
    scenario = load_scenario(REPO / "scenarios" / "fifty-faults.toml")
    assert scenario.hosts == 4
    assert len(plan(scenario, seed=1)) >= 50


def test_plan_repeats_for_same_seed():
    scenario = load_scenario(REPO / "scenarios" / "fifty-faults.toml")
    assert plan(scenario, 7) == plan(scenario, 7)
    assert plan(scenario, 7) != plan(scenario, 8)


def test_plan_stays_inside_window():
    scenario = load_scenario(REPO / "scenarios" / "fifty-faults.toml")
    for fault in plan(scenario, 3):
        assert fault.kind in KINDS
        assert scenario.random_start_s <= fault.at_s
        assert fault.at_s + fault.duration_s <= scenario.random_end_s + 0.01


def test_plan_targets_match_kinds():
    scenario = load_scenario(REPO / "scenarios" / "fifty-faults.toml")
    for fault in plan(scenario, 5):
        if fault.kind.startswith("broker"):
            assert fault.target == "broker"
        elif fault.kind.startswith("bmc"):
            assert fault.target in {"h1", "h2", "h3", "h4"}
        else:
            assert fault.target in scenario.agent_names()


def test_fixed_faults_sorted_by_time():
    scenario = parse_scenario({"run": {"duration_s": 30}, "fault": [
        {"at_s": 9, "kind": "kill", "target": "power"},
        {"at_s": 2, "kind": "pause", "target": "host-h1", "duration_s": 1},
    ]})
    assert [(f.at_s, f.kind, f.duration_s) for f in plan(scenario, 1)] == [(2.0, "pause", 1.0), (9.0, "kill", 0.0)]


@pytest.mark.parametrize("raw, key", [
    ({"workload": {"hosts": 0}}, "workload.hosts"),
    ({"workload": {"hosts": "4"}}, "workload.hosts"),
    ({"fault": [{"at_s": 1, "kind": "explode", "target": "power"}]}, "fault[0].kind"),
    ({"fault": [{"at_s": 1, "kind": "kill", "target": "host-h9"}]}, "fault[0].target"),
    ({"fault": [{"at_s": 1, "kind": "bmc-error", "target": "power"}]}, "fault[0].target"),
    ({"run": {"duration_s": 10}, "fault": [{"at_s": 9, "kind": "pause", "target": "power", "duration_s": 5}]},
     "fault[0]"),
    ({"random": {"count": 3, "targets": ["nothing-*"]}}, "random.targets"),
    ({"random": {"count": 3, "pause_s": [3, 1]}}, "random.pause_s"),
    ({"chaos": {}}, "chaos"),
])
def test_invalid_scenario_rejected(raw, key):
    with pytest.raises(ScenarioError) as error:
        parse_scenario(raw, "s.toml")
    assert error.value.key == key


def test_invalid_toml_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[workload\nhosts = 3")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        load_scenario(path)


@pytest.mark.parametrize("raw, key", [
    ({"workload": {"vmz": 50}}, "workload.vmz"),
    ({"run": {"durration_s": 30}}, "run.durration_s"),
    ({"random": {"count": 3, "kind": ["kill"]}}, "random.kind"),
    ({"run": {"duration_s": 30}, "fault": [{"at_s": 1, "kind": "pause", "target": "power", "for_s": 2}]},
     "fault[0].for_s"),
])
def test_scenario_rejects_unknown_key(raw, key):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw)
    assert key in str(info.value)


def test_cut_needs_netns():
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"run": {"duration_s": 30}, "fault": [{"at_s": 1, "kind": "cut", "target": "bmc"}]})
    assert info.value.key == "fault"
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"random": {"count": 2, "kinds": ["cut"]}})
    assert info.value.key == "random.kinds"


def test_random_cuts_use_cut_range():
    scenario = parse_scenario({
        "workload": {"netns": True, "netns_subnet": "10.213.5.0/24"},
        "run": {"duration_s": 40},
        "random": {"count": 20, "kinds": ["cut", "pause"], "targets": ["host-*"], "pause_s": [1, 1.5],
                   "cut_s": [5, 6]},
    })
    faults = plan(scenario, 2)
    cuts = [f for f in faults if f.kind == "cut"]
    pauses = [f for f in faults if f.kind == "pause"]
    assert cuts and pauses
    assert all(5 <= f.duration_s <= 6 for f in cuts)
    assert all(1 <= f.duration_s <= 1.5 for f in pauses)
    assert scenario.netns_subnet == "10.213.5.0/24"


def test_fixed_cut_needs_duration():
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"workload": {"netns": True}, "run": {"duration_s": 30},
                        "fault": [{"at_s": 1, "kind": "cut", "target": "bmc", "duration_s": 0}]})
    assert info.value.key == "fault[0].duration_s"


def test_actions_parsed_in_time_order():
    scenario = parse_scenario({"run": {"duration_s": 30}, "action": [
        {"at_s": 9, "kind": "provision-dpu", "host": "h2"},
        {"at_s": 3, "kind": "provision-dpu", "host": "h1", "image": "bf3-mgmt-os-2.1.0"},
    ]})
    assert [(a.at_s, a.host, a.image) for a in scenario.actions] == [(3.0, "h1", "bf3-mgmt-os-2.1.0"),
                                                                      (9.0, "h2", "")]


@pytest.mark.parametrize("raw, key", [
    ({"action": [{"at_s": 1, "kind": "reboot", "host": "h1"}]}, "action[0].kind"),
    ({"action": [{"at_s": 1, "kind": "provision-dpu", "host": "h9"}]}, "action[0].host"),
    ({"action": [{"at_s": 99, "kind": "provision-dpu", "host": "h1"}]}, "action[0].at_s"),
    ({"action": [{"at_s": 1, "kind": "provision-dpu", "host": "h1", "image": 3}]}, "action[0].image"),
    ({"action": [{"at_s": 1, "kind": "provision-dpu", "hosts": "h1"}]}, "action[0].hosts"),
    ({"action": {"at_s": 1}}, "action"),
    ({"workload": {"netns": "yes"}}, "workload.netns"),
    ({"workload": {"netns_subnet": "10.213.5.0/24"}}, "workload.netns_subnet"),
    ({"workload": {"netns": True, "netns_subnet": "10.213.5.1/24"}}, "workload.netns_subnet"),
    ({"random": {"count": 3, "cut_s": [2, "x"]}}, "random.cut_s"),
])
def test_invalid_action_or_netns_rejected(raw, key):
    with pytest.raises(ScenarioError) as error:
        parse_scenario(raw, "s.toml")
    assert error.value.key == key


NETNS = {"netns": True}


@pytest.mark.parametrize("raw, key", [
    ({"workload": NETNS, "random": {"count": 3, "kinds": ["cut"], "cut_s": [1, math.inf]}}, "random.cut_s"),
    ({"random": {"count": 3, "pause_s": [math.nan, 2]}}, "random.pause_s"),
    ({"random": {"count": 3, "pause_s": [1, 4000]}}, "random.pause_s"),
    ({"fault": [{"at_s": math.nan, "kind": "kill", "target": "power"}]}, "fault[0].at_s"),
    ({"run": {"duration_s": math.inf}}, "run.duration_s"),
    ({"run": {"settle_s": math.nan}}, "run.settle_s"),
    ({"workload": {"time_scale": math.inf}}, "workload.time_scale"),
    ({"workload": {"power_interval_s": math.nan}}, "workload.power_interval_s"),
    ({"random": {"count": 3, "start_s": math.nan}}, "random.start_s"),
    ({"random": {"count": 3, "end_s": math.inf}}, "random.end_s"),
    ({"action": [{"at_s": math.nan, "kind": "provision-dpu", "host": "h1"}]}, "action[0].at_s"),
    ({"workload": NETNS, "run": {"duration_s": 30},
      "fault": [{"at_s": 1, "kind": "cut", "target": "bmc", "duration_s": math.inf}]}, "fault[0].duration_s"),
    ({"run": {"duration_s": 30}, "fault": [{"at_s": 1, "kind": "pause", "target": "power", "duration_s": 0}]},
     "fault[0].duration_s"),
])
def test_non_finite_numbers_rejected(raw, key):
    with pytest.raises(ScenarioError) as error:
        parse_scenario(raw, "s.toml")
    assert error.value.key == key


@pytest.mark.parametrize("key, value", [("targets", "host-*"), ("kinds", "cut")])
def test_string_for_array_rejected(key, value):
    with pytest.raises(ScenarioError) as error:
        parse_scenario({"random": {"count": 3, key: value}}, "s.toml")
    assert error.value.key == f"random.{key}"
    assert str(error.value) == (f's.toml: random.{key}: expected an array of strings, got the string "{value}"; '
                                f'write ["{value}"]')


def test_array_of_non_strings_rejected():
    with pytest.raises(ScenarioError) as error:
        parse_scenario({"random": {"count": 3, "targets": [1, 2]}}, "s.toml")
    assert error.value.key == "random.targets"


def test_zero_time_scale_must_be_positive():
    with pytest.raises(ScenarioError, match="workload.time_scale: must be positive, got 0"):
        parse_scenario({"workload": {"time_scale": 0}}, "s.toml")


@pytest.mark.parametrize("value", ["4Q", "5000", "0M", 3.5, True])
def test_invalid_vm_memory_rejected(value):
    with pytest.raises(ScenarioError) as error:
        parse_scenario({"workload": {"vm_memory": value}}, "s.toml")
    assert error.value.key == "workload.vm_memory"


def test_vm_memory_accepted():
    assert parse_scenario({"workload": {"vm_memory": "16M"}}).vm_memory == "16M"
    assert parse_scenario({"workload": {"vm_memory": 8192}}).vm_memory == "8192"
