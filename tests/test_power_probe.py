"""`dcfleet host-power probe` on sysfs trees built in tmp_path, and on a machine without them."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def probe(cpu_root, powercap_root):
    return subprocess.run(
        [sys.executable, "-m", "agents", "host-power", "probe", "--interval", "0.1",
         "--sysfs-cpu", str(cpu_root), "--sysfs-powercap", str(powercap_root)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_probe_reads_idle_states_and_energy(tmp_path):
    for cpu in ("cpu0", "cpu1"):
        for index, name in enumerate(("POLL", "C1", "C6")):
            state = tmp_path / "cpu" / cpu / "cpuidle" / f"state{index}"
            state.mkdir(parents=True)
            (state / "name").write_text(name + "\n")
            (state / "time").write_text("1000\n")
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123456\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    result = probe(tmp_path / "cpu", tmp_path / "powercap")
    assert result.returncode == 0, result.stderr
    assert "cpu0" in result.stdout and "C6" in result.stdout
    assert "intel-rapl:0 (package-0)" in result.stdout


def test_probe_says_when_counters_are_missing(tmp_path):
    result = probe(tmp_path / "no-cpu", tmp_path / "no-powercap")
    assert result.returncode == 0, result.stderr
    assert "cpuidle: not available" in result.stdout
    assert "powercap: not available" in result.stdout
