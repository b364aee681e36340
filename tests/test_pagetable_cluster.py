"""Page tables in the running cluster: boot-step events, stage-2 tables and `dcfleet pagetable dump`.

Host agents run as real processes on a real nats-server; the dump command runs as
`python -m agents pagetable dump` against the test's state dir.
"""

import asyncio
import json
import subprocess

import nats
import pytest
from nats.js.api import DeliverPolicy

import proto
from agents._config import ClusterConfig
from agents._up import UpOptions, build_config, prepare_state
from agents.host._host_memory import build_host_layout
from proto import subjects

from _support import dcfleet_command, next_event

MIB = 1 << 20
BOOT_STEPS = ["firmware_tables", "copy_firmware_tables", "reprocess_tables", "install_final_tables"]


@pytest.fixture
def cluster_state(tmp_path, nats_server):
    """A two-host cluster state dir: h1 is aarch64, h2 x86_64."""
    options = UpOptions(state_dir=tmp_path / "state", hosts=2, vms=0, nats_url=nats_server.url,
                        arch="mixed")
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
        # close(), not drain(): draining an ordered JetStream consumer waits for its timeout.
        await nc.close()


class HostProcesses:
    """Host agent processes of one test, started with `start(...)` and stopped with `stop_all()`."""

    def __init__(self, config):
        self.config = config
        self.processes = []

    def __call__(self, *host_ids):
        for host_id in host_ids:
            self.processes.append(subprocess.Popen(
                dcfleet_command("agent", "host", "--id", host_id, "--state-dir", self.config.state_dir),
                stdout=subprocess.DEVNULL, stderr=None,
            ))

    def stop_all(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@pytest.fixture
def start_hosts(cluster_state):
    processes = HostProcesses(cluster_state)
    try:
        yield processes
    finally:
        processes.stop_all()


async def events_from_start(nc):
    js = nc.jetstream()
    for _ in range(400):  # up to 40 s: the first agent creates the stream once it runs
        try:
            await js.stream_info(subjects.EVENTS_STREAM)
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.1)
    return await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)


async def request(nc, host_id, operation, message, timeout_s=10.0):
    envelope = proto.Envelope(type=message.TYPE, source="test", data=message.to_data())
    reply = await nc.request(subjects.host_command(host_id, operation), proto.encode(envelope), timeout=timeout_s)
    return proto.parse(proto.decode(reply.data), proto.Reply)


async def pagetable_dump(config, *args):
    """Run `dcfleet pagetable dump` without blocking the event loop the test's bus runs on."""
    process = await asyncio.create_subprocess_exec(
        *dcfleet_command("pagetable", "dump", "--state-dir", config.state_dir, *args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_boot_publishes_each_table_step(cluster_state, bus, start_hosts):
    start_hosts("h1")
    events = await events_from_start(bus)
    steps = [await next_event(events, "host.pagetable_step", timeout_s=40, host="h1") for _ in BOOT_STEPS]
    await next_event(events, "host.booted", host="h1")

    assert [step.data["step"] for step in steps] == BOOT_STEPS
    assert all(step.data["arch"] == "aarch64" for step in steps)
    firmware, copied, rebuilt, final = (step.data for step in steps)
    assert firmware["writable_executable_range_count"] > 0  # firmware maps its RAM RWX
    assert copied["source_root_address"] == firmware["root_address"]
    assert rebuilt["source_root_address"] == copied["root_address"]
    assert final["source_root_address"] == rebuilt["root_address"]
    assert final["writable_executable_range_count"] == 0
    assert final["region_name"] == "hypervisor-tables"
    status = await request(bus, "h1", "status", proto.HostStatusRequest())
    assert status.result["pagetable_root_address"] == final["root_address"]


@pytest.mark.parametrize("host_id, arch", [("h1", "aarch64"), ("h2", "x86_64")])
async def test_dump_of_booted_host_has_no_writable_executable(cluster_state, bus, start_hosts, host_id, arch):
    start_hosts(host_id)
    events = await events_from_start(bus)
    await next_event(events, "host.booted", timeout_s=40, host=host_id)

    code, out, err = await pagetable_dump(cluster_state, "--host", host_id)
    assert code == 0, err
    assert f"{host_id} hypervisor stage 1 ({arch})" in out
    assert "W^X: no range is both writable and executable" in out
    assert "ro x" in out  # firmware and hypervisor code
    assert "DEVICE/nGnRE" in out

    code, out, err = await pagetable_dump(cluster_state, "--host", host_id, "--json")
    assert code == 0, err
    ranges = json.loads(out)["ranges"]
    assert ranges
    assert [r for r in ranges if r["writable"] and r["executable"]] == []
    assert all(not r["executable"] for r in ranges if r["memory_type"].startswith("DEVICE"))


async def test_vm_stage2_dump_maps_guest_pages(cluster_state, bus, start_hosts):
    start_hosts("h1")
    events = await events_from_start(bus)
    await next_event(events, "host.booted", timeout_s=40, host="h1")
    memory_bytes = 4 * MIB + 8192
    created = await request(bus, "h1", "vm_create", proto.VmCreate("vm1", [10], 500.0, memory_bytes, 3))
    assert created.ok, created.error
    mapped = await next_event(events, "vm.stage2_mapped", vm="vm1")

    code, out, err = await pagetable_dump(cluster_state, "--host", "h1", "--vm", "vm1", "--json")
    assert code == 0, err
    dump = json.loads(out)
    assert (dump["stage"], dump["vm"], dump["table_format"]) == (2, "vm1", "aarch64-stage2")
    ranges = dump["ranges"]
    guest = mapped.data["guest_address"]
    assert ranges[0]["start"] == guest
    assert ranges[-1]["end"] == guest + memory_bytes
    assert all(a["end"] == b["start"] for a, b in zip(ranges, ranges[1:]))
    vm_ram = build_host_layout("aarch64", cluster_state.host("h1").memory_bytes).vm_ram
    for mapped_range in ranges:
        output_end = mapped_range["output_start"] + mapped_range["end"] - mapped_range["start"]
        assert vm_ram.base <= mapped_range["output_start"]
        assert output_end <= vm_ram.end

    code, out, err = await pagetable_dump(cluster_state, "--host", "h1", "--vm", "vm1")
    assert code == 0, err
    assert "h1 VM vm1 stage 2 (guest-physical -> host-physical)" in out
    assert "as guest RAM is by design" in out


async def test_aborted_arrival_frees_stage2_tables(cluster_state, bus, start_hosts):
    start_hosts("h1")
    events = await events_from_start(bus)
    await next_event(events, "host.booted", timeout_s=40, host="h1")
    spec = {"trace": [10], "mips": 500.0, "memory_bytes": 2 * MIB, "seed": 5}
    prepared = await request(bus, "h1", "migrate_prepare", proto.MigratePrepare("m1", "vm7", spec))
    assert prepared.ok, prepared.error
    await next_event(events, "vm.stage2_mapped", vm="vm7", host="h1")
    status = await request(bus, "h1", "status", proto.HostStatusRequest())
    assert status.result["stage2_vms"] == ["vm7"]

    aborted = await request(bus, "h1", "migrate_abort", proto.MigrateAbort("m1"))
    assert aborted.ok, aborted.error
    unmapped = await next_event(events, "vm.stage2_unmapped", vm="vm7")
    assert unmapped.data["reason"] == "migration aborted"
    status = await request(bus, "h1", "status", proto.HostStatusRequest())
    assert status.result["stage2_vms"] == []


async def test_restored_vm_gets_stage2_tables(cluster_state, bus, start_hosts):
    start_hosts("h1")
    events = await events_from_start(bus)
    await next_event(events, "host.booted", timeout_s=40, host="h1")
    created = await request(bus, "h1", "vm_create", proto.VmCreate("vm1", [10], 500.0, 2 * MIB, 3))
    assert created.ok, created.error

    # A new agent process for the same host restores vm1 from its store, then boots.
    start_hosts.stop_all()
    start_hosts("h1")
    await next_event(events, "host.booted", timeout_s=40, host="h1", boot_count=2)
    status = await request(bus, "h1", "status", proto.HostStatusRequest())
    assert list(status.result["vms"]) == ["vm1"]
    assert status.result["stage2_vms"] == ["vm1"]
    code, out, err = await pagetable_dump(cluster_state, "--host", "h1", "--vm", "vm1", "--json")
    assert code == 0, err
    ranges = json.loads(out)["ranges"]
    assert ranges[-1]["end"] - ranges[0]["start"] == 2 * MIB


async def test_dump_rejects_unknown_host_vm_and_off_host(cluster_state, bus, start_hosts):
    start_hosts("h1")
    events = await events_from_start(bus)
    await next_event(events, "host.booted", timeout_s=40, host="h1")

    code, _, err = await pagetable_dump(cluster_state, "--host", "h9")
    assert code == 2
    assert "unknown host 'h9'" in err
    code, _, err = await pagetable_dump(cluster_state, "--host", "h1", "--vm", "vm9")
    assert code == 2
    assert "VM vm9" in err
    assert "does not run here" in err
    code, _, err = await pagetable_dump(cluster_state, "--host", "h1", "--vm", "vm 9")
    assert code == 2
    assert "invalid VM id" in err

    off = await request(bus, "h1", "power", proto.HostPower("ForceOff", via="test"))
    assert off.ok, off.error
    code, _, err = await pagetable_dump(cluster_state, "--host", "h1")
    assert code == 2
    assert "host h1 is powered off" in err


async def test_table_failure_keeps_host_out_of_service(cluster_state, bus, start_hosts):
    config = ClusterConfig.load(cluster_state.path.parent)
    config.host("h1").memory_bytes = 1 << 48  # RAM would end beyond the 48-bit output size
    config.save()
    start_hosts("h1")
    events = await events_from_start(bus)
    failed = await next_event(events, "host.boot_failed", timeout_s=40, host="h1")
    assert failed.data["file"] == "vm-ram"
    assert failed.data["check"] == "page-tables"
    assert "output address limit" in failed.data["reason"]

    status = await request(bus, "h1", "status", proto.HostStatusRequest())
    assert status.result["booted"] is False
    create = await request(bus, "h1", "vm_create", proto.VmCreate("vm1", [10], 500.0, 4096, 1))
    assert "not booted" in create.error
    code, _, err = await pagetable_dump(cluster_state, "--host", "h1")
    assert code == 2
    assert "host h1 is not booted" in err
