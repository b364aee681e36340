"""Namespace plan of `dcfleet up --netns` without a system: names, addresses, and rejected input."""

import ipaddress
from types import SimpleNamespace

import pytest

from agents._config import ConfigError
from agents._netns_plan import (
    MAX_INTERFACE_NAME,
    NetnsPlan,
    check_up_options,
    overlapping_routes,
    parse_subnet,
    plan_netns,
    state_dir_tag,
)

PROCESSES = ["host-h1", "host-h2", "bmc", "dpu", "migration", "power"]


def test_plan_gives_bridge_first_address(tmp_path):
    plan = plan_netns(tmp_path, "10.213.0.0/24", PROCESSES)
    assert plan.bridge_address == "10.213.0.1"
    assert [a.address for a in plan.agents.values()] == [f"10.213.0.{i}" for i in range(2, 8)]
    assert plan.prefix_length == 24


def test_plan_names_fit_interface_limit(tmp_path):
    names = [f"host-h{i}" for i in range(1, 1001)]
    plan = plan_netns(tmp_path, "10.213.0.0/20", names)
    links = [plan.bridge] + [a.link for a in plan.agents.values()]
    assert max(len(link) for link in links) <= MAX_INTERFACE_NAME
    assert len(set(links)) == len(links)
    assert all(link.startswith(plan.link_prefix) for link in links)
    assert all(a.namespace.startswith(plan.namespace_prefix) for a in plan.agents.values())


def test_plan_same_for_same_state_dir(tmp_path):
    assert plan_netns(tmp_path, "10.213.0.0/24", PROCESSES) == plan_netns(tmp_path / ".", "10.213.0.0/24", PROCESSES)
    assert state_dir_tag(tmp_path) != state_dir_tag(tmp_path / "other")


def test_plan_round_trips_through_record(tmp_path):
    plan = plan_netns(tmp_path, "192.168.77.0/28", PROCESSES)
    assert NetnsPlan.from_dict(plan.to_dict()) == plan


def test_plan_rejects_subnet_too_small_for_agents(tmp_path):
    with pytest.raises(ConfigError, match="room for 5 agent processes, 6 are needed"):
        plan_netns(tmp_path, "10.213.0.0/29", PROCESSES)


@pytest.mark.parametrize("text, reason", [
    ("10.213.0.0", "too small"),
    ("10.213.0.1/24", "host bits set"),
    ("8.8.8.0/24", "private range"),
    ("127.0.0.0/8", "private range"),
    ("0.0.0.0/24", "private range"),
    ("192.0.2.0/24", "private range"),
    ("198.18.0.0/24", "private range"),
    ("100.64.0.0/24", "private range"),
    ("172.32.0.0/24", "private range"),
    ("10.0.0.0/7", "private range"),
    ("fd00::/64", "only IPv4"),
    ("banana", "CIDR notation"),
])
def test_subnet_rejected(text, reason):
    with pytest.raises(ConfigError, match=reason):
        parse_subnet(text)


@pytest.mark.parametrize("text", ["172.20.0.0/16", "10.0.0.0/8", "192.168.255.0/24", "172.31.255.248/29"])
def test_subnet_accepted(text):
    assert parse_subnet(text) == ipaddress.ip_network(text)


def test_overlapping_routes_found():
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "10.213.0.0/16", "dev": "wg0"},
        {"dst": "10.213.0.0/24", "dev": "dcfabcdefbr"},
    ]
    assert overlapping_routes("10.213.0.0/24", routes, "dcfabcdefbr") == ["10.213.0.0/16 dev wg0"]
    assert overlapping_routes("10.214.0.0/24", routes, "dcfabcdefbr") == []


@pytest.mark.parametrize("change, option", [
    ({"nats_url": "nats://127.0.0.1:4222"}, "--nats URL"),
    ({"nats_cluster": 3}, "--nats-cluster"),
    ({"secure": True}, "--secure"),
    ({"nats_sync_always": True}, "--nats-sync"),
])
def test_netns_rejects_unsupported_options(change, option):
    options = SimpleNamespace(**{"nats_url": None, "nats_cluster": 1, "secure": False, "nats_sync_always": False,
                                 **change})
    with pytest.raises(ConfigError, match=option):
        check_up_options(options)
