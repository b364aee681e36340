"""`dcfleet up --secure`: a whole cluster on NKeys, TLS and HTTPS Redfish."""

import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from _support import dcfleet_command, processes_mentioning
from agents._bus import tls_context


def fetch_service_root(url, context, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def placed_host(state, vm, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json"),
                                capture_output=True, text=True, timeout=60)
        for line in result.stdout.splitlines():
            event = json.loads(line)
            if event["type"] == "vm.placed" and event["data"]["vm"] == vm:
                return event["data"]["host"]
        time.sleep(1)
    raise AssertionError(f"{vm} was not placed within {timeout_s} s")


def test_secure_cluster_runs_without_denials(tmp_path):
    state = tmp_path / "state"
    up = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "2", "--vms", "2", "--secure",
                        "--duration", "30", "--power-interval", "600"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "cluster.json").exists() or not json.loads((state / "cluster.json").read_text())["running"]:
            assert time.monotonic() < deadline, "cluster did not start"
            time.sleep(0.2)
        config = json.loads((state / "cluster.json").read_text())
        port = config["hosts"][0]["bmc_port"]
        root = fetch_service_root(f"https://127.0.0.1:{port}/redfish/v1/", tls_context(state))
        assert root["@odata.id"] == "/redfish/v1/"
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/redfish/v1/", context=ssl.create_default_context(),
                                   timeout=5)
            raise AssertionError("a client without the cluster CA was accepted")
        except urllib.error.URLError as exc:
            assert isinstance(exc.reason, ssl.SSLCertVerificationError)
        # Page batches and their acknowledgements pass the host credentials' permissions.
        source = placed_host(state, "vm0001")
        destination = "h2" if source == "h1" else "h1"
        migrate = subprocess.run(dcfleet_command("migrate", "--state-dir", str(state), "--vm", "vm0001",
                                                 "--to", destination),
                                 capture_output=True, text=True, timeout=90)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        _stdout, stderr = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(60)
    assert up.returncode == 0, stderr
    assert processes_mentioning(str(state)) == []
    assert config["nats_url"].startswith("tls://")

    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(e["data"]["host"] for e in events if e["type"] == "host.booted") == ["h1", "h2"]
    assert [e for e in events if e["type"] == "agent.permission_denied"] == []

    check = subprocess.run(dcfleet_command("check", "--state-dir", str(state)),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 violations" in check.stdout
