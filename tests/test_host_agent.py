"""The host agent as a real process on a real broker."""

import asyncio
import subprocess

import msgpack
import nats
import pytest
from nats.js.api import DeliverPolicy

import proto
from agents._up import UpOptions, build_config, prepare_state
from agents.host._secure_boot import host_boot_paths
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


@pytest.fixture
async def bus(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        # close(), not drain(): the test publishes nothing that could still be buffered,
        # and draining an ordered JetStream consumer waits for its 30 s drain timeout.
        await nc.close()


def start_host(config, host_id="h1"):
    return subprocess.Popen(
        dcfleet_command("agent", "host", "--id", host_id, "--state-dir", config.state_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stop(process):
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("host agent did not stop on SIGTERM within 15 s")


async def events_from_start(nc):
    js = nc.jetstream()
    for _ in range(100):
        try:
            await js.stream_info(subjects.EVENTS_STREAM)
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.1)
    return await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)


async def request(nc, host_id, operation, message, timeout_s=5.0):
    envelope = proto.Envelope(type=message.TYPE, source="test", data=message.to_data())
    reply = await nc.request(subjects.host_command(host_id, operation), proto.encode(envelope), timeout=timeout_s)
    return proto.parse(proto.decode(reply.data), proto.Reply)


async def test_host_boots_signed_bank(cluster_state, bus):
    process = start_host(cluster_state)
    try:
        events = await events_from_start(bus)
        booted = await next_event(events, "host.booted", host="h1")
        assert booted.data["components"][:4] == ["loader.img", "kernel.img", "verifier.img", "boot.cfg"]
        assert "modules/vmx.img" in booted.data["components"]
        status = await request(bus, "h1", "status", proto.HostStatusRequest())
        assert status.ok and status.result["booted"] is True
    finally:
        stop(process)
    assert process.returncode == 0


async def test_host_with_tampered_kernel_names_file(cluster_state, bus):
    kernel = host_boot_paths(cluster_state.state_dir, "h1").bank / "kernel.img"
    data = bytearray(kernel.read_bytes())
    data[-1] ^= 0xFF
    kernel.write_bytes(bytes(data))
    process = start_host(cluster_state)
    try:
        events = await events_from_start(bus)
        failed = await next_event(events, "host.boot_failed", host="h1")
        assert failed.data["file"] == "kernel.img"
        assert failed.data["check"] == "signature"
        # The host stays up to report, out of service.
        status = await request(bus, "h1", "status", proto.HostStatusRequest())
        assert status.result["booted"] is False
        create = await request(bus, "h1", "vm_create", proto.VmCreate("vm1", [10], 500.0, 4096, 1))
        assert not create.ok
        assert "not booted" in create.error
    finally:
        stop(process)


async def test_host_rejects_malformed_commands_and_keeps_running(cluster_state, bus):
    process = start_host(cluster_state)
    try:
        events = await events_from_start(bus)
        await next_event(events, "host.booted", host="h1")
        garbage = await bus.request(subjects.host_command("h1", "status"), b"\x93\x01", timeout=5)
        assert proto.parse(proto.decode(garbage.data), proto.Reply).ok is False
        wrong_version = msgpack.packb({"v": 9, "type": "host.status", "id": "x", "time": 0, "source": "t", "data": {}})
        reply = await bus.request(subjects.host_command("h1", "status"), wrong_version, timeout=5)
        assert "unknown-version" in proto.parse(proto.decode(reply.data), proto.Reply).error
        rejected = await next_event(events, "agent.message_rejected", agent="host.h1")
        assert rejected.data["reason"] == "malformed"
        # A command type must match the subject's operation: power sent on .status is rejected.
        misrouted = await request(bus, "h1", "status", proto.HostPower("ForceOff"))
        assert "is not served on" in misrouted.error
        bad_vm = await request(bus, "h1", "vm_create", proto.VmCreate("vm 1", [10], 500.0, 4096, 1))
        assert "invalid VM id" in bad_vm.error
        bad_power = await request(bus, "h1", "power", proto.HostPower("Explode"))
        assert "invalid reset type" in bad_power.error
        status = await request(bus, "h1", "status", proto.HostStatusRequest())
        assert status.ok and status.result["booted"] is True
    finally:
        stop(process)
    assert process.returncode == 0


async def test_host_power_cycle_reboots(cluster_state, bus):
    process = start_host(cluster_state)
    try:
        events = await events_from_start(bus)
        await next_event(events, "host.booted", host="h1")
        created = await request(bus, "h1", "vm_create", proto.VmCreate("vm1", [10, 20], 500.0, 8192, 7))
        assert created.ok
        refused = await request(bus, "h1", "power", proto.HostPower("GracefulShutdown"))
        assert "runs 1 VMs" in refused.error
        off = await request(bus, "h1", "power", proto.HostPower("ForceOff", via="test"))
        assert off.result["power_state"] == "Off"
        lost = await next_event(events, "vm.lost", vm="vm1")
        assert lost.data["host"] == "h1"
        await next_event(events, "host.power_off", host="h1")
        on = await request(bus, "h1", "power", proto.HostPower("On", via="test"))
        assert on.result["power_state"] == "On"
        rebooted = await next_event(events, "host.booted", host="h1")
        assert rebooted.data["boot_count"] == 2
    finally:
        stop(process)
