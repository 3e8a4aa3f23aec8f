"""The demo's PostgreSQL source (`billing`) beside the MongoDB one (`shop`), in one config:
`cartridge demo seed` seeds both (a seeded source says so in one line; `--reset` reseeds the
same rows), then scan → generate → warp snapshot → dbt build for the PostgreSQL schema, with the
staged values compared to the source's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.init.dbtcli import dbt_env, run_dbt
from cartridge_dagster.init.scan import scan_postgres
from cartridge_dagster.services.postgres import LocalPostgres
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.demo_env import write_demo_config
from tests.support.pgsource import UTC, execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALE = "0.1"  # 50 customers, 200 invoices, up to 150 payments


async def _source_state(url: str) -> tuple[dict[str, int], str]:
    """Rows per table and one hash of every row of every table (in key order)."""
    conn = await asyncpg.connect(url, server_settings=UTC)
    try:
        counts, texts = {}, []
        for table in ("customers", "invoices", "payments"):
            counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM billing.{table}"))
            texts.append(
                await conn.fetchval(
                    f"SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM billing.{table} t"
                )
            )
        return counts, "/".join(texts)
    finally:
        await conn.close()


async def _distinct(url: str, table: str, column: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(DISTINCT {column}) FROM billing.{table}"))
    finally:
        await conn.close()


def test_billing_seed_scan_generate_warp_dbt(
    tmp_path: Path, pg_source_url: str, pg_url: str
) -> None:
    config = write_demo_config(tmp_path, pg_source_url, pg_url)
    first = cartridge("demo", "seed", "--config", str(config), "--scale", SCALE)
    assert first.returncode == 0, first.stdout + first.stderr
    counts, digest = run(_source_state(pg_source_url))
    assert counts["customers"] == 50 and counts["invoices"] == 200
    assert 0 < counts["payments"] <= 150
    listed = ", ".join(f"{t}={n}" for t, n in counts.items())
    assert f"seeded {listed} into 'billing'" in first.stdout
    assert "seeded customers=20" in first.stdout  # the MongoDB shop, in the same command

    again = cartridge("demo", "seed", "--config", str(config), "--scale", SCALE)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    lines = again.stdout.strip().splitlines()
    assert len(lines) == 2, again.stdout  # one line per source
    assert lines[0].startswith("demo source 'shop' already has data (")
    assert lines[1] == (
        f"demo source 'billing' already has data ({listed}); not seeding (--reset empties the "
        "demo collections and seeds again)"
    )
    assert run(_source_state(pg_source_url)) == (counts, digest)

    reset = cartridge(
        "demo", "seed", "--config", str(config), "--scale", SCALE, "--reset", "--schema", "billing"
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"emptied {listed} in 'billing'" in reset.stdout
    assert f"seeded {listed} into 'billing'" in reset.stdout
    assert "shop" not in reset.stdout
    assert run(_source_state(pg_source_url)) == (counts, digest)  # the same rows again

    scanned = cartridge("scan", "--config", str(config), "--schema", "billing")
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    state = tmp_path / "state" / "schemas" / "billing"
    latest = json.loads(sorted(state.glob("v*.json"))[-1].read_text())
    colls = latest["collections"]
    customers, invoices = colls["customers"], colls["invoices"]
    # rows were read (not only the catalogs): a full read of these small tables
    assert customers["sampling"]["method"] == "full"
    assert customers["documents_sampled"] == 50 and invoices["documents_sampled"] == 200
    assert "email_domain" not in customers["fields"]  # generated: warp does not land it
    assert invoices["columns"]["period_start"]["sql_type"] == "timestamp without time zone"
    assert invoices["columns"]["issued_at"]["sql_type"] == "timestamptz"
    assert customers["columns"]["tags"]["sql_type"] == "jsonb"
    assert set(invoices["fields"]["status"]["enum"]) <= {"draft", "open", "paid", "void"}
    assert "paid" in invoices["fields"]["status"]["enum"]
    assert invoices["fields"]["amount"]["distinct"] > 1
    assert invoices["references"]["customer_id"] == {
        "collection": "customers",
        "field": "id",
        "match_ratio": 1.0,
        # up to 50 of its distinct sampled values looked up in customers.id
        "checked": min(50, run(_distinct(pg_source_url, "invoices", "customer_id"))),
    }
    assert colls["payments"]["references"]["invoice_id"]["collection"] == "invoices"
    assert "example" not in json.dumps(customers["fields"]["email"])  # sensitive: no examples

    generated = cartridge("generate", "--config", str(config), "--schema", "billing")
    assert generated.returncode == 0, generated.stdout + generated.stderr
    models = tmp_path / "dbt_project" / "models" / "generated" / "billing"
    assert "email_domain" not in (models / "stg_billing__customers.sql").read_text()

    warp = cartridge(
        "warp", "run", "--config", str(config), "--mode", "single", "--schema", "billing",
        "--stop-when-idle", "1",
    )  # fmt: skip
    assert warp.returncode == 0, warp.stdout + warp.stderr

    built = run_dbt(
        tmp_path / "dbt_project",
        ["build", "--select", "path:models/generated/billing"],
        env=dbt_env(pg_url, schema="dbt"),
        check=False,
    )
    assert built.ok, built.output[-4000:]
    assert "accepted_values" in built.output and "relationships" in built.output

    async def compare() -> None:
        cols = (
            "id, customer_id, number, status::text, amount::text, currency::text, "
            "issued_at::text, due_on::text, period_start::text"
        )
        dst = await asyncpg.connect(pg_url, server_settings=UTC)
        src = await asyncpg.connect(pg_source_url, server_settings=UTC)
        try:
            where = await dst.fetchval(
                "SELECT quote_ident(table_schema) FROM information_schema.tables "
                "WHERE table_name = 'stg_billing__invoices'"
            )
            staged = await dst.fetch(
                f"SELECT {cols} FROM {where}.stg_billing__invoices ORDER BY id"
            )
            source = await src.fetch(f"SELECT {cols} FROM billing.invoices ORDER BY id")
            assert [tuple(r) for r in staged] == [tuple(r) for r in source]
            tags = await dst.fetch(
                f"SELECT id, tags::text FROM {where}.stg_billing__customers ORDER BY id"
            )
            want = await src.fetch(
                "SELECT id, to_jsonb(tags)::text FROM billing.customers ORDER BY id"
            )
            assert [tuple(r) for r in tags] == [tuple(r) for r in want]
        finally:
            await dst.close()
            await src.close()

    run(compare())


def test_pg_scan_finds_references_in_sampled_values(pg_source_url: str) -> None:
    """A column without a foreign key is a reference when ≥ 90 % of its sampled values are
    keys of another table; one whose values are not is none; a declared key is checked too."""
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.customers (id int PRIMARY KEY, name text)",
        "INSERT INTO app.customers SELECT g, 'c' || g FROM generate_series(1, 100) g",
        # 95 of 100 values are customers' ids (5 dangle), no constraint says so
        "CREATE TABLE app.orders (id int PRIMARY KEY, customer_id int, rid int)",
        "INSERT INTO app.orders SELECT g, CASE WHEN g <= 95 THEN g ELSE 1000 + g END, "
        "5000 + g FROM generate_series(1, 100) g",
        "CREATE TABLE app.payments (id int PRIMARY KEY, order_id int REFERENCES app.orders)",
        "INSERT INTO app.payments SELECT g, g FROM generate_series(1, 30) g",
    )
    settings = settings_from_mapping(
        {
            "source": {"type": "postgresql", "connection_string": pg_source_url},
            "destination": {"connection_string": "postgresql://x@127.0.0.1:1/x"},
            "schemas": [{"name": "app", "source_database": "app"}],
        }
    )

    async def scan() -> dict[str, Any]:
        conn = await asyncpg.connect(pg_source_url)
        try:
            return (await scan_postgres(conn, settings.schemas[0])).collections
        finally:
            await conn.close()

    colls = run(scan())
    # the first 50 distinct sampled values in text order ('1', '10', '1096', …, '11', '1100',
    # '12', …) hold the 5 dangling ones: 45 of 50 found
    orders = colls["orders"]["references"]
    assert set(orders) == {"customer_id"}, orders  # rid matches nothing
    assert orders["customer_id"]["collection"] == "customers"
    assert orders["customer_id"]["field"] == "id"
    assert orders["customer_id"]["checked"] == 50
    assert orders["customer_id"]["match_ratio"] == 0.9
    assert colls["payments"]["references"]["order_id"] == {
        "collection": "orders",
        "field": "id",
        "match_ratio": 1.0,
        "checked": 30,
    }
    assert colls["customers"]["references"] == {}


def test_local_billing_source_on_the_local_server(tmp_path: Path) -> None:
    """`local/billing` is database `billing` of the server `cartridge services up` started:
    the demo seed creates it, and warp streams it (the server has wal_level=logical)."""
    state = tmp_path / "state"
    up = cartridge("services", "up", "--state-dir", str(state), "--ephemeral", "--quiet")
    assert up.returncode == 0, up.stderr
    try:
        data = {
            "source": {"connection_string": f"mongoeco://{tmp_path / 'shop.sqlite'}"},
            "destination": {"connection_string": "local"},
            "state_dir": str(state),
            "schemas": [
                {
                    "name": "billing",
                    "source_database": "billing",
                    "source": {"type": "postgresql", "connection_string": "local/billing"},
                    "warp": {"metrics_port": 0, "idle_checkpoint_seconds": 0.5},
                }
            ],
        }
        config = tmp_path / "cartridge.yaml"
        config.write_text(yaml.safe_dump(data))
        valid = cartridge("validate", "--config", str(config), "--check-connections")
        assert valid.returncode != 0, valid.stdout  # the database does not exist yet
        assert "does not exist" in valid.stdout + valid.stderr
        seeded = cartridge("demo", "seed", "--config", str(config), "--scale", "0.02")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        assert "into 'billing'" in seeded.stdout
        valid = cartridge("validate", "--config", str(config), "--check-connections")
        assert valid.returncode == 0, valid.stdout + valid.stderr
        assert "source of billing: local/billing (cartridge services)" in valid.stdout
        warp = cartridge(
            "warp", "run", "--config", str(config), "--mode", "single", "--schema", "billing",
            "--stop-when-idle", "1",
        )  # fmt: skip
        assert warp.returncode == 0, warp.stdout + warp.stderr
        server = LocalPostgres(state / "postgres").require_url()
        source_url = server.rsplit("/", 1)[0] + "/billing"
        source_rows = run(_source_state(source_url))[0]

        async def landed() -> dict[str, int]:
            conn = await asyncpg.connect(server)
            try:
                return {
                    t: int(await conn.fetchval(f"SELECT count(*) FROM raw_billing.{t}"))
                    for t in source_rows
                }
            finally:
                await conn.close()

        assert run(landed()) == source_rows
    finally:
        cartridge(
            "warp", "drop-slot", "--config", str(tmp_path / "cartridge.yaml"), "-s", "billing"
        )
        LocalPostgres(state / "postgres").destroy()


def test_billing_traffic_changes_what_it_says(
    tmp_path: Path, pg_source_url: str, pg_url: str
) -> None:
    config = write_demo_config(tmp_path, pg_source_url, pg_url)
    seeded = cartridge(
        "demo", "seed", "--config", str(config), "--scale", "0.05", "--schema", "billing"
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    before = run(_source_state(pg_source_url))[0]
    traffic = cartridge(
        "demo", "traffic", "--config", str(config), "--schema", "billing", "--max-ops", "40",
        "--postgres-rate", "0",
    )  # fmt: skip
    assert traffic.returncode == 0, traffic.stdout + traffic.stderr
    line = traffic.stdout.strip().splitlines()[-1]
    assert line.startswith("traffic: "), traffic.stdout
    counts = {
        k: int(v) for k, v in (p.split("=") for p in line.removeprefix("traffic: ").split(", "))
    }
    assert sum(counts.values()) == 40
    after = run(_source_state(pg_source_url))[0]
    assert after["customers"] == before["customers"]
    assert after["invoices"] - before["invoices"] == (
        counts.get("insert_invoice", 0) - counts.get("delete_invoice", 0)
    )
    assert after["payments"] - before["payments"] == counts.get("pay_invoice", 0)
    assert counts.get("insert_invoice", 0) > 0 and counts.get("update_customer", 0) > 0
