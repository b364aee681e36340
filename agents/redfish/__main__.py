"""Run a standalone Redfish service over the in-memory backend (one host, one DPU).

    python -m agents.redfish --port 8443 --tls-cert server.pem --tls-key server.key \\
        --trusted-cert capsule-root.pem --user admin:secretpass:Administrator
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from cryptography import x509

from agents import _log
from agents.redfish._app import create_app, serve
from agents.redfish._backend import MemoryBackend


def _parse_user(text: str) -> tuple[str, tuple[str, str]]:
    user_name, _, rest = text.partition(":")
    password, _, role_id = rest.rpartition(":")
    if not user_name or not password or not role_id:
        raise argparse.ArgumentTypeError(f"invalid --user {text!r}; expected NAME:PASSWORD:ROLE")
    return user_name, (password, role_id)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agents.redfish", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--tls-cert", help="PEM server certificate; serve HTTPS when given")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--trusted-cert", required=True,
                        help="PEM certificate that capsule signatures must chain to")
    parser.add_argument("--user", type=_parse_user, action="append", required=True,
                        help="account as NAME:PASSWORD:ROLE (Administrator, Operator, ReadOnly)")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    with open(args.trusted_cert, "rb") as handle:
        trusted = x509.load_pem_x509_certificate(handle.read())
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    app = create_app(MemoryBackend(), credentials=dict(args.user), trusted_capsule_cert=trusted)
    service = await serve(app, args.host, args.port, ssl_context=tls)
    scheme = "https" if tls else "http"
    print(f"listening {scheme}://{service.host}:{service.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    _log.configure(service="redfish")
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
