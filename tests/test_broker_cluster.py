"""A three-node broker cluster on loopback: routes, an R3 event stream, and a node killed mid-run."""

import asyncio
import json

import nats
import pytest

import proto
from agents._agent import ensure_event_stream
from agents._broker_cluster import BrokerCluster, BrokerOptions, _read_config, node_config, wait_for_jetstream
from agents.checker import read_stream
from proto import subjects

EVENT_COUNT = 400
KILL_AFTER = 120
PUBLISH_TIMEOUT_S = 2.0
PUBLISH_RETRY_S = 40.0


def test_node_config_routes_to_the_other_nodes(tmp_path):
    brokers = BrokerCluster(tmp_path, BrokerOptions(nodes=3, sync_always=True))
    node = brokers.nodes[0]
    path = tmp_path / "node.conf"
    path.write_text(node_config(node, brokers.nodes, brokers.options, None))
    entries = _read_config(path)
    assert entries["server_name"] == "dcfleet-1"
    assert entries["jetstream"]["sync_interval"] == "always"
    assert entries["cluster"]["routes"] == [
        f"nats-route://127.0.0.1:{brokers.nodes[1].route_port}",
        f"nats-route://127.0.0.1:{brokers.nodes[2].route_port}",
    ]
    assert "authorization" not in entries


def test_single_node_has_no_cluster_block(tmp_path):
    brokers = BrokerCluster(tmp_path, BrokerOptions(nodes=1))
    text = node_config(brokers.nodes[0], brokers.nodes, brokers.options, None)
    assert "cluster" not in text
    assert json.loads(text.partition("jetstream: ")[2].splitlines()[0]) == {
        "store_dir": str(brokers.nodes[0].store_dir)}


@pytest.fixture
def three_brokers(tmp_path):
    brokers = BrokerCluster(tmp_path, BrokerOptions(nodes=3))
    brokers.start()
    try:
        yield brokers
    finally:
        brokers.stop()


async def publish_acked(js, index: int) -> str:
    """Publish one event until the stream acknowledges it; the same Nats-Msg-Id makes retries safe."""
    envelope = proto.Envelope(type="agent.started", source="test",
                              data={"agent": f"a{index}", "kind": "test", "pid": index})
    deadline = asyncio.get_running_loop().time() + PUBLISH_RETRY_S
    while True:
        try:
            await js.publish(subjects.event_from("test", envelope.type), proto.encode(envelope),
                             headers={"Nats-Msg-Id": envelope.id}, timeout=PUBLISH_TIMEOUT_S)
            return envelope.id
        except (nats.errors.Error, asyncio.TimeoutError):
            # Timeouts, no responders and stream errors while the cluster elects a new leader.
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def stream_leader(info) -> int:
    return int(info.cluster.leader.rpartition("-")[2])


async def test_killed_node_loses_no_acknowledged_event(three_brokers):
    await wait_for_jetstream(three_brokers.urls, {})
    nc = await nats.connect(three_brokers.urls, connect_timeout=5, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await ensure_event_stream(js, replicas=3)
        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.num_replicas == 3
        acked = [await publish_acked(js, i) for i in range(KILL_AFTER)]
        leader = stream_leader(await js.stream_info(subjects.EVENTS_STREAM))
        three_brokers.kill_node(leader)
        acked += [await publish_acked(js, i) for i in range(KILL_AFTER, EVENT_COUNT)]
    finally:
        await nc.drain()

    live = [url for node, url in zip(three_brokers.nodes, three_brokers.urls) if node.index != leader]
    records = await read_stream(None, live[0])
    stored = [r["id"] for r in records]
    assert set(acked) <= set(stored)
    assert len(stored) == len(set(stored)) == EVENT_COUNT
