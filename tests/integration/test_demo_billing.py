"""The demo's PostgreSQL source (`billing`) beside the MongoDB one (`shop`), in one config:
`cartridge demo seed` seeds both (a seeded source says so in one line; `--reset` reseeds the
same rows), then scan → generate → warp snapshot → dbt build for the PostgreSQL schema, with the
staged values compared to the source's."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from cartridge_dagster.init.dbtcli import dbt_env, run_dbt
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.demo_env import write_demo_config
from tests.support.pgsource import UTC

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
    assert invoices["references"]["customer_id"]["collection"] == "customers"
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
