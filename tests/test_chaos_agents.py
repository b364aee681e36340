"""Agents under faults: a silent broker cut is noticed, and a killed host agent keeps its VMs."""

import asyncio
import json
import os
import signal
import subprocess

import nats
import pytest

import proto
from agents._up import UpOptions, build_config, prepare_state
from proto import subjects

from _support import dcfleet_command, next_event


@pytest.fixture
def cluster_state(tmp_path, nats_server):
    options = UpOptions(state_dir=tmp_path / "state", hosts=1, vms=0, nats_url=nats_server.url)
    options.state_dir.mkdir()
    config = build_config(options)
    config.nats_url = nats_server.url
    prepare_state(config)
    config.running = True
    config.save()
    return config


def start_host(config, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            dcfleet_command("agent", "host", "--id", "h1", "--state-dir", config.state_dir),
            stdout=log, stderr=log,
        )


async def request(nc, operation, message, timeout_s=5.0):
    envelope = proto.Envelope(type=message.TYPE, source="test", data=message.to_data())
    reply = await nc.request(subjects.host_command("h1", operation), proto.encode(envelope), timeout=timeout_s)
    return proto.parse(proto.decode(reply.data), proto.Reply)


async def wait_booted(nc, timeout_s=40.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            reply = await request(nc, "status", proto.HostStatusRequest(), 2.0)
            if reply.ok and reply.result["booted"]:
                return reply.result
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"host h1 did not boot within {timeout_s} s")


def log_events(log_path):
    """Event names logged by the agent (JSON lines, or key-value lines on some setups)."""
    events = []
    for line in log_path.read_text().splitlines():
        try:
            events.append(json.loads(line).get("event"))
        except json.JSONDecodeError:
            parts = line.split("]", 1)
            if len(parts) == 2 and parts[1].split():
                events.append(parts[1].split()[0])
    return events


async def test_agent_notices_silent_broker_cut(cluster_state, nats_server, tmp_path):
    log_path = tmp_path / "host.log"
    process = start_host(cluster_state, log_path)
    nc = await nats.connect(nats_server.url)
    try:
        await wait_booted(nc)
        # A stopped broker keeps its sockets open but replies to no PING, which is a silent cut.
        os.kill(nats_server.process.pid, signal.SIGSTOP)
        try:
            # nats-py's default ping settings (120 s x 2) would take about 4 minutes here.
            for _ in range(100):
                if "bus.disconnected" in log_events(log_path):
                    break
                await asyncio.sleep(0.2)
        finally:
            os.kill(nats_server.process.pid, signal.SIGCONT)
        assert "bus.disconnected" in log_events(log_path)
        for _ in range(100):
            if "bus.reconnected" in log_events(log_path):
                break
            await asyncio.sleep(0.2)
        assert "bus.reconnected" in log_events(log_path)
    finally:
        await nc.close()
        process.terminate()
        assert process.wait(30) == 0
    assert "agent.stopped" in log_events(log_path)


async def test_killed_host_agent_keeps_its_vms(cluster_state, nats_server, tmp_path):
    log_path = tmp_path / "host.log"
    process = start_host(cluster_state, log_path)
    nc = await nats.connect(nats_server.url)
    try:
        await wait_booted(nc)
        created = await request(nc, "vm_create", proto.VmCreate("vm1", [10, 20], 500.0, 8192, 7), 10.0)
        assert created.ok, created.error
        process.kill()
        process.wait(10)
        process = start_host(cluster_state, log_path)
        status = await wait_booted(nc)
        assert status["vms"] == {"vm1": 8192}
        assert "host.restored" in log_events(log_path)
    finally:
        await nc.close()
        process.terminate()
        process.wait(30)


async def test_killed_host_agent_stays_powered_off(cluster_state, nats_server, tmp_path):
    log_path = tmp_path / "host.log"
    process = start_host(cluster_state, log_path)
    nc = await nats.connect(nats_server.url)
    try:
        await wait_booted(nc)
        off = await request(nc, "power", proto.HostPower("ForceOff", "test"))
        assert off.ok, off.error
        process.kill()
        process.wait(10)
        process = start_host(cluster_state, log_path)
        for _ in range(100):
            try:
                status = await request(nc, "status", proto.HostStatusRequest(), 2.0)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.3)
        assert status.result["power_state"] == "Off"
        assert status.result["booted"] is False
    finally:
        await nc.close()
        process.terminate()
        process.wait(30)
