"""Boot faults on a prepared cluster state: each one stops the host's next boot at the named file and check."""

import pytest

import agents.secureboot as sb
from agents.host._boot_faults import inject_boot_fault
from agents.host._measured_boot import boot_from_disk
from agents.host._secure_boot import host_boot_paths, prepare_secure_boot

from _support import dcfleet_command
import subprocess


@pytest.fixture
def state_dir(tmp_path):
    prepare_secure_boot(tmp_path, ["h1"])
    return tmp_path


def test_prepared_host_boots_and_measures(state_dir):
    paths = host_boot_paths(state_dir, "h1")
    outcome = boot_from_disk(paths)
    assert outcome.failure is None
    assert outcome.boot_count == 1
    assert sb.replay_event_log(paths.event_log.read_bytes()) == outcome.report.pcrs


@pytest.mark.parametrize("operation, check", [("tamper", "signature"), ("revoke", "revoked-hash"),
                                              ("rollback", "rollback")])
@pytest.mark.parametrize("component, file", [("loader", "loader.img"), ("kernel", "kernel.img"),
                                             ("vmx", "modules/vmx.img"), ("vsan", "modules/vsan.img")])
def test_boot_fault_names_file_and_check(state_dir, operation, check, component, file):
    paths = host_boot_paths(state_dir, "h1")
    fault = inject_boot_fault(operation, paths, component)
    assert (fault.file, fault.check) == (file, check)
    outcome = boot_from_disk(paths)
    assert outcome.report is None
    assert outcome.failure.path == file
    assert outcome.failure.check == check
    assert not paths.event_log.exists()


def test_boot_fault_rejects_unknown_module(state_dir):
    with pytest.raises(sb.InvalidInput, match="choose one of loader, kernel, verifier, net-driver"):
        inject_boot_fault("tamper", host_boot_paths(state_dir, "h1"), "no-such-module")


def test_boot_fault_rejects_path_as_module(state_dir):
    with pytest.raises(sb.InvalidInput):
        inject_boot_fault("revoke", host_boot_paths(state_dir, "h1"), "../secure-state/config")


def test_prepare_keeps_existing_host_state(state_dir):
    paths = host_boot_paths(state_dir, "h1")
    inject_boot_fault("revoke", paths, "loader")
    prepare_secure_boot(state_dir, ["h1", "h2"])
    assert boot_from_disk(paths).failure.check == "revoked-hash"
    assert boot_from_disk(host_boot_paths(state_dir, "h2")).failure is None


def test_hosts_match_golden_reference_manifest(state_dir):
    prepare_secure_boot(state_dir, ["h1", "h2"])
    reference = sb.ReferenceManifest.from_json((state_dir / "attestation" / "reference-manifest.json").read_text())
    for host_id in ("h1", "h2"):
        pcrs = boot_from_disk(host_boot_paths(state_dir, host_id)).report.pcrs
        assert {index: pcrs[index] for index in reference.selection} == reference.pcrs


def test_inject_without_reboot_cli(state_dir):
    # A stopped cluster: --no-reboot only changes the files, which needs cluster.json for the host list.
    from agents._up import UpOptions, build_config

    config = build_config(UpOptions(state_dir=state_dir, hosts=1, vms=0))
    config.save()
    result = subprocess.run(dcfleet_command("inject", "tamper", "--host", "h1", "--module", "vmx", "--no-reboot",
                                            "--state-dir", str(state_dir)), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "modules/vmx.img fails the signature check" in result.stdout
    unknown = subprocess.run(dcfleet_command("inject", "revoke", "--host", "h9", "--module", "vmx", "--no-reboot",
                                             "--state-dir", str(state_dir)), capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode == 2
    assert "unknown host 'h9'" in unknown.stderr
