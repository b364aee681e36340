"""Bus credentials: one NKey per agent, the broker's authorization, TLS certificates.

`init_bus_secrets(state_dir, host_ids)` writes everything under
`<state dir>/secrets/`; `dcfleet bus-keys` and `dcfleet up --secure` call it.
The permission matrix is a pure function, `agent_permissions`, tested without
a broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proto import subjects

from ._config import ConfigError

OPERATOR = "operator"
SINGLETON_KINDS = ("bmc", "dpu", "migration", "power")
# Names the broker certificate is valid for: loopback for `dcfleet up`, the
# compose service names for `docker compose`.
SERVER_HOSTNAMES = ("localhost", "nats-1", "nats-2", "nats-3")
SERVER_ADDRESSES = ("127.0.0.1", "::1")
CERT_VALIDITY_DAYS = 825



@dataclass(frozen=True)
class Permissions:
    """Subjects a bus user may publish to and subscribe to (NATS wildcards allowed)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()


def agent_source(kind: str, agent_id: str) -> str:
    """Return the `source` an agent stamps on its envelopes: `host.h1`, or `power` for a singleton."""
    return kind if agent_id == kind else f"{kind}.{agent_id}"


def _common(source: str) -> tuple[list[str], list[str]]:
    """Build what every agent needs: its own events, the event stream's info and create, its own inbox."""
    publish = [
        subjects.events_from(source),
        f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
        f"$JS.API.STREAM.CREATE.{subjects.EVENTS_STREAM}",
    ]
    subscribe = [f"{subjects.inbox_prefix(source)}.>"]
    return publish, subscribe


def _event_stream_readers() -> list[str]:
    """JetStream API subjects for reading the event stream with consumers (nats-py's js.subscribe)."""
    stream = subjects.EVENTS_STREAM
    return [
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.*.{stream}", f"$JS.API.CONSUMER.*.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>", f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>",
    ]


def agent_permissions(source: str) -> Permissions:
    """The least-privilege permissions of one agent, by its source (`host.h1`, `power`, ...).

    Every agent publishes only its own events, reads only its own replies and
    may reply to the requests it receives (the user's `allow_responses`). A host
    reads only its own commands and no events. A singleton agent serves
    `dcfleet.cmd.<kind>.>` and reads every event. Host power commands come only
    from the BMC agent (it carries out Redfish `ComputerSystem.Reset`) and the
    power manager.
    """
    if source == OPERATOR:
        return Permissions(publish=(">",), subscribe=(">",))
    publish, subscribe = _common(source)
    kind, _, agent_id = source.partition(".")
    if kind == "host" and subjects.is_token(agent_id):
        # A migration source sends pages to the destination, which reads them.
        publish.append(f"{subjects.PREFIX}.data.migration.*")
        subscribe += [subjects.host_commands(agent_id), f"{subjects.PREFIX}.data.migration.*"]
        return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))
    if kind not in SINGLETON_KINDS or agent_id:
        raise ConfigError(f"no bus permissions defined for agent {source!r}")
    subscribe += [f"{subjects.PREFIX}.cmd.{kind}.>", subjects.EVENTS_ALL]
    publish += _event_stream_readers()
    deny: list[str] = []
    if kind == "bmc":
        publish += [subjects.host_command("*", "status"), subjects.host_command("*", "power"), f"{subjects.PREFIX}.cmd.dpu.>"]
    elif kind == "power":
        publish += [subjects.host_command("*", "*"), subjects.MIGRATION_REQUEST]
    elif kind == "migration":
        publish.append(subjects.host_command("*", "*"))
        deny.append(subjects.host_command("*", "power"))
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe), publish_deny=tuple(deny))


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject pattern (`*` one token, `>` one or more trailing tokens) matches a subject."""
    pattern_tokens, subject_tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens) or token not in ("*", subject_tokens[index]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


def may_publish(permissions: Permissions, subject: str) -> bool:
    """Whether the broker lets a user with these permissions publish to `subject` (deny wins)."""
    if any(subject_matches(p, subject) for p in permissions.publish_deny):
        return False
    return any(subject_matches(p, subject) for p in permissions.publish)


def cluster_sources(host_ids: list[str]) -> list[str]:
    """Every bus user of a cluster: the operator, each host agent and each singleton agent."""
    return [OPERATOR, *(agent_source("host", h) for h in host_ids), *SINGLETON_KINDS]


# ---- files ------------------------------------------------------------------


@dataclass(frozen=True)
class BusSecretPaths:
    """Paths of the bus secrets of one state dir."""

    root: Path

    @classmethod
    def of(cls, state_dir: str | Path) -> "BusSecretPaths":
        return cls(Path(state_dir) / "secrets")

    def seed(self, source: str) -> Path:
        return self.root / "bus" / f"{subjects.source_token(source)}.nk"

    @property
    def authorization(self) -> Path:
        return self.root / "bus" / "authorization.json"

    @property
    def ca_cert(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "tls" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "tls" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "tls" / "server.key"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def load_seed(paths: BusSecretPaths, source: str) -> str:
    path = paths.seed(source)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no bus credential for {source} at {path}; run `dcfleet bus-keys` for this state dir"
        ) from None


def _user_entry(public_key: str, permissions: Permissions) -> dict:
    return {
        "nkey": public_key,
        "permissions": {
            "publish": {"allow": list(permissions.publish), "deny": list(permissions.publish_deny)},
            "subscribe": {"allow": list(permissions.subscribe)},
            "allow_responses": True,
        },
    }


def write_credentials(paths: BusSecretPaths, sources: list[str]) -> dict:
    """Create an NKey seed for each source that has none and return the authorization block.

    Existing seeds are kept, so re-running after adding hosts does not
    invalidate the credentials of running agents.
    """
    users = []
    for source in sources:
        path = paths.seed(source)
        if path.exists():
            seed = path.read_bytes().strip()
        else:
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            _write_private(path, seed + b"\n")
        public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
        users.append(_user_entry(public_key, agent_permissions(source)))
    authorization = {"users": users}
    _write_private(paths.authorization, json.dumps({"authorization": authorization}, indent=1).encode())
    return authorization


def load_authorization(paths: BusSecretPaths) -> dict:
    try:
        return json.loads(paths.authorization.read_text())["authorization"]
    except FileNotFoundError:
        raise ConfigError(f"{paths.authorization} not found; run `dcfleet bus-keys`") from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise ConfigError(f"invalid broker authorization file {paths.authorization}: {exc}") from None


# ---- TLS --------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dcfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate_authority(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dcfleet CA")).issuer_name(_name("dcfleet CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
          now: dt.datetime, extra_addresses: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a certificate for servers (broker, Redfish), also valid as a client certificate between brokers."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_HOSTNAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _server_addresses(extra_addresses)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _server_addresses(extra_addresses: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(SERVER_ADDRESSES + tuple(extra_addresses)))


def write_tls(paths: BusSecretPaths, extra_addresses: tuple[str, ...] = ()) -> None:
    """Create the CA and a server certificate for loopback, the compose broker names and `extra_addresses`.

    Existing files are kept while the server certificate covers every address.
    Otherwise a new server certificate is issued by the existing CA, so clients
    that trust the CA keep working.
    """
    files = (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)
    if all(f.exists() for f in files) and _covers(paths.server_cert, _server_addresses(extra_addresses)):
        return
    now = dt.datetime.now(dt.timezone.utc)
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    else:
        ca_key, ca_cert = _certificate_authority(now)
        _write_private(paths.ca_key, _pem_key(ca_key))
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = _leaf(ca_key, ca_cert, "dcfleet server", now, extra_addresses)
    _write_private(paths.server_key, _pem_key(server_key))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))


def _covers(cert_path: Path, addresses: list[str]) -> bool:
    """Return whether the certificate's subjectAltName lists every address."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    listed = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    return all(str(ipaddress.ip_address(a)) in listed for a in addresses)


def init_bus_secrets(state_dir: str | Path, host_ids: list[str]) -> BusSecretPaths:
    """Write NKeys for every agent of a cluster, the broker's authorization and the TLS files.

    Safe to call again: existing seeds and certificates are kept, and the
    authorization is rewritten for the current host list.
    """
    for host_id in host_ids:
        if not subjects.is_token(host_id):
            raise ConfigError(f"invalid host id {host_id!r}: use letters, digits, '-' and '_'")
    paths = BusSecretPaths.of(state_dir)
    write_credentials(paths, cluster_sources(host_ids))
    write_tls(paths)
    return paths
