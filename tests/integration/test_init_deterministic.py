"""Deterministic generation: the same source content gives the same bytes, and no new version.

Two independent Cartridge environments (own state directory, own dbt project) scan and generate
from the same demo source, with collections large enough to be *sampled*; every stored schema
file and every generated file must be byte-identical between them. (With MongoDB's random
``$sample``, the sampled percentages in descriptions and the enum values of rare strings moved
from scan to scan.) A rescan of the unchanged source then says so, writes no version and leaves
every generated file untouched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from cartridge_dagster.init.service import generate_schema, scan_and_record
from tests.support.cli import cartridge
from tests.support.init_env import InitEnv, make_env

pytestmark = [pytest.mark.integration]

SAMPLING = {"full_scan_below": 100, "sample_size": 50, "max_sample_size": 250}


def _env(root: Path, mongo_url: str, pg_url: str, *, seed: bool) -> InitEnv:
    root.mkdir()
    env = make_env(root, mongo_url, pg_url, seed=seed)
    config = yaml.safe_load(env.config.read_text(encoding="utf-8"))
    config["schemas"][0]["sampling"] = SAMPLING
    env.config.write_text(yaml.safe_dump(config), encoding="utf-8")
    return env


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_same_source_same_bytes_and_no_new_version(
    tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    first = _env(tmp_path / "a", mongo_url, pg_url, seed=True)
    second = _env(tmp_path / "b", mongo_url, pg_url, seed=False)
    for env in (first, second):
        outcome = asyncio.run(scan_and_record(env.settings(), "shop"))
        assert outcome.stored.status == "created" and outcome.stored.version == 1
        methods = {c: s["sampling"]["method"] for c, s in outcome.scan.collections.items()}
        assert methods["orders"] == "sample" and methods["events"] == "sample", methods
        generate_schema(env.settings(), "shop")

    assert _files(first.state) == _files(second.state)  # v0001.json and latest.json
    generated = _files(first.generated)
    assert len(generated) >= 7 and generated == _files(second.generated)
    models = yaml.safe_load(generated["_shop__models.yml"].decode())["models"]
    described = " ".join(m["description"] for m in models)
    assert "Inferred from a sample of" in described  # sampled statistics are in the text

    before = first.snapshot()
    versions = sorted(p.name for p in first.state.iterdir())
    rescan = cartridge("scan", "--config", str(first.config))
    assert rescan.returncode == 0, rescan.stderr
    assert "shop: unchanged (v0001)" in rescan.stdout
    again = cartridge("generate", "--config", str(first.config))
    assert again.returncode == 0, again.stderr
    assert "0 file(s) changed" in again.stdout
    assert first.snapshot() == before  # same bytes, not even rewritten
    assert sorted(p.name for p in first.state.iterdir()) == versions
