"""A PostgreSQL-sourced schema in Dagster: the warp job lands the tables, its materializations
carry the slot's lag, and the asset checks watch the replication slot."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from cartridge_dagster.assets.keys import raw_key
from cartridge_dagster.assets.warp import build_warp_defs
from cartridge_dagster.config import load_settings
from cartridge_dagster.resources.warp import WarpResource
from tests.conftest import run
from tests.support.pgsource import cast_back_oracle, execute

pytestmark = pytest.mark.integration


def test_warp_job_and_slot_checks(tmp_path: Path, pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.customers (id int PRIMARY KEY, name text)",
        "CREATE TABLE app.orders (id int PRIMARY KEY, customer int, total numeric(29,2))",
        "INSERT INTO app.customers SELECT g, 'c' || g FROM generate_series(1, 40) g",
        "INSERT INTO app.orders SELECT g, g % 40, g * 1.5 FROM generate_series(1, 60) g",
    )
    slot = "cartridge_t_dagster_" + pg_source_url.rsplit("_", 1)[-1]
    path = tmp_path / "cartridge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "postgresql", "connection_string": pg_source_url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [
                    {
                        "name": "shop",
                        "source_database": "app",
                        "target_schema": "raw_shop",
                        "include": ["customers", "orders"],
                        "batching": {"max_batch_size": 50, "max_batch_seconds": 0.2},
                        "warp": {
                            "metrics_port": 0,
                            "idle_checkpoint_seconds": 0.5,
                            "materialization_interval_seconds": 0,
                            "slot_name": slot,
                            "slot_lag_threshold_bytes": 64 * 1024 * 1024,
                        },
                    }
                ],
            }
        )
    )
    settings = load_settings(path)
    defs = dg.Definitions.merge(
        build_warp_defs(settings),
        dg.Definitions(resources={"warp": WarpResource(config_path=str(path))}),
    )
    job = defs.resolve_job_def("warp_shop")
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config={"ops": {"warp_shop_run": {"config": {"stop_when_idle_seconds": 1.0}}}},
        instance=instance,
    )
    assert result.success
    for table, n in (("customers", 40), ("orders", 60)):
        events = instance.fetch_materializations(raw_key("shop", table), limit=100).records
        metadata = [e.asset_materialization.metadata for e in events]  # type: ignore[union-attr]
        assert sum(m["events_applied"].value for m in metadata) == n  # type: ignore[misc]
        assert any("slot_lag_bytes" in m for m in metadata), "the slot's lag is reported"
        result_oracle = run(cast_back_oracle(pg_source_url, "app", table, pg_url, "raw_shop"))
        assert result_oracle.ok, str(result_oracle)

    def evaluate() -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
        checks = build_warp_defs(settings)
        out = dg.materialize(
            [*(checks.assets or []), *(checks.asset_checks or [])],  # type: ignore[list-item]
            selection=dg.AssetSelection.all_asset_checks(),
            resources={"warp": WarpResource(config_path=str(path))},
            instance=instance,
        )
        return {(e.asset_key.path[-1], e.check_name): e for e in out.get_asset_check_evaluations()}

    healthy = evaluate()
    assert len(healthy) == 6  # lag, dead letters and the slot, for each table
    assert all(e.passed for e in healthy.values()), sorted(
        k for k, e in healthy.items() if not e.passed
    )
    slot_meta = healthy[("orders", "slot_lag_under_threshold")].metadata
    assert slot_meta["slot"].value == slot and slot_meta["exists"].value is True

    # the slot is dropped behind warp's back: the check fails and says why
    execute(pg_source_url, f"SELECT pg_drop_replication_slot('{slot}')")
    broken = evaluate()
    failed = broken[("customers", "slot_lag_under_threshold")]
    assert not failed.passed
    assert "does not exist" in (failed.description or "")
    assert broken[("customers", "no_dead_letters")].passed
