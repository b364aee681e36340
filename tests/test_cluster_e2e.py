"""`dcfleet up` end to end: real broker, real agent processes, real Redfish."""

import json
import signal
import subprocess
import time
from collections import defaultdict

from _support import dcfleet_command, processes_mentioning


def read_events(state_dir):
    result = subprocess.run(
        dcfleet_command("events", "--state-dir", str(state_dir), "--json"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_cluster_runs_consolidates_and_stops_clean(tmp_path):
    state = tmp_path / "state"
    result = subprocess.run(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "3", "--time-scale", "600",
                        "--duration", "30", "--power-interval", "2"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "cluster stopped" in result.stdout
    assert processes_mentioning(str(state)) == []

    events = read_events(state)
    by_type = defaultdict(list)
    for event in events:
        assert {"type", "time", "source", "data"} <= event.keys()
        by_type[event["type"]].append(event["data"])

    assert sorted(e["host"] for e in by_type["host.booted"])[:3] == ["h1", "h2", "h3"]
    config = json.loads((state / "cluster.json").read_text())
    assert sorted(e["vm"] for e in by_type["vm.placed"]) == sorted(vm["id"] for vm in config["vms"])
    assert len(config["vms"]) == 12

    completed = by_type["migration.completed"]
    assert completed, "no migration completed"
    for migration in completed:
        assert migration["source_digest"] == migration["destination_digest"]
        assert migration["differing_pages"] == []
        assert migration["stats"]["status"] == "completed"
        ram = migration["stats"]["ram"]
        # Zero pages travel as records without data, so bytes sent can be below the VM size.
        assert ram["normal"] + ram["duplicate"] + ram["poisoned-pages"] >= ram["total"] // 4096
    assert by_type["migration.failed"] == []

    assert by_type["power.recommendation"]
    powered_off = by_type["host.power_off"]
    assert powered_off and all(e["via"] == "redfish" for e in powered_off)
    assert by_type["vm.lost"] == []
    assert len(by_type["agent.started"]) == len(by_type["agent.stopped"]) == 7


def test_cluster_stops_on_ctrl_c(tmp_path):
    state = tmp_path / "state"
    process = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "2", "--vms", "4"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [e for e in _events_or_empty(state) if e["type"] == "agent.started"]
            if len(started) == 6:
                break
            time.sleep(1)
        else:
            raise AssertionError("the cluster did not start its 6 agents within 60 s")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "SIGINT received" in stderr
    assert processes_mentioning(str(state)) == []
    stopped = [e for e in read_events(state) if e["type"] == "agent.stopped"]
    assert len(stopped) == 6


def _events_or_empty(state):
    if not (state / "cluster.json").exists():
        return []
    result = subprocess.run(
        dcfleet_command("events", "--state-dir", str(state), "--json"),
        capture_output=True, text=True, timeout=30,
    )
    return [json.loads(line) for line in result.stdout.splitlines()] if result.returncode == 0 else []


def test_second_up_on_same_state_dir_rejected(tmp_path):
    state = tmp_path / "state"
    first = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "1", "--vms", "1", "--duration", "20"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (state / "cluster.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = subprocess.run(
            dcfleet_command("up", "--state-dir", str(state), "--hosts", "1"),
            capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 2
        assert "already runs" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    assert processes_mentioning(str(state)) == []


def test_second_run_starts_hosts_empty(tmp_path):
    state = tmp_path / "state"
    command = dcfleet_command("up", "--state-dir", str(state), "--hosts", "2", "--vms", "3", "--duration", "8")
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    events = read_events(state)
    # The second run's history places every VM again: no host kept VMs from the first run.
    assert len([e for e in events if e["type"] == "vm.placed"]) == 3
    check = subprocess.run(dcfleet_command("check", "--state-dir", str(state)), capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_up_rejects_vm_larger_than_host(tmp_path):
    result = subprocess.run(
        dcfleet_command("up", "--state-dir", str(tmp_path / "state"), "--hosts", "2", "--vms", "1",
                        "--host-memory", "16M", "--vm-memory", "32M", "--duration", "5"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no VM fits on a host" in result.stderr
    assert not (tmp_path / "state" / "cluster.json").exists()
