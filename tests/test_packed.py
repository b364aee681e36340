"""Packed mode: many host agents per process, each with its own identity and state."""

import json
import signal
import subprocess
import time
import urllib.request
from collections import defaultdict

import pytest

from _support import dcfleet_command, processes_mentioning
from agents._config import ConfigError
from agents._fleet import agent_argv, host_children
from agents._packed import heartbeat_interval_for, host_groups, process_name


def test_host_groups_split_in_order():
    assert host_groups(["h1", "h2", "h3", "h4", "h5"], 2) == [["h1", "h2"], ["h3", "h4"], ["h5"]]


def test_host_groups_reject_zero():
    with pytest.raises(ConfigError):
        host_groups(["h1"], 0)


def test_heartbeat_interval_grows_with_hosts():
    assert heartbeat_interval_for(3) == 1.0
    assert heartbeat_interval_for(1000) == 5.0
    assert heartbeat_interval_for(5000) == 25.0


def test_packed_processes_start_with_host_pack():
    assert agent_argv("host-pack", "h1,h2") == ["host-pack", "--hosts", "h1,h2"]
    assert agent_argv("host", "h1") == ["agent", "host", "--id", "h1"]
    assert process_name(["h1", "h2", "h3"]) == "hosts-h1-h3"


def read_events(state_dir):
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state_dir), "--json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def scrape_until(port_file, text, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        if port_file.exists():
            port = int(port_file.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                body = response.read().decode()
            if text in body:
                return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in metrics within {timeout_s} s; last: {body[-500:]}")


def test_packed_hosts_boot_with_own_identity(tmp_path):
    state = tmp_path / "state"
    up = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "6", "--hosts-per-process", "3",
                        "--vms", "0", "--duration", "25"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = scrape_until(state / "metrics" / "hosts-h4-h6.port", 'dcfleet_host_power_on{host="h6"} 1.0')
        assert 'dcfleet_messages_out_total{agent="host.h4",kind="event"}' in body
        assert 'host="h1"' not in body
        stdout, stderr = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(60)
    assert up.returncode == 0, stderr
    assert processes_mentioning(str(state)) == []

    events = read_events(state)
    booted = sorted(e["data"]["host"] for e in events if e["type"] == "host.booted")
    assert booted == ["h1", "h2", "h3", "h4", "h5", "h6"]
    pids_by_host = {e["source"]: e["data"]["pid"] for e in events
                    if e["type"] == "agent.started" and e["source"].startswith("host.")}
    assert len(pids_by_host) == 6
    hosts_by_pid = defaultdict(set)
    for source, pid in pids_by_host.items():
        hosts_by_pid[pid].add(source)
    assert sorted(map(sorted, hosts_by_pid.values())) == [
        ["host.h1", "host.h2", "host.h3"], ["host.h4", "host.h5", "host.h6"]]
