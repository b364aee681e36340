"""`dcfleet chaos run` end to end on the smoke scenario, then the checker on its history."""

import json
import subprocess

import pytest

from _support import REPO, dcfleet_command, processes_mentioning


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    state = tmp_path_factory.mktemp("chaos") / "state"
    result = subprocess.run(
        dcfleet_command("chaos", "run", str(REPO / "scenarios" / "smoke.toml"), "--seed", "1",
                        "--state-dir", str(state)),
        capture_output=True, text=True, timeout=300,
    )
    return state, result


def test_smoke_scenario_passes_checker(smoke_run):
    state, result = smoke_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 violations" in result.stdout
    assert "8 faults injected, 0 could not be injected" in result.stdout
    assert processes_mentioning(str(state)) == []


def test_smoke_history_records_faults_and_restarts(smoke_run):
    state, _ = smoke_run
    events = read_events(state)
    types = [e["type"] for e in events]
    assert types.count("fault.injected") == 8
    assert types.count("fault.cleared") == 8
    assert types.count("agent.restarted") >= 3
    assert types.count("broker.restarted") == 1


def test_smoke_provisions_reach_terminal_event(smoke_run):
    state, result = smoke_run
    assert "3 actions started, 0 failed to start" in result.stdout
    events = read_events(state)
    started = {e["data"]["provision"] for e in events if e["type"] == "dpu.provision_started"}
    ended = {e["data"]["provision"] for e in events if e["type"] in ("dpu.provisioned", "dpu.provision_failed")}
    assert len(started) == 3
    assert ended == started


def test_check_of_stopped_cluster_is_clean(smoke_run):
    state, _ = smoke_run
    result = subprocess.run(dcfleet_command("check", "--state-dir", str(state)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "0 violations" in result.stdout


def test_planted_duplicate_vm_reported_with_ids(smoke_run, tmp_path):
    state, _ = smoke_run
    events = read_events(state)
    placed = next(e for e in events if e["type"] == "vm.placed")
    other_host = next(e["data"]["host"] for e in events
                      if e["type"] == "host.booted" and e["data"]["host"] != placed["data"]["host"])
    planted = dict(placed, seq=events[-1]["seq"] + 1, id="planted-duplicate",
                   data=dict(placed["data"], host=other_host))
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(e) for e in events + [planted]) + "\n")

    result = subprocess.run(dcfleet_command("check", "--events", str(history), "--json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    placement = [v for v in report["violations"] if v["invariant"] == "placement"]
    assert placement, report["violations"]
    cited = {(e["id"], e["seq"]) for e in placement[0]["events"]}
    assert ("planted-duplicate", planted["seq"]) in cited


def read_events(state):
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
