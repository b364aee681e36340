"""`dcfleet up --netns` with real namespaces: agents apart, a real cut and its recovery, nothing left behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from agents import _netns
from agents._config import ClusterConfig, ConfigError
from agents._netns_plan import plan_netns, state_dir_tag
from agents._up import UpOptions, build_config
from agents.chaos import Cluster, FaultTargetError

from _support import dcfleet_command, needs_netns, processes_mentioning


CUT_S = 6.0
# Longer than the 8 s an earlier installer kept asking the BMC for its DPUs.
DPU_CUT_S = 14.0
# nats-py pings every second and drops the connection after 3 unanswered pings.
NOTICE_LIMIT_S = 8.0
RECONNECT_LIMIT_S = 5.0


def start_up(state: Path, subnet: str, *extra: str) -> subprocess.Popen:
    state.mkdir(parents=True, exist_ok=True)
    with open(state.parent / f"{state.name}-up.out", "ab") as out:
        return subprocess.Popen(
            dcfleet_command("up", "--netns", "--netns-subnet", subnet, "--hosts", "2", "--vms", "2",
                            "--power-automation", "Off", "--state-dir", str(state), *extra),
            stdout=out, stderr=out, start_new_session=True,
        )


def log_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def log_time(record: dict) -> float:
    return dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def wait_ready(state: Path, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Wait until both hosts booted and every agent process started."""
    deadline = time.monotonic() + timeout_s
    logs = state / "logs"
    while time.monotonic() < deadline:
        assert process.poll() is None, (state.parent / f"{state.name}-up.out").read_text()[-3000:]
        booted = all((logs / f"host-{h}.log").exists()
                     and any(r.get("event") == "host.booted" for r in log_records(logs / f"host-{h}.log"))
                     for h in ("h1", "h2"))
        started = all((logs / f"{a}.log").exists()
                      and any(r.get("event") == "agent.started" for r in log_records(logs / f"{a}.log"))
                      for a in ("bmc", "dpu", "migration", "power"))
        if booted and started:
            return
        time.sleep(0.3)
    raise AssertionError(f"the cluster in {state} was not ready within {timeout_s} s")


def stop_up(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def leftovers(state: Path) -> tuple[list[str], list[str]]:
    """Namespaces and root links that carry the state dir's tag."""
    tag = state_dir_tag(state)
    return ([n for n in _netns.namespaces() if tag in n], [link for link in _netns.links() if tag in link])


def read_events(state: Path) -> list[dict]:
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state), "--json"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    """Boot a 2-host cluster in namespaces, cut host-h1 for CUT_S seconds, stop it; keep what was seen."""
    state = tmp_path_factory.mktemp("netns") / "state"
    process = start_up(state, "10.213.11.0/24")
    seen: dict = {"state": state}
    try:
        wait_ready(state, process)
        seen["plan"] = _netns.read_record(state)
        seen["pids"] = {n: _netns.pids_in(a.namespace) for n, a in seen["plan"].agents.items()}
        seen["metrics"] = fetch((state / "metrics" / "host:h1.url").read_text().strip())
        seen["redfish"] = fetch_redfish(state)
        seen["cut_broker"] = subprocess.run(dcfleet_command("inject", "cut", "broker", "--state-dir", str(state)),
                                            capture_output=True, text=True, timeout=60)
        seen["cut"] = subprocess.run(
            dcfleet_command("inject", "cut", "host-h1", "--for", f"{CUT_S:g}", "--state-dir", str(state)),
            capture_output=True, text=True, timeout=60)
        seen["provision_after_cut"] = timed_run(dcfleet_command("provision-dpu", "--host", "h1",
                                                                "--state-dir", str(state)))
        seen["provision_during_dpu_cut"] = provision_during_cut(state, "h2", "dpu", DPU_CUT_S)
        seen["interrupted"] = interrupt_faults(state, seen["plan"])
        time.sleep(2)
    finally:
        seen["exit_status"] = stop_up(process)
    seen["leftovers"] = leftovers(state)
    seen["processes"] = processes_mentioning(str(state))
    seen["check"] = subprocess.run(dcfleet_command("check", "--state-dir", str(state)),
                                   capture_output=True, text=True, timeout=120)
    seen["events"] = read_events(state)
    # Remove what a failed run may have left, after it was recorded for the tests.
    _netns.delete(state)
    return seen


def timed_run(command: list[str], timeout_s: float = 180.0) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    return result, time.monotonic() - started


def provision_during_cut(state: Path, host: str, target: str, cut_s: float) -> tuple[subprocess.CompletedProcess, float]:
    """Provision a host's DPU while `target` is cut off for cut_s seconds."""
    cut = subprocess.Popen(dcfleet_command("inject", "cut", target, "--for", f"{cut_s:g}", "--state-dir", str(state)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        return timed_run(dcfleet_command("provision-dpu", "--host", host, "--state-dir", str(state)))
    finally:
        cut.communicate(timeout=cut_s + 60)


def interrupt_faults(state: Path, plan) -> dict:
    """Start long faults and interrupt each: a cut by SIGTERM, a pause by SIGTERM, a BMC hang by SIGINT,
    and a cut through the Python API by cancelling it. Record what each left behind."""
    seen: dict = {}
    commands = {
        "cut": (["cut", "host-h2"], signal.SIGTERM),
        "pause": (["pause", "power"], signal.SIGTERM),
        "bmc": (["bmc", "h1", "hang"], signal.SIGINT),
    }
    for name, (words, signum) in commands.items():
        process = subprocess.Popen(dcfleet_command("inject", *words, "--for", "30", "--state-dir", str(state)),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
        seen[name] = (process.returncode, stdout, stderr)
    seen["link_h2_up"] = _netns.link_is_up(plan.agents["host-h2"].link)
    power_pid = _netns.pids_in(plan.agents["power"].namespace)[0]
    seen["power_state"] = Path(f"/proc/{power_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    seen["redfish_after_hang"] = fetch_redfish(state)
    seen["api_cut"] = asyncio.run(cancel_cut(state, "migration"))
    seen["link_migration_up"] = _netns.link_is_up(plan.agents["migration"].link)
    return seen


async def cancel_cut(state: Path, target: str) -> str:
    """Cancel Cluster.cut() part way; return what the cancelled call raised."""
    cluster = await Cluster.attach(state)
    try:
        task = asyncio.ensure_future(cluster.cut(target, 30.0))
        await asyncio.sleep(2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"
    finally:
        await cluster.close()


def fetch(url: str, context: ssl.SSLContext | None = None, headers: dict | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return response.read().decode()


def fetch_redfish(state: Path) -> dict:
    """GET the service root of h1's BMC from the root namespace, verifying HTTPS against the cluster CA."""
    config = ClusterConfig.load(state)
    context = ssl.create_default_context(cafile=str(state / "secrets" / "tls" / "ca.pem"))
    url = f"https://{config.bmc_address()}:{config.host('h1').bmc_port}/redfish/v1/"
    return json.loads(fetch(url, context))


@needs_netns
def test_netns_agents_run_in_own_namespaces(cut_run):
    plan = cut_run["plan"]
    assert sorted(plan.agents) == ["bmc", "dpu", "host-h1", "host-h2", "migration", "power"]
    config = ClusterConfig.load(cut_run["state"])
    assert config.nats_url.startswith(f"nats://{plan.bridge_address}:")
    for name, pids in cut_run["pids"].items():
        assert len(pids) == 1, (name, pids)
    started = [e for e in cut_run["events"] if e["type"] == "agent.started"]
    assert {e["data"]["pid"] for e in started} >= {p for pids in cut_run["pids"].values() for p in pids}


@needs_netns
def test_netns_root_reaches_metrics_and_redfish(cut_run):
    assert 'dcfleet_messages_out_total{agent="host.h1"' in cut_run["metrics"]
    assert cut_run["redfish"]["@odata.id"] == "/redfish/v1/"


@needs_netns
def test_cut_broker_rejected(cut_run):
    result = cut_run["cut_broker"]
    assert result.returncode == 2
    assert "the broker runs in the root namespace" in result.stderr


@needs_netns
def test_cut_recorded_as_fault_events(cut_run):
    assert cut_run["cut"].returncode == 0, cut_run["cut"].stderr
    faults = fault_events(cut_run, "host-h1")
    assert [e["type"] for e in faults] == ["fault.injected", "fault.cleared"]
    assert faults[0]["data"]["fault"] == "cut"
    assert faults[0]["data"]["target"] == "host-h1"
    assert faults[0]["data"]["params"]["link"] == cut_run["plan"].agents["host-h1"].link
    assert faults[1]["time"] - faults[0]["time"] >= CUT_S


def fault_events(cut_run, target: str) -> list[dict]:
    return [e for e in cut_run["events"] if e["type"].startswith("fault.") and e["data"]["target"] == target]


def cut_times(cut_run) -> tuple[float, float]:
    faults = fault_events(cut_run, "host-h1")
    return faults[0]["time"], faults[1]["time"]


@needs_netns
def test_cut_noticed_within_seconds(cut_run):
    cut_at, _restored_at = cut_times(cut_run)
    records = log_records(cut_run["state"] / "logs" / "host-h1.log")
    noticed = [log_time(r) for r in records if r.get("event") == "bus.disconnected" and log_time(r) > cut_at]
    assert noticed, "host-h1 never logged bus.disconnected after the cut"
    assert noticed[0] - cut_at <= NOTICE_LIMIT_S


@needs_netns
def test_cut_agent_reconnects_and_publishes(cut_run):
    _cut_at, restored_at = cut_times(cut_run)
    records = log_records(cut_run["state"] / "logs" / "host-h1.log")
    reconnected = [log_time(r) for r in records if r.get("event") == "bus.reconnected" and log_time(r) > restored_at]
    assert reconnected, "host-h1 never logged bus.reconnected after the link came up"
    assert reconnected[0] - restored_at <= RECONNECT_LIMIT_S
    heartbeats = [e for e in cut_run["events"]
                  if e["type"] == "host.heartbeat" and e["data"]["host"] == "h1" and e["time"] > reconnected[0]]
    assert len(heartbeats) >= 2


@needs_netns
def test_other_agents_unaffected_by_cut(cut_run):
    cut_at, restored_at = cut_times(cut_run)
    records = log_records(cut_run["state"] / "logs" / "host-h2.log")
    assert not [r for r in records if r.get("event") == "bus.disconnected" and cut_at <= log_time(r) <= restored_at]


@needs_netns
def test_provision_right_after_cut_succeeds(cut_run):
    result, elapsed_s = cut_run["provision_after_cut"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "provisioned; FirmwareInventory reports version" in result.stdout
    # An earlier CLI waited out a 30 s request timeout when its request was lost in the cut.
    assert elapsed_s < 25, elapsed_s


@needs_netns
def test_provision_survives_long_dpu_cut(cut_run):
    result, _elapsed_s = cut_run["provision_during_dpu_cut"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "provisioned; FirmwareInventory reports version" in result.stdout


@pytest.mark.parametrize("target, name, fault", [
    ("host-h2", "cut", "cut"),
    ("power", "pause", "pause"),
    ("bmc:h1", "bmc", "bmc-hang"),
])
@needs_netns
def test_interrupted_fault_cleared(cut_run, target, name, fault):
    returncode, stdout, stderr = cut_run["interrupted"][name]
    assert returncode in (130, 143), stdout + stderr
    assert "interrupted" in stderr
    faults = fault_events(cut_run, target)
    assert [e["type"] for e in faults] == ["fault.injected", "fault.cleared"]
    assert faults[1]["data"]["fault"] == fault
    assert faults[1]["data"]["fault_id"] == faults[0]["data"]["fault_id"]
    assert "interrupted" in faults[1]["data"]["outcome"]


@needs_netns
def test_interrupted_faults_undone(cut_run):
    seen = cut_run["interrupted"]
    assert seen["link_h2_up"]
    assert seen["power_state"] != "T"
    assert seen["redfish_after_hang"]["@odata.id"] == "/redfish/v1/"


@needs_netns
def test_cancelled_api_cut_cleared(cut_run):
    seen = cut_run["interrupted"]
    assert seen["api_cut"] == "cancelled"
    assert seen["link_migration_up"]
    faults = fault_events(cut_run, "migration")
    assert [e["type"] for e in faults] == ["fault.injected", "fault.cleared"]
    assert "interrupted" in faults[1]["data"]["outcome"]


@needs_netns
def test_netns_stop_leaves_nothing(cut_run):
    assert cut_run["exit_status"] == 0
    assert cut_run["leftovers"] == ([], [])
    assert cut_run["processes"] == []
    assert not _netns.record_path(cut_run["state"]).exists()


@needs_netns
def test_netns_history_passes_checker(cut_run):
    assert cut_run["check"].returncode == 0, cut_run["check"].stdout
    assert "0 violations" in cut_run["check"].stdout


@needs_netns
def test_crashed_supervisor_leftovers_removed_at_next_up(tmp_path):
    state = tmp_path / "state"
    process = start_up(state, "10.213.12.0/24")
    try:
        wait_ready(state, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        # The parent-death signal reaches the agents through `ip netns exec`. An agent gives tasks left
        # after its stop 2 s to end, so all are gone well within 10 s.
        deadline = time.monotonic() + 10
        while processes_mentioning(str(state)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_mentioning(str(state)) == []
        namespaces, links = leftovers(state)
        assert len(namespaces) == 6
        assert links

        # A plain `up` on the same state dir removes them too.
        again = subprocess.run(
            dcfleet_command("up", "--hosts", "1", "--vms", "0", "--duration", "1", "--state-dir", str(state)),
            capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "dcfleet: 1 host, 0 VMs, time scale" in again.stdout
        assert f"dcfleet: deleted {len(namespaces) + len(links)} network namespaces and links left by an " \
            "earlier run" in again.stderr
        assert not _netns.record_path(state).exists()
        assert leftovers(state) == ([], [])
        assert processes_mentioning(str(state)) == []
    finally:
        if process.poll() is None:
            process.kill()
        _netns.delete(state)


@needs_netns
def test_netns_subnet_in_use_rejected(tmp_path):
    (tmp_path / "a").mkdir()
    first = plan_netns(tmp_path / "a", "10.213.13.0/24", ["bmc"])
    _netns.create(tmp_path / "a", first)
    try:
        result = subprocess.run(
            dcfleet_command("up", "--netns", "--netns-subnet", "10.213.13.0/25", "--hosts", "1", "--vms", "0",
                            "--duration", "1", "--state-dir", str(tmp_path / "b")),
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert f"overlaps routes of this machine (10.213.13.0/24 dev {first.bridge})" in result.stderr
        assert f"ip link delete dev {first.bridge}" in result.stderr
        assert f"for n in {first.agents['bmc'].namespace}; do ip netns delete $n; done" in result.stderr
        assert "cluster stopped" not in result.stdout
        assert "deleted 0" not in result.stdout
        assert leftovers(tmp_path / "b") == ([], [])
        assert not (tmp_path / "b").exists()
    finally:
        _netns.delete(tmp_path / "a")
    assert leftovers(tmp_path / "a") == ([], [])


@needs_netns
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_netns_needs_root():
    # A directory that the unprivileged user 65534 can reach: pytest's temporary root is private to root.
    home = Path(tempfile.mkdtemp(prefix="dcfleet-nobody-"))
    home.chmod(0o777)
    try:
        result = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             *dcfleet_command("up", "--netns", "--state-dir", str(home / "state"))],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(home)})
    finally:
        shutil.rmtree(home)
    assert result.returncode == 2, result.stderr
    assert "--netns creates network namespaces, which needs root" in result.stderr


def test_netns_with_external_broker_rejected(tmp_path):
    result = subprocess.run(
        dcfleet_command("up", "--netns", "--nats", "nats://127.0.0.1:4222", "--state-dir", str(tmp_path / "s")),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--netns starts its own broker on the bridge; it cannot use --nats URL" in result.stderr


def test_cut_needs_netns_cluster(tmp_path):
    config = build_config(UpOptions(state_dir=tmp_path, hosts=1, vms=0))
    with pytest.raises(ConfigError, match="was not started with `dcfleet up --netns`"):
        Cluster(config, client=None).agent_link("host-h1")


def test_cut_unknown_agent_lists_agents(tmp_path):
    config = build_config(UpOptions(state_dir=tmp_path, hosts=1, vms=0))
    plan = plan_netns(tmp_path, "10.213.14.0/24", ["host-h1", "bmc"])
    _netns.record_path(tmp_path).write_text(json.dumps(plan.to_dict()))
    cluster = Cluster(config, client=None)
    assert cluster.agent_link("bmc") == plan.agents["bmc"].link
    with pytest.raises(FaultTargetError, match="known: bmc, host-h1"):
        cluster.agent_link("host-h9")
