"""Deployment options of `dcfleet up`: brokers, bus security, packed hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._broker_cluster import BrokerCluster, BrokerOptions
from ._buskeys import SINGLETON_KINDS, BusSecretPaths, init_bus_secrets
from ._config import ClusterConfig, ConfigError
from ._netns_plan import DEFAULT_SUBNET, NetnsPlan, check_up_options, plan_netns
from ._packed import heartbeat_interval_for, host_groups

PACKED_KIND = "host-pack"
# Lowest port handed to a BMC Redfish service.
LISTEN_PORT_FLOOR = 10000


def apply_options(config: ClusterConfig, options: Any) -> ClusterConfig:
    """Record the deployment options of `dcfleet up` in the cluster configuration."""
    if options.nats_cluster not in (1, 3, 5):
        raise ConfigError(f"--nats-cluster must be 1, 3 or 5 (an odd quorum), got {options.nats_cluster}")
    if options.nats_url and (options.nats_cluster > 1 or options.secure or options.nats_sync_always):
        raise ConfigError("--nats URL uses a broker you run yourself: configure clustering, TLS, "
                          "authorization and sync_interval there, not with --nats-cluster, --secure or --nats-sync")
    config.secure = options.secure
    config.event_replicas = options.nats_cluster
    config.heartbeat_interval_s = options.heartbeat_interval_s or heartbeat_interval_for(len(config.hosts))
    if options.netns:
        check_up_options(options)
        plan = netns_plan(config, options.hosts_per_process, options.netns_subnet)
        config.netns_subnet = plan.subnet
        config.agent_addresses = {name: agent.address for name, agent in plan.agents.items()}
    return config


def netns_plan(config: ClusterConfig, hosts_per_process: int, subnet: str) -> NetnsPlan:
    """Namespace, veth and address of every agent process of `dcfleet up --netns`."""
    names = [name for name, _kind, _id in host_children(config, hosts_per_process)] + list(SINGLETON_KINDS)
    return plan_netns(config.state_dir, subnet, names)


def prepare_bus(config: ClusterConfig) -> None:
    """Write NKeys, the broker authorization and TLS files when the cluster runs secured."""
    if config.secure:
        init_bus_secrets(config.state_dir, [h.id for h in config.hosts])


def make_brokers(config: ClusterConfig, options: Any) -> BrokerCluster | None:
    """Return a broker cluster for the options that need config files, else None (the plain broker)."""
    if options.nats_url or not (options.nats_cluster > 1 or options.secure or options.nats_sync_always):
        return None
    brokers = BrokerCluster(Path(config.state_dir), BrokerOptions(
        nodes=options.nats_cluster, sync_always=options.nats_sync_always,
        secrets=BusSecretPaths.of(config.state_dir) if options.secure else None,
    ))
    config.store_dir = str(brokers.nodes[0].store_dir)
    return brokers


def host_children(config: ClusterConfig, hosts_per_process: int) -> list[tuple[str, str, str]]:
    """(name, kind, agent id) of each process that runs host agents."""
    if hosts_per_process == 1:
        return [(f"host-{h.id}", "host", h.id) for h in config.hosts]
    groups = host_groups([h.id for h in config.hosts], hosts_per_process)
    return [(f"hosts-{g[0]}-{g[-1]}", PACKED_KIND, ",".join(g)) for g in groups]


def agent_argv(kind: str, agent_id: str) -> list[str]:
    """Arguments after `python -m agents` that start one agent process."""
    if kind == PACKED_KIND:
        return [PACKED_KIND, "--hosts", agent_id]
    return ["agent", kind, "--id", agent_id]


def add_up_options(up: Any) -> None:
    """Add the deployment options to the `dcfleet up` parser."""
    from .cli import _positive_float, _positive_int

    up.add_argument("--hosts-per-process", type=_positive_int, default=1, metavar="K",
                    help="run K host agents per OS process, each with its own identity, connection and "
                    "state (default: 1, a process per host); e.g. --hosts 1000 --hosts-per-process 100")
    up.add_argument("--heartbeat-interval", type=_positive_float, metavar="SECONDS",
                    help="real seconds between host heartbeats (default: 1, longer above 200 hosts so the "
                    "cluster sends about 200 a second)")
    up.add_argument("--nats-cluster", type=_positive_int, default=1, metavar="N",
                    help="start N nats-servers (1, 3 or 5) routed on loopback, with the event stream "
                    "replicated N times (default: 1)")
    up.add_argument("--nats-sync", choices=("default", "always"), default="default",
                    help="JetStream disk sync: 'default' syncs every 2 minutes, so an OS crash or power loss "
                    "can lose acknowledged events; 'always' syncs before each ack (slower)")
    up.add_argument("--netns", action="store_true",
                    help="run every agent process in its own network namespace, joined to a bridge by a veth "
                    "pair, with the broker on the bridge; allows `dcfleet inject cut` (Linux, root only)")
    up.add_argument("--netns-subnet", metavar="CIDR",
                    help=f"with --netns: IPv4 subnet of the bridge and the namespaces, inside 10.0.0.0/8, "
                    f"172.16.0.0/12 or 192.168.0.0/16 (default: {DEFAULT_SUBNET}); the bridge takes its first address")
    up.add_argument("--secure", action="store_true",
                    help="give every agent its own NKey with least-privilege subject permissions, and use "
                    "TLS on the bus (files in <state dir>/secrets/); the Redfish services use HTTPS in every cluster")


def up_option_values(args: Any) -> dict[str, Any]:
    """UpOptions fields from the parsed `dcfleet up` options that add_up_options defines."""
    if args.netns_subnet is not None and not args.netns:
        raise ConfigError("--netns-subnet sets the subnet of --netns; add --netns, or drop --netns-subnet")
    return {
        "hosts_per_process": args.hosts_per_process,
        "heartbeat_interval_s": args.heartbeat_interval,
        "nats_cluster": args.nats_cluster,
        "nats_sync_always": args.nats_sync == "always",
        "secure": args.secure,
        "netns": args.netns,
        "netns_subnet": args.netns_subnet or DEFAULT_SUBNET,
    }


def listen_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Free ports for services, chosen below the kernel's ephemeral port range.

    Ports that `free_port` returns come from the ephemeral range, where the
    outgoing connections of a thousand agents can take them before the
    service binds. Ports below that range are taken only by listeners.
    """
    import random
    import socket

    low, _high = _ephemeral_range()
    first = LISTEN_PORT_FLOOR
    span = max(1, low - first)
    # A random start keeps two clusters started at once off the same ports.
    start = random.randrange(span)
    ports: list[int] = []
    for step in range(span):
        if len(ports) == count:
            break
        candidate = first + (start + step) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
                ports.append(candidate)
            except OSError:
                pass
    if len(ports) < count:
        raise ConfigError(f"found only {len(ports)} free ports below {low} for {count} services")
    return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default range
