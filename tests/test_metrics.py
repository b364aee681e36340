"""Prometheus metrics of an agent process."""

import urllib.request

import pytest

import proto
from agents import _metrics


def value(metric, *labels):
    return metric.labels(*labels)._value.get()


def test_power_events_set_the_power_gauge():
    _metrics.event_published("host.m1", proto.HostPowerOff(host="m1", via="redfish"))
    assert value(_metrics.POWER_ON, "m1") == 0
    _metrics.event_published("host.m1", proto.HostPowerOn(host="m1", via="redfish"))
    assert value(_metrics.POWER_ON, "m1") == 1


def test_migration_outcomes_are_counted():
    before = value(_metrics.MIGRATIONS, "migration", "failed")
    _metrics.event_published("migration", proto.MigrationFailed(
        migration="m1", vm="vm1", source="h1", destination="h2", reason="test"))
    assert value(_metrics.MIGRATIONS, "migration", "failed") == before + 1


def test_handler_exception_counts_as_error():
    before = value(_metrics.ERRORS, "host.m2", "ValueError")
    with pytest.raises(ValueError):
        with _metrics.handling("host.m2", "host.status"):
            raise ValueError("bad")
    assert value(_metrics.ERRORS, "host.m2", "ValueError") == before + 1
    assert value(_metrics.MESSAGES_IN, "host.m2", "host.status") >= 1


def test_serve_records_port_and_answers(tmp_path):
    _metrics.message_sent("host.m3", "command")
    port = _metrics.serve(tmp_path, "host:m3")
    assert int(_metrics.port_file(tmp_path, "host:m3").read_text()) == port
    assert _metrics.url_file(tmp_path, "host:m3").read_text() == f"http://127.0.0.1:{port}/metrics\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'dcfleet_messages_out_total{agent="host.m3",kind="command"}' in body
