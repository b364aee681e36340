"""`dcfleet chaos run` of the netns-cuts scenario: network cuts and DPU provisioning, then the checker."""

import json
import subprocess

import pytest

from agents import _netns
from agents._netns_plan import state_dir_tag

from _support import REPO, dcfleet_command, needs_netns, processes_mentioning


@pytest.fixture(scope="module")
def netns_run(tmp_path_factory):
    state = tmp_path_factory.mktemp("chaos-netns") / "state"
    try:
        result = subprocess.run(
            dcfleet_command("chaos", "run", str(REPO / "scenarios" / "netns-cuts.toml"), "--seed", "1",
                            "--state-dir", str(state)),
            capture_output=True, text=True, timeout=300,
        )
        tag = state_dir_tag(state)
        left = ([n for n in _netns.namespaces() if tag in n], [link for link in _netns.links() if tag in link])
        yield state, result, left
    finally:
        _netns.delete(state)


@needs_netns
def test_netns_scenario_passes_checker(netns_run):
    state, result, left = netns_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 violations" in result.stdout
    assert "8 faults injected, 0 could not be injected, 3 actions started, 0 failed to start" in result.stdout
    assert "0 commands unfinished at stop" in result.stdout
    assert left == ([], [])
    assert processes_mentioning(str(state)) == []


@needs_netns
def test_netns_scenario_cuts_recorded(netns_run):
    state, _, _ = netns_run
    events = read_events(state)
    cuts = [e for e in events if e["type"] == "fault.injected" and e["data"]["fault"] == "cut"]
    cleared = [e for e in events if e["type"] == "fault.cleared" and e["data"]["fault"] == "cut"]
    assert len(cuts) == 7
    assert {e["data"]["fault_id"] for e in cuts} == {e["data"]["fault_id"] for e in cleared}
    assert {e["data"]["target"] for e in cuts} == {"host-h1", "bmc", "power", "migration", "dpu"}


@needs_netns
def test_netns_scenario_provisions_end(netns_run):
    state, _, _ = netns_run
    events = read_events(state)
    started = {e["data"]["provision"]: e["data"]["host"] for e in events if e["type"] == "dpu.provision_started"}
    ended = {e["data"]["provision"]: e["data"]["host"] for e in events
             if e["type"] in ("dpu.provisioned", "dpu.provision_failed")}
    assert sorted(started.values()) == ["h1", "h2", "h3"]
    assert ended == started


def read_events(state):
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
