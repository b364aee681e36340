"""Bus credentials: the permission matrix, and a real broker enforcing it over TLS."""

import asyncio
import json
import stat

import nats
import pytest

import proto
from agents import _metrics
from agents._agent import Agent
from agents._broker_cluster import BrokerCluster, BrokerOptions
from agents._bus import connect_options, operator_options
from agents._buskeys import (
    BusSecretPaths, agent_permissions, cluster_sources, init_bus_secrets, may_publish, subject_matches,
)
from agents._config import ClusterConfig, ConfigError
from proto import subjects

HOSTS = ["h1", "h2"]


def test_subject_matches_wildcards():
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*.c", "a.b.d")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c")


def test_host_publishes_only_its_own_events():
    h1 = agent_permissions("host.h1")
    assert may_publish(h1, subjects.event_from("host.h1", "host.heartbeat"))
    assert not may_publish(h1, subjects.event_from("host.h2", "host.heartbeat"))
    assert not may_publish(h1, subjects.event_from("power", "power.recommendation"))


def test_host_reads_only_its_own_commands():
    h1 = agent_permissions("host.h1")
    assert subjects.host_commands("h1") in h1.subscribe
    assert not any(subject_matches(p, subjects.host_command("h2", "power")) for p in h1.subscribe)
    assert not any(subject_matches(p, subjects.event_from("host.h2", "host.booted")) for p in h1.subscribe)


def test_power_commands_only_from_bmc_and_power_manager():
    power_command = subjects.host_command("h1", "power")
    allowed = {s for s in cluster_sources(HOSTS) if may_publish(agent_permissions(s), power_command)}
    assert allowed == {"operator", "bmc", "power"}


def test_migration_sends_migration_commands_but_not_power():
    migration = agent_permissions("migration")
    assert may_publish(migration, subjects.host_command("h1", "migrate_send"))
    assert not may_publish(migration, subjects.host_command("h1", "power"))


def test_unknown_agent_has_no_permissions():
    with pytest.raises(ConfigError):
        agent_permissions("scheduler")


def test_init_writes_private_seeds_and_authorization(tmp_path):
    paths = init_bus_secrets(tmp_path, HOSTS)
    seed_file = paths.seed("host.h1")
    assert seed_file.read_text().startswith("SU")
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    users = json.loads(paths.authorization.read_text())["authorization"]["users"]
    assert len(users) == len(cluster_sources(HOSTS))
    assert paths.ca_cert.exists() and paths.server_cert.exists()

    before = seed_file.read_text()
    init_bus_secrets(tmp_path, HOSTS + ["h3"])
    assert seed_file.read_text() == before


@pytest.fixture
def secure_broker(tmp_path):
    init_bus_secrets(tmp_path, HOSTS)
    brokers = BrokerCluster(tmp_path, BrokerOptions(nodes=1, secrets=BusSecretPaths.of(tmp_path)))
    brokers.start()
    config = ClusterConfig(state_dir=str(tmp_path), nats_url=brokers.url, epoch=0.0, time_scale=1.0,
                           hosts=[], vms=[], nats_urls=brokers.urls, secure=True)
    try:
        yield config
    finally:
        brokers.stop()


async def connect_as(config, source, errors):
    async def on_error(exc):
        errors.append(str(exc))

    return await nats.connect(config.nats_urls, error_cb=on_error, connect_timeout=5,
                              **connect_options(config, source))


async def wait_for(predicate, timeout_s=20.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_broker_rejects_plain_connection(secure_broker):
    with pytest.raises(Exception):
        await nats.connect(secure_broker.nats_urls, connect_timeout=3, allow_reconnect=False,
                           max_reconnect_attempts=0)


async def test_host_cannot_publish_as_another_host(secure_broker):
    errors = []
    nc = await connect_as(secure_broker, "host.h1", errors)
    try:
        await nc.publish(subjects.event_from("host.h2", "host.booted"), b"x")
        await nc.flush()
        await wait_for(lambda: errors)
    finally:
        await nc.drain()
    assert "permissions violation" in errors[0].lower()
    assert "host:h2" in errors[0]


async def test_host_cannot_send_power_commands(secure_broker):
    errors = []
    nc = await connect_as(secure_broker, "host.h1", errors)
    try:
        await nc.publish(subjects.host_command("h2", "power"), b"x")
        await nc.flush()
        await wait_for(lambda: errors)
    finally:
        await nc.drain()
    assert "dcfleet.cmd.host.h2.power" in errors[0]


async def test_host_cannot_read_another_hosts_commands(secure_broker):
    errors = []
    nc = await connect_as(secure_broker, "host.h1", errors)
    try:
        await nc.subscribe(subjects.host_commands("h2"))
        await nc.flush()
        await wait_for(lambda: errors)
    finally:
        await nc.drain()
    assert "subscription" in errors[0].lower()


async def test_host_stores_its_own_events(secure_broker):
    errors = []
    operator = await nats.connect(secure_broker.nats_urls, **operator_options(secure_broker))
    nc = await connect_as(secure_broker, "host.h1", errors)
    try:
        from agents._agent import ensure_event_stream

        await ensure_event_stream(operator.jetstream())
        ack = await nc.jetstream().publish(subjects.event_from("host.h1", "host.booted"), b"x")
    finally:
        await nc.drain()
        await operator.drain()
    assert ack.seq == 1
    assert errors == []


class ProbeHost(Agent):
    kind = "host"


async def test_agent_reports_permission_violation(secure_broker):
    agent = ProbeHost(secure_broker, "h1")
    runner = asyncio.create_task(agent.run(handle_signals=False))
    operator = await nats.connect(secure_broker.nats_urls, **operator_options(secure_broker))
    try:
        reports = await operator.subscribe(subjects.event(proto.AgentPermissionDenied.TYPE))
        await wait_for(lambda: agent.js is not None and agent.nc.is_connected)
        before = _metrics.ERRORS.labels("host.h1", "permission_denied")._value.get()
        await agent.nc.publish(subjects.event_from("power", "power.recommendation"), b"x")
        msg = await reports.next_msg(timeout=20)
    finally:
        agent.request_stop("test")
        await runner
        await operator.drain()
    envelope = proto.decode(msg.data)
    assert envelope.source == "host.h1"
    assert subjects.event_from("power", "power.recommendation") in envelope.data["detail"]
    assert _metrics.ERRORS.labels("host.h1", "permission_denied")._value.get() == before + 1
