"""Secure boot in a running cluster: a revoked loader and a replaced attestation key keep hosts
out of service, and an injected fault stops a host's next boot."""

import hashlib
import json
import signal
import subprocess
import time

from cryptography.hazmat.primitives import serialization

import agents.secureboot as sb
from agents._up import UpOptions, build_config, prepare_state
from agents.host._secure_boot import host_boot_paths

from _support import dcfleet_command, processes_mentioning

CLUSTER_TIMEOUT_S = 60


def read_events(state_dir):
    result = subprocess.run(dcfleet_command("events", "--state-dir", str(state_dir), "--json"),
                            capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in result.stdout.splitlines()] if result.returncode == 0 else []


def wait_for_events(state_dir, condition, timeout_s=CLUSTER_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = read_events(state_dir)
        if condition(events):
            return events
        time.sleep(1)
    raise AssertionError(f"condition not met within {timeout_s} s; events: {[e['type'] for e in read_events(state_dir)]}")


def of_type(events, event_type, **match):
    return [e["data"] for e in events if e["type"] == event_type and all(e["data"].get(k) == v for k, v in match.items())]


def prepare_faulty_state(state_dir):
    """h2: its loader's SHA-256 in its dbx. h3: its attestation key replaced after enrollment."""
    config = build_config(UpOptions(state_dir=state_dir, hosts=3, vms=0))
    prepare_state(config)
    h2 = host_boot_paths(state_dir, "h2")
    sb.revoke_image_hash(h2.state, hashlib.sha256((h2.bank / "loader.img").read_bytes()).digest())
    replacement = sb.generate_key_pair("attestation", sb.ALGORITHM_ED25519, "replaced attestation key")
    attestation_dir = host_boot_paths(state_dir, "h3").state / "attestation"
    (attestation_dir / "ak.key.pem").write_bytes(replacement.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (attestation_dir / "ak.crt.pem").write_bytes(replacement.certificate.public_bytes(serialization.Encoding.PEM))


def test_cluster_quarantines_revoked_loader_and_bad_quote(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    prepare_faulty_state(state)
    process = subprocess.Popen(
        dcfleet_command("up", "--state-dir", str(state), "--hosts", "3", "--vms", "4", "--power-interval", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        events = wait_for_events(state, lambda ev: len(of_type(ev, "vm.placed")) == 4
                                 and len({q["host"] for q in of_type(ev, "host.quarantined")}) == 2)

        failed = of_type(events, "host.boot_failed", host="h2")
        assert failed and failed[0]["file"] == "loader.img"
        assert failed[0]["check"] == "revoked-hash"
        h2_quarantine = of_type(events, "host.quarantined", host="h2")
        assert h2_quarantine[0]["check"] == "boot-failed"
        assert "loader.img: revoked-hash" in h2_quarantine[0]["reason"]
        h3_quarantine = of_type(events, "host.quarantined", host="h3")
        assert h3_quarantine[0]["check"] == "signature"
        assert of_type(events, "host.booted", host="h3"), "h3 boots; only its quote is bad"
        assert {placed["host"] for placed in of_type(events, "vm.placed")} == {"h1"}

        injected = subprocess.run(
            dcfleet_command("inject", "rollback", "--host", "h1", "--module", "vmx", "--state-dir", str(state)),
            capture_output=True, text=True, timeout=60,
        )
        assert injected.returncode == 0, injected.stdout + injected.stderr
        assert "host.boot_failed file=modules/vmx.img check=rollback" in injected.stdout
        # A boot failure at run time quarantines the host at once, not at the next placement.
        events = wait_for_events(state, lambda ev: of_type(ev, "host.quarantined", host="h1"))
        h1_quarantine = of_type(events, "host.quarantined", host="h1")
        assert h1_quarantine[0]["check"] == "boot-failed"
        assert "rollback" in h1_quarantine[0]["reason"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0
    assert processes_mentioning(str(state)) == []
    events = read_events(state)
    assert of_type(events, "host.boot_failed", host="h1", file="modules/vmx.img", check="rollback")
    assert not [p for p in of_type(events, "vm.placed") if p["host"] in ("h2", "h3")]
