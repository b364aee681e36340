"""`dcfleet up`: prepare a state dir, start the broker and every agent, supervise."""

from __future__ import annotations

import asyncio
import os
import secrets
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

from ._agent import ensure_event_stream
from ._config import ClusterConfig, ConfigError, HostConfig, PowerConfig, VmConfig, pid_alive
from ._nats_server import NatsServer, free_port
from ._process import set_parent_death_signal
from ._summary import Summary
from ._workload import VM_TYPES_MIPS, default_trace_dir, load_traces
from .host._boot import BootKeys, build_bank, raw_public_key
from .host._agent import host_paths
from .host._hardware import HOST_MODELS

log = structlog.get_logger()

AGENT_STOP_TIMEOUT_S = 10.0
BOOT_MODULES = ("vmx", "net-driver", "storage-driver", "vsan")


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
    summary_interval_s: float = 2.0


@dataclass
class Child:
    name: str
    kind: str
    process: asyncio.subprocess.Process
    log_path: Path


def build_config(options: UpOptions) -> ClusterConfig:
    """The cluster configuration for a fresh run (hosts, VMs, ports, clock)."""
    if options.hosts < 1:
        raise ConfigError(f"--hosts must be at least 1, got {options.hosts}")
    vm_count = options.vms if options.vms is not None else 4 * options.hosts
    if vm_count < 0:
        raise ConfigError(f"--vms must not be negative, got {vm_count}")
    trace_dir = options.trace_dir or default_trace_dir()
    traces = load_traces(trace_dir, limit=vm_count) if vm_count else []
    if len(traces) < vm_count:
        log.warning("workload.fewer_traces", requested=vm_count, available=len(traces), trace_dir=str(trace_dir))
    hosts = []
    for index in range(options.hosts):
        model = HOST_MODELS["ML110G4" if index % 2 == 0 else "ML110G5"]
        hosts.append(HostConfig(
            id=f"h{index + 1}", model=model.name, cores=model.cores, mips_per_core=model.mips_per_core,
            memory_bytes=options.host_memory_bytes, bmc_port=free_port(),
        ))
    vms = [
        VmConfig(
            id=f"vm{index + 1:04d}", trace_file=str(trace.path.resolve()),
            mips=float(VM_TYPES_MIPS[index % len(VM_TYPES_MIPS)]),
            memory_bytes=options.vm_memory_bytes, seed=index + 1,
        )
        for index, trace in enumerate(traces)
    ]
    return ClusterConfig(
        state_dir=str(options.state_dir.resolve()),
        nats_url=options.nats_url or "",
        epoch=time.time(),
        time_scale=options.time_scale,
        hosts=hosts,
        vms=vms,
        power=PowerConfig(interval_s=options.power_interval_s),
        supervisor_pid=os.getpid(),
        store_dir=str((options.state_dir / "nats").resolve()) if not options.nats_url else "",
    )


def prepare_state(config: ClusterConfig) -> None:
    """Write the BMC password and, for hosts that have none, keys and a boot bank."""
    state = Path(config.state_dir)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    password_file = config.bmc_password_file()
    if not password_file.exists():
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(16) + "\n")
    for host in config.hosts:
        bank, firmware_key_file = host_paths(config.state_dir, host.id)
        if bank.exists() and firmware_key_file.exists():
            continue
        keys = BootKeys.generate()
        modules = {name: f"{name} module for {host.id}".encode() for name in BOOT_MODULES}
        build_bank(bank, keys, modules)
        firmware_key_file.parent.mkdir(parents=True, exist_ok=True)
        firmware_key_file.write_bytes(raw_public_key(keys.firmware))


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
        self.stop_reason = ""

    async def run(self) -> int:
        check_not_running(self.options.state_dir)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.config = build_config(self.options)
        prepare_state(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._start(config)
            await self._watch(config)
        finally:
            await self._shutdown(config)
        return 0

    def _on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            return
        self.stop_reason = signal.Signals(signum).name
        print(f"\n{self.stop_reason} received: stopping the cluster", file=sys.stderr, flush=True)
        self.stopping.set()

    async def _start(self, config: ClusterConfig) -> None:
        if not self.options.nats_url:
            self.server = NatsServer(Path(config.store_dir), Path(config.state_dir) / "logs" / "nats-server.log")
            await asyncio.to_thread(self.server.start)
            config.nats_url = self.server.url
        await self._reset_event_stream(config.nats_url)
        config.running = True
        config.save()
        print(f"dcfleet: broker {config.nats_url}, state dir {config.state_dir}", flush=True)
        print(f"dcfleet: {len(config.hosts)} hosts, {len(config.vms)} VMs, time scale {config.time_scale:g}x; "
              "Ctrl-C stops the cluster", flush=True)
        for host in config.hosts:
            await self._spawn(f"host-{host.id}", "host", host.id)
        await self._spawn("bmc", "bmc", "bmc")
        await self._spawn("dpu", "dpu", "dpu")
        await self._spawn("migration", "migration", "migration")
        await self._spawn("power", "power", "power")

    async def _reset_event_stream(self, url: str) -> None:
        """Give this run a fresh event history: each `up` replaces the previous one."""
        nc = await nats.connect(url, connect_timeout=5)
        try:
            js = nc.jetstream()
            try:
                await js.delete_stream(subjects.EVENTS_STREAM)
            except nats.js.errors.NotFoundError:
                pass
            await ensure_event_stream(js)
        finally:
            await nc.drain()

    async def _spawn(self, name: str, kind: str, agent_id: str) -> None:
        assert self.config is not None
        log_path = Path(self.config.state_dir) / "logs" / f"{name}.log"
        log_file = open(log_path, "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents", "agent", kind, "--id", agent_id,
                "--state-dir", self.config.state_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                preexec_fn=set_parent_death_signal, start_new_session=True,
            )
        finally:
            log_file.close()
        self.children.append(Child(name, kind, process, log_path))

    async def _watch(self, config: ClusterConfig) -> None:
        summary = Summary(config, sys.stdout)
        nc = await nats.connect(config.nats_url, connect_timeout=5, max_reconnect_attempts=-1)
        try:
            await nc.subscribe(subjects.EVENTS_ALL, cb=summary.on_event)
            deadline = None if self.options.duration_s is None else time.monotonic() + self.options.duration_s
            exited: set[str] = set()
            while not self.stopping.is_set():
                timeout = self.options.summary_interval_s
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                try:
                    await asyncio.wait_for(self.stopping.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                self._report_exits(exited)
                summary.render()
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop_reason = "duration"
                    print(f"dcfleet: --duration {self.options.duration_s:g} s reached: stopping", flush=True)
                    break
        finally:
            await nc.drain()

    def _report_exits(self, exited: set[str]) -> None:
        for child in self.children:
            code = child.process.returncode
            if code is not None and child.name not in exited:
                exited.add(child.name)
                print(f"dcfleet: agent {child.name} exited with status {code}; see {child.log_path}",
                      file=sys.stderr, flush=True)

    async def _shutdown(self, config: ClusterConfig) -> None:
        # Decision makers first, so no new work starts while hosts go down.
        first = [c for c in self.children if c.kind in ("power", "migration")]
        rest = [c for c in self.children if c not in first]
        await self._stop_children(first)
        await self._stop_children(rest)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        config.running = False
        try:
            config.save()
        except OSError as exc:
            print(f"dcfleet: cannot update {config.path}: {exc}", file=sys.stderr)
        print("dcfleet: cluster stopped", flush=True)

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
                child.process.kill()
                await child.process.wait()


def run(options: UpOptions) -> int:
    return asyncio.run(Supervisor(options).run())
