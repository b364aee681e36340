"""Live migration with memory errors between real host agent processes and the real coordinator."""

import asyncio
import signal
import subprocess

import nats
import pytest
from nats.js.api import DeliverPolicy

import proto
from agents._up import UpOptions, build_config, prepare_state
from agents.host._memory_faults import inject_memory_error, read_guest_page, vm_page_checksums
from proto import subjects

from _support import dcfleet_command, next_event

MIB = 1 << 20


class BusClient:
    """The `request` interface of agents._client.ClusterClient over a plain connection."""

    def __init__(self, nc):
        self.nc = nc

    async def request(self, subject, message, timeout_s=5.0):
        envelope = proto.Envelope(type=message.TYPE, source="test", data=message.to_data())
        reply = await self.nc.request(subject, proto.encode(envelope), timeout=timeout_s)
        parsed = proto.parse(proto.decode(reply.data), proto.Reply)
        if not parsed.ok:
            raise AssertionError(parsed.error)
        return parsed.result

    async def try_request(self, subject, message, timeout_s=5.0):
        envelope = proto.Envelope(type=message.TYPE, source="test", data=message.to_data())
        reply = await self.nc.request(subject, proto.encode(envelope), timeout=timeout_s)
        return proto.parse(proto.decode(reply.data), proto.Reply)


def start_agent(config, kind, agent_id=None):
    args = ["agent", kind, "--state-dir", config.state_dir] + (["--id", agent_id] if agent_id else [])
    return subprocess.Popen(dcfleet_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def cluster(tmp_path, nats_server):
    options = UpOptions(state_dir=tmp_path / "state", hosts=2, vms=0, nats_url=nats_server.url,
                        host_memory_bytes=512 * MIB)
    options.state_dir.mkdir()
    config = build_config(options)
    config.nats_url = nats_server.url
    prepare_state(config)
    config.running = True
    config.save()
    processes = {name: start_agent(config, "host", name) for name in ("h1", "h2")}
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for _ in range(100):
        try:
            await js.stream_info(subjects.EVENTS_STREAM)
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.1)
    events = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        # The hosts boot in either order, so collect both events before going on.
        booted = set()
        while booted != {"h1", "h2"}:
            booted.add((await next_event(events, "host.booted", timeout_s=60)).data["host"])
        processes["migration"] = start_agent(config, "migration")
        await next_event(events, "agent.started", timeout_s=60, agent="migration")
        yield config, BusClient(nc), events, processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
            stop(process)
        await nc.close()


async def events_until(subscription, event_type, timeout_s=60.0, **match):
    """Return every event read up to and including the first `event_type` whose data matches."""
    seen = []
    while True:
        msg = await subscription.next_msg(timeout=timeout_s)
        envelope = proto.decode(msg.data)
        seen.append(envelope)
        if envelope.type == event_type and all(envelope.data.get(k) == v for k, v in match.items()):
            return seen


async def create_vm(client, host, vm, memory_bytes, trace, dirty_rate=2000.0):
    await client.request(subjects.host_command(host, "vm_create"),
                         proto.VmCreate(vm, trace, 1000.0, memory_bytes, 7, dirty_rate), 30.0)


async def migrate(client, vm, destination, timeout_s=60.0, **options):
    return await client.try_request(subjects.MIGRATION_REQUEST,
                                    proto.MigrationRequest(vm=vm, destination=destination, **options), timeout_s)


async def wait_until_vm_known(client, vm, destination):
    """Retry until the coordinator has seen the VM in a heartbeat."""
    for _ in range(100):
        reply = await client.try_request(subjects.MIGRATION_REQUEST,
                                         proto.MigrationRequest(vm=vm, destination=destination,
                                                                downtime_limit_ms=-1))
        if "no host reports it" not in reply.error:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the coordinator never learned where {vm} runs")


async def test_poisoned_vm_arrives_with_every_other_page_equal(cluster):
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "idle", 16 * MIB, [0])
    known, latent = [3, 100, 2000, 4095], [0, 1234, 3000]
    for page in known:
        await inject_memory_error(client, "h1", vm="idle", guest_page=page)
    for page in latent:
        await inject_memory_error(client, "h1", vm="idle", guest_page=page, latent=True)
    before, _ = await vm_page_checksums(client, "h1", "idle")
    await wait_until_vm_known(client, "idle", "h2")

    reply = await migrate(client, "idle", "h2")

    assert reply.ok, reply.error
    seen = await events_until(events, "migration.completed", vm="idle")
    completed = seen[-1]
    assert sorted(completed.data["poisoned_pages"]) == sorted(known + latent)
    assert completed.data["differing_pages"] == []
    assert completed.data["stats"]["ram"]["poisoned-pages"] == len(known + latent)
    assert completed.data["stats"]["downtime"] < 300
    after, poisoned = await vm_page_checksums(client, "h2", "idle")
    assert sorted(poisoned) == sorted(known + latent)
    differing = [page for page in range(len(before)) if page not in poisoned and before[page] != after[page]]
    assert differing == []
    discovered = [e.data for e in seen if e.type == "host.memory_error" and e.data["origin"] == "discovered"]
    assert sorted(d["guest_page"] for d in discovered) == latent
    assert {d["host"] for d in discovered} == {"h1"}


async def test_large_idle_vm_downtime_under_limit(cluster):
    # Downtime runs from the pause on the source to the resume on the destination. Work
    # that grows with the VM's size (hashing all of its memory) must stay out of it, so a
    # 256 MiB idle VM, whose stop-and-copy pass holds a handful of pages, fits the 300 ms
    # default as a 16 MiB one does.
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "large", 256 * MIB, [0])
    await wait_until_vm_known(client, "large", "h2")

    reply = await migrate(client, "large", "h2", timeout_s=120.0)

    assert reply.ok, reply.error
    assert reply.result["stop_reason"] == "converged"
    completed = (await events_until(events, "migration.completed", vm="large"))[-1]
    assert completed.data["stats"]["downtime"] < 300
    assert completed.data["source_digest"] == completed.data["destination_digest"]
    assert completed.data["poisoned_pages"] == []


async def test_guest_read_of_poisoned_page_after_migration(cluster):
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "reader", 4 * MIB, [0])
    await inject_memory_error(client, "h1", vm="reader", guest_page=42, latent=True)
    await wait_until_vm_known(client, "reader", "h2")
    assert (await migrate(client, "reader", "h2")).ok

    result = await read_guest_page(client, "h2", "reader", 42)

    assert result["machine_check"] is True
    check = await next_event(events, "vm.machine_check", vm="reader", access="read")
    assert check.data == {"vm": "reader", "host": "h2", "guest_page": 42,
                          "host_frame": result["host_frame"], "access": "read"}
    assert (await read_guest_page(client, "h2", "reader", 41))["machine_check"] is False


async def test_non_converging_dirty_rate_ends_by_iteration_cap(cluster):
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "busy", 8 * MIB, [100], dirty_rate=100000.0)
    await wait_until_vm_known(client, "busy", "h2")

    reply = await migrate(client, "busy", "h2", downtime_limit_ms=1, max_iterations=3)

    assert reply.ok, reply.error
    assert reply.result["stop_reason"] == "iteration-cap"
    assert reply.result["ram"]["dirty-sync-count"] == 4


async def test_auto_converge_throttles_a_busy_guest(cluster):
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "hot", 8 * MIB, [100], dirty_rate=100000.0)
    await wait_until_vm_known(client, "hot", "h2")

    reply = await migrate(client, "hot", "h2", downtime_limit_ms=1, max_iterations=8, auto_converge=True)

    assert reply.ok, reply.error
    assert reply.result["cpu-throttle-percentage"] > 0


async def test_killed_destination_leaves_vm_running_on_source(cluster):
    _config, client, events, processes = cluster
    await create_vm(client, "h1", "big", 128 * MIB, [0])
    await wait_until_vm_known(client, "big", "h2")
    request = asyncio.ensure_future(migrate(client, "big", "h2"))
    # The first progress event comes with the first batch of a 128 MiB copy.
    await next_event(events, "migration.progress", vm="big")
    processes["h2"].kill()

    reply = await request

    assert not reply.ok
    failed = await next_event(events, "migration.failed", vm="big")
    assert failed.data["source"] == "h1"
    # The broker reports that nothing reads the data subject any more, or the coordinator misses heartbeats.
    assert "h2 no longer receives page batches" in failed.data["reason"] or "heartbeat" in failed.data["reason"]
    status = await client.request(subjects.host_command("h1", "status"), proto.HostStatusRequest())
    assert "big" in status["vms"]
    memory = await client.request(subjects.host_command("h1", "vm_memory"), proto.VmMemoryRequest("big"), 10.0)
    assert memory["paused"] is False


async def test_killed_source_leaves_one_vm_after_restart(cluster):
    config, client, events, processes = cluster
    await create_vm(client, "h1", "big", 128 * MIB, [0])
    await wait_until_vm_known(client, "big", "h2")
    request = asyncio.ensure_future(migrate(client, "big", "h2"))
    await next_event(events, "migration.progress", vm="big")
    processes["h1"].kill()

    reply = await request
    assert not reply.ok
    failed = await next_event(events, "migration.failed", vm="big")
    assert failed.data["source"] == "h1"
    # The destination dropped its partial copy.
    status = await client.request(subjects.host_command("h2", "status"), proto.HostStatusRequest())
    assert "big" not in status["vms"]

    # The restarted source restores the paused VM from its store and resumes it once
    # the migration is known to have ended.
    processes["h1"].wait()
    processes["h1"] = start_agent(config, "host", "h1")
    resumed = await next_event(events, "vm.resumed", timeout_s=60, vm="big")
    assert resumed.data["host"] == "h1"
    memory = await client.request(subjects.host_command("h1", "vm_memory"), proto.VmMemoryRequest("big"), 10.0)
    assert memory["paused"] is False
    status = await client.request(subjects.host_command("h2", "status"), proto.HostStatusRequest())
    assert "big" not in status["vms"]


async def test_malformed_page_batch_is_rejected(cluster):
    _config, client, events, _processes = cluster
    spec = {"trace": [0], "mips": 500.0, "memory_bytes": 1 * MIB, "seed": 1}
    await client.request(subjects.host_command("h2", "migrate_prepare"), proto.MigratePrepare("m1", "ghost", spec))
    bad = proto.MigratePages("m1", b"DCPR\x01\x00\x00\x00\x00\x05junk", seq=1)

    reply = await client.try_request(subjects.migration_pages("m1"), bad)

    assert not reply.ok
    assert "malformed" in reply.error
    rejected = await next_event(events, "agent.message_rejected", agent="host.h2")
    assert rejected.data["reason"] == "malformed-page-batch"
    commit = await client.try_request(subjects.host_command("h2", "migrate_commit"),
                                      proto.MigrateCommit("m1", "0" * 64))
    assert not commit.ok
    assert "rejected" in commit.error
    status = await client.request(subjects.host_command("h2", "status"), proto.HostStatusRequest())
    assert "ghost" not in status["vms"]


async def test_bad_migration_requests_leave_vm_in_place(cluster):
    _config, client, _events, _processes = cluster
    await create_vm(client, "h1", "stay", 4 * MIB, [0])
    await wait_until_vm_known(client, "stay", "h2")
    cases = [
        (proto.MigrationRequest(vm="nosuch", destination="h2"), "unknown VM"),
        (proto.MigrationRequest(vm="stay", destination="h9"), "unknown destination host"),
        (proto.MigrationRequest(vm="stay", destination="h1"), "already runs on h1"),
    ]
    for request, expected in cases:
        reply = await client.try_request(subjects.MIGRATION_REQUEST, request)
        assert not reply.ok
        assert expected in reply.error
    await create_vm(client, "h2", "filler", 500 * MIB, [0])
    await create_vm(client, "h1", "wide", 64 * MIB, [0])
    await wait_until_vm_known(client, "wide", "h2")
    reply = await client.try_request(subjects.MIGRATION_REQUEST, proto.MigrationRequest(vm="wide", destination="h2"))
    assert not reply.ok
    assert "bytes of memory free" in reply.error
    status = await client.request(subjects.host_command("h1", "status"), proto.HostStatusRequest())
    assert {"stay", "wide"} <= set(status["vms"])


async def test_ctrl_c_leaves_migration_to_coordinator(cluster):
    config, client, events, _processes = cluster
    await create_vm(client, "h1", "busy", 64 * MIB, [100], dirty_rate=20000.0)
    await wait_until_vm_known(client, "busy", "h2")
    command = await asyncio.create_subprocess_exec(
        *dcfleet_command("migrate", "--state-dir", config.state_dir, "--vm", "busy", "--to", "h2",
                         "--downtime-limit", "1", "--max-iterations", "100"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_line = await asyncio.wait_for(command.stderr.readline(), 60)
    assert b"pass" in first_line

    command.send_signal(signal.SIGINT)
    _stdout, stderr = await asyncio.wait_for(command.communicate(), 30)

    assert command.returncode == 130
    text = stderr.decode()
    assert "Traceback" not in text
    assert "unhandled exception" not in text
    started = await next_event(events, "migration.started", vm="busy")
    assert f"finishes or aborts migration {started.data['migration']} of busy on its own" in text
    outcome = await events_until(events, "migration.completed", timeout_s=120, vm="busy")
    assert outcome[-1].data["migration"] == started.data["migration"]


def test_migrate_rejects_bad_timeout(cluster):
    config = cluster[0]
    for value in ("0", "-1", "nan"):
        result = subprocess.run(dcfleet_command("migrate", "--state-dir", config.state_dir, "--vm", "vm0001",
                                                "--to", "h2", "--timeout", value),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert "--timeout must be a positive number of seconds" in result.stderr


async def test_frame_injection_names_its_vm(cluster):
    _config, client, events, _processes = cluster
    await create_vm(client, "h1", "owner", 4 * MIB, [0])
    frame = (await inject_memory_error(client, "h1", vm="owner", guest_page=5))["frame"]

    again = await inject_memory_error(client, "h1", frame=frame, latent=True)

    assert again["vm"] == "owner"
    assert again["guest_page"] == 5
    assert again["state"] == "uncorrectable"
    await next_event(events, "host.memory_error", frame=frame)
    second = await next_event(events, "host.memory_error", frame=frame)
    assert (second.data["vm"], second.data["guest_page"], second.data["latent"]) == ("owner", 5, False)
