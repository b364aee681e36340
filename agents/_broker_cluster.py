"""A set of nats-servers started from generated config files: one node, or a routed cluster.

`dcfleet up` uses it for `--nats-cluster N`, `--secure` and `--nats-sync
always`; the plain single broker stays in `_nats_server.NatsServer`. Each node
gets its own store dir under `<state dir>/nats/node-<i>` and its own log.

JetStream syncs its files to disk every 2 minutes by default (nats-server's
`sync_interval`). Jepsen's analysis of NATS 2.12.1 (December 2025) showed that
acknowledged messages can then be lost when the OS crashes or power fails on
enough nodes. A killed nats-server process does not lose them, because the
page cache survives it. `sync_interval: always` syncs before every ack, at a
cost in publish rate.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from ._buskeys import BusSecretPaths, load_authorization
from ._config import ClusterConfig
from ._nats_server import NatsServerError, find_nats_server, free_port, wait_for_port
from ._process import set_parent_death_signal

CLUSTER_NAME = "dcfleet"
READY_TIMEOUT_S = 30.0


@dataclass
class NodeSpec:
    """Ports and paths of one broker node."""

    index: int
    client_port: int
    route_port: int
    store_dir: Path
    log_file: Path
    config_file: Path

    @property
    def name(self) -> str:
        return f"dcfleet-{self.index}"


@dataclass
class BrokerOptions:
    nodes: int = 1
    sync_always: bool = False
    # Paths of the TLS and authorization files; None runs without them.
    secrets: BusSecretPaths | None = None
    listen_host: str = "127.0.0.1"


def node_config(node: NodeSpec, peers: list[NodeSpec], options: BrokerOptions,
                authorization: dict | None) -> str:
    """Render the nats-server config file of one node, each value as JSON (the format accepts JSON values)."""
    entries: dict[str, object] = {
        "server_name": node.name,
        "listen": f"{options.listen_host}:{node.client_port}",
        "jetstream": {"store_dir": str(node.store_dir),
                      **({"sync_interval": "always"} if options.sync_always else {})},
    }
    if len(peers) > 1:
        entries["cluster"] = {
            "name": CLUSTER_NAME,
            "listen": f"{options.listen_host}:{node.route_port}",
            "routes": [f"nats-route://127.0.0.1:{p.route_port}" for p in peers if p.index != node.index],
        }
    if options.secrets is not None:
        entries["tls"] = {"cert_file": str(options.secrets.server_cert),
                          "key_file": str(options.secrets.server_key), "timeout": 5}
    if authorization is not None:
        entries["authorization"] = authorization
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in entries.items())


class BrokerCluster:
    """nats-server processes configured by `BrokerOptions`; `urls` lists every client URL."""

    def __init__(self, state_dir: Path, options: BrokerOptions) -> None:
        if options.nodes < 1:
            raise NatsServerError(f"a broker cluster needs at least 1 node, got {options.nodes}")
        self.state_dir = Path(state_dir)
        self.options = options
        self.nodes = [
            NodeSpec(i, free_port(), free_port(), self.state_dir / "nats" / f"node-{i}",
                     self.state_dir / "logs" / f"nats-{i}.log", self.state_dir / "nats" / f"node-{i}.conf")
            for i in range(1, options.nodes + 1)
        ]
        self.processes: dict[int, subprocess.Popen] = {}
        # A reopened cluster starts from the config files it already has.
        self.reopened = False

    @classmethod
    def reopen(cls, state_dir: Path, options: BrokerOptions) -> "BrokerCluster":
        """Rebuild the brokers of a stopped cluster from the ports and store dirs in their config files."""
        brokers = cls(state_dir, options)
        for node in brokers.nodes:
            try:
                entries = _read_config(node.config_file)
                node.client_port = int(entries["listen"].rpartition(":")[2])
                if "cluster" in entries:
                    node.route_port = int(entries["cluster"]["listen"].rpartition(":")[2])
            except (OSError, KeyError, ValueError) as exc:
                raise NatsServerError(f"cannot reopen broker node {node.index} from {node.config_file}: {exc}") from None
        brokers.reopened = True
        return brokers

    @property
    def urls(self) -> list[str]:
        scheme = "tls" if self.options.secrets is not None else "nats"
        return [f"{scheme}://127.0.0.1:{n.client_port}" for n in self.nodes]

    @property
    def url(self) -> str:
        return self.urls[0]

    def write_configs(self) -> None:
        authorization = load_authorization(self.options.secrets) if self.options.secrets else None
        for node in self.nodes:
            node.store_dir.mkdir(parents=True, exist_ok=True)
            node.log_file.parent.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(node_config(node, self.nodes, self.options, authorization))

    @property
    def process(self) -> subprocess.Popen | None:
        """Node 1's process: the supervisor's broker watcher follows this node."""
        return self.processes.get(1)

    def start(self, timeout_s: float = 15.0) -> None:
        """Start every node; once started, start again only the nodes that have exited."""
        if self.processes:
            for node in self.nodes:
                if self.processes[node.index].poll() is not None:
                    self.start_node(node.index, timeout_s=timeout_s)
            return
        if not self.reopened:
            self.write_configs()
        try:
            for node in self.nodes:
                self.start_node(node.index, wait=False)
            for node in self.nodes:
                wait_for_port("127.0.0.1", node.client_port, timeout_s, self.processes[node.index])
        except NatsServerError:
            self.stop()
            raise

    def start_node(self, index: int, wait: bool = True, timeout_s: float = 15.0) -> None:
        node = self.nodes[index - 1]
        command = [find_nats_server(), "--config", str(node.config_file), "--log", str(node.log_file)]
        self.processes[index] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=set_parent_death_signal, start_new_session=True,
        )
        if wait:
            wait_for_port("127.0.0.1", node.client_port, timeout_s, self.processes[index])

    def kill_node(self, index: int) -> None:
        """SIGKILL one node, as a crash of its process (its files stay)."""
        process = self.processes.get(index)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _read_config(path: Path) -> dict:
    """Entries of a config file that node_config wrote (one `key: JSON` per line)."""
    entries = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(": ")
        entries[key] = json.loads(value)
    return entries


async def wait_for_jetstream(urls: list[str], connect_options: dict, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until JetStream returns account info, because a fresh cluster first elects its meta leader."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    nc = await nats.connect(urls, connect_timeout=5, **connect_options)
    try:
        js = nc.jetstream()
        while time.monotonic() < deadline:
            try:
                await js.account_info()
                return
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(0.25)
    finally:
        await nc.drain()
    raise NatsServerError(f"JetStream not ready on {', '.join(urls)} within {timeout_s:g} s: {last_error!r}")


def reopen_brokers(config: ClusterConfig) -> BrokerCluster | None:
    """Return the stopped brokers of a cluster that `dcfleet up` ran as a BrokerCluster, else None."""
    if not config.nats_urls:
        return None
    secrets = BusSecretPaths.of(config.state_dir) if config.secure else None
    options = BrokerOptions(nodes=len(config.nats_urls), secrets=secrets)
    return BrokerCluster.reopen(Path(config.state_dir), options)


async def wait_until_ready(server: object, config: ClusterConfig) -> None:
    """Wait for JetStream on a reopened BrokerCluster; a plain NatsServer is ready when it listens."""
    if isinstance(server, BrokerCluster):
        from ._bus import operator_options

        await wait_for_jetstream(server.urls, operator_options(config))
