"""What the BMCs of a cluster need on disk: accounts, HTTPS certificates, capsule keys.

Files under the cluster's state dir:
  secrets/bmc-password             the admin account (Administrator), written by `dcfleet up`
  secrets/bmc-operator-password    the operator account (Operator: Reset and SimpleUpdate)
  secrets/bmc-readonly-password    the readonly account (ReadOnly)
  secrets/tls/ca.pem               the cluster CA; clients of the BMCs verify against it
  secrets/tls/server.pem, .key     the certificate every BMC serves HTTPS with (127.0.0.1, localhost,
                                   and the BMC's namespace address under `dcfleet up --netns`)
  keys/capsule/                    the capsule signing keys (see agents._capsule_keys)

The CA and server certificate are the bus's TLS files from agents._buskeys, so a
`--secure` cluster uses one CA for both.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .._buskeys import BusSecretPaths, write_tls
from .._capsule_keys import ensure_capsule_keys
from .._config import ClusterConfig, ConfigError

OPERATOR_USER = "operator"
READONLY_USER = "readonly"


@dataclass(frozen=True)
class BmcAccount:
    user: str
    password_file: Path
    role: str


def accounts(config: ClusterConfig) -> list[BmcAccount]:
    """Return the accounts every BMC of the cluster has, with their password files and Redfish roles."""
    secrets_dir = Path(config.state_dir) / "secrets"
    return [
        BmcAccount(config.bmc_username, config.bmc_password_file(), "Administrator"),
        BmcAccount(OPERATOR_USER, secrets_dir / "bmc-operator-password", "Operator"),
        BmcAccount(READONLY_USER, secrets_dir / "bmc-readonly-password", "ReadOnly"),
    ]


def account(config: ClusterConfig, role: str) -> BmcAccount:
    return next(a for a in accounts(config) if a.role == role)


def read_password(account_: BmcAccount) -> str:
    try:
        return account_.password_file.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"BMC password file {account_.password_file} not found; `dcfleet up` writes it") from None


def credentials(config: ClusterConfig) -> dict[str, tuple[str, str]]:
    """User name to (password, role), as agents.redfish.create_app takes them."""
    return {a.user: (read_password(a), a.role) for a in accounts(config)}


def prepare_bmc_material(config: ClusterConfig) -> None:
    """Write the missing account passwords, HTTPS certificates and capsule keys; keep existing ones."""
    for account_ in accounts(config):
        if not account_.password_file.exists():
            account_.password_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(account_.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(16) + "\n")
    # Under --netns the BMC listens on its namespace address, which clients verify against the certificate.
    extra = (config.bmc_address(),) if config.agent_addresses else ()
    write_tls(BusSecretPaths.of(config.state_dir), extra)
    ensure_capsule_keys(config.state_dir)


# ---- HTTPS (agents._bus.redfish_server_ssl and redfish_client_ssl build the contexts) ----


def ca_file(state_dir: str | Path) -> Path:
    """Return the cluster CA file that clients of the BMCs verify against (REQUESTS_CA_BUNDLE for requests)."""
    return BusSecretPaths.of(state_dir).ca_cert
