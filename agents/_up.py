"""`dcfleet up`: prepare a state dir, start the broker and every agent, supervise."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import structlog

import proto
from proto import subjects

from . import _bus, _fleet, _netns
from ._agent import ensure_event_stream
from ._config import LISTEN_ADDRESS_ENV, ClusterConfig, ConfigError, HostConfig, PowerConfig, VmConfig, pid_alive
from ._broker_cluster import wait_for_jetstream
from ._nats_server import NatsServer
from ._netns_plan import DEFAULT_SUBNET, NetnsPlan
from ._process import set_parent_death_signal
from ._restarter import Restarter
from ._supervise import PidRegistry, ProcessEntry
from ._summary import Summary
from ._text import plural
from ._vmstore import HostStore
from ._workload import VM_TYPES_MIPS, default_trace_dir, load_traces
from .host._secure_boot import prepare_secure_boot
from .bmc._material import prepare_bmc_material
from .host._hardware import HOST_MODELS
from .host._host_memory import host_arch

log = structlog.get_logger()

AGENT_STOP_TIMEOUT_S = 10.0
# Exit status of `dcfleet up` when it had to kill an agent that did not stop after SIGTERM:
# the agent skipped its clean stop, so its state on disk may be older than its last events.
EXIT_FORCED_STOP = 1


@dataclass
class UpOptions:
    state_dir: Path
    hosts: int = 3
    vms: int | None = None
    trace_dir: Path | None = None
    time_scale: float = 300.0
    duration_s: float | None = None
    nats_url: str | None = None
    vm_memory_bytes: int = 4 * 1024 * 1024
    host_memory_bytes: int = 256 * 1024 * 1024
    power_interval_s: float = 3.0
    # PowerConfig fields other than interval_s, e.g. threshold and automation.
    power_settings: dict = field(default_factory=dict)
    summary_interval_s: float = 2.0
    nats_cluster: int = 1
    nats_sync_always: bool = False
    secure: bool = False
    hosts_per_process: int = 1
    heartbeat_interval_s: float | None = None
    arch: str = "aarch64"  # aarch64, x86_64 or mixed (alternating by host)
    netns: bool = False
    netns_subnet: str = DEFAULT_SUBNET


@dataclass
class Child:
    name: str
    kind: str
    process: asyncio.subprocess.Process
    log_path: Path


def build_config(options: UpOptions) -> ClusterConfig:
    """Build the cluster configuration for a fresh run (hosts, VMs, ports, clock)."""
    if options.hosts < 1:
        raise ConfigError(f"--hosts must be at least 1, got {options.hosts}")
    vm_count = options.vms if options.vms is not None else 4 * options.hosts
    if vm_count < 0:
        raise ConfigError(f"--vms must not be negative, got {vm_count}")
    if vm_count and options.vm_memory_bytes > options.host_memory_bytes:
        raise ConfigError(f"--vm-memory {options.vm_memory_bytes} bytes is more than --host-memory "
                          f"{options.host_memory_bytes} bytes, so no VM fits on a host; lower --vm-memory "
                          "or raise --host-memory")
    trace_dir = options.trace_dir or default_trace_dir()
    traces = load_traces(trace_dir, limit=vm_count) if vm_count else []
    if len(traces) < vm_count:
        log.warning("workload.fewer_traces", requested=vm_count, available=len(traces), trace_dir=str(trace_dir))
    hosts = []
    bmc_ports = _fleet.listen_ports(options.hosts)
    for index in range(options.hosts):
        model = HOST_MODELS["ML110G4" if index % 2 == 0 else "ML110G5"]
        hosts.append(HostConfig(
            id=f"h{index + 1}", model=model.name, cores=model.cores, mips_per_core=model.mips_per_core,
            memory_bytes=options.host_memory_bytes, bmc_port=bmc_ports[index],
            arch=host_arch(options.arch, index),
        ))
    vms = [
        VmConfig(
            id=f"vm{index + 1:04d}", trace_file=str(trace.path.resolve()),
            mips=float(VM_TYPES_MIPS[index % len(VM_TYPES_MIPS)]),
            memory_bytes=options.vm_memory_bytes, seed=index + 1,
        )
        for index, trace in enumerate(traces)
    ]
    config = ClusterConfig(
        state_dir=str(options.state_dir.resolve()),
        nats_url=options.nats_url or "",
        epoch=time.time(),
        time_scale=options.time_scale,
        hosts=hosts,
        vms=vms,
        power=_power_config(options),
        supervisor_pid=os.getpid(),
        store_dir=str((options.state_dir / "nats").resolve()) if not options.nats_url else "",
    )
    return _fleet.apply_options(config, options)


def _power_config(options: UpOptions) -> PowerConfig:
    from .power._views import settings_from_config

    power = PowerConfig(interval_s=options.power_interval_s, **options.power_settings)
    try:
        settings_from_config(power)
    except ValueError as exc:
        raise ConfigError(f"invalid power settings: {exc}") from None
    return power


def prepare_state(config: ClusterConfig) -> None:
    """Write the BMC password and the secure boot material: cluster keys, golden bank and reference
    manifest, and a boot bank and host state for each host that has none. Then the BMC accounts,
    HTTPS certificates and capsule signing keys (agents.bmc._material)."""
    state = Path(config.state_dir)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    password_file = config.bmc_password_file()
    if not password_file.exists():
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(16) + "\n")
    prepare_secure_boot(state, [host.id for host in config.hosts])
    _fleet.prepare_bus(config)
    prepare_bmc_material(config)


def clear_run_state(config: ClusterConfig) -> None:
    """Forget the VMs and power states a previous run left in the host agents' stores.

    Each `up` starts a fresh event history, so hosts start empty and powered on to
    match it. The stores serve agents restarted by the supervisor within one run.
    Keys, boot banks, host secure boot state and installed DPU OSes are kept.
    """
    for host in config.hosts:
        shutil.rmtree(HostStore(config.state_dir, host.id).root, ignore_errors=True)


def check_not_running(state_dir: Path) -> None:
    try:
        existing = ClusterConfig.load(state_dir)
    except ConfigError:
        return
    if existing.running and pid_alive(existing.supervisor_pid) and existing.supervisor_pid != os.getpid():
        raise ConfigError(
            f"a cluster already runs in {state_dir} (supervisor pid {existing.supervisor_pid}); "
            "stop it or pass another --state-dir"
        )


class Supervisor:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.config: ClusterConfig | None = None
        self.server: NatsServer | None = None
        self.children: list[Child] = []
        self.stopping = asyncio.Event()
        self.summary: Summary | None = None
        self.stop_reason = ""
        self.netns: NetnsPlan | None = None
        # Agents killed at the stop because SIGTERM did not stop them in time.
        self.forced_stops: list[str] = []

    async def run(self) -> int:
        """Run the cluster until a signal or --duration; return the exit status.

        Every option is checked before the state dir is written, so a rejected
        `up` leaves no cluster.json, keys or secrets behind. The exit status is
        EXIT_FORCED_STOP when an agent had to be killed at the stop.
        """
        check_not_running(self.options.state_dir)
        config = self.config = build_config(self.options)
        if self.options.netns:
            self.netns = await asyncio.to_thread(self._check_netns, config)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._delete_netns_leftovers, config)
        prepare_state(config)
        clear_run_state(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._start(config)
            await self._watch(config)
        finally:
            await self._shutdown(config)
        return self.exit_status()

    def exit_status(self) -> int:
        return EXIT_FORCED_STOP if self.forced_stops else 0

    def _check_netns(self, config: ClusterConfig) -> NetnsPlan:
        _netns.preflight()
        plan = _fleet.netns_plan(config, self.options.hosts_per_process, self.options.netns_subnet)
        _netns.check_subnet_free(plan)
        return plan

    def _delete_netns_leftovers(self, config: ClusterConfig) -> None:
        """Delete the namespaces and links an earlier `up --netns` on this state dir left, in every mode."""
        if not _netns.may_have_leftovers(config.state_dir):
            return
        if os.geteuid() != 0:
            self.note(f"dcfleet: warning: {_netns.record_path(config.state_dir)} lists network namespaces of an "
                      "earlier `dcfleet up --netns`; deleting them needs root, so they stay until a `dcfleet up` "
                      "as root on this state dir")
            return
        try:
            deleted = _netns.delete(config.state_dir)
        except ConfigError as exc:
            if self.netns is not None:
                raise
            self.note(f"dcfleet: warning: cannot look for network namespaces left by an earlier run: {exc}")
            return
        for namespace, pids in deleted.stopped.items():
            self.note(f"dcfleet: stopped {plural(len(pids), 'process', 'processes')} left running in network "
                      f"namespace {namespace} (pids {', '.join(map(str, pids))})")
        if deleted.names:
            self.note(f"dcfleet: deleted {len(deleted.names)} network namespaces and links left by an earlier run: "
                      f"{', '.join(deleted.names)}")

    def _on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            return
        self.stop_reason = signal.Signals(signum).name
        self.note(f"\ndcfleet: {self.stop_reason} received: stopping the cluster")
        self.stopping.set()

    async def _start(self, config: ClusterConfig) -> None:
        if self.netns is not None:
            await asyncio.to_thread(self._create_netns, self.netns)
        if not self.options.nats_url:
            self.server = _fleet.make_brokers(config, self.options) or NatsServer(
                Path(config.store_dir), Path(config.state_dir) / "logs" / "nats-server.log",
                host=self.netns.bridge_address if self.netns is not None else "127.0.0.1")
            await asyncio.to_thread(self.server.start)
            config.nats_url = self.server.url
            config.nats_urls = list(getattr(self.server, "urls", []))
        await self._reset_event_stream(config.nats_url)
        config.running = True
        config.save()
        brokers = ", ".join(_bus.server_urls(config))
        print(f"dcfleet: broker {brokers}, state dir {config.state_dir}", flush=True)
        print(f"dcfleet: {plural(len(config.hosts), 'host')}, {plural(len(config.vms), 'VM')}, time scale "
              f"{config.time_scale:g}x; "
              "Ctrl-C stops the cluster", flush=True)
        for name, kind, agent_id in _fleet.host_children(config, self.options.hosts_per_process):
            await self._spawn(name, kind, agent_id)
        await self._spawn("bmc", "bmc", "bmc")
        await self._spawn("dpu", "dpu", "dpu")
        await self._spawn("migration", "migration", "migration")
        await self._spawn("power", "power", "power")

    def _create_netns(self, plan: NetnsPlan) -> None:
        assert self.config is not None
        _netns.create(self.config.state_dir, plan)
        print(f"dcfleet: {len(plan.agents)} network namespaces {plan.namespace_prefix}*, bridge {plan.bridge} "
              f"{plan.bridge_address}/{plan.prefix_length}", flush=True)

    async def _reset_event_stream(self, url: str) -> None:
        """Give this run a fresh event history: each `up` replaces the previous one."""
        assert self.config is not None
        await wait_for_jetstream(_bus.server_urls(self.config), _bus.operator_options(self.config))
        nc = await nats.connect(_bus.server_urls(self.config), connect_timeout=5,
                                **_bus.operator_options(self.config))
        try:
            js = nc.jetstream()
            try:
                await js.delete_stream(subjects.EVENTS_STREAM)
            except nats.js.errors.NotFoundError:
                pass
            await ensure_event_stream(js, replicas=self.config.event_replicas)
        finally:
            await nc.drain()

    async def _spawn(self, name: str, kind: str, agent_id: str) -> None:
        assert self.config is not None
        log_path = Path(self.config.state_dir) / "logs" / f"{name}.log"
        command, env = self._agent_command(name, kind, agent_id)
        log_file = open(log_path, "ab")
        try:
            # The parent-death signal survives the exec of `ip netns exec` and its exec of Python.
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                preexec_fn=set_parent_death_signal, start_new_session=True, env=env,
            )
        finally:
            log_file.close()
        self.children.append(Child(name, kind, process, log_path))
        PidRegistry(self.config.state_dir).record(ProcessEntry(name, kind, agent_id, process.pid))

    def _agent_command(self, name: str, kind: str, agent_id: str) -> tuple[list[str], dict[str, str] | None]:
        """Command line and environment (None: this process's) of one agent process."""
        assert self.config is not None
        command = [sys.executable, "-m", "agents", *_fleet.agent_argv(kind, agent_id),
                   "--state-dir", self.config.state_dir]
        env: dict[str, str] = {}
        if kind == "bmc":
            # aiohttp's C parser returns 400 for unknown HTTP methods; Redfish needs 405 or 501.
            env["AIOHTTP_NO_EXTENSIONS"] = "1"
        if self.netns is not None:
            agent = self.netns.agents[name]
            command = _netns.exec_prefix(agent.namespace) + command
            env[LISTEN_ADDRESS_ENV] = agent.address
        return command, ({**os.environ, **env} if env else None)

    def note(self, text: str) -> None:
        """Print a supervisor message to stderr, below the live summary."""
        print(text, file=sys.stderr, flush=True)
        if self.summary is not None:
            self.summary.detach()

    async def _watch(self, config: ClusterConfig) -> None:
        summary = self.summary = Summary(config, sys.stdout)
        async def on_error(exc: Exception) -> None:
            # The broker may be down on purpose (a fault) or restarting: one debug line, no traceback.
            log.debug("supervisor.bus_error", error=repr(exc))

        nc = await nats.connect(_bus.server_urls(config), connect_timeout=5, max_reconnect_attempts=-1,
                                error_cb=on_error, **_bus.operator_options(config))
        restarter = asyncio.ensure_future(Restarter(self).run(nc))
        try:
            await nc.subscribe(subjects.EVENTS_ALL, cb=summary.on_event)
            deadline = None if self.options.duration_s is None else time.monotonic() + self.options.duration_s
            while not self.stopping.is_set():
                timeout = self.options.summary_interval_s
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                try:
                    await asyncio.wait_for(self.stopping.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                if self.stopping.is_set():
                    # Keep the stop message on screen: a redraw would move up over it.
                    break
                summary.render()
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop_reason = "duration"
                    print(f"dcfleet: --duration {self.options.duration_s:g} s reached: stopping", flush=True)
                    break
        finally:
            # Stop restarting before shutdown stops the agents on purpose.
            restarter.cancel()
            await asyncio.gather(restarter, return_exceptions=True)
            await nc.drain()

    async def _shutdown(self, config: ClusterConfig) -> None:
        # Decision makers first, so no new work starts while hosts go down.
        first = [c for c in self.children if c.kind in ("power", "migration")]
        rest = [c for c in self.children if c not in first]
        try:
            await self._stop_children(first)
            await self._stop_children(rest)
            if self.server is not None:
                await asyncio.to_thread(self.server.stop)
        finally:
            if self.netns is not None:
                await self._delete_netns(config)
        config.running = False
        try:
            config.save()
        except OSError as exc:
            print(f"dcfleet: cannot update {config.path}: {exc}", file=sys.stderr)
        if self.forced_stops:
            print(f"dcfleet: cluster stopped, but {plural(len(self.forced_stops), 'agent')} had to be killed "
                  f"({', '.join(self.forced_stops)}); see their logs in {Path(config.state_dir) / 'logs'}",
                  file=sys.stderr, flush=True)
        else:
            print("dcfleet: cluster stopped", flush=True)

    async def _delete_netns(self, config: ClusterConfig) -> None:
        try:
            deleted = await asyncio.to_thread(_netns.delete, config.state_dir)
        except ConfigError as exc:
            print(f"dcfleet: cannot delete the network namespaces: {exc}; the next `dcfleet up --state-dir "
                  f"{config.state_dir}` as root deletes them", file=sys.stderr, flush=True)
            return
        print(f"dcfleet: deleted {len(deleted.names)} network namespaces and links", flush=True)

    async def _stop_children(self, children: list[Child]) -> None:
        for child in children:
            if child.process.returncode is None:
                try:
                    child.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        waits = [asyncio.wait_for(c.process.wait(), AGENT_STOP_TIMEOUT_S) for c in children]
        results = await asyncio.gather(*waits, return_exceptions=True)
        for child, result in zip(children, results):
            if isinstance(result, asyncio.TimeoutError):
                print(f"dcfleet: agent {child.name} did not stop within {AGENT_STOP_TIMEOUT_S:g} s; killing it",
                      file=sys.stderr, flush=True)
                self.forced_stops.append(child.name)
                child.process.kill()
                await child.process.wait()


def run(options: UpOptions) -> int:
    return asyncio.run(Supervisor(options).run())
