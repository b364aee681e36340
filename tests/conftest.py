"""Shared fixtures: a real nats-server with JetStream per test that needs one."""

from __future__ import annotations

import pytest

from agents._nats_server import NatsServer

@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


