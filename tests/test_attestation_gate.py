"""Attestation decisions and the per-boot cache, without a bus."""

import pytest
from cryptography.hazmat.primitives import serialization

import agents.secureboot as sb
from agents._attestation import (
    ATTESTED,
    QUARANTINE,
    UNAVAILABLE,
    AttestationLedger,
    Verdict,
    judge_quote_reply,
    load_verifier,
)
from agents.host._measured_boot import boot_from_disk, quote_pcrs
from agents.host._secure_boot import host_boot_paths, prepare_secure_boot


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("attest")
    prepare_secure_boot(state_dir, ["h1", "h2"])
    return state_dir


def booted_reply(state_dir, host_id, nonce):
    paths = host_boot_paths(state_dir, host_id)
    outcome = boot_from_disk(paths)
    assert outcome.failure is None
    quote = quote_pcrs(paths, host_id, outcome.report.pcrs, nonce, outcome.boot_count)
    return {"power_state": "On", "booted": True, "boot_count": outcome.boot_count, "boot_failure": None,
            "quote": quote}


def test_good_quote_is_attested(cluster):
    verifier = load_verifier(cluster, ["h1", "h2"])
    nonce = verifier.issue_nonce("h1")
    verdict = judge_quote_reply("h1", booted_reply(cluster, "h1", nonce), verifier)
    assert verdict.outcome == ATTESTED


def test_replayed_quote_is_quarantined(cluster):
    verifier = load_verifier(cluster, ["h1", "h2"])
    reply = booted_reply(cluster, "h1", verifier.issue_nonce("h1"))
    assert judge_quote_reply("h1", reply, verifier).attested
    replayed = judge_quote_reply("h1", reply, verifier)
    assert (replayed.outcome, replayed.check) == (QUARANTINE, "nonce")


def test_replaced_attestation_key_is_quarantined(tmp_path):
    prepare_secure_boot(tmp_path, ["h1"])
    replacement = sb.generate_key_pair("attestation", sb.ALGORITHM_ED25519, "impostor")
    attestation_dir = host_boot_paths(tmp_path, "h1").state / "attestation"
    (attestation_dir / "ak.key.pem").write_bytes(replacement.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (attestation_dir / "ak.crt.pem").write_bytes(replacement.certificate.public_bytes(serialization.Encoding.PEM))
    verifier = load_verifier(tmp_path, ["h1"])
    verdict = judge_quote_reply("h1", booted_reply(tmp_path, "h1", verifier.issue_nonce("h1")), verifier)
    assert verdict.outcome == QUARANTINE
    assert verdict.check == "signature"


def test_changed_pcrs_are_quarantined(cluster):
    verifier = load_verifier(cluster, ["h1", "h2"])
    nonce = verifier.issue_nonce("h2")
    paths = host_boot_paths(cluster, "h2")
    pcrs = dict(boot_from_disk(paths).report.pcrs)
    pcrs[9] = bytes(32)
    reply = {"power_state": "On", "booted": True, "boot_count": 1, "boot_failure": None,
             "quote": quote_pcrs(paths, "h2", pcrs, nonce, 1)}
    verdict = judge_quote_reply("h2", reply, verifier)
    assert (verdict.outcome, verdict.check) == (QUARANTINE, "pcr-mismatch")
    assert "[9]" in verdict.reason


def test_boot_failure_is_quarantined(cluster):
    verifier = load_verifier(cluster, ["h1"])
    reply = {"power_state": "On", "booted": False, "boot_count": 3, "quote": None,
             "boot_failure": {"file": "loader.img", "check": "revoked-hash", "reason": "listed in dbx"}}
    verdict = judge_quote_reply("h1", reply, verifier)
    assert (verdict.outcome, verdict.check, verdict.boot_count) == (QUARANTINE, "boot-failed", 3)
    assert verdict.reason == "loader.img: revoked-hash check failed: listed in dbx"


@pytest.mark.parametrize("reply, outcome", [
    ({"power_state": "Off", "booted": False, "boot_count": 1}, UNAVAILABLE),
    ({"power_state": "On", "booted": False, "boot_count": 1, "boot_failure": None}, UNAVAILABLE),
    ({"power_state": "On", "booted": True, "boot_count": 1, "quote": None}, QUARANTINE),
    ({"power_state": "On", "booted": "yes", "boot_count": 1}, QUARANTINE),
    (["not", "a", "map"], QUARANTINE),
])
def test_reply_shapes(cluster, reply, outcome):
    assert judge_quote_reply("h1", reply, load_verifier(cluster, ["h1"])).outcome == outcome


def test_host_without_enrolled_certificate_is_untrusted(cluster):
    verifier = load_verifier(cluster, ["h2"])
    verdict = judge_quote_reply("h1", booted_reply(cluster, "h1", verifier.issue_nonce("h1")), verifier)
    assert verdict.check == "untrusted-key"


def test_ledger_caches_until_next_boot():
    ledger = AttestationLedger()
    assert ledger.record("h1", Verdict(ATTESTED, boot_count=4)) is False
    ledger.on_booted("h1", 4)
    assert ledger.cached("h1").attested
    ledger.on_booted("h1", 5)
    assert ledger.cached("h1") is None


def test_ledger_reports_quarantine_once():
    ledger = AttestationLedger()
    assert ledger.record("h2", Verdict(QUARANTINE, "signature", "bad", 1)) is True
    assert ledger.record("h2", Verdict(QUARANTINE, "signature", "bad", 1)) is False
    assert ledger.quarantined_hosts() == {"h2"}
    ledger.forget("h2")
    assert not ledger.is_quarantined("h2")


def test_ledger_ignores_unavailable():
    ledger = AttestationLedger()
    assert ledger.record("h3", Verdict(UNAVAILABLE, "power", "host is Off")) is False
    assert ledger.cached("h3") is None
