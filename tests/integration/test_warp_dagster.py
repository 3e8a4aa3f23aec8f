"""Warp in Dagster: the job materializes raw tables, the sensor supervises, cancel is clean."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import dagster as dg
import orjson
import pytest
import yaml

from cartridge_dagster.assets.keys import raw_key
from cartridge_dagster.assets.warp import build_warp_defs
from cartridge_dagster.config import load_settings
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.resources.warp import WarpResource
from cartridge_dagster.sensors.warp import build_warp_supervisor
from tests.conftest import run
from tests.support.warp import assert_oracle, checkpoint_row, run_warp

pytestmark = pytest.mark.integration

COLLS = ["customers", "orders"]


def write_config(tmp_path: Path, pg_url: str, db: str) -> Path:
    cfg = {
        "source": {"connection_string": f"mongoeco://{tmp_path / 'source.sqlite'}"},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "schemas": [
            {
                "name": "shop",
                "source_database": db,
                "target_schema": "raw_shop",
                "include": COLLS,
                "batching": {"max_batch_size": 100, "max_batch_seconds": 0.2},
                "warp": {
                    "metrics_port": 0,
                    "idle_checkpoint_seconds": 0.5,
                    "materialization_interval_seconds": 0,
                },
            }
        ],
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def seed(url: str, db: str, n: int = 60) -> None:
    async with mongo_session(url) as conn:
        d = conn.database(db)
        await d.customers.insert_many([{"_id": f"c{i}", "name": f"n{i}"} for i in range(n)])
        await d.orders.insert_many([{"_id": i, "customer": f"c{i % n}"} for i in range(n)])


def job_and_defs(path: Path) -> tuple[dg.JobDefinition, dg.Definitions]:
    settings = load_settings(path)
    defs = dg.Definitions.merge(
        build_warp_defs(settings),
        dg.Definitions(resources={"warp": WarpResource(config_path=str(path))}),
    )
    return defs.resolve_job_def("warp_shop"), defs


def test_definitions_shape(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    path = write_config(tmp_path, pg_url, mongo_db_name)
    job, defs = job_and_defs(path)
    specs = {s.key for s in defs.assets or []}  # type: ignore[union-attr]
    assert specs == {raw_key("shop", c) for c in COLLS}
    assert job.tags["cartridge/warp_schema"] == "shop"
    k8s = orjson.loads(job.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["memory"] == "1Gi"
    assert defs.resolve_sensor_def("warp_shop_supervisor") is not None


def test_job_materializes_raw_tables(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    path = write_config(tmp_path, pg_url, mongo_db_name)
    settings = load_settings(path)
    run(seed(settings.source.url(), mongo_db_name))
    job, _ = job_and_defs(path)
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config={"ops": {"warp_shop_run": {"config": {"stop_when_idle_seconds": 0.6}}}},
        instance=instance,
    )
    assert result.success
    for coll in COLLS:
        events = instance.fetch_materializations(raw_key("shop", coll), limit=100).records
        assert events, f"no materialization for {coll}"
        total = sum(
            e.asset_materialization.metadata["events_applied"].value  # type: ignore[union-attr]
            for e in events
        )
        assert total == 60
        # the snapshot's progress: how far, how fast, done
        progress = [
            e.asset_materialization.metadata  # type: ignore[union-attr]
            for e in events
            if "snapshot_copied" in e.asset_materialization.metadata  # type: ignore[union-attr]
        ]
        assert progress, f"no snapshot progress for {coll}"
        assert progress[0]["snapshot_total"].value == 60  # type: ignore[union-attr]
        assert any(p["snapshot_done"].value for p in progress)  # type: ignore[union-attr]
        assert all(p["snapshot_rows_per_s"].value >= 0 for p in progress)  # type: ignore[union-attr]
        assert all(p["snapshot_eta_seconds"].value >= 0 for p in progress)  # type: ignore[union-attr]
    run(assert_oracle(settings, COLLS))
    # the asset checks: lag under the threshold, no dead letters
    defs = build_warp_defs(settings)
    result = dg.materialize(
        [*(defs.assets or []), *(defs.asset_checks or [])],  # type: ignore[list-item]
        selection=dg.AssetSelection.all_asset_checks(),
        resources={"warp": WarpResource(config_path=str(path))},
        instance=instance,
    )
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 2 * len(COLLS)
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name) for e in evaluations]


def test_sensor_keeps_exactly_one_run(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    path = write_config(tmp_path, pg_url, mongo_db_name)
    settings = load_settings(path)
    job, _ = job_and_defs(path)
    sensor = build_warp_supervisor(settings.get_schema("shop"), job)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance)
        first = sensor.evaluate_tick(ctx)
        assert [r.run_key for r in first.run_requests or []] == ["warp_shop-1"]
        # a run is alive: skip, and say which
        run_ = instance.create_run_for_job(job_def=job, run_config={})
        ctx = dg.build_sensor_context(instance=instance, cursor=first.cursor)
        alive = sensor.evaluate_tick(ctx)
        assert not alive.run_requests and run_.run_id in (alive.skip_message or "")
        # it failed just now: back off
        instance.report_run_failed(run_)
        backing = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor)
        )
        assert not backing.run_requests and "backing off" in (backing.skip_message or "")
        # a run that ended normally: launch the next one with a new run key
        ok = instance.create_run_for_job(job_def=job, run_config={})
        instance.report_run_canceled(ok)
        again = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor)
        )
        assert [r.run_key for r in again.run_requests or []] == ["warp_shop-2"]


def test_cancel_mid_stream_keeps_checkpoint(
    tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    path = write_config(tmp_path, pg_url, mongo_db_name)
    settings = load_settings(path)
    url = settings.source.url()
    run(seed(url, mongo_db_name, 40))
    job, _ = job_and_defs(path)
    outcome: dict[str, Any] = {}
    with dg.instance_for_test() as instance:

        def target() -> None:
            outcome["result"] = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
            )

        thread = threading.Thread(target=target, daemon=True)
        thread.start()

        async def traffic() -> None:
            async with mongo_session(url) as conn:
                db = conn.database(mongo_db_name)
                for i in range(200):
                    await db.orders.insert_one({"_id": 1000 + i, "live": True})
                    if i == 60:
                        runs = instance.get_runs(filters=dg.RunsFilter(job_name="warp_shop"))
                        assert runs, "the warp run never started"
                        instance.report_run_canceling(runs[0])
                    await asyncio.sleep(0.005)

        deadline = time.time() + 60
        while (
            time.time() < deadline
            and not instance.fetch_materializations(raw_key("shop", "orders"), limit=1).records
        ):
            time.sleep(0.1)
        run(traffic())
        thread.join(60)
        assert not thread.is_alive(), "warp did not stop after cancellation"

    async def check() -> None:
        cp = await checkpoint_row(pg_url)
        assert cp is not None
        conn = await asyncpg.connect(pg_url)
        try:
            top = await conn.fetchval(
                "SELECT max(_cartridge_version) FROM (SELECT _cartridge_version FROM "
                "raw_shop.orders UNION ALL SELECT _cartridge_version FROM raw_shop.customers) v"
            )
            live = await conn.fetchval("SELECT count(*) FROM raw_shop.orders")
        finally:
            await conn.close()
        # the checkpoint names exactly the last applied change
        assert int(cp["version"]) == int(top)
        assert 40 <= live < 240, "canceled mid-stream"
        # and a new run continues from it to the oracle
        await run_warp(settings)
        await assert_oracle(settings, COLLS)

    run(check())


def test_no_secret_reaches_compute_logs_event_log_or_metadata(
    tmp_path: Path, pg_url: str, mongo_db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passwords planted in both URLs; warp runs in Dagster (materializations, structlog lines
    in the compute logs), then fails (a refused password): neither password is anywhere in
    what the instance stored — compute logs, event log, run storage, metadata."""
    from tests.support.replset import start

    mongo_secret, pg_secret = "Mongo-S3cret-4417", "Pg-S3cret-9902"
    server = start(tmp_path / "rs", users=(f"warp:{mongo_secret}",))
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        host = server.uri.split("//", 1)[1].split("/", 1)[0]
        good = f"mongodb://warp:{mongo_secret}@{host}/?replicaSet=rs0&authSource=admin"
        scheme, rest = pg_url.split("://", 1)
        user, at, where = rest.partition("@")
        dest = (
            f"{scheme}://{user}:{pg_secret}@{where}" if at else pg_url
        )  # trust auth: any password

        async def seed_server() -> None:
            async with mongo_session(good) as conn:
                await conn.database(mongo_db_name).customers.insert_many(
                    [{"_id": f"c{i}", "name": f"n{i}"} for i in range(20)]
                )

        run(seed_server())

        def config(source: str) -> Path:
            path = write_config(tmp_path, dest, mongo_db_name)
            cfg = yaml.safe_load(path.read_text())
            cfg["source"]["connection_string"] = source
            cfg["observability"] = {"log_format": "console", "log_level": "info"}
            path.write_text(yaml.safe_dump(cfg))
            return path

        instance = dg.DagsterInstance.get()
        job, _ = job_and_defs(config(good))
        ok = job.execute_in_process(
            run_config={"ops": {"warp_shop_run": {"config": {"stop_when_idle_seconds": 0.6}}}},
            instance=instance,
        )
        assert ok.success
        mats = [e for e in ok.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
        assert mats, "warp reported materializations"
        job, _ = job_and_defs(config(good.replace(mongo_secret, "wrong-password")))
        bad = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not bad.success
        failure = bad.get_step_failure_events()[0].event_specific_data.error  # type: ignore[union-attr]
        assert "refused the credentials" in failure.message

        # a driver error whose message holds the URL with its password, until warp gives up
        from pymongo.errors import AutoReconnect

        from cartridge_dagster.connectors.mongo import ChangeStream
        from cartridge_dagster.warp.runner import WarpRunner

        async def broken(self: ChangeStream) -> None:
            raise AutoReconnect(f"connection closed to {good}")

        monkeypatch.setattr(ChangeStream, "try_next", broken)
        real_init = WarpRunner.__init__

        def quick(self: WarpRunner, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **{**kwargs, "max_retries": 2, "max_backoff": 0.1})

        monkeypatch.setattr(WarpRunner, "__init__", quick)
        job, _ = job_and_defs(config(good))
        down = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not down.success
        failure = down.get_step_failure_events()[0].event_specific_data.error  # type: ignore[union-attr]
        assert "lost the MongoDB source" in failure.message and "***@" in failure.message
    finally:
        server.stop()
    stored = [p for p in home.rglob("*") if p.is_file()]
    logs = [p for p in stored if "compute_logs" in p.parts]
    assert logs, "the runs' compute logs were captured"
    compute = b"".join(p.read_bytes() for p in logs)
    assert b"warp.fence.acquired" in compute, "structlog writes to the compute logs"
    for path in stored:
        data = path.read_bytes()
        for secret in (mongo_secret, pg_secret):
            assert secret.encode() not in data, f"{secret} in {path.relative_to(home)}"


def test_loading_warp_defs_warns_nothing(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    """The supervisor names its job: a sensor holding the job definition is rebuilt when the
    resources are bound, and Dagster's rebuild warned (BetaWarning: `owners`) at every load."""
    import warnings

    path = write_config(tmp_path, pg_url, mongo_db_name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, defs = job_and_defs(path)
        repo = defs.get_repository_def()
    assert repo.get_sensor_def("warp_shop_supervisor").job_name == "warp_shop"
    dagster_warnings = [str(w.message) for w in caught if "dagster" in w.filename]
    assert dagster_warnings == []
