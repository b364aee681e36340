"""Cluster configuration: what `dcfleet up` starts and how to reach it.

`dcfleet up` writes it to `<state dir>/cluster.json`; agents and every other
command read it from there.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._clock import ClusterClock

CONFIG_NAME = "cluster.json"
LOOPBACK = "127.0.0.1"
# Set by `dcfleet up --netns` for each agent process: the address of its own namespace.
LISTEN_ADDRESS_ENV = "DCFLEET_LISTEN_ADDRESS"


class ConfigError(ValueError):
    """A cluster configuration or state dir that cannot be used."""


SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}
PAGE_BYTES = 4096


def parse_size_bytes(text: str) -> int:
    """Parse a memory size such as 4M, 512K or 8388608 (bytes); raise ValueError unless a positive multiple of 4 KiB."""
    number, unit = (text[:-1], SIZE_UNITS[text[-1].upper()]) if text and text[-1].upper() in SIZE_UNITS else (text, 1)
    try:
        value = int(number) * unit
    except ValueError:
        raise ValueError(f"invalid size {text!r}; use bytes or a K, M or G suffix") from None
    if value <= 0 or value % PAGE_BYTES:
        raise ValueError(f"size {text} must be a positive multiple of 4 KiB")
    return value


@dataclass
class HostConfig:
    id: str
    model: str
    cores: int
    mips_per_core: float
    memory_bytes: int
    bmc_port: int
    arch: str = "aarch64"
    # Processor packages (sockets); the cores are split evenly among them.
    packages: int = 1

    @property
    def cpu_mips_total(self) -> float:
        return self.cores * self.mips_per_core


@dataclass
class VmConfig:
    id: str
    trace_file: str
    mips: float
    memory_bytes: int
    seed: int


@dataclass
class PowerConfig:
    target_utilization: float = 0.63
    tolerance: float = 0.18
    min_hosts_on: int = 1
    interval_s: float = 5.0
    power_on_window_s: float = 300.0
    power_off_window_s: float = 2400.0
    # Recommendation priorities 1..threshold are made; automation Off, Manual or Automatic.
    threshold: int = 3
    automation: str = "Automatic"
    boot_s: float = 120.0
    expected_off_s: float = 3600.0


@dataclass
class ClusterConfig:
    state_dir: str
    nats_url: str
    epoch: float
    time_scale: float
    hosts: list[HostConfig]
    vms: list[VmConfig]
    power: PowerConfig = field(default_factory=PowerConfig)
    heartbeat_interval_s: float = 1.0
    bmc_username: str = "admin"
    supervisor_pid: int = 0
    running: bool = False
    store_dir: str = ""
    # Every broker of a clustered bus (nats_url is the first); empty for one broker.
    nats_urls: list[str] = field(default_factory=list)
    # NKey credentials per agent and TLS on the bus and Redfish (files in secrets/).
    secure: bool = False
    event_replicas: int = 1
    # `dcfleet up --netns`: the agents' subnet and each agent process's address in it (process name to
    # IPv4 address); empty when every process shares the loopback interface.
    netns_subnet: str = ""
    agent_addresses: dict[str, str] = field(default_factory=dict)

    @property
    def clock(self) -> ClusterClock:
        return ClusterClock(self.epoch, self.time_scale)

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / CONFIG_NAME

    def host(self, host_id: str) -> HostConfig:
        for host in self.hosts:
            if host.id == host_id:
                return host
        raise ConfigError(f"unknown host {host_id!r}; hosts are {', '.join(h.id for h in self.hosts)}")

    def bmc_address(self) -> str:
        """Address the BMC agent's Redfish services listen on."""
        return self.agent_addresses.get("bmc", LOOPBACK)

    def bmc_password_file(self) -> Path:
        return Path(self.state_dir) / "secrets" / "bmc-password"

    def save(self) -> None:
        path = self.path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: Path) -> "ClusterConfig":
        path = Path(state_dir) / CONFIG_NAME
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no cluster in {state_dir}: {path} not found; start one with `dcfleet up`"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        try:
            raw["hosts"] = [HostConfig(**h) for h in raw["hosts"]]
            raw["vms"] = [VmConfig(**v) for v in raw["vms"]]
            raw["power"] = PowerConfig(**raw.get("power", {}))
            return cls(**raw)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid cluster configuration {path}: {exc}") from None


def default_state_dir() -> Path:
    """`$DCFLEET_STATE_DIR`, else `$XDG_STATE_HOME/dcfleet`, else `~/.local/state/dcfleet`."""
    explicit = os.environ.get("DCFLEET_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "dcfleet"


def listen_address() -> str:
    """Address this process's servers listen on and advertise: $DCFLEET_LISTEN_ADDRESS, else 127.0.0.1."""
    text = os.environ.get(LISTEN_ADDRESS_ENV, "")
    if not text:
        return LOOPBACK
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ConfigError(f"invalid {LISTEN_ADDRESS_ENV}={text!r}: expected an IPv4 address") from None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
