"""The init commands as a user meets them: clean errors, help, summary tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import cartridge
from tests.support.init_env import make_env

pytestmark = pytest.mark.integration


def test_generate_before_scan_is_one_clear_line(
    tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, seed=False)
    proc = cartridge("generate", "--config", str(env.config))
    assert proc.returncode == 1
    assert "has not been scanned yet" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = cartridge("generate", "--config", str(env.config), "--input", str(bad))
    assert proc.returncode == 2 and "not a scan output" in proc.stderr
    proc = cartridge("scan", "--config", str(env.config), "--schema", "nope")
    assert proc.returncode == 2 and "no schema named 'nope'" in proc.stderr


def test_scan_and_generate_into_an_output_dir(tmp_path: Path, mongo_url: str, pg_url: str) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, scale=0.005)
    out = tmp_path / "scan.json"
    proc = cartridge("scan", "--config", str(env.config), "--schema", "shop", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    for word in ("collection", "sampled", "orders", "items", "customer_id→customers"):
        assert word in proc.stdout
    models = tmp_path / "models"
    proc = cartridge(
        "generate",
        "--config",
        str(env.config),
        "--input",
        str(out),
        "--output-dir",
        str(models),
        "--ai-provider",
        "none",
    )
    assert proc.returncode == 0, proc.stderr
    assert (models / "shop" / "stg_shop__orders.sql").exists()
    assert "7 file(s) changed" in proc.stdout
    proc = cartridge("schema", "versions", "--config", str(env.config), "--schema", "shop")
    assert proc.returncode == 0 and "v0001" in proc.stdout
