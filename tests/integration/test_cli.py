"""The real `cartridge` command: clear verdicts, one-line errors, non-zero exits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.cli import cartridge

pytestmark = pytest.mark.integration


def config_file(tmp_path: Path, **overrides: object) -> Path:
    data: dict[str, object] = {
        "source": {"connection_string": f"mongoeco://{tmp_path / 'src.sqlite'}"},
        "destination": {"connection_string": "postgresql://cartridge@127.0.0.1:1/x"},
        "schemas": [{"name": "shop", "source_database": "shop"}],
        "state_dir": str(tmp_path / "state"),
    }
    data.update(overrides)
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_clean_error(proc, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_validate_prints_a_verdict(tmp_path: Path) -> None:
    proc = cartridge("validate", "--config", str(config_file(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert "shop" in proc.stdout


def test_config_error_names_file_and_field(tmp_path: Path) -> None:
    path = config_file(tmp_path, mode="sideways")
    proc = cartridge("validate", "--config", str(path))
    assert_clean_error(proc, 2, str(path), "mode:")


def test_bad_connection_string_is_one_clear_message(tmp_path: Path) -> None:
    path = config_file(tmp_path, source={"connection_string": "mongodb://admin:p@ss@db:27017/"})
    proc = cartridge("validate", "--config", str(path))
    assert_clean_error(proc, 2, "source.connection_string", "URL-encode")
    assert "p@ss" not in proc.stderr


def test_unreachable_database_is_one_clear_message(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        destination={"connection_string": "postgresql://cartridge:hunter2@127.0.0.1:1/x"},
    )
    proc = cartridge("validate", "--config", str(path), "--check-connections")
    assert_clean_error(proc, 3, "cannot connect to PostgreSQL at postgresql://***@127.0.0.1:1/x")
    assert "hunter2" not in proc.stderr + proc.stdout


def test_missing_config_and_usage_errors(tmp_path: Path) -> None:
    proc = cartridge("validate", cwd=tmp_path)
    assert_clean_error(proc, 2, "no configuration file")
    proc = cartridge("validate", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_warp_alias_and_env_override(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    proc = cartridge(
        "validate",
        "--config",
        str(path),
        env={"CARTRIDGE_WARP_SOURCE__CONNECTION_STRING": "mongodb://u:s3cret@h1:27017/"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "mongodb://***@h1:27017/" in proc.stdout
    assert "s3cret" not in proc.stdout


def test_services_lifecycle_and_demo_seed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = cartridge("services", "up", "--state-dir", str(state), "--ephemeral")
    try:
        assert up.returncode == 0, up.stderr
        url = cartridge("services", "url", "--state-dir", str(state))
        assert url.stdout.startswith("postgresql://cartridge@127.0.0.1:")
        path = config_file(tmp_path, destination={"connection_string": "local"})
        ok = cartridge("validate", "--config", str(path), "--check-connections")
        assert ok.returncode == 0, ok.stderr
        assert "connections: ok" in ok.stdout
        seed = cartridge("demo", "seed", "--config", str(path), "--scale", "0.01")
        assert seed.returncode == 0, seed.stderr
        assert "seeded customers=20" in seed.stdout
        again = cartridge("demo", "seed", "--config", str(path), "--if-empty")
        assert "already has data" in again.stdout
        traffic = cartridge(
            "demo", "traffic", "--config", str(path), "--max-ops", "20", "--rate", "0"
        )
        assert traffic.returncode == 0, traffic.stderr
        assert "traffic:" in traffic.stdout
    finally:
        down = cartridge("services", "down", "--state-dir", str(state))
        assert down.returncode == 0
    status = cartridge("services", "status", "--state-dir", str(state))
    assert status.returncode == 1
    assert "stopped" in status.stdout
