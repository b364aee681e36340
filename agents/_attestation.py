"""Attestation gate: agents that put VMs on hosts ask each host for a quote first.

The decision (`judge_quote_reply`) and the per-boot cache (`AttestationLedger`) are pure;
`AttestationGate` feeds them from the bus. A host that fails attestation is quarantined
(`host.quarantined`) and gets no VMs until it boots again and passes. A passed attestation
holds for the rest of that boot, so placements cost no quote round trip; host.booted,
host.boot_failed, host.power_off and host.power_on events end it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

import proto
from proto import subjects

from ._agent import Agent, CommandFailed, CommandTimeout
from ._config import ConfigError
from .host._secure_boot import attestation_certificate_path, reference_manifest_path
from .secureboot import InvalidInput, Quote, QuoteVerifier, ReferenceManifest

QUOTE_TIMEOUT_S = 5.0
ATTESTED, QUARANTINE, UNAVAILABLE = "attested", "quarantine", "unavailable"


@dataclass(frozen=True)
class Verdict:
    """The outcome for one host: attested, quarantine (with the failed check), or unavailable for now."""

    outcome: str
    check: str = ""
    reason: str = ""
    boot_count: int = 0

    @property
    def attested(self) -> bool:
        return self.outcome == ATTESTED


_REPLY_FIELDS = {"power_state": str, "booted": bool, "boot_count": int}


def judge_quote_reply(host_id: str, reply: Any, verifier: QuoteVerifier) -> Verdict:
    """Decide from a host's `quote` reply whether the host may receive VMs."""
    if not isinstance(reply, dict):
        return Verdict(QUARANTINE, "format", f"quote reply is {type(reply).__name__}, expected a map")
    for name, kind in _REPLY_FIELDS.items():
        if not isinstance(reply.get(name), kind) or (kind is int and isinstance(reply.get(name), bool)):
            return Verdict(QUARANTINE, "format", f"quote reply field {name!r} is missing or not {kind.__name__}")
    boot_count = reply["boot_count"]
    if reply["power_state"] != "On":
        return Verdict(UNAVAILABLE, "power", f"host is {reply['power_state']}", boot_count)
    failure = reply.get("boot_failure")
    if failure is not None:
        if not isinstance(failure, dict):
            return Verdict(QUARANTINE, "format", "quote reply field 'boot_failure' is not a map", boot_count)
        reason = f"{failure.get('file')}: {failure.get('check')} check failed: {failure.get('reason')}"
        return Verdict(QUARANTINE, "boot-failed", reason, boot_count)
    if not reply["booted"]:
        return Verdict(UNAVAILABLE, "booting", "host has not finished booting", boot_count)
    try:
        quote = Quote.from_wire(reply.get("quote"))
    except InvalidInput as error:
        return Verdict(QUARANTINE, "format", str(error), boot_count)
    result = verifier.verify(host_id, quote)
    if not result.passed:
        return Verdict(QUARANTINE, result.check or "quote", result.reason or "quote rejected", boot_count)
    return Verdict(ATTESTED, boot_count=boot_count)


class AttestationLedger:
    """Verdicts that hold until the host's next boot event: passed attestations and quarantines."""

    def __init__(self) -> None:
        self._verdicts: dict[str, Verdict] = {}

    def cached(self, host_id: str) -> Verdict | None:
        return self._verdicts.get(host_id)

    def is_quarantined(self, host_id: str) -> bool:
        verdict = self._verdicts.get(host_id)
        return verdict is not None and verdict.outcome == QUARANTINE

    def quarantined_hosts(self) -> set[str]:
        return {host_id for host_id, verdict in self._verdicts.items() if verdict.outcome == QUARANTINE}

    def record(self, host_id: str, verdict: Verdict) -> bool:
        """Keep an attested or quarantine verdict; return whether it newly quarantines the host."""
        if verdict.outcome == UNAVAILABLE:
            return False
        newly_quarantined = verdict.outcome == QUARANTINE and not self.is_quarantined(host_id)
        self._verdicts[host_id] = verdict
        return newly_quarantined

    def on_booted(self, host_id: str, boot_count: int) -> None:
        """Drop the host's verdict when it was made for an earlier boot."""
        verdict = self._verdicts.get(host_id)
        if verdict is not None and verdict.boot_count != boot_count:
            del self._verdicts[host_id]

    def forget(self, host_id: str) -> None:
        """Drop the host's verdict because its boot ended or failed, so the next request quotes it again."""
        self._verdicts.pop(host_id, None)


def load_verifier(state_dir: str | Path, host_ids: list[str]) -> QuoteVerifier:
    """Build a QuoteVerifier from the reference manifest and the enrolled attestation certificates.

    A host without an enrolled certificate fails every quote with the check `untrusted-key`.
    """
    manifest_path = reference_manifest_path(state_dir)
    try:
        reference = ReferenceManifest.from_json(manifest_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"reference manifest {manifest_path} not found; `dcfleet up` writes it") from None
    except InvalidInput as error:
        raise ConfigError(f"reference manifest {manifest_path}: {error}") from None
    certificates = {}
    for host_id in host_ids:
        path = attestation_certificate_path(state_dir, host_id)
        try:
            certificates[host_id] = x509.load_pem_x509_certificate(path.read_bytes())
        except (FileNotFoundError, ValueError):
            continue
    return QuoteVerifier(reference, certificates)


class AttestationGate:
    """Quote, verify, cache and quarantine on behalf of one agent."""

    def __init__(self, agent: Agent, host_ids: list[str]) -> None:
        self.agent = agent
        self.verifier = load_verifier(agent.config.state_dir, host_ids)
        self.ledger = AttestationLedger()
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        for message_type in (proto.HostBooted, proto.HostBootFailed, proto.HostPowerOff, proto.HostPowerOn):
            await self.agent.nc.subscribe(subjects.event(message_type.TYPE), cb=self._on_boot_event)

    def is_quarantined(self, host_id: str) -> bool:
        return self.ledger.is_quarantined(host_id)

    def quarantined_hosts(self) -> set[str]:
        return self.ledger.quarantined_hosts()

    async def require(self, host_id: str) -> Verdict:
        """Return the host's verdict for its current boot, asking it for a quote unless one is cached."""
        lock = self._locks.setdefault(host_id, asyncio.Lock())
        async with lock:
            cached = self.ledger.cached(host_id)
            if cached is not None:
                return cached
            verdict = await self._ask(host_id)
            if self.ledger.record(host_id, verdict):
                await self._quarantine(host_id, verdict)
            elif verdict.attested:
                self.agent.log.info("host.attested", host=host_id, boot_count=verdict.boot_count)
            return verdict

    async def attested_hosts(self, host_ids: list[str]) -> set[str]:
        return {host_id for host_id in host_ids if (await self.require(host_id)).attested}

    async def _ask(self, host_id: str) -> Verdict:
        nonce = self.verifier.issue_nonce(host_id)
        try:
            reply = await self.agent.request(subjects.host_command(host_id, "quote"), proto.QuoteRequest(nonce),
                                             QUOTE_TIMEOUT_S)
        except CommandTimeout as error:
            return Verdict(UNAVAILABLE, "unreachable", str(error))
        except CommandFailed as error:
            return Verdict(QUARANTINE, "quote", error.error)
        return judge_quote_reply(host_id, reply, self.verifier)

    async def _quarantine(self, host_id: str, verdict: Verdict) -> None:
        self.agent.log.warning("host.quarantined", host=host_id, check=verdict.check, reason=verdict.reason,
                               boot_count=verdict.boot_count)
        await self.agent.publish(proto.HostQuarantined(host=host_id, check=verdict.check, reason=verdict.reason,
                                                       boot_count=verdict.boot_count))

    async def _on_boot_event(self, msg: Any) -> None:
        try:
            event = proto.parse_event(msg.subject, msg.data)
        except proto.MessageRejected as error:
            await self.agent.reject(msg, error)
            return
        if isinstance(event, proto.HostBooted):
            self.ledger.on_booted(event.host, event.boot_count)
        elif isinstance(event, (proto.HostBootFailed, proto.HostPowerOff, proto.HostPowerOn)):
            self.ledger.forget(event.host)
