"""Readable reasons for failed HTTP requests: what power.failed and provisioning errors carry."""

import asyncio
import socket

import aiohttp
import pytest

from agents._http_errors import describe_http_error
from agents._up import UpOptions, build_config, prepare_state
from agents.power._agent import BmcError, PowerManager


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_refused_connection_described():
    port = closed_port()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await http.get(f"http://127.0.0.1:{port}/")
    assert describe_http_error(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"


async def test_silent_server_described_as_timeout():
    async def accept_and_wait(reader, writer):
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(accept_and_wait, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
            with pytest.raises(asyncio.TimeoutError) as info:
                await http.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert describe_http_error(info.value, 0.3).startswith("no response within 0.3 s")


async def test_power_reset_failure_reason_readable(tmp_path):
    config = build_config(UpOptions(state_dir=tmp_path, hosts=1, vms=0))
    port = config.hosts[0].bmc_port = closed_port()
    prepare_state(config)
    manager = PowerManager(config)
    manager.http = aiohttp.ClientSession()
    try:
        with pytest.raises(BmcError) as info:
            await manager.reset("h1", "On")
    finally:
        await manager.http.close()
    reason = str(info.value)
    assert reason == (f"Reset On of h1: POST https://127.0.0.1:{port}/redfish/v1/Systems/h1/Actions/"
                      f"ComputerSystem.Reset failed: cannot connect to 127.0.0.1:{port}: Connection refused")
    assert "ConnectionKey" not in reason
