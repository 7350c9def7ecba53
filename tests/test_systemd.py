"""systemd/restorer.service passes `systemd-analyze verify` with nothing on stderr (verify exits 0 even
for unknown keys, so any output is a failure), and keeps the properties the notes require."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.settings import Settings

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "restorer.service"
CONFIG = UNIT.parent.parent / "config" / "restorer.example.toml"
UNDER_SYSTEMD = UNIT.parent / "check-under-systemd.sh"
RAY_NODE_UNIT = UNIT.parent / "restorer-ray.service"  # a node of the Ray cluster (docs/deploy.md)
RAY_DROP_IN = UNIT.parent / "restorer.service.d" / "ray.conf"  # the daemon's side of it
RESTORER = Path(sys.executable).parent / "restorer"


def _verify(
    unit_text: str, tmp_path: Path, name: str = "restorer.service"
) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (`make test` installs it)")
    # verify needs ExecStart's binary to exist: point it at this checkout's console script.
    copy = tmp_path / name
    copy.write_text(unit_text.replace("/opt/restorer/.venv/bin/restorer", str(RESTORER)))
    return subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )


def test_unit_passes_systemd_analyze_verify_without_any_output(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_check_catches_an_unknown_key(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="), tmp_path)
    assert "Unknown key" in result.stderr


def _section(name: str, unit_text: str | None = None) -> dict[str, list[str]]:
    # Not configparser: systemd units repeat keys (DeviceAllow=), which it rejects.
    values: dict[str, list[str]] = {}
    section = None
    for line in (UNIT.read_text() if unit_text is None else unit_text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == name:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _service_section(unit_text: str | None = None) -> dict[str, list[str]]:
    return _section("[Service]", unit_text)


def _unit_section() -> dict[str, list[str]]:
    return _section("[Unit]")


def test_unit_keeps_the_gpu_visible_and_the_required_lifecycle() -> None:
    service = _service_section()
    assert service["Type"] == ["notify"] and service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"] and service["UMask"] == ["0007"]
    assert service["StateDirectory"] == ["restorer"] and "WatchdogSec" in service
    assert service["User"] == ["restorer"]
    assert "PrivateDevices" not in service and service["DevicePolicy"] == ["closed"]
    assert any("nvidia" in allowed for allowed in service["DeviceAllow"])
    # TimeoutStopSec must exceed the default stop grace (60 s) so the current image can finish.
    assert int(service["TimeoutStopSec"][0]) > 60


@pytest.mark.parametrize("unit", [UNIT, RAY_NODE_UNIT], ids=lambda path: path.name)
def test_unit_exposure_is_at_most_2(tmp_path: Path, unit: Path) -> None:
    """`systemd-analyze security` rates the unit itself (offline: no running systemd needed)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (`make test` installs it)")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/restorer/.venv/bin/restorer", str(RESTORER)))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_limits_memory_system_calls_proc_and_core_dumps_and_loads_the_token_as_a_credential() -> None:
    service = _service_section()
    assert "MemoryHigh" in service and "MemoryMax" in service
    assert service["SystemCallFilter"] == ["@system-service"]
    assert service["ProtectProc"] == ["invisible"] and service["LimitCORE"] == ["0"]
    assert service["ProcSubset"] == ["pid"]  # test_proc_subset.py restores a photo under it
    assert service["LoadCredential"] == ["api_token:/etc/restorer/api_token"]
    assert "AF_NETLINK" not in service["RestrictAddressFamilies"][0]
    # The token never travels in the unit's environment.
    assert not any("API_TOKEN" in line for line in service.get("Environment", []))


def test_unit_may_write_only_the_four_folders_and_the_state_folder_the_example_config_names() -> None:
    """ProtectSystem=strict + ReadWritePaths: the daemon writes where restorer.toml says and nowhere else
    (not the rest of the share). systemd cannot read the TOML, so the unit names the example's folders
    and this test keeps the two in step; other folders need a drop-in (systemd/README.md)."""
    service, unit = _service_section(), _unit_section()
    config = Settings.load(CONFIG)
    folders = [config.inbox, config.outbox, config.failed_dir, config.archive_dir, config.state_dir]
    assert service["ProtectSystem"] == ["strict"]
    assert [Path(path) for line in service["ReadWritePaths"] for path in line.split()] == folders
    # The state folder is systemd's StateDirectory, and the unit tells the daemon so.
    assert service["Environment"].count(f"RESTORER_STATE_DIR={config.state_dir}") == 1
    assert config.state_dir == Path("/var/lib") / service["StateDirectory"][0]
    assert config.weights_dir.is_relative_to(config.state_dir)  # writable for `weights fetch` too
    # The share is mounted before the service starts: its mount point holds the four folders.
    (share,) = unit["RequiresMountsFor"]
    assert all(folder.parent == Path(share) for folder in folders[:4])


def test_the_gpu_drop_in_gives_the_nvidia_driver_its_proc_files(tmp_path: Path) -> None:
    drop_in = UNIT.parent / "restorer.service.d" / "gpu.conf"
    lines = [line for line in drop_in.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "ProcSubset=all"]
    assert "/proc/driver/nvidia" in drop_in.read_text()  # the comment says why
    # With the drop-in's line the unit still verifies cleanly.
    result = _verify(UNIT.read_text().replace("ProcSubset=pid", "ProcSubset=all"), tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_ray_node_unit_verifies_and_runs_restorer_cluster_as_a_non_root_user_with_a_token_credential(
    tmp_path: Path,
) -> None:
    result = _verify(RAY_NODE_UNIT.read_text(), tmp_path, RAY_NODE_UNIT.name)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    service = _service_section(RAY_NODE_UNIT.read_text())
    assert service["User"] == ["restorer"] and service["Group"] == ["restorer"]
    assert service["ExecStart"] == ["/opt/restorer/.venv/bin/restorer cluster $RAY_NODE"]
    assert service["LoadCredential"] == ["ray_token:/etc/restorer/ray_token"]
    assert "RESTORER_RAY_TOKEN_FILE=%d/ray_token" in service["Environment"]  # the path only
    assert not any("RAY_AUTH_TOKEN" in line for line in service["Environment"])
    assert service["StateDirectory"] == ["restorer"]  # the node's private temp dir is in it
    assert service["LimitCORE"] == ["0"] and service["NoNewPrivileges"] == ["yes"]
    assert "PrivateDevices" not in service and any("nvidia" in d for d in service["DeviceAllow"])
    assert service["CapabilityBoundingSet"] == [""]


def test_the_ray_drop_in_gives_the_daemon_the_token_and_its_local_node(tmp_path: Path) -> None:
    drop_in = RAY_DROP_IN.read_text()
    # The unit with the drop-in's sections appended is what systemd runs: it must still verify cleanly.
    result = _verify(UNIT.read_text() + "\n" + drop_in, tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    service = _service_section(drop_in)
    assert service["LoadCredential"] == ["ray_token:/etc/restorer/ray_token"]
    assert service["Environment"] == ["RESTORER_RAY_TOKEN_FILE=%d/ray_token"]
    assert "Wants=restorer-ray.service" in drop_in and "After=restorer-ray.service" in drop_in


@pytest.mark.skipif(
    os.environ.get("RESTORER_SYSTEMD_TEST") != "1",
    reason="boots systemd in a container (root, debootstrap, minutes): set RESTORER_SYSTEMD_TEST=1 "
    "or run `make systemd-test`",
)
def test_the_unit_restores_a_photo_and_stops_cleanly_under_a_real_systemd() -> None:
    """systemd/check-under-systemd.sh: the unit, unchanged, under systemd as PID 1 (systemd-nspawn)."""
    env = {**os.environ, "VENV": os.environ.get("VENV", sys.prefix)}
    result = subprocess.run(
        [str(UNDER_SYSTEMD)], capture_output=True, text=True, timeout=1800, env=env, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "SUMMARY" in output, output[-8000:]
