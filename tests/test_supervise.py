"""Restart policy, retry helper and pid registry used by `dcfleet up` supervision."""

import asyncio

import pytest

from agents._supervise import PidRegistry, ProcessEntry, RestartPolicy, retry


def test_backoff_doubles_up_to_cap():
    policy = RestartPolicy(initial_s=0.5, factor=2.0, max_s=3.0, stable_s=30.0)
    delays = [policy.delay_s(ran_for_s=1.0) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_resets_after_stable_run():
    policy = RestartPolicy(initial_s=0.5, max_s=10.0, stable_s=30.0)
    policy.delay_s(1.0)
    policy.delay_s(1.0)
    assert policy.delay_s(ran_for_s=45.0) == 0.5


def test_invalid_policy_rejected():
    with pytest.raises(ValueError, match="invalid restart policy"):
        RestartPolicy(initial_s=5.0, max_s=1.0)


async def test_retry_until_success():
    attempts = []

    async def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "ok"

    result = await retry(flaky, (ConnectionError,), deadline_s=10.0, policy=RestartPolicy(initial_s=0.01, max_s=0.02))
    assert result == "ok"
    assert len(attempts) == 3


async def test_retry_raises_after_deadline():
    async def down():
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await retry(down, (ConnectionError,), deadline_s=0.05, policy=RestartPolicy(initial_s=0.02, max_s=0.02))


async def test_retry_does_not_catch_other_errors():
    async def broken():
        raise KeyError("x")

    with pytest.raises(KeyError):
        await retry(broken, (ConnectionError,), deadline_s=5.0)


def test_registry_records_and_replaces(tmp_path):
    registry = PidRegistry(tmp_path)
    registry.record(ProcessEntry("host-h1", "host", "h1", 100))
    registry.record(ProcessEntry("power", "power", "power", 101))
    registry.record(ProcessEntry("host-h1", "host", "h1", 200))
    entries = PidRegistry(tmp_path).read()
    assert entries["host-h1"].pid == 200
    assert entries["power"].pid == 101


def test_registry_missing_file_is_empty(tmp_path):
    assert PidRegistry(tmp_path).read() == {}


def test_registry_corrupt_file_rejected(tmp_path):
    (tmp_path / "pids.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        PidRegistry(tmp_path).read()
