"""`dcfleet up` option checks before the state dir is written, and the exit status of a stop that needed SIGKILL."""

import asyncio
import subprocess
import sys

import pytest

from agents import _up
from agents._config import ConfigError
from agents._fleet import up_option_values
from agents._netns_plan import DEFAULT_SUBNET, bridge_tag, leftover_bridge_hint
from agents._text import plural
from agents._up import EXIT_FORCED_STOP, Child, Supervisor, UpOptions
from agents.cli import build_parser

from _support import dcfleet_command

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


async def start_child(name: str, code: str, tmp_path) -> Child:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert await process.stdout.readline() == b"ready\n"
    return Child(name, "host", process, tmp_path / f"{name}.log")


async def test_stop_kills_agent_ignoring_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(_up, "AGENT_STOP_TIMEOUT_S", 0.5)
    supervisor = Supervisor(UpOptions(state_dir=tmp_path))
    stubborn = await start_child("host-h1", IGNORES_SIGTERM, tmp_path)
    polite = await start_child("host-h2", "print('ready', flush=True); import time; time.sleep(60)", tmp_path)
    await supervisor._stop_children([stubborn, polite])
    assert stubborn.process.returncode == -9
    assert polite.process.returncode == -15
    assert supervisor.forced_stops == ["host-h1"]
    assert supervisor.exit_status() == EXIT_FORCED_STOP != 0


async def test_clean_stop_exit_status_zero(tmp_path):
    supervisor = Supervisor(UpOptions(state_dir=tmp_path))
    polite = await start_child("bmc", "print('ready', flush=True); import time; time.sleep(60)", tmp_path)
    await supervisor._stop_children([polite])
    assert supervisor.forced_stops == []
    assert supervisor.exit_status() == 0


def test_netns_subnet_without_netns_rejected():
    args = build_parser().parse_args(["up", "--netns-subnet", "10.213.5.0/24"])
    with pytest.raises(ConfigError, match="--netns-subnet sets the subnet of --netns; add --netns"):
        up_option_values(args)


def test_netns_subnet_defaults_with_netns():
    assert up_option_values(build_parser().parse_args(["up", "--netns"]))["netns_subnet"] == DEFAULT_SUBNET
    args = build_parser().parse_args(["up", "--netns", "--netns-subnet", "192.168.9.0/24"])
    assert up_option_values(args)["netns_subnet"] == "192.168.9.0/24"


@pytest.mark.parametrize("words", [
    ["--netns-subnet", "10.213.5.0/24"],
    ["--netns", "--netns-subnet", "0.0.0.0/24"],
    ["--hosts", "2", "--power-target", "7"],
])
def test_rejected_up_leaves_no_state_dir(tmp_path, words):
    state = tmp_path / "state"
    result = subprocess.run(dcfleet_command("up", *words, "--state-dir", str(state)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("dcfleet: error: ")
    assert "cluster stopped" not in result.stdout
    assert not state.exists()


def test_bridge_tag_of_dcfleet_bridge():
    assert bridge_tag("dcf442ba8br") == "442ba8"
    assert bridge_tag("dcf442ba8v0") is None
    assert bridge_tag("eth0") is None


def test_leftover_bridge_hint_gives_commands():
    hint = leftover_bridge_hint("dcf442ba8br", ["dcfleet-442ba8-bmc", "dcfleet-442ba8-dpu"], running=False)
    assert "ip link delete dev dcf442ba8br; for n in dcfleet-442ba8-bmc dcfleet-442ba8-dpu; do ip netns delete " \
        "$n; done" in hint


def test_running_bridge_hint_says_stop():
    hint = leftover_bridge_hint("dcf442ba8br", ["dcfleet-442ba8-bmc"], running=True)
    assert "still runs" in hint
    assert "ip link delete" not in hint


@pytest.mark.parametrize("count, text", [(0, "0 hosts"), (1, "1 host"), (2, "2 hosts")])
def test_plural(count, text):
    assert plural(count, "host") == text


def test_plural_irregular():
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"


def test_agent_stop_past_deadline_exits():
    # An agent whose stop hangs (here: a stop that never ends) exits once the deadline passes.
    script = (
        "import asyncio, structlog, agents._agent as a\n"
        "a.STOP_DEADLINE_S = 0.3\n"
        "async def main():\n"
        "    agent = a.Agent.__new__(a.Agent)\n"
        "    agent._stopping, agent._stop_reason, agent.log = asyncio.Event(), '', structlog.get_logger()\n"
        "    agent.request_stop('test')\n"
        "    await asyncio.sleep(30)\n"
        "asyncio.run(main())\n"
    )
    # Without the deadline the script sleeps 30 s, past this timeout.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert "agent.stop_overdue" in result.stdout + result.stderr
