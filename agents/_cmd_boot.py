"""`dcfleet keys init`, `image build`, `boot verify` and `inject tamper|revoke|rollback`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import agents.secureboot as sb
import proto
from proto import subjects

from . import _bus
from ._config import ClusterConfig, ConfigError
from ._locate import resolve_state_dir

COMMANDS = ("keys", "image", "boot", "inject")

# Key role behind each trust anchor that the verifier reports.
SIGNER_ROLES = {"db": "firmware", "loader": "loader", "vendor": "vendor", "owner": "owner"}
PCR_NAMES = {0: "firmware (S-CRTM version, separators)", 4: "boot applications (loader, kernel, verifier)",
             7: "secure boot policy (SecureBoot, db, dbx, SbatLevel) and authorities",
             8: "boot configuration (boot.cfg)", 9: "modules", 14: "machine owner keys (MokList)"}
DEFAULT_BUS_HOSTS = 3


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    _add_keys_parser(commands, add_cluster_options)
    _add_image_parser(commands)
    _add_boot_parser(commands)
    _add_inject_parser(commands, add_cluster_options)


def _add_keys_parser(commands: argparse._SubParsersAction, add_cluster_options) -> None:
    from .cli import _positive_int as positive_int

    keys = commands.add_parser("keys", help="secure boot key hierarchy",
                               description="Manage the four secure boot key roles.")
    actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="generate the firmware, loader, vendor and owner keys, db.esl and dbx.esl",
        description="Generate one key and self-signed certificate per role (firmware: in db, verifies the "
        "loader; loader: verifies kernel and verifier; vendor and owner: verify modules), the firmware db "
        "and an empty dbx as EFI signature lists. Existing key files are never overwritten. Also writes the "
        "cluster's bus credentials (NKeys, TLS) into the state dir, unless only --dir is given.",
    )
    init.add_argument("--dir", type=Path, metavar="DIR", help="key directory (default: <state dir>/keys)")
    init.add_argument("--algorithm", choices=sb.ALGORITHMS, default=sb.ALGORITHM_ED25519,
                      help=f"signature algorithm of every role (default: {sb.ALGORITHM_ED25519})")
    init.add_argument("--hosts", type=positive_int, default=DEFAULT_BUS_HOSTS,
                      help="hosts to write bus credentials for when the state dir has no cluster yet "
                      f"(default: {DEFAULT_BUS_HOSTS})")
    add_cluster_options(init)


def _add_image_parser(commands: argparse._SubParsersAction) -> None:
    image = commands.add_parser("image", help="signed boot banks",
                                description="Build signed boot banks from plain files.")
    actions = image.add_subparsers(dest="image_action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="build a signed boot bank from plain files",
        description="SRC_DIR contains the files loader, kernel and verifier and optionally modules/NAME files. "
        "Each becomes a component image with an SBAT generation, signed by its role's key: loader by the "
        "firmware key, kernel and verifier by the loader key, modules and boot.cfg by the vendor key.",
    )
    build.add_argument("src_dir", type=Path, metavar="SRC_DIR", help="directory of plain source files")
    build.add_argument("--out", type=Path, required=True, metavar="BANK", help="new, empty bank directory")
    build.add_argument("--keys", type=Path, metavar="DIR", help="key directory (default: <state dir>/keys)")
    build.add_argument("--state-dir", metavar="DIR", help="cluster state dir, for the default --keys")
    build.add_argument("--generation", action="append", default=[], metavar="NAME=N",
                       help="SBAT generation of a stage or module (default 1); repeatable")
    build.add_argument("--owner-module", action="append", default=[], metavar="NAME",
                       help="sign this module with the owner key instead of the vendor key; repeatable")


def _add_boot_parser(commands: argparse._SubParsersAction) -> None:
    boot = commands.add_parser("boot", help="check a boot bank offline",
                               description="Run the host's boot checks without booting anything.")
    actions = boot.add_subparsers(dest="boot_action", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify", help="verify a boot bank against a host state and print the report",
        description="Check every file of BANK as a host with state HOST_STATE_DIR would at boot (signatures, "
        "trust per stage, dbx, SbatLevel, namespaces) without changing the state. Prints each component "
        "with its signer role, algorithm and generation, then the measured PCRs. Exit status 1 names the "
        "file and the check that failed.",
    )
    provision = actions.add_parser(
        "provision", help="create a host state (db, dbx, SbatLevel, MokList, counters, attestation key)",
        description="Create a host state namespace from a key directory: db with the firmware certificate, "
        "an empty dbx and SbatLevel, MokList with the owner certificate, zero counters and a new attestation "
        "key. `dcfleet up` does this for every host; use it to verify a bank built by hand.",
    )
    provision.add_argument("--state", type=Path, required=True, metavar="HOST_STATE_DIR",
                           help="new, empty host state directory")
    provision.add_argument("--host", required=True, help="host id recorded in the state")
    provision.add_argument("--keys", type=Path, required=True, metavar="DIR", help="key directory")
    verify.add_argument("bank", type=Path, metavar="BANK", help="boot bank directory")
    verify.add_argument("--state", type=Path, required=True, metavar="HOST_STATE_DIR",
                        help="host state directory (e.g. <state dir>/hosts/h1/secure-state)")


def _add_inject_parser(commands: argparse._SubParsersAction, add_cluster_options) -> None:
    from ._cmd_chaos import add_fault_parsers
    from .host._boot_faults import FAULT_OPERATIONS
    from .host._memory_faults import add_memory_error_options

    inject = commands.add_parser(
        "inject", help="inject a fault into a running cluster",
        description="Inject one fault into the cluster `dcfleet up` runs. Boot faults damage a host's "
        "boot bank or state, then restart the host through its BMC so the fault shows as host.boot_failed "
        "at the next boot. memory-error marks a host frame bad. kill, pause, restart, cut and bmc act on agent "
        "processes, the broker, network links and Redfish services, and are recorded as fault.injected / "
        "fault.cleared.",
    )
    kinds = inject.add_subparsers(dest="fault", metavar="FAULT", required=True)
    boot_help = {
        "tamper": "flip a byte of a boot component's image",
        "revoke": "list a boot component's SHA-256 in the host's dbx",
        "rollback": "raise the host's SbatLevel above a boot component's generation",
    }
    for name in FAULT_OPERATIONS:
        parser = kinds.add_parser(name, help=boot_help.get(name, name), description=boot_help.get(name, name) + ".")
        parser.add_argument("--host", required=True, help="host id, e.g. h2")
        parser.add_argument("--module", metavar="NAME", required=True,
                            help="loader, kernel, verifier, or a module name such as vmx")
        parser.add_argument("--no-reboot", action="store_true",
                            help="only change the files; the fault shows at the host's next boot")
        parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                            help="how long to wait for the host's boot event after the restart (default: 30)")
        add_cluster_options(parser)
    memory = kinds.add_parser(
        "memory-error", help="mark a host frame with an uncorrectable memory error",
        description="Mark a host frame with an uncorrectable memory error, known to the hardware or "
        "--latent (found only when read). Name the frame, or a VM and one of its guest pages.",
    )
    memory.add_argument("--host", required=True, help="host id, e.g. h2")
    add_memory_error_options(memory)
    add_cluster_options(memory)
    add_fault_parsers(kinds)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "keys":
            return _run_keys_init(args)
        if args.command == "image":
            return _run_image_build(args)
        if args.command == "boot" and args.boot_action == "provision":
            return _run_boot_provision(args)
        if args.command == "boot":
            return _run_boot_verify(args)
        if args.fault == "memory-error":
            from .host._memory_faults import run_inject_memory_error

            return asyncio.run(run_inject_memory_error(args))
        from ._cmd_chaos import FAULT_KINDS, run_fault

        if args.fault in FAULT_KINDS:
            return run_fault(args)
        return asyncio.run(_run_inject(args))
    except sb.InvalidInput as error:
        raise ConfigError(str(error)) from None


def _run_keys_init(args: argparse.Namespace) -> int:
    state_dir = resolve_state_dir(args.state_dir)
    key_dir = args.dir or state_dir / "keys"
    try:
        keys = sb.init_keys(key_dir, args.algorithm)
    except (FileExistsError, NotADirectoryError, PermissionError) as error:
        raise ConfigError(f"cannot write keys to {key_dir}: {error.strerror}: {error.filename}") from None
    print(f"keys written to {key_dir}:")
    for role in sb.ROLES:
        pair = keys.role(role)
        print(f"  {role:<9} {pair.algorithm:<11} {pair.certificate.subject.rfc4514_string()}  "
              f"SHA-256 {pair.fingerprint_sha256.hex()[:16]}...")
    print("  db.esl (firmware certificate), dbx.esl (empty)")
    # With only --dir, everything stays in that directory; the bus material belongs to a state dir.
    if args.dir is None or args.state_dir is not None:
        _write_bus_credentials(state_dir, args.hosts)
    return 0


def _write_bus_credentials(state_dir: Path, host_count: int) -> None:
    """Write the agents' bus credentials, the broker's authorization and TLS material."""
    from ._buskeys import init_bus_secrets

    try:
        host_ids = [host.id for host in ClusterConfig.load(state_dir).hosts]
    except ConfigError:
        host_ids = [f"h{index + 1}" for index in range(host_count)]
    paths = init_bus_secrets(state_dir, host_ids)
    print(f"bus credentials for {', '.join(host_ids)} written to {getattr(paths, 'root', state_dir)}")


def _parse_generations(items: list[str]) -> dict[str, int]:
    generations = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name or not value.isdigit():
            raise ConfigError(f"invalid --generation {item!r}; use NAME=N, e.g. vmx=2")
        generations[name] = int(value)
    return generations


def _run_image_build(args: argparse.Namespace) -> int:
    key_dir = args.keys or resolve_state_dir(args.state_dir) / "keys"
    if not key_dir.is_dir():
        raise ConfigError(f"key directory {key_dir} not found; create it with `dcfleet keys init --dir {key_dir}`")
    keys = sb.load_keys(key_dir)
    build = sb.build_image(args.src_dir, args.out, keys, generations=_parse_generations(args.generation),
                           owner_modules=set(args.owner_module))
    print(f"boot bank {build.bank_dir}: {len(build.files)} signed files")
    for bank_file in build.files:
        print(f"  {bank_file.path:<32} {bank_file.kind:<8} signer {bank_file.signer_role:<8} "
              f"generation {bank_file.generation:<3} {bank_file.size_bytes:>9} bytes  "
              f"SHA-256 {bank_file.sha256.hex()[:16]}...")
    return 0


def _run_boot_provision(args: argparse.Namespace) -> int:
    state = sb.provision_host_state(args.state, sb.load_keys(args.keys), args.host)
    print(f"host state for {state.host_id} written to {state.root}")
    return 0


def _run_boot_verify(args: argparse.Namespace) -> int:
    try:
        report = sb.verify_bank(args.bank, args.state)
    except sb.BootRejected as failure:
        print(f"FAIL {failure.path}: {failure.check} check failed: {failure.reason}")
        print(f"boot bank {args.bank} would not boot: {failure.path} failed the {failure.check} check",
              file=sys.stderr)
        return 1
    print(f"boot bank {report.bank_dir} against host state {args.state} (host {report.host_id})")
    print(f"  {'file':<32} {'kind':<8} {'signer role':<11} {'authority':<9} {'algorithm':<11} generation")
    for component in report.components:
        generation = ",".join(str(g) for _, g in component.sbat) or "-"
        role = SIGNER_ROLES.get(component.authority, component.authority)
        print(f"  {component.path:<32} {component.kind:<8} {role:<11} {component.authority:<9} "
              f"{component.algorithm:<11} {generation}")
    print("PCRs (SHA-256):")
    for index, value in sorted(report.pcrs.items()):
        name = PCR_NAMES.get(index, "separator only" if index < 8 else "")
        print(f"  PCR {index:>2} {value.hex()}  {name}")
    print(f"PASS: {len(report.components)} files verified, {len(report.module_paths)} modules")
    return 0


async def _run_inject(args: argparse.Namespace) -> int:
    from ._client import cluster_client
    from .host._boot_faults import inject_boot_fault
    from .host._secure_boot import host_boot_paths

    state_dir = resolve_state_dir(args.state_dir)
    config = ClusterConfig.load(state_dir)
    if args.host not in {host.id for host in config.hosts}:
        raise ConfigError(f"unknown host {args.host!r}; the cluster has {', '.join(h.id for h in config.hosts)}")
    if args.no_reboot:
        fault = inject_boot_fault(args.fault, host_boot_paths(state_dir, args.host), args.module)
        print(f"{args.fault} {args.host}: {fault.detail}; {fault.file} fails the {fault.check} check at the next boot")
        return 0
    async with cluster_client(args.state_dir, args.nats, source="cli.inject") as client:
        fault = inject_boot_fault(args.fault, host_boot_paths(state_dir, args.host), args.module)
        print(f"{args.fault} {args.host}: {fault.detail}")
        boot_events = await client.nc.subscribe(subjects.event("host.*"))
        await _force_restart(config, args.host)
        print(f"{args.host}: ForceRestart sent through its BMC (Redfish ComputerSystem.Reset); waiting for its boot")
        return await _report_boot(boot_events, args.host, fault.file, args.timeout)


async def _force_restart(config: ClusterConfig, host_id: str) -> None:
    """POST ComputerSystem.Reset with ResetType ForceRestart to the host's BMC."""
    import aiohttp

    from ._http_errors import describe_http_error

    host = config.host(host_id)
    password = config.bmc_password_file().read_text().strip()
    url = f"{_bus.redfish_base_url(config, host)}/redfish/v1/Systems/{host_id}/Actions/ComputerSystem.Reset"
    auth = aiohttp.BasicAuth(config.bmc_username, password)
    try:
        connector = aiohttp.TCPConnector(ssl=_bus.redfish_client_ssl(config))
        async with aiohttp.ClientSession(auth=auth, timeout=aiohttp.ClientTimeout(total=15),
                                         connector=connector) as http:
            async with http.post(url, json={"ResetType": "ForceRestart"}) as response:
                if response.status >= 300:
                    body = await response.text()
                    raise ConfigError(f"BMC of {host_id} rejected ForceRestart: HTTP {response.status}: {body[:300]}")
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise ConfigError(f"BMC of {host_id} unreachable at {url}: {describe_http_error(error, 15)}; the fault is "
                          "on disk and shows at the host's next boot") from None


async def _report_boot(subscription, host_id: str, expected_file: str, timeout_s: float) -> int:
    """Print the host's next host.boot_failed or host.booted event; return 0 when the boot failed as injected."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            msg = await subscription.next_msg(timeout=remaining)
        except asyncio.TimeoutError:
            break
        try:
            event = proto.parse_event(msg.subject, msg.data)
        except proto.MessageRejected:
            continue
        if getattr(event, "host", None) != host_id:
            continue
        if isinstance(event, proto.HostBootFailed):
            print(f"{host_id}: host.boot_failed file={event.file} check={event.check} reason={event.reason}")
            return 0 if event.file == expected_file else 1
        if isinstance(event, proto.HostBooted):
            print(f"{host_id}: booted (boot {event.boot_count}) despite the fault in {expected_file}", file=sys.stderr)
            return 1
    print(f"{host_id}: no boot event within {timeout_s:g} s; see `dcfleet events --type 'host.*'`", file=sys.stderr)
    return 1
