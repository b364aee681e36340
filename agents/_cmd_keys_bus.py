"""`dcfleet bus-keys`: write the bus credentials, broker authorization and TLS files of a state dir."""

from __future__ import annotations

import argparse

from ._buskeys import cluster_sources, init_bus_secrets
from ._config import ClusterConfig, ConfigError
from ._locate import resolve_state_dir

COMMANDS = ("bus-keys",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    parser = commands.add_parser(
        "bus-keys", help="write NKey credentials, the broker's authorization and TLS certificates",
        description="Write one NKey seed per agent, the nats-server authorization block with each "
        "agent's subject permissions, and a CA with a server certificate for the broker and the Redfish "
        "services, all under <state dir>/secrets/. Existing seeds and certificates are kept. The host "
        "list comes from the state dir's cluster.json unless --hosts is given. `dcfleet up --secure` "
        "runs this itself.",
    )
    parser.add_argument("--hosts", metavar="IDS", help="comma-separated host ids, e.g. h1,h2,h3")
    add_cluster_options(parser)


def run(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    if args.hosts:
        host_ids = [h.strip() for h in args.hosts.split(",") if h.strip()]
    else:
        try:
            host_ids = [h.id for h in ClusterConfig.load(state_dir).hosts]
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --hosts IDS") from None
    paths = init_bus_secrets(state_dir, host_ids)
    print(f"dcfleet: {len(cluster_sources(host_ids))} bus credentials in {paths.root / 'bus'}")
    print(f"dcfleet: broker authorization {paths.authorization}")
    print(f"dcfleet: TLS CA {paths.ca_cert}, server certificate {paths.server_cert}")
    return 0
