from pathlib import Path

import pytest

from agents.host._boot import BootFailure, BootKeys, build_bank, raw_public_key, verify_bank


@pytest.fixture
def bank(tmp_path):
    keys = BootKeys.generate()
    path = tmp_path / "bank"
    build_bank(path, keys, {"vmx": b"vmx module", "net": b"net driver"})
    return path, keys


def test_boot_chain_accepts_signed_bank(bank):
    path, keys = bank
    components = verify_bank(path, raw_public_key(keys.firmware))
    assert [c.file for c in components] == ["loader.efi", "kernel", "verifier", "modules/net.mod", "modules/vmx.mod"]


def test_boot_chain_detects_flipped_byte_in_every_file(bank):
    path, keys = bank
    files = sorted(p for p in path.rglob("*") if p.is_file())
    assert len(files) == 10
    for file in files:
        original = file.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        file.write_bytes(bytes(flipped))
        try:
            with pytest.raises(BootFailure) as info:
                verify_bank(path, raw_public_key(keys.firmware))
            component = str(file.relative_to(path)).removesuffix(".sig")
            assert info.value.file == component
            assert info.value.check == "signature"
        finally:
            file.write_bytes(original)


def test_boot_chain_rejects_loader_signed_by_other_key(bank):
    path, _keys = bank
    other = BootKeys.generate()
    with pytest.raises(BootFailure) as info:
        verify_bank(path, raw_public_key(other.firmware))
    assert info.value.file == "loader.efi"


def test_boot_chain_rejects_module_signed_by_loader_key(tmp_path):
    keys = BootKeys.generate()
    path = tmp_path / "bank"
    # A module signed with the loader's key instead of the vendor key.
    build_bank(path, BootKeys(keys.firmware, keys.loader, keys.loader), {"evil": b"x"})
    honest = tmp_path / "honest"
    build_bank(honest, keys, {})
    for name in ("loader.efi", "loader.efi.sig", "kernel", "kernel.sig", "verifier", "verifier.sig"):
        (path / name).write_bytes((honest / name).read_bytes())
    with pytest.raises(BootFailure) as info:
        verify_bank(path, raw_public_key(keys.firmware))
    assert info.value.file == "modules/evil.mod"


def test_boot_chain_reports_missing_signature(bank):
    path, keys = bank
    (path / "kernel.sig").unlink()
    with pytest.raises(BootFailure) as info:
        verify_bank(path, raw_public_key(keys.firmware))
    assert (info.value.file, info.value.check) == ("kernel", "signature")


def test_boot_chain_reports_truncated_signature(bank):
    path, keys = bank
    (path / "verifier.sig").write_bytes(b"\x00" * 10)
    with pytest.raises(BootFailure) as info:
        verify_bank(path, raw_public_key(keys.firmware))
    assert info.value.file == "verifier"


def test_boot_chain_reports_empty_bank(tmp_path):
    with pytest.raises(BootFailure) as info:
        verify_bank(tmp_path, raw_public_key(BootKeys.generate().firmware))
    assert (info.value.file, info.value.check) == ("loader.efi", "presence")
