"""Names and addresses of the network namespaces of `dcfleet up --netns` (pure, no system calls).

Every agent process gets its own namespace, joined to one bridge in the root
namespace by a veth pair. The bridge has the subnet's first address, where the
broker listens. Agent processes get the following addresses in the order they
are named. Linux limits interface names to 15 characters (IFNAMSIZ - 1),
so link names are built from a short tag of the state dir, not from agent names.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import ConfigError

DEFAULT_SUBNET = "10.213.0.0/24"
MAX_INTERFACE_NAME = 15
# Prefix of every namespace `dcfleet up --netns` creates: `dcfleet-<tag>-<process name>`.
NAMESPACE_PREFIX = "dcfleet-"
# Prefix of every link it creates in the root namespace: `dcf<tag>br` and `dcf<tag>v<index>`.
LINK_PREFIX = "dcf"
TAG_LENGTH = 6
# The agent's end of its veth pair, inside its own namespace.
AGENT_INTERFACE = "eth0"
# Private address space of RFC 1918.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


@dataclass(frozen=True)
class AgentNet:
    """One agent process's namespace, its root-side veth and its address."""

    namespace: str
    link: str
    address: str


@dataclass(frozen=True)
class NetnsPlan:
    tag: str
    subnet: str
    bridge: str
    bridge_address: str
    agents: dict[str, AgentNet]

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def namespace_prefix(self) -> str:
        return f"{NAMESPACE_PREFIX}{self.tag}-"

    @property
    def link_prefix(self) -> str:
        return f"{LINK_PREFIX}{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag, "subnet": self.subnet, "bridge": self.bridge, "bridge_address": self.bridge_address,
            "agents": {name: {"namespace": a.namespace, "link": a.link, "address": a.address}
                       for name, a in self.agents.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "NetnsPlan":
        agents = {name: AgentNet(str(a["namespace"]), str(a["link"]), str(a["address"]))
                  for name, a in raw["agents"].items()}
        return cls(str(raw["tag"]), str(raw["subnet"]), str(raw["bridge"]), str(raw["bridge_address"]), agents)


def state_dir_tag(state_dir: str | Path) -> str:
    """Short hex tag of a state dir, the same for every run on it, so leftovers of a run are found again."""
    resolved = str(Path(state_dir).resolve())
    return hashlib.sha256(resolved.encode()).hexdigest()[:TAG_LENGTH]


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Parse --netns-subnet: an IPv4 network in private address space with room for a bridge and agents."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"invalid --netns-subnet {text!r}: {exc}; use CIDR notation, e.g. {DEFAULT_SUBNET}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ConfigError(f"invalid --netns-subnet {text!r}: only IPv4 subnets are supported")
    # ipaddress's is_private also covers 0.0.0.0/8, documentation and benchmarking ranges,
    # which are no place for a bridge: only the RFC 1918 ranges are accepted.
    if not any(network.subnet_of(private) for private in PRIVATE_RANGES):
        raise ConfigError(f"invalid --netns-subnet {text!r}: use a private range (10.0.0.0/8, 172.16.0.0/12 "
                          "or 192.168.0.0/16)")
    if network.prefixlen > 29:
        raise ConfigError(f"invalid --netns-subnet {text!r}: a /{network.prefixlen} is too small; use /29 or larger")
    return network


def plan_netns(state_dir: str | Path, subnet: str, process_names: list[str]) -> NetnsPlan:
    """Assign a namespace, a root-side veth name and an address to each agent process."""
    network = parse_subnet(subnet)
    hosts = network.hosts()
    capacity = network.num_addresses - 3  # network, broadcast and the bridge
    if len(process_names) > capacity:
        raise ConfigError(f"--netns-subnet {subnet} has room for {capacity} agent processes, "
                          f"{len(process_names)} are needed; pass a larger subnet")
    tag = state_dir_tag(state_dir)
    bridge = f"{LINK_PREFIX}{tag}br"
    bridge_address = str(next(hosts))
    agents = {}
    for index, name in enumerate(process_names):
        link = f"{LINK_PREFIX}{tag}v{index}"
        if len(link) > MAX_INTERFACE_NAME:
            raise ConfigError(f"too many agent processes for interface names: {link!r} is longer than "
                              f"{MAX_INTERFACE_NAME} characters")
        agents[name] = AgentNet(f"{NAMESPACE_PREFIX}{tag}-{name}", link, str(next(hosts)))
    return NetnsPlan(tag, str(network), bridge, bridge_address, agents)


def overlapping_routes(subnet: str, routes: list[dict[str, Any]], own_bridge: str) -> list[str]:
    """Routes of the root namespace (as `ip -j route` lists them) whose destination overlaps `subnet`.

    The default route and routes through `own_bridge` (a leftover of this state
    dir, removed before the bridge is made again) do not count.
    """
    network = ipaddress.ip_network(subnet)
    found = []
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("", "default") or route.get("dev") == own_bridge:
            continue
        try:
            other = ipaddress.ip_network(destination, strict=False)
        except ValueError:
            continue
        if other.version == network.version and other.overlaps(network):
            found.append(f"{destination} dev {route.get('dev', '?')}")
    return found


def bridge_tag(link: str) -> str | None:
    """Return the state dir tag of a dcfleet bridge name (`dcf<tag>br`), or None for another link."""
    match = re.fullmatch(f"{LINK_PREFIX}([0-9a-f]{{{TAG_LENGTH}}})br", link)
    return match.group(1) if match else None


def leftover_bridge_hint(bridge: str, namespaces: list[str], running: bool) -> str:
    """Say how to free a subnet held by another state dir's dcfleet bridge and its namespaces."""
    if running:
        return (f"{bridge} is the bridge of a dcfleet cluster that still runs (processes run in its namespaces "
                f"{', '.join(namespaces)}); stop that `dcfleet up` first")
    command = f"ip link delete dev {bridge}"
    if namespaces:
        command += f"; for n in {' '.join(namespaces)}; do ip netns delete $n; done"
    return (f"{bridge} was left by a `dcfleet up --netns` whose supervisor was killed; `dcfleet up` on that "
            f"cluster's state dir removes it, or remove it by hand as root: {command}")


def check_up_options(options: Any) -> None:
    """Reject `dcfleet up` options that the namespace mode cannot serve."""
    if options.nats_url:
        raise ConfigError("--netns starts its own broker on the bridge; it cannot use --nats URL")
    if options.nats_cluster > 1 or options.secure or options.nats_sync_always:
        raise ConfigError("--netns runs one plain broker on the bridge address; it does not support "
                          "--nats-cluster, --secure or --nats-sync always")
