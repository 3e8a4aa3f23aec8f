"""PostgreSQL sources for warp tests: databases, settings, and the cast-back oracle.

The oracle never uses Cartridge's conversion: for each source table it builds, in the
destination database, a composite type with the source's column types (user-defined types,
``bytea`` and composites as ``text``; ``json`` as ``jsonb``) and reads every landed document
back through ``jsonb_populate_record`` — PostgreSQL's own input functions — then compares each
column's text with the source's, row by row, matched on the primary key's columns (not on
``_id``). Both sides run with ``TimeZone=UTC`` so the texts are comparable.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg2

from cartridge_dagster.config import CartridgeSettings, settings_from_mapping

UTC = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "extra_float_digits": "1"}


def _admin(url: str) -> Any:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def database_url(server_url: str, name: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def create_database(server_url: str, prefix: str = "src") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = _admin(server_url)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return database_url(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drop ``url``'s database and every replication slot on it (a database with a logical
    slot cannot be dropped)."""
    name = url.rpartition("/")[2]
    conn = _admin(server_url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        for _ in range(50):
            cur.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (name,)
            )
            rows = cur.fetchall()
            if not rows:
                break
            for slot, active in rows:
                if not active:
                    with contextlib.suppress(psycopg2.Error):
                        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            import time

            time.sleep(0.1)
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@contextlib.contextmanager
def source_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url)
    try:
        yield url
    finally:
        drop_database(server_url, url)


def execute(url: str, *statements: str) -> None:
    conn = _admin(url)
    with conn.cursor() as cur:
        for stmt in statements:
            cur.execute(stmt)
    conn.close()


def pg_settings(
    source_url: str,
    dest_url: str,
    namespace: str = "app",
    *,
    name: str = "shop",
    batching: dict[str, Any] | None = None,
    warp: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    state_dir: str = ".cartridge",
) -> CartridgeSettings:
    spec: dict[str, Any] = {
        "name": name,
        "source_database": namespace,
        "target_schema": f"raw_{name}",
        "batching": {"max_batch_size": 500, "max_batch_seconds": 0.2, **(batching or {})},
        "warp": {
            "metrics_port": 0,
            "idle_checkpoint_seconds": 0.5,
            # slots are per server: one of its own per test database
            "slot_name": f"cartridge_t_{uuid.uuid4().hex[:12]}",
            **(warp or {}),
        },
    }
    spec.update(schema or {})
    return settings_from_mapping(
        {
            "source": {"type": "postgresql", "connection_string": source_url},
            "destination": {"connection_string": dest_url},
            "state_dir": state_dir,
            "schemas": [spec],
        }
    )


# --------------------------------------------------------------------------- the oracle


@dataclass
class OracleResult:
    table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: list[tuple[str, ...]] = field(default_factory=list)
    extra: list[tuple[str, ...]] = field(default_factory=list)
    differ: list[tuple[tuple[str, ...], str, Any, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.differ)

    def __str__(self) -> str:
        return (
            f"{self.table}: source {self.source_rows} rows, target {self.target_rows}; "
            f"missing {self.missing[:3]}, extra {self.extra[:3]}, differ {self.differ[:3]}"
        )


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _source_columns(src: asyncpg.Connection, namespace: str, table: str) -> list[Any]:
    return list(
        await src.fetch(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                   t.typcategory::text AS category, tn.nspname AS type_ns,
                   t.typname, a.attgenerated <> '' AS generated,
                   COALESCE(et.typname, '') AS elem, COALESCE(etn.nspname, '') AS elem_ns,
                   a.attnum = ANY (i.indkey) AS is_key, array_position(i.indkey, a.attnum) AS kpos
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_type t ON t.oid = a.atttypid
            JOIN pg_namespace tn ON tn.oid = t.typnamespace
            LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
            LEFT JOIN pg_namespace etn ON etn.oid = et.typnamespace
            LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
            WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            namespace,
            table,
        )
    )


def _oracle_type(col: Any) -> str:
    """The type a landed value is cast back to in the destination database."""
    builtin = col["type_ns"] == "pg_catalog"
    if col["category"] == "A":
        builtin = col["elem_ns"] == "pg_catalog"
        if not builtin:
            return "text[]"
        if col["elem"] == "json":
            return "jsonb[]"
        return str(col["type"])
    if not builtin or col["typname"] == "bytea":
        return "text"
    if col["typname"] == "json":
        return "jsonb"
    return str(col["type"])


def _source_text(col: Any) -> str:
    ref = f"t.{_qi(col['attname'])}"
    if col["typname"] == "json":
        return f"{ref}::jsonb::text"
    if col["category"] == "A" and col["elem"] == "json":
        return f"{ref}::jsonb[]::text"
    return f"{ref}::text"


def _target_text(col: Any) -> str:
    ref = f"(r).{_qi(col['attname'])}"
    if col["typname"] == "bytea":
        return f"decode({ref}, 'base64')::text"
    return f"{ref}::text"


async def cast_back_oracle(
    source_url: str,
    namespace: str,
    table: str,
    dest_url: str,
    raw_schema: str,
    raw_table: str | None = None,
    *,
    skip: tuple[str, ...] = (),
) -> OracleResult:
    """Compare the source table with its raw table, column by column (see the module doc)."""
    result = OracleResult(table)
    src = await asyncpg.connect(source_url, server_settings=UTC)
    dst = await asyncpg.connect(dest_url, server_settings=UTC)
    try:
        cols = [
            c
            for c in await _source_columns(src, namespace, table)
            if not c["generated"] and c["attname"] not in skip
        ]
        keys = sorted((c for c in cols if c["is_key"]), key=lambda c: c["kpos"])
        assert keys, f"{table}: the oracle matches rows on the primary key; there is none"
        source_sql = (
            "SELECT "
            + ", ".join(f"t.{_qi(k['attname'])}::text" for k in keys)
            + ", "
            + ", ".join(_source_text(c) for c in cols)
            + f" FROM {_qi(namespace)}.{_qi(table)} AS t"
        )
        type_name = f"oracle_{uuid.uuid4().hex[:8]}"
        await dst.execute("CREATE SCHEMA IF NOT EXISTS cartridge_oracle")
        await dst.execute(
            f"CREATE TYPE cartridge_oracle.{_qi(type_name)} AS ("
            + ", ".join(f"{_qi(c['attname'])} {_oracle_type(c)}" for c in cols)
            + ")"
        )
        target_sql = (
            "SELECT "
            + ", ".join(f"(r).{_qi(k['attname'])}::text" for k in keys)
            + ", "
            + ", ".join(_target_text(c) for c in cols)
            + " FROM (SELECT jsonb_populate_record(NULL::cartridge_oracle."
            + _qi(type_name)
            + f", document) AS r FROM {_qi(raw_schema)}.{_qi(raw_table or table)} "
            "WHERE NOT _cartridge_deleted) AS s"
        )
        src_rows = {
            tuple(r[: len(keys)]): list(r[len(keys) :]) for r in await src.fetch(source_sql)
        }
        dst_list = await dst.fetch(target_sql)
        dst_rows = {tuple(r[: len(keys)]): list(r[len(keys) :]) for r in dst_list}
        assert len(dst_rows) == len(dst_list), f"{table}: two live rows share a key"
        await dst.execute(f"DROP TYPE cartridge_oracle.{_qi(type_name)}")
    finally:
        await src.close()
        await dst.close()
    result.source_rows, result.target_rows = len(src_rows), len(dst_rows)
    result.missing = sorted(set(src_rows) - set(dst_rows))
    result.extra = sorted(set(dst_rows) - set(src_rows))
    names = [c["attname"] for c in cols]
    for key in sorted(set(src_rows) & set(dst_rows)):
        for name, a, b in zip(names, src_rows[key], dst_rows[key], strict=True):
            if a != b:
                result.differ.append((key, name, a, b))
    return result
