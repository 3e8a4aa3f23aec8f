"""The demo's PostgreSQL source: a small billing database beside the MongoDB shop.

Three tables in PostgreSQL schema ``billing`` (of its own database on the local server), with
what an operational PostgreSQL database has: foreign keys, exact money (``numeric``),
``timestamptz`` and ``timestamp`` (no zone) columns, ``date``, ``jsonb``, an enum type, a text
array, a ``uuid`` and a generated column (which warp does not land):

- ``customers``: name, email (and the generated ``email_domain``), country, ``plan`` (enum
  ``billing.plan_tier``), ``tags text[]``, ``settings jsonb``, ``signed_up_at timestamptz``.
- ``invoices``: ``customer_id`` → customers, ``status`` (enum ``billing.invoice_status``),
  ``amount numeric(12,2)``, ``currency``, ``issued_at timestamptz``, ``due_on date``,
  ``period_start timestamp``, ``lines jsonb`` (line items).
- ``payments``: ``invoice_id`` → invoices, ``amount numeric(12,2)``, ``method``,
  ``paid_at timestamptz``, ``reference uuid``.

The same ``seed`` and ``scale`` give the same rows, keys included (3,706 rows at scale 1: 500
customers, 2,000 invoices, 1,206 payments; ``cartridge demo seed`` took 4.1 s on the shared
2-core machine, against 2.6 s for a second run that finds them and seeds nothing).
Live traffic (:func:`run_billing_traffic`) issues invoices, records payments, edits customers
and deletes draft invoices, each in its own transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cartridge_dagster.connectors.postgres import connect
from cartridge_dagster.errors import TerminalError
from cartridge_dagster.identifiers import qualified, quote_ident, quote_literal

__all__ = [
    "BILLING_TABLES",
    "BillingSizes",
    "ensure_database",
    "existing_rows",
    "reset_billing",
    "run_billing_traffic",
    "seed_billing",
]

#: The tables the demo seeds, in dependency order.
BILLING_TABLES = ("customers", "invoices", "payments")
PLANS = ("free", "starter", "pro", "enterprise")
INVOICE_STATUSES = ("draft", "open", "paid", "void")
METHODS = ("card", "transfer", "direct_debit")
COUNTRIES = ("PT", "ES", "DE", "FR", "NL", "IE", "IT", "AT")
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")
PRODUCTS = (("seat", "19.00"), ("storage_gb", "0.25"), ("support", "99.00"), ("api_calls", "0.01"))
BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class BillingSizes:
    customers: int = 500
    invoices: int = 2000
    payments: int = 1500

    @classmethod
    def scaled(cls, scale: float) -> BillingSizes:
        base = cls()
        customers = max(10, int(base.customers * scale))
        invoices = max(20, int(base.invoices * scale))
        return cls(customers, invoices, min(invoices, max(10, int(base.payments * scale))))

    @property
    def total(self) -> int:
        return self.customers + self.invoices + self.payments


def _ddl(ns: str) -> list[str]:
    q = quote_ident(ns)
    plan = qualified(ns, "plan_tier")
    status = qualified(ns, "invoice_status")
    values = ", ".join
    return [
        f"CREATE SCHEMA IF NOT EXISTS {q}",
        f"""DO $$ BEGIN
              CREATE TYPE {plan} AS ENUM ({values(quote_literal(p) for p in PLANS)});
            EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
        f"""DO $$ BEGIN
              CREATE TYPE {status} AS ENUM
                ({values(quote_literal(s) for s in INVOICE_STATUSES)});
            EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(ns, "customers")} (
              id bigint PRIMARY KEY,
              name text NOT NULL,
              email text NOT NULL UNIQUE,
              email_domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED,
              country char(2) NOT NULL,
              plan {plan} NOT NULL,
              tags text[] NOT NULL DEFAULT '{{}}',
              settings jsonb,
              signed_up_at timestamptz NOT NULL,
              balance numeric(12,2) NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(ns, "invoices")} (
              id bigint PRIMARY KEY,
              customer_id bigint NOT NULL REFERENCES {qualified(ns, "customers")} (id),
              number text NOT NULL UNIQUE,
              status {status} NOT NULL,
              amount numeric(12,2) NOT NULL,
              currency char(3) NOT NULL,
              issued_at timestamptz NOT NULL,
              due_on date NOT NULL,
              period_start timestamp NOT NULL,
              lines jsonb NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(ns, "payments")} (
              id bigint PRIMARY KEY,
              invoice_id bigint NOT NULL REFERENCES {qualified(ns, "invoices")} (id),
              amount numeric(12,2) NOT NULL,
              method text NOT NULL,
              paid_at timestamptz NOT NULL,
              reference uuid NOT NULL)""",
    ]


class BillingGenerator:
    """Rows of the billing demo from one seeded random source."""

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)

    def customer(self, i: int) -> tuple[Any, ...]:
        rng = self.rng
        name = f"Customer {i:05d}"
        tags = sorted(rng.sample(["vip", "eu", "trial", "annual", "partner"], rng.randint(0, 3)))
        settings = {"invoice_email": rng.random() < 0.7, "language": rng.choice(["en", "pt", "de"])}
        if rng.random() < 0.2:
            settings["po_number"] = f"PO-{rng.randint(1000, 9999)}"
        return (
            i,
            name,
            f"billing{i}@{rng.choice(['example.com', 'example.org', 'mail.test'])}",
            rng.choice(COUNTRIES),
            rng.choice(PLANS),
            tags,
            json.dumps(settings),
            BASE_TIME - dt.timedelta(days=rng.randint(1, 900), seconds=rng.randint(0, 86399)),
            Decimal(rng.randint(0, 50000)) / 100,
        )

    def invoice(self, i: int, customer_id: int, issued_at: dt.datetime) -> tuple[Any, ...]:
        rng = self.rng
        lines = []
        total = Decimal(0)
        for product, price in rng.sample(PRODUCTS, rng.randint(1, 3)):
            qty = rng.randint(1, 40)
            amount = Decimal(price) * qty
            total += amount
            lines.append({"product": product, "quantity": qty, "amount": str(amount)})
        period = issued_at.replace(tzinfo=None, day=1, hour=0, minute=0, second=0, microsecond=0)
        return (
            i,
            customer_id,
            f"INV-{i:07d}",
            rng.choices(INVOICE_STATUSES, weights=(1, 3, 8, 1))[0],
            total,
            rng.choice(CURRENCIES),
            issued_at,
            (issued_at + dt.timedelta(days=30)).date(),
            period,
            json.dumps(lines),
        )

    def payment(
        self, i: int, invoice_id: int, amount: Decimal, issued: dt.datetime
    ) -> tuple[Any, ...]:
        rng = self.rng
        return (
            i,
            invoice_id,
            amount,
            rng.choice(METHODS),
            issued + dt.timedelta(days=rng.randint(0, 29), seconds=rng.randint(0, 86399)),
            uuid.UUID(int=rng.getrandbits(128), version=4),
        )


_COLUMNS = {
    "customers": (
        "id", "name", "email", "country", "plan", "tags", "settings", "signed_up_at", "balance",
    ),
    "invoices": (
        "id", "customer_id", "number", "status", "amount", "currency", "issued_at", "due_on",
        "period_start", "lines",
    ),
    "payments": ("id", "invoice_id", "amount", "method", "paid_at", "reference"),
}  # fmt: skip


def _server_url(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def ensure_database(url: str, *, maintenance: str = "postgres") -> bool:
    """Create the database ``url`` names when it does not exist (on the same server, through
    ``maintenance``). Returns whether it was created."""
    database = urlsplit(url).path.lstrip("/")
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await connect(_server_url(url, maintenance))
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(database)}")
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()
    return True


async def existing_rows(conn: asyncpg.Connection, namespace: str) -> dict[str, int]:
    """Rows per demo table already in ``namespace`` (tables that hold none left out)."""
    out: dict[str, int] = {}
    for table in BILLING_TABLES:
        present = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", qualified(namespace, table)
        )
        if present:
            n = int(await conn.fetchval(f"SELECT count(*) FROM {qualified(namespace, table)}"))
            if n:
                out[table] = n
    return out


async def reset_billing(conn: asyncpg.Connection, namespace: str) -> dict[str, int]:
    """Empty the demo tables (one TRUNCATE, which warp streams as such); returns what they
    held."""
    held = await existing_rows(conn, namespace)
    if held:
        tables = ", ".join(qualified(namespace, t) for t in BILLING_TABLES)
        await conn.execute(f"TRUNCATE {tables}")
    return held


async def seed_billing(
    conn: asyncpg.Connection,
    namespace: str,
    *,
    sizes: BillingSizes,
    seed: int = 42,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create the schema and tables when missing and copy the demo rows in (one transaction)."""
    gen = BillingGenerator(seed)
    customers = [gen.customer(i) for i in range(1, sizes.customers + 1)]
    invoices = []
    for i in range(1, sizes.invoices + 1):
        issued = BASE_TIME - dt.timedelta(minutes=(sizes.invoices - i) * 97)
        invoices.append(gen.invoice(i, gen.rng.randint(1, sizes.customers), issued))
    payable = [inv for inv in invoices if inv[3] == "paid"] or invoices
    payments = [
        gen.payment(i, inv[0], inv[4], inv[6]) for i, inv in enumerate(payable[: sizes.payments], 1)
    ]
    rows = {"customers": customers, "invoices": invoices, "payments": payments}
    async with conn.transaction():
        for stmt in _ddl(namespace):
            await conn.execute(stmt)
        for table in BILLING_TABLES:
            await conn.copy_records_to_table(
                table, records=rows[table], columns=_COLUMNS[table], schema_name=namespace
            )
            if progress is not None:
                progress(table, len(rows[table]))
    await conn.execute(f"ANALYZE {', '.join(qualified(namespace, t) for t in BILLING_TABLES)}")
    return {table: len(rows[table]) for table in BILLING_TABLES}


async def run_billing_traffic(
    conn: asyncpg.Connection,
    namespace: str,
    *,
    rate: float = 0.5,
    duration: float | None = None,
    max_ops: int | None = None,
    seed: int = 11,
    stop: asyncio.Event | None = None,
) -> Counter[str]:
    """About ``rate`` operations per second until ``duration``/``max_ops``/``stop``: a new
    invoice (draft or open), an invoice paid (a payment row and the status in one
    transaction), a customer edited (balance, tags), a draft invoice deleted."""
    customers = qualified(namespace, "customers")
    invoices = qualified(namespace, "invoices")
    payments = qualified(namespace, "payments")
    customer_ids = [int(r[0]) for r in await conn.fetch(f"SELECT id FROM {customers}")]
    if not customer_ids:
        raise TerminalError(
            f"the demo source {namespace!r} is empty", hint="seed it first: cartridge demo seed"
        )
    gen = BillingGenerator(seed)
    rng = gen.rng
    next_invoice = int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {invoices}")) + 1
    next_payment = int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {payments}")) + 1
    counts: Counter[str] = Counter()
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    inv_cols = ", ".join(quote_ident(c) for c in _COLUMNS["invoices"])
    pay_cols = ", ".join(quote_ident(c) for c in _COLUMNS["payments"])
    while True:
        if stop is not None and stop.is_set():
            break
        if duration is not None and time.monotonic() - started >= duration:
            break
        if max_ops is not None and counts.total() >= max_ops:
            break
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        roll = rng.random()
        if roll < 0.4:
            row = list(gen.invoice(next_invoice, rng.choice(customer_ids), now))
            row[3] = rng.choice(("draft", "open"))
            await conn.execute(
                f"INSERT INTO {invoices} ({inv_cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                "$9, $10)",
                *row,
            )
            next_invoice += 1
            kind = "insert_invoice"
        elif roll < 0.7:
            due = await conn.fetchrow(
                f"SELECT id, amount FROM {invoices} WHERE status = 'open' ORDER BY id LIMIT 1"
            )
            if due is None:
                continue
            async with conn.transaction():
                await conn.execute(f"UPDATE {invoices} SET status = 'paid' WHERE id = $1", due[0])
                await conn.execute(
                    f"INSERT INTO {payments} ({pay_cols}) VALUES ($1, $2, $3, $4, $5, $6)",
                    next_payment,
                    due[0],
                    due[1],
                    rng.choice(METHODS),
                    now,
                    uuid.uuid4(),
                )
            next_payment += 1
            kind = "pay_invoice"
        elif roll < 0.9:
            await conn.execute(
                f"UPDATE {customers} SET balance = balance + $2, "
                "tags = CASE WHEN $3 THEN array_append(tags, 'active') ELSE tags END "
                "WHERE id = $1",
                rng.choice(customer_ids),
                Decimal(rng.randint(-500, 2000)) / 100,
                rng.random() < 0.1,
            )
            kind = "update_customer"
        else:
            gone = await conn.fetchval(
                f"DELETE FROM {invoices} WHERE id = (SELECT id FROM {invoices} "
                "WHERE status = 'draft' AND id NOT IN (SELECT invoice_id FROM "
                f"{payments}) ORDER BY id LIMIT 1) RETURNING id"
            )
            if gone is None:
                continue
            kind = "delete_invoice"
        counts[kind] += 1
        if interval:
            await asyncio.sleep(interval)
    return counts
