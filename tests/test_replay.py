"""`dcfleet replay` end to end on small trace subsets, as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLANETLAB_DAY = REPO / ".." / "shared" / "traces" / "planetlab" / "20110303"


def dcfleet(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "agents", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def subset(tmp_path):
    if not PLANETLAB_DAY.is_dir():
        pytest.skip(f"PlanetLab trace day not found at {PLANETLAB_DAY}")
    directory = tmp_path / "traces"
    directory.mkdir()
    for path in sorted(PLANETLAB_DAY.iterdir())[:60]:
        shutil.copy(path, directory / path.name)
    return directory


def test_replay_writes_summary_and_plots(subset, tmp_path):
    out = tmp_path / "report"
    result = dcfleet("replay", "--trace", str(subset), "--hosts", "40", "--steps", "48", "--report", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("energy_kwh", "migrations", "slatah", "pdm", "slav", "hosts_on_mean"):
        assert key in summary
    assert summary["memory_semantics"] == "cpu-only"
    assert summary["vms"] == 60
    assert summary["slav"] == pytest.approx(summary["slatah"] * summary["pdm"])
    for name in ("hosts_on.png", "cluster_power.png", "utilization.png", "migrations.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "48/48" in result.stderr


def test_replay_dpm_uses_less_energy_than_none(subset):
    energies = {}
    for policy in ("none", "dpm"):
        result = dcfleet("replay", "--trace", str(subset), "--hosts", "40", "--steps", "24", "--policy", policy,
                         "--no-progress")
        assert result.returncode == 0, result.stderr
        energies[policy] = float(result.stdout.split("energy")[1].split("kWh")[0])
    assert energies["dpm"] < energies["none"] / 3


def test_replay_enforced_memory_states_it(subset, tmp_path):
    out = tmp_path / "report"
    result = dcfleet("replay", "--trace", str(subset), "--hosts", "40", "--steps", "12",
                     "--memory-semantics", "enforced", "--report", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory_semantics"] == "enforced"
    assert "memory semantics enforced" in result.stdout
    # 15 VMs each of 870, 1740, 1740 and 613 MB need at least 74445 / 4096 = 18.2 hosts of 4 GB.
    assert summary["hosts_on_min"] >= 19


def test_replay_too_few_hosts_for_enforced_memory(subset):
    result = dcfleet("replay", "--trace", str(subset), "--hosts", "5", "--steps", "4",
                     "--memory-semantics", "enforced", "--no-progress")
    assert result.returncode == 2
    assert "fit on none of the 5 hosts" in result.stderr


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("", None, "empty trace"),
        ("5\n7\nabc\n", 3, "not an integer: 'abc'"),
        ("5\n101\n", 2, "utilization 101 outside 0..100"),
        ("5\n-3\n", 2, "utilization -3 outside 0..100"),
    ],
)
def test_replay_reports_bad_trace_by_file_and_line(tmp_path, content, line, reason):
    directory = tmp_path / "traces"
    directory.mkdir()
    (directory / "a_good").write_text("10\n20\n")
    bad = directory / "b_bad"
    bad.write_text(content)
    result = dcfleet("replay", "--trace", str(directory), "--hosts", "2", "--no-progress")
    assert result.returncode == 2
    where = f"{bad}:{line}" if line is not None else f"{bad}"
    assert f"dcfleet: error: {where}: {reason}" in result.stderr


def test_replay_rejects_missing_directory(tmp_path):
    result = dcfleet("replay", "--trace", str(tmp_path / "nope"), "--no-progress")
    assert result.returncode == 2
    assert "not a directory" in result.stderr
