"""Boot chain tests: key roles, revocation, rollback, state namespace, tampering and bad input."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from edk2toollib.uefi.authenticated_variables_structure_support import (
    EfiSignatureDatabase,
    EfiSignatureDataEfiCertSha256,
    EfiSignatureDataEfiCertX509,
    EfiSignatureDataFactory,
    EfiSignatureList,
)

import agents.secureboot as sb

MODULES = ("nic-driver", "storage-driver", "vm-tools")


@dataclass
class Host:
    root: Path
    keys: sb.KeySet
    src: Path
    bank: Path
    state: Path


def write_sources(src: Path, modules: tuple[str, ...] = MODULES) -> None:
    (src / "modules").mkdir(parents=True)
    for name in ("loader", "kernel", "verifier"):
        (src / name).write_bytes(f"{name} code ".encode() * 40)
    for index, name in enumerate(modules):
        (src / "modules" / name).write_bytes(os.urandom(3000 + index))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    keys = sb.init_keys(tmp_path / "keys", algorithms={"firmware": sb.ALGORITHM_ECDSA_P256})
    sb.provision_host_state(tmp_path / "state", keys, "host-1")
    write_sources(tmp_path / "src")
    sb.build_image(tmp_path / "src", tmp_path / "bank", keys)
    return Host(tmp_path, keys, tmp_path / "src", tmp_path / "bank", tmp_path / "state")


def rejected(host: Host) -> sb.BootRejected:
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(host.bank, host.state)
    return caught.value


def bank_files(bank: Path) -> list[str]:
    return sorted(p.relative_to(bank).as_posix() for p in bank.rglob("*") if p.is_file())


# --- key roles -------------------------------------------------------------------------------

def test_bank_boots_with_each_role(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    authorities = {c.path: c.authority for c in report.components}
    assert authorities["loader.img"] == "db"
    assert authorities["kernel.img"] == "loader"
    assert authorities["verifier.img"] == "loader"
    assert authorities["boot.cfg"] == "vendor"
    assert authorities["modules/nic-driver.img"] == "vendor"
    assert report.module_paths == [f"modules/{name}.img" for name in MODULES]


def test_algorithm_recorded_per_component(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    algorithms = {c.path: c.algorithm for c in report.components}
    assert algorithms["loader.img"] == sb.ALGORITHM_ECDSA_P256
    assert algorithms["kernel.img"] == sb.ALGORITHM_ED25519


def test_firmware_rejects_loader_not_in_db(host: Host, tmp_path: Path) -> None:
    other = sb.init_keys(tmp_path / "other-keys")
    shutil.rmtree(host.state)
    sb.provision_host_state(host.state, other, "host-1")
    error = rejected(host)
    assert error.path == "loader.img"
    assert error.check == "untrusted-key"


def test_firmware_rejects_loader_signed_by_vendor(host: Host) -> None:
    sb.sign_bank_file(host.bank, "loader.img", host.keys.vendor)
    error = rejected(host)
    assert (error.path, error.check) == ("loader.img", "untrusted-key")


def test_loader_rejects_kernel_signed_by_firmware(host: Host) -> None:
    sb.sign_bank_file(host.bank, "kernel.img", host.keys.firmware)
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img", "untrusted-key")


def test_loader_rejects_verifier_signed_by_vendor(host: Host) -> None:
    sb.sign_bank_file(host.bank, "verifier.img", host.keys.vendor)
    error = rejected(host)
    assert (error.path, error.check) == ("verifier.img", "untrusted-key")


def test_verifier_rejects_module_signed_by_loader(host: Host) -> None:
    sb.sign_bank_file(host.bank, "modules/vm-tools.img", host.keys.loader)
    error = rejected(host)
    assert (error.path, error.check) == ("modules/vm-tools.img", "untrusted-key")


def test_verifier_rejects_module_signed_by_stranger(host: Host) -> None:
    stranger = sb.generate_key_pair("owner", sb.ALGORITHM_ED25519, "someone else")
    sb.sign_bank_file(host.bank, "modules/nic-driver.img", stranger)
    error = rejected(host)
    assert (error.path, error.check) == ("modules/nic-driver.img", "untrusted-key")
    assert "someone else" in error.reason


def test_verifier_accepts_owner_signed_module(host: Host, tmp_path: Path) -> None:
    report = sb.verify_bank(host.bank, host.state)
    extra = tmp_path / "owner-agent"
    extra.write_bytes(b"owner code" * 100)
    sb.add_owner_module(host.bank, extra, host.keys.owner, module_paths=report.module_paths)
    report = sb.verify_bank(host.bank, host.state)
    authorities = {c.path: c.authority for c in report.components}
    assert authorities["modules/owner-agent.img"] == "owner"
    assert authorities["boot.cfg"] == "owner"


def test_verifier_rejects_owner_module_of_other_owner(host: Host, tmp_path: Path) -> None:
    other_owner = sb.generate_key_pair("owner", sb.ALGORITHM_ECDSA_P256, "other owner")
    extra = tmp_path / "owner-agent"
    extra.write_bytes(b"owner code" * 100)
    sb.add_owner_module(host.bank, extra, other_owner, module_paths=[f"modules/{m}.img" for m in MODULES])
    error = rejected(host)
    assert (error.path, error.check) == ("boot.cfg", "untrusted-key")


def test_build_signs_owner_modules_with_owner_key(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    sb.provision_host_state(tmp_path / "state", keys, "host-1")
    write_sources(tmp_path / "src")
    sb.build_image(tmp_path / "src", tmp_path / "bank", keys, owner_modules={"vm-tools"})
    report = sb.verify_bank(tmp_path / "bank", tmp_path / "state")
    authorities = {c.path: c.authority for c in report.components}
    assert authorities["modules/vm-tools.img"] == "owner"
    assert authorities["modules/nic-driver.img"] == "vendor"


# --- revocation and rollback -----------------------------------------------------------------

def test_revoked_module_hash_rejected(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    digest = next(c.sha256 for c in report.components if c.path == "modules/storage-driver.img")
    sb.revoke_image_hash(host.state, digest)
    error = rejected(host)
    assert (error.path, error.check) == ("modules/storage-driver.img", "revoked-hash")


def test_revoked_loader_hash_rejected(host: Host) -> None:
    report = sb.verify_bank(host.bank, host.state)
    sb.revoke_image_hash(host.state, report.components[0].sha256)
    error = rejected(host)
    assert (error.path, error.check) == ("loader.img", "revoked-hash")


def test_revoked_vendor_certificate_rejected(host: Host) -> None:
    sb.revoke_certificate(host.state, host.keys.vendor.certificate)
    error = rejected(host)
    assert (error.path, error.check) == ("boot.cfg", "revoked-cert")


def test_revoked_firmware_certificate_rejected(host: Host) -> None:
    sb.revoke_certificate(host.state, host.keys.firmware.certificate)
    error = rejected(host)
    assert (error.path, error.check) == ("loader.img", "revoked-cert")


def test_rollback_below_sbat_level_rejected(host: Host) -> None:
    sb.raise_sbat_level(host.state, "storage-driver", 2)
    error = rejected(host)
    assert (error.path, error.check) == ("modules/storage-driver.img", "rollback")
    assert "generation 1" in error.reason


def test_rollback_kernel_rejected(host: Host) -> None:
    sb.raise_sbat_level(host.state, "kernel", 3)
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img", "rollback")


def test_generation_at_sbat_level_boots(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    sb.provision_host_state(tmp_path / "state", keys, "host-1")
    write_sources(tmp_path / "src")
    sb.build_image(tmp_path / "src", tmp_path / "bank", keys, generations={"storage-driver": 2, "kernel": 5})
    sb.raise_sbat_level(tmp_path / "state", "storage-driver", 2)
    sb.raise_sbat_level(tmp_path / "state", "kernel", 4)
    report = sb.verify_bank(tmp_path / "bank", tmp_path / "state")
    sbat = {c.path: c.sbat for c in report.components}
    assert sbat["modules/storage-driver.img"] == (("storage-driver", 2),)
    assert sbat["kernel.img"] == (("kernel", 5),)


def test_sbat_level_cannot_be_lowered(host: Host) -> None:
    sb.raise_sbat_level(host.state, "kernel", 3)
    with pytest.raises(sb.InvalidInput):
        sb.raise_sbat_level(host.state, "kernel", 2)


# --- state namespace -------------------------------------------------------------------------

def test_module_symlink_into_state_rejected(host: Host) -> None:
    target = host.bank / "modules" / "vm-tools.img"
    target.unlink()
    target.symlink_to(host.state / "config.json")
    error = rejected(host)
    assert (error.path, error.check) == ("modules/vm-tools.img", "state-namespace")


def test_boot_cfg_dotdot_into_state_rejected(host: Host) -> None:
    paths = [f"modules/{m}.img" for m in MODULES] + ["../state/nvram/db.esl"]
    sb.write_boot_config(host.bank, paths, host.keys.vendor)
    error = rejected(host)
    assert (error.path, error.check) == ("../state/nvram/db.esl", "state-namespace")


def test_boot_cfg_symlinked_directory_into_state_rejected(host: Host) -> None:
    (host.bank / "extra").symlink_to(host.state / "owner", target_is_directory=True)
    paths = [f"modules/{m}.img" for m in MODULES] + ["extra/MokList.esl"]
    sb.write_boot_config(host.bank, paths, host.keys.vendor)
    error = rejected(host)
    assert (error.path, error.check) == ("extra/MokList.esl", "state-namespace")


def test_boot_cfg_path_outside_bank_rejected(host: Host) -> None:
    sb.write_boot_config(host.bank, ["../src/modules/nic-driver"], host.keys.vendor)
    error = rejected(host)
    assert error.check == "path"


def test_boot_cfg_absolute_path_rejected(host: Host) -> None:
    sb.write_boot_config(host.bank, [str(host.bank / "modules" / "nic-driver.img")], host.keys.vendor)
    error = rejected(host)
    assert error.check == "path"


def test_boot_cfg_dotdot_inside_bank_rejected(host: Host) -> None:
    sb.write_boot_config(host.bank, ["modules/../modules/nic-driver.img"], host.keys.vendor)
    error = rejected(host)
    assert (error.path, error.check) == ("modules/../modules/nic-driver.img", "path")


def test_bank_inside_state_rejected(host: Host) -> None:
    inner = host.state / "bank"
    shutil.copytree(host.bank, inner)
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(inner, host.state)
    assert caught.value.check == "state-namespace"


# --- tampering -------------------------------------------------------------------------------

def test_flipped_byte_detected_in_every_file(host: Host) -> None:
    files = bank_files(host.bank)
    assert len(files) == 2 * (4 + len(MODULES))
    for relative in files:
        path = host.bank / relative
        original = path.read_bytes()
        for offset in (0, len(original) // 2, len(original) - 1):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01
            path.write_bytes(bytes(damaged))
            with pytest.raises(sb.BootRejected) as caught:
                sb.verify_bank(host.bank, host.state)
            assert caught.value.path == relative, f"flip at {relative}+{offset}: {caught.value}"
        path.write_bytes(original)
    sb.verify_bank(host.bank, host.state)


def test_unlisted_module_rejected(host: Host) -> None:
    (host.bank / "modules" / "rootkit.img").write_bytes(b"unsigned code")
    error = rejected(host)
    assert (error.path, error.check) == ("modules/rootkit.img", "unlisted")


def test_missing_signature_rejected(host: Host) -> None:
    (host.bank / "modules" / "nic-driver.img.sig").unlink()
    error = rejected(host)
    assert (error.path, error.check) == ("modules/nic-driver.img", "signature")


def test_signature_of_other_file_rejected(host: Host) -> None:
    shutil.copy(host.bank / "modules" / "nic-driver.img.sig", host.bank / "modules" / "vm-tools.img.sig")
    error = rejected(host)
    assert (error.path, error.check) == ("modules/vm-tools.img.sig", "signature")


def test_module_in_kernel_slot_rejected(host: Host) -> None:
    shutil.copy(host.bank / "modules" / "nic-driver.img", host.bank / "kernel.img")
    sb.sign_bank_file(host.bank, "kernel.img", host.keys.loader)
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img", "kind")


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"{", b"\x00" * 64, os.urandom(300), b"[]\n"])
def test_garbage_signature_file_rejected(host: Host, content: bytes) -> None:
    (host.bank / "kernel.img.sig").write_bytes(content)
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img.sig", "format")


def test_truncated_signature_file_rejected(host: Host) -> None:
    path = host.bank / "verifier.img.sig"
    data = path.read_bytes()
    for length in (1, len(data) // 3, len(data) - 2):
        path.write_bytes(data[:length])
        error = rejected(host)
        assert (error.path, error.check) == ("verifier.img.sig", "format")


def test_unknown_algorithm_rejected(host: Host) -> None:
    path = host.bank / "kernel.img.sig"
    path.write_bytes(path.read_bytes().replace(b'"algorithm":"ed25519"', b'"algorithm":"rsa-pss-sha256"'))
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img.sig", "algorithm")
    assert "rsa-pss-sha256" in error.reason


def test_algorithm_not_matching_key_rejected(host: Host) -> None:
    path = host.bank / "kernel.img.sig"
    path.write_bytes(path.read_bytes().replace(b'"algorithm":"ed25519"', b'"algorithm":"ecdsa-p256-sha256"'))
    error = rejected(host)
    assert (error.path, error.check) == ("kernel.img.sig", "algorithm")


def test_algorithm_not_allowed_by_host_rejected(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    sb.provision_host_state(tmp_path / "state", keys, "host-1", allowed_algorithms=(sb.ALGORITHM_ECDSA_P256,))
    write_sources(tmp_path / "src")
    sb.build_image(tmp_path / "src", tmp_path / "bank", keys)
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(tmp_path / "bank", tmp_path / "state")
    assert (caught.value.path, caught.value.check) == ("loader.img.sig", "algorithm")


def test_corrupt_db_rejected(host: Host) -> None:
    db_path = host.state / "nvram" / "db.esl"
    db_path.write_bytes(db_path.read_bytes()[:-10])
    error = rejected(host)
    assert error.path == str(db_path)
    assert error.check == "format"


def test_garbage_dbx_rejected(host: Host) -> None:
    dbx_path = host.state / "nvram" / "dbx.esl"
    dbx_path.write_bytes(os.urandom(200))
    error = rejected(host)
    assert (error.path, error.check) == (str(dbx_path), "format")


def test_empty_bank_rejected(host: Host, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bank"
    empty.mkdir()
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(empty, host.state)
    assert caught.value.check == "format"
    assert "empty" in caught.value.reason


def test_missing_bank_rejected(host: Host, tmp_path: Path) -> None:
    with pytest.raises(sb.BootRejected) as caught:
        sb.verify_bank(tmp_path / "no-such-bank", host.state)
    assert caught.value.check == "missing"


def test_bank_without_loader_rejected(host: Host) -> None:
    (host.bank / "loader.img").unlink()
    error = rejected(host)
    assert (error.path, error.check) == ("loader.img", "missing")


def test_build_rejects_missing_stage_source(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "loader").write_bytes(b"x")
    with pytest.raises(sb.InvalidInput) as caught:
        sb.build_image(tmp_path / "src", tmp_path / "bank", keys)
    assert "kernel" in str(caught.value)


# --- keys ------------------------------------------------------------------------------------

def test_init_keys_writes_private_keys_0600(tmp_path: Path) -> None:
    sb.init_keys(tmp_path / "keys")
    for role in sb.ROLES:
        assert (tmp_path / "keys" / f"{role}.key.pem").stat().st_mode & 0o777 == 0o600


def test_init_keys_never_overwrites(tmp_path: Path) -> None:
    sb.init_keys(tmp_path / "keys")
    with pytest.raises(sb.InvalidInput):
        sb.init_keys(tmp_path / "keys")


def test_load_keys_round_trip(tmp_path: Path) -> None:
    created = sb.init_keys(tmp_path / "keys", algorithms={"vendor": sb.ALGORITHM_ECDSA_P256})
    loaded = sb.load_keys(tmp_path / "keys")
    assert loaded.vendor.algorithm == sb.ALGORITHM_ECDSA_P256
    assert loaded.owner.certificate_der == created.owner.certificate_der
    assert loaded.loader.private_key is not None


def test_init_keys_db_contains_firmware_certificate(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    db = sb.decode_signature_database((tmp_path / "keys" / "db.esl").read_bytes())
    assert db.certificates_der == [keys.firmware.certificate_der]
    assert (tmp_path / "keys" / "dbx.esl").read_bytes() == b""


# --- signature databases and edk2-pytool-library -----------------------------------------------

def sample_database(keys: sb.KeySet) -> sb.SignatureDatabase:
    database = sb.SignatureDatabase()
    database.add_certificate(keys.firmware.certificate_der)
    database.add_certificate(keys.vendor.certificate_der)
    database.add_sha256(bytes(range(32)))
    database.add_sha256(bytes(range(32, 64)))
    return database


def test_sigdb_decoded_by_edk2(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys", algorithms={"vendor": sb.ALGORITHM_ECDSA_P256})
    encoded = sample_database(keys).encode()
    edk2 = EfiSignatureDatabase(filestream=io.BytesIO(encoded))
    assert edk2.encode() == encoded
    x509_entries = [d.signature_data for esl in edk2.esl_list for d in esl.signature_data_list
                    if esl.signature_type == EfiSignatureDataFactory.EFI_CERT_X509_GUID]
    assert x509_entries == [keys.firmware.certificate_der, keys.vendor.certificate_der]


def test_sigdb_decodes_edk2_output(tmp_path: Path) -> None:
    keys = sb.init_keys(tmp_path / "keys")
    owner = uuid.UUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")
    cert_list = EfiSignatureList(typeguid=EfiSignatureDataFactory.EFI_CERT_X509_GUID)
    cert_list.AddSignatureHeader(None, SigSize=16 + len(keys.owner.certificate_der))
    cert_list.AddSignatureData(EfiSignatureDataEfiCertX509(cert=keys.owner.certificate_der, sigowner=owner))
    hash_list = EfiSignatureList(typeguid=EfiSignatureDataFactory.EFI_CERT_SHA256_GUID)
    hash_list.AddSignatureHeader(None, SigSize=48)
    hash_list.AddSignatureData(EfiSignatureDataEfiCertSha256(digest=b"\xab" * 32, sigowner=owner))
    encoded = EfiSignatureDatabase(esl_list=[cert_list, hash_list]).encode()
    database = sb.decode_signature_database(encoded)
    assert database.certificates_der == [keys.owner.certificate_der]
    assert database.sha256_digests == [b"\xab" * 32]
    assert database.entries[0].owner == owner
    assert database.encode() == encoded


def test_sigdb_truncations_raise_malformed(tmp_path: Path) -> None:
    encoded = sample_database(sb.init_keys(tmp_path / "keys")).encode()
    boundaries = set()
    offset = 0
    while offset < len(encoded):
        boundaries.add(offset)
        offset += int.from_bytes(encoded[offset + 16 : offset + 20], "little")
    for length in range(1, len(encoded)):
        if length in boundaries:
            sb.decode_signature_database(encoded[:length])
            continue
        with pytest.raises(sb.SignatureDatabaseMalformed):
            sb.decode_signature_database(encoded[:length])


def test_sigdb_unknown_signature_type_rejected() -> None:
    bogus_type = uuid.UUID("3c5766e8-269c-4e34-aa14-ed776e85b3b6")  # EFI_CERT_RSA2048_GUID
    data = bogus_type.bytes_le + (28 + 16 + 256).to_bytes(4, "little") + bytes(4) + (16 + 256).to_bytes(4, "little")
    with pytest.raises(sb.SignatureDatabaseMalformed) as caught:
        sb.decode_signature_database(data + bytes(16 + 256))
    assert "SignatureType" in str(caught.value)


# --- public surface --------------------------------------------------------------------------

def test_package_exports() -> None:
    public = {name for name in dir(sb) if not name.startswith("_")}
    assert public == set(sb.__all__)
    for name in ("build_image", "verify_bank", "boot_host", "init_keys", "provision_host_state", "create_quote",
                 "QuoteVerifier", "BootRejected", "compute_reference_manifest", "submit_enrollment_request"):
        assert name in sb.__all__
