"""Measured boot, attestation quotes and owner key enrollment."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from evidence_api.eventlog import EventLogs, TcgEventLog
from evidence_api.tcg import TcgAlgorithmRegistry

import agents.secureboot as sb

MODULES = ("nic-driver", "storage-driver")


@dataclass
class Host:
    keys: sb.KeySet
    bank: Path
    state: Path


def write_sources(src: Path) -> None:
    (src / "modules").mkdir(parents=True)
    for name in ("loader", "kernel", "verifier"):
        (src / name).write_bytes(f"{name} code ".encode() * 40)
    for name in MODULES:
        (src / "modules" / name).write_bytes(os.urandom(2000))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    keys = sb.init_keys(tmp_path / "keys")
    sb.provision_host_state(tmp_path / "state", keys, "host-1", attestation_algorithm=sb.ALGORITHM_ECDSA_P256)
    write_sources(tmp_path / "src")
    sb.build_image(tmp_path / "src", tmp_path / "bank", keys)
    return Host(keys, tmp_path / "bank", tmp_path / "state")


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_verifier(host: Host, clock: FakeClock | None = None) -> sb.QuoteVerifier:
    reference = sb.compute_reference_manifest(host.bank, host.state)
    certificate = sb.load_attestation_key(host.state).certificate
    return sb.QuoteVerifier(reference, {"host-1": certificate}, nonce_lifetime_s=30.0, clock=clock or FakeClock())


def quote_for(host: Host, verifier: sb.QuoteVerifier, report: sb.BootReport | None = None) -> sb.Quote:
    report = report or sb.verify_bank(host.bank, host.state)
    nonce = verifier.issue_nonce("host-1")
    return sb.create_quote(sb.load_attestation_key(host.state), "host-1", report.pcrs, nonce)


# --- measured boot ---------------------------------------------------------------------------

def test_event_log_replays_in_evidence_api(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    logs = EventLogs(report.event_log, None, parse_format=TcgEventLog.TCG_FORMAT_PCCLIENT)
    logs.select(None, None)
    replayed = EventLogs.replay(logs.event_logs)
    sha256 = TcgAlgorithmRegistry.TPM_ALG_SHA256
    assert {index: bytes(banks[sha256]) for index, banks in replayed.items()} == report.pcrs


def test_event_log_parsed_by_evidence_api(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    logs = EventLogs(report.event_log, None, parse_format=TcgEventLog.TCG_FORMAT_PCCLIENT)
    logs.select(None, None)
    assert logs.count == len(sb.decode_event_log(report.event_log)) + 1
    assert EventLogs.spec_id_header_event.signature == b"Spec ID Event03\x00"
    module_events = [e for e in logs.event_logs[1:] if e.imr_index == 9]
    assert len(module_events) == len(MODULES)


def test_event_log_replay_matches_report(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    assert sb.replay_event_log(report.event_log) == report.pcrs
    assert set(report.pcrs) >= {0, 4, 7, 8, 9, 14}


def test_event_log_truncation_rejected(host: Host) -> None:
    log = sb.verify_bank(host.bank, host.state).event_log
    for length in (0, 10, 40, len(log) - 1):
        with pytest.raises(ValueError):
            sb.decode_event_log(log[:length])


def test_dbx_change_moves_pcr7_only(host: Host) -> None:
    before = sb.verify_bank(host.bank, host.state).pcrs
    sb.revoke_image_hash(host.state, b"\x11" * 32)
    after = sb.verify_bank(host.bank, host.state).pcrs
    assert before[7] != after[7]
    assert before[4] == after[4]
    assert before[9] == after[9]


def test_module_change_moves_pcr9(host: Host, tmp_path: Path) -> None:
    before = sb.verify_bank(host.bank, host.state)
    extra = tmp_path / "extra"
    extra.write_bytes(b"more code")
    sb.add_owner_module(host.bank, extra, host.keys.owner, module_paths=before.module_paths)
    after = sb.verify_bank(host.bank, host.state)
    assert before.pcrs[9] != after.pcrs[9]
    assert before.pcrs[0] == after.pcrs[0]


# --- attestation -----------------------------------------------------------------------------

def test_quote_passes(host: Host) -> None:
    verifier = make_verifier(host)
    result = verifier.verify("host-1", quote_for(host, verifier))
    assert result.passed, result


def test_quote_survives_wire_round_trip(host: Host) -> None:
    verifier = make_verifier(host)
    quote = sb.Quote.from_wire(quote_for(host, verifier).to_wire())
    assert verifier.verify("host-1", quote).passed


def test_quote_with_wrong_pcrs_fails(host: Host, tmp_path: Path) -> None:
    verifier = make_verifier(host)
    report = sb.verify_bank(host.bank, host.state)
    extra = tmp_path / "extra"
    extra.write_bytes(b"unexpected module")
    sb.add_owner_module(host.bank, extra, host.keys.owner, module_paths=report.module_paths)
    result = verifier.verify("host-1", quote_for(host, verifier))
    assert not result.passed
    assert result.check == "pcr-mismatch"
    assert "[7, 8, 9]" in result.reason  # owner authority (7), boot.cfg (8), module (9)


def test_quote_signed_by_wrong_key_fails(host: Host) -> None:
    verifier = make_verifier(host)
    report = sb.verify_bank(host.bank, host.state)
    impostor = sb.generate_key_pair("attestation", sb.ALGORITHM_ECDSA_P256)
    quote = sb.create_quote(impostor, "host-1", report.pcrs, verifier.issue_nonce("host-1"))
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "signature")


def test_replayed_quote_fails(host: Host) -> None:
    verifier = make_verifier(host)
    quote = quote_for(host, verifier)
    assert verifier.verify("host-1", quote).passed
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "nonce")


def test_expired_nonce_fails(host: Host) -> None:
    clock = FakeClock()
    verifier = make_verifier(host, clock)
    quote = quote_for(host, verifier)
    clock.now_s += 31.0
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "nonce")


def test_unissued_nonce_fails(host: Host) -> None:
    verifier = make_verifier(host)
    report = sb.verify_bank(host.bank, host.state)
    quote = sb.create_quote(sb.load_attestation_key(host.state), "host-1", report.pcrs, os.urandom(32))
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "nonce")


def test_nonce_of_other_host_fails(host: Host) -> None:
    verifier = make_verifier(host)
    report = sb.verify_bank(host.bank, host.state)
    nonce = verifier.issue_nonce("host-2")
    quote = sb.create_quote(sb.load_attestation_key(host.state), "host-1", report.pcrs, nonce)
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "nonce")


def test_quote_from_unknown_host_fails(host: Host) -> None:
    verifier = make_verifier(host)
    quote = quote_for(host, verifier)
    result = verifier.verify("host-9", quote)
    assert not result.passed
    assert result.check == "host"


def test_quote_with_garbage_attest_fails(host: Host) -> None:
    verifier = make_verifier(host)
    key = sb.load_attestation_key(host.state)
    attest = b"\x00" * 40
    quote = sb.Quote("host-1", attest, key.algorithm, key.sign(attest))
    result = verifier.verify("host-1", quote)
    assert (result.passed, result.check) == (False, "format")


@pytest.mark.parametrize("message", [None, [], {"host_id": "h"}, {
    "host_id": "h", "attest": b"", "algorithm": "ed25519", "signature": b"", "pcr_values": [[0, b"short"]]}])
def test_quote_from_wire_rejects_bad_message(message: object) -> None:
    with pytest.raises(sb.InvalidInput):
        sb.Quote.from_wire(message)


def test_reference_manifest_json_round_trip(host: Host) -> None:
    reference = sb.compute_reference_manifest(host.bank, host.state)
    assert sb.ReferenceManifest.from_json(reference.to_json()) == reference
    with pytest.raises(sb.InvalidInput):
        sb.ReferenceManifest.from_json("{not json")


# --- owner key enrollment --------------------------------------------------------------------

def new_owner_module(host: Host, tmp_path: Path, key: sb.KeyPair) -> None:
    module_paths = [f"modules/{m}.img" for m in MODULES]
    source = tmp_path / "new-owner-tool"
    source.write_bytes(b"tool" * 100)
    sb.add_owner_module(host.bank, source, key, module_paths=module_paths)


def test_enrollment_takes_effect_at_next_boot(host: Host, tmp_path: Path) -> None:
    new_key = sb.generate_key_pair("owner", sb.ALGORITHM_ECDSA_P256, "second owner")
    counter = sb.next_enrollment_counter(host.state)
    request = sb.create_enrollment_request("host-1", new_key.certificate, host.keys.owner, counter)
    pending = sb.submit_enrollment_request(host.state, request)
    assert pending.counter == counter
    new_owner_module(host, tmp_path, new_key)
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(host.bank, host.state)
    assert caught.value.check == "untrusted-key"
    report = sb.boot_host(host.bank, host.state)
    assert report.applied_enrollments == [pending.certificate_sha256]
    assert sb.load_host_state(host.state).boot_count == 1


def test_enrollment_signed_by_non_owner_rejected(host: Host) -> None:
    new_key = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    request = sb.create_enrollment_request("host-1", new_key.certificate, new_key, 1)
    with pytest.raises(sb.EnrollmentRejected) as caught:
        sb.submit_enrollment_request(host.state, request)
    assert "owner key list" in caught.value.reason


def test_enrollment_with_altered_certificate_rejected(host: Host) -> None:
    wanted = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    swapped = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    request = sb.create_enrollment_request("host-1", wanted.certificate, host.keys.owner, 1)
    forged = request.replace(certificate_b64(wanted), certificate_b64(swapped))
    with pytest.raises(sb.EnrollmentRejected) as caught:
        sb.submit_enrollment_request(host.state, forged)
    assert "signature" in caught.value.reason


def certificate_b64(key: sb.KeyPair) -> bytes:
    return base64.b64encode(key.certificate_der)


def test_enrollment_replay_rejected(host: Host) -> None:
    new_key = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    request = sb.create_enrollment_request("host-1", new_key.certificate, host.keys.owner, 1)
    sb.submit_enrollment_request(host.state, request)
    with pytest.raises(sb.EnrollmentRejected) as caught:
        sb.submit_enrollment_request(host.state, request)
    assert "counter" in caught.value.reason


def test_enrollment_for_other_host_rejected(host: Host) -> None:
    new_key = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    request = sb.create_enrollment_request("host-2", new_key.certificate, host.keys.owner, 1)
    with pytest.raises(sb.EnrollmentRejected):
        sb.submit_enrollment_request(host.state, request)


def test_enrollment_garbage_rejected(host: Host) -> None:
    for data in (b"", b"\xff\xfe", b"{}", b'{"format": 1}'):
        with pytest.raises(sb.EnrollmentRejected):
            sb.submit_enrollment_request(host.state, data)


def test_forged_pending_file_not_applied(host: Host) -> None:
    new_key = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519)
    request = sb.create_enrollment_request("host-1", new_key.certificate, new_key, 1)
    (host.state / "owner" / "pending" / "0000000001.json").write_bytes(request)
    report = sb.boot_host(host.bank, host.state)
    assert report.applied_enrollments == []
    assert len(report.rejected_enrollments) == 1
    assert not sb.load_host_state(host.state).owner_keys.contains_certificate(new_key.certificate_der)
