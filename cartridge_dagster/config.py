"""Cartridge configuration: one hierarchical settings model (global → schema → table).

Files are YAML or JSON and are validated strictly: an unknown key or a bad value fails with the
file, the dotted path of the field and the reason. Environment variables override files, with the
``CARTRIDGE_`` prefix and ``__`` for nesting (``CARTRIDGE_DESTINATION__CONNECTION_STRING``); the
seed's ``CARTRIDGE_WARP_`` prefix works too (``CARTRIDGE_WARP_SOURCE__CONNECTION_STRING``).

Defaults flow down: ``defaults.*`` fill every schema's sections, and a schema's ``deletes`` fill
its tables, so consumers read resolved values (``schema.batching.max_batch_size``,
``schema.table("orders").delete_mode``) without merging anything themselves.

This module never imports dagster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from cartridge_dagster.config_file import find_config_file, inject_credentials, read_file, selects
from cartridge_dagster.errors import ConfigError, redact_url

__all__ = [
    "AIConfig",
    "AnalyticsConfig",
    "BatchingConfig",
    "CartridgeSettings",
    "DbtConfig",
    "DeadLetterConfig",
    "Defaults",
    "DestinationConfig",
    "EvolutionConfig",
    "SamplingConfig",
    "SchemaConfig",
    "SourceConfig",
    "TableConfig",
    "WarpConfig",
    "find_config_file",
    "load_settings",
]

ENV_PREFIX = "CARTRIDGE_"
SEED_ENV_PREFIX = "CARTRIDGE_WARP_"
LOCAL_POSTGRES = "local"
#: ``local/<database>``: a database of the local server (PostgreSQL sources).
LOCAL_SOURCE = re.compile(r"^local/([A-Za-z_][A-Za-z0-9_]{0,62})$")

SchemaName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Lower-case letters, digits and underscores; used in asset keys and job names.",
    ),
]
FieldType = Literal[
    "text", "integer", "bigint", "numeric", "double", "boolean", "timestamp", "date", "jsonb"
]


class StrictModel(BaseModel):
    """Every section forbids unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- connections


def _inject_credentials(url: str, username: str | None, password: SecretStr | None) -> str:
    return inject_credentials(url, username, password.get_secret_value() if password else None)


def _check_url(url: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"must start with one of {allowed} (got {redact_url(url)!r})")
    if scheme == "mongoeco":
        if not rest:
            raise ValueError("mongoeco:// needs a path to a SQLite file, or :memory:")
        return
    head = rest.split("?", 1)[0]
    if "@" not in head:
        return
    userinfo = head.rsplit("@", 1)[0]
    problems = []
    if "@" in userinfo:
        problems.append("'@' (%40)")
    if userinfo.count(":") > 1:
        problems.append("':' (%3A)")
    if "/" in userinfo:
        problems.append("'/' (%2F)")
    if re.search(r"%(?![0-9A-Fa-f]{2})", userinfo):
        problems.append("'%' (%25)")
    if problems:
        raise ValueError(
            "the credentials contain unescaped " + ", ".join(problems) + "; URL-encode user "
            "and password (urllib.parse.quote_plus) or set username/password separately"
        )


class SourceConfig(StrictModel):
    """Where data is read from."""

    type: Literal["mongodb", "postgresql"] = Field(
        "mongodb", description="Source kind. `mongodb` also covers the embedded engine."
    )
    connection_string: SecretStr = Field(
        description=(
            "`mongodb://…`, `mongodb+srv://…`, `mongoeco://PATH` (embedded engine, a SQLite file; "
            "`mongoeco://:memory:` in memory), `postgresql://…`, or `local/DATABASE` for a "
            "database of the server started by `cartridge services up` (PostgreSQL sources). "
            "Credentials must be URL-encoded, or given as `username`/`password`."
        ),
        examples=["mongodb://user:p%40ss@db1:27017,db2:27017/?replicaSet=rs0"],
    )
    username: str | None = Field(None, description="User name, URL-encoded for you.")
    password: SecretStr | None = Field(None, description="Password, URL-encoded for you.")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="Timeout for connecting.")

    @field_validator("connection_string")
    @classmethod
    def _check_scheme(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        kind = info.data.get("type", "mongodb")
        raw = value.get_secret_value()
        if kind == "postgresql" and LOCAL_SOURCE.match(raw):
            return value
        schemes = (
            ("mongodb", "mongodb+srv", "mongoeco")
            if kind == "mongodb"
            else ("postgresql", "postgres")
        )
        _check_url(raw, schemes)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.local_database is None:
            _inject_credentials(
                self.connection_string.get_secret_value(), self.username, self.password
            )
        return self

    @property
    def local_database(self) -> str | None:
        """The database named by ``local/DATABASE`` (None for a URL)."""
        found = LOCAL_SOURCE.match(self.connection_string.get_secret_value())
        return found.group(1) if found else None

    def url(self, state_dir: Path | None = None) -> str:
        """The connection string with credentials injected; ``local/DATABASE`` resolves through
        the local service's state file. Secret: never log it."""
        local = self.local_database
        if local is not None:
            from cartridge_dagster.services.postgres import LocalPostgres

            server = LocalPostgres(Path(state_dir or ".cartridge") / "postgres").require_url()
            return urlunsplit(urlsplit(server)._replace(path="/" + local))
        return _inject_credentials(
            self.connection_string.get_secret_value(), self.username, self.password
        )

    def display_url(self, state_dir: Path | None = None) -> str:
        local = self.local_database
        if local is not None:
            return f"local/{local} (cartridge services)"
        return redact_url(self.url(state_dir))


class DestinationConfig(StrictModel):
    """Where data is written (the warehouse)."""

    type: Literal["postgresql"] = Field("postgresql", description="Destination kind.")
    connection_string: SecretStr = Field(
        SecretStr(LOCAL_POSTGRES),
        description=(
            "`postgresql://user:password@host:port/db`, or `local` for the server started by "
            "`cartridge services up` (its address is read from the state directory)."
        ),
        examples=["postgresql://cartridge:s3cr%2Ft@warehouse:5432/analytics", "local"],
    )
    username: str | None = Field(None, description="User name, URL-encoded for you.")
    password: SecretStr | None = Field(None, description="Password, URL-encoded for you.")
    pool_min_size: int = Field(1, ge=0, description="Smallest asyncpg pool size.")
    pool_max_size: int = Field(4, ge=1, description="Largest asyncpg pool size.")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="Timeout for connecting.")
    command_timeout_seconds: float = Field(300.0, gt=0, description="Timeout for one statement.")

    @field_validator("connection_string")
    @classmethod
    def _check_scheme(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() != LOCAL_POSTGRES:
            _check_url(value.get_secret_value(), ("postgresql", "postgres"))
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        raw = self.connection_string.get_secret_value()
        if raw != LOCAL_POSTGRES:
            _inject_credentials(raw, self.username, self.password)
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

    @property
    def is_local(self) -> bool:
        return self.connection_string.get_secret_value() == LOCAL_POSTGRES

    def url(self, state_dir: Path | None = None) -> str:
        """The connection string. ``local`` resolves through the local service's state file."""
        raw = self.connection_string.get_secret_value()
        if raw == LOCAL_POSTGRES:
            from cartridge_dagster.services.postgres import LocalPostgres

            return LocalPostgres(Path(state_dir or ".cartridge") / "postgres").require_url()
        return _inject_credentials(raw, self.username, self.password)

    def display_url(self, state_dir: Path | None = None) -> str:
        if self.is_local:
            return "local (cartridge services)"
        return redact_url(self.url(state_dir))


# --------------------------------------------------------------------------- behaviour sections


class SamplingConfig(StrictModel):
    """How `init` samples collections to infer schemas."""

    sample_size: int = Field(1000, ge=1, description="Documents per `$sample` round.")
    max_sample_size: int = Field(
        20000, ge=1, description="Adaptive sampling stops at this many documents."
    )
    adaptive: bool = Field(
        True, description="Keep sampling while new field paths or types still appear."
    )
    full_scan_below: int = Field(
        5000, ge=0, description="Collections with fewer documents are read whole."
    )
    max_depth: int = Field(8, ge=1, le=100, description="Deepest nesting level inferred.")
    example_values: int = Field(
        3, ge=0, le=20, description="Example values kept per field (0 disables)."
    )
    enum_max_distinct: int = Field(
        12, ge=0, description="A string field with at most this many values is an enum."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.sample_size > self.max_sample_size:
            raise ValueError("sample_size must not exceed max_sample_size")
        return self


class BatchingConfig(StrictModel):
    """How `warp` groups changes into transactions."""

    max_batch_size: int = Field(5000, ge=1, description="A batch closes at this many events.")
    max_batch_seconds: float = Field(1.0, gt=0, description="…or after this many seconds.")
    queue_max_batches: int = Field(
        4, ge=1, description="Batches buffered between reader and writer (bounds memory)."
    )
    snapshot_chunk_size: int = Field(
        10000, ge=1, description="Documents per `_id` range during the initial snapshot."
    )


class DeadLetterConfig(StrictModel):
    """What happens to values PostgreSQL cannot store, and to documents that cannot be landed."""

    nul_in_strings: Literal["strip", "dead_letter"] = Field(
        "strip", description="NUL (U+0000) in strings: remove it (counted) or dead-letter the row."
    )
    non_finite_numbers: Literal["string", "null", "dead_letter"] = Field(
        "string",
        description=(
            "NaN/Infinity (JSON cannot hold them): store as a string, as null, or dead-letter."
        ),
    )
    max_document_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Documents larger than this are dead-lettered."
    )
    max_attempts: int = Field(5, ge=1, description="Retries of a dead letter before it is parked.")


class EvolutionConfig(StrictModel):
    """What a schema change does."""

    policy: Literal["auto", "approve"] = Field(
        "auto",
        description="`auto` regenerates models on a schema change; `approve` waits for "
        "`cartridge schema approve`.",
    )


class WarpConfig(StrictModel):
    """Change-data-capture behaviour."""

    full_document: Literal["updateLookup", "whenAvailable", "required"] = Field(
        "updateLookup", description="How update events carry the document."
    )
    history_lost_policy: Literal["fail", "resnapshot"] = Field(
        "fail", description="When the resume token is gone: stop loudly, or re-snapshot."
    )
    drop_policy: Literal["tombstone", "ignore", "fail"] = Field(
        "tombstone", description="A dropped collection: mark its rows deleted, ignore, or stop."
    )
    idle_checkpoint_seconds: float = Field(
        10.0, gt=0, description="Persist the stream position this often while idle."
    )
    metrics_port: int = Field(
        8000, ge=0, le=65535, description="Prometheus `/metrics` and `/health` (0 disables)."
    )
    materialization_interval_seconds: float = Field(
        5.0, ge=0, description="Minimum interval between raw-table materializations per table."
    )
    lag_threshold_seconds: float = Field(
        300.0, gt=0, description="Asset check: lag above this fails."
    )
    slot_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]{1,63}$",
        description="PostgreSQL sources: the replication slot warp owns for this schema "
        "(default `cartridge_<schema>`; slots are per server, so two Cartridge installations "
        "reading one server need distinct names).",
    )
    publication_name: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="PostgreSQL sources: the publication warp owns for this schema (default "
        "`cartridge_<schema>`).",
    )
    slot_lag_threshold_bytes: int = Field(
        1024**3,
        gt=0,
        description="PostgreSQL sources: asset check `slot_lag_under_threshold` fails when the "
        "replication slot holds more unconfirmed WAL than this.",
    )
    snapshot_parallel_collections: int = Field(
        4,
        ge=1,
        le=64,
        description="Collections copied at the same time during a snapshot (their reads "
        "overlap; one writer lands them).",
    )
    snapshot_writers: int = Field(
        4,
        ge=1,
        le=16,
        description="PostgreSQL sources: warehouse connections landing the initial snapshot "
        "of tables with a one-column key side by side, each COPYing whole primary-key ranges "
        "marked landed in the transaction of their rows (as many ranges are read from the "
        "source at a time, per table); 1: one writer, ranges in key order.",
    )
    health_stall_seconds: float = Field(
        120.0,
        gt=0,
        description="`/health` is unhealthy when no batch was applied and no read of the "
        "source succeeded for this long.",
    )
    health_retry_seconds: float = Field(
        120.0,
        gt=0,
        description="`/health` is unhealthy while warp has retried a failing source or "
        "warehouse for this long.",
    )


class AnalyticsConfig(StrictModel):
    """Summaries, reconciliation and checks."""

    reconcile_sample_size: int = Field(
        1000, ge=0, description="Documents compared by hash per collection."
    )
    reconcile_tolerance: float = Field(
        0.0, ge=0, le=1, description="Allowed share of mismatched counts or hashes."
    )
    max_null_ratio: float | None = Field(
        None, ge=0, le=1, description="Check: a column's null ratio above this fails."
    )
    max_row_count_change: float | None = Field(
        None, ge=0, description="Check: a relative row-count change above this fails."
    )
    top_values: int = Field(10, ge=1, le=100, description="Top values kept per text column.")
    histogram_buckets: int = Field(10, ge=2, le=100, description="Buckets per numeric histogram.")
    profile_sample_rows: int = Field(
        1000,
        ge=100,
        description=(
            "Column statistics (distinct values, percentiles, top values, histograms, null "
            "ratios of document paths) read a random sample of about this many live rows per "
            "table; table-level numbers are exact."
        ),
    )
    refresh_min_interval_seconds: int = Field(
        60,
        ge=1,
        description="Automation: raw-table changes rebuild models and summaries at most this often "
        "(rounded up to a cron step of whole minutes; at most once per step)",
    )
    profile_cron: str = Field(
        "0 * * * *",
        description="Automation: cron schedule of the full profile and checks (UTC).",
    )

    @field_validator("profile_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,?-]+", f) for f in fields):
            raise ValueError(
                f"{value!r} is not a cron schedule: five fields (minute hour day month weekday), "
                "e.g. '0 * * * *'"
            )
        return value


class Defaults(StrictModel):
    """Defaults for every schema; a schema overrides any key of any section."""

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    deletes: Literal["soft", "hard"] = Field(
        "soft", description="`soft` keeps a tombstone row; `hard` deletes the row."
    )
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    warp: WarpConfig = Field(default_factory=WarpConfig)
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)


_SECTIONS = ("sampling", "batching", "evolution", "dead_letter", "warp", "analytics")


class TableConfig(StrictModel):
    """Per-collection overrides."""

    delete_mode: Literal["soft", "hard"] | None = Field(
        None, description="Overrides the schema's `deletes`."
    )
    history: bool = Field(False, description="Also keep an append-only history table.")
    exclude_fields: list[str] = Field(
        default_factory=list,
        description="Field paths never landed nor modelled (PII), e.g. `customer.email`.",
    )
    sensitive_fields: list[str] = Field(
        default_factory=list, description="Field paths whose example values are never kept."
    )
    type_overrides: dict[str, FieldType] = Field(
        default_factory=dict, description="Field path → SQL type for the staging model."
    )
    max_null_ratio: float | None = Field(None, ge=0, le=1, description="Overrides analytics.")
    max_row_count_change: float | None = Field(None, ge=0, description="Overrides analytics.")


class SchemaConfig(StrictModel):
    """One source database (or PostgreSQL schema) and where it lands."""

    name: SchemaName = Field(description="Cartridge's name for this schema (asset keys, jobs).")
    source_database: str = Field(description="MongoDB database (or PostgreSQL schema) to read.")
    target_schema: str | None = Field(
        None, description="PostgreSQL schema for the raw tables; defaults to `raw_<name>`."
    )
    include: list[str] = Field(
        default_factory=list, description="Collections to include (empty: all)."
    )
    exclude: list[str] = Field(default_factory=list, description="Collections to leave out.")
    source: SourceConfig | None = Field(
        None,
        description="This schema's own source, when it is not the global `source` (a "
        "PostgreSQL database beside a MongoDB one, say); `source_database` names a database "
        "(MongoDB) or a schema (PostgreSQL) of it.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    deletes: Literal["soft", "hard"] = "soft"
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    warp: WarpConfig = Field(default_factory=WarpConfig)
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)
    tables: dict[str, TableConfig] = Field(
        default_factory=dict, description="Per-collection overrides, by collection name."
    )
    k8s_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        description="Kubernetes requests/limits for this schema's warp run pod.",
    )

    @field_validator("target_schema")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value.encode()) > 63 or "\x00" in value):
            raise ValueError("must be 1 to 63 bytes, without NUL")
        return value

    @property
    def raw_schema(self) -> str:
        """PostgreSQL schema of the raw tables."""
        return self.target_schema or f"raw_{self.name}"

    def selects(self, collection: str) -> bool:
        """Whether ``collection`` is in scope (include/exclude, system collections never)."""
        return selects(collection, self.include, self.exclude)

    def table(self, collection: str) -> TableConfig:
        """Resolved per-table settings (schema defaults applied)."""
        table = self.tables.get(collection, TableConfig())
        if table.delete_mode is None:
            table = table.model_copy(update={"delete_mode": self.deletes})
        return table


class DbtConfig(StrictModel):
    """The dbt project Cartridge generates into."""

    project_dir: str = Field("dbt_project", description="dbt project directory.")
    target: str = Field("cartridge", description="dbt target name in the generated profile.")
    staging_schema: str = Field(
        "staging", description="PostgreSQL schema suffix for the staging models."
    )
    threads: int = Field(2, ge=1, le=32, description="dbt threads.")
    staging_materialized: Literal["view", "table"] = Field(
        "view",
        description="How generated staging models are built: `view` (always current, no "
        "storage) or `table` (typed once per dbt run; fastest to query).",
    )


class AIConfig(StrictModel):
    """AI prose for generated docs. `none` is deterministic, offline and the default."""

    provider: Literal["none", "openai", "anthropic", "gemini"] = Field(
        "none", description="Who writes descriptions."
    )
    model: str | None = Field(None, description="Provider model name; a sensible default if unset.")
    api_key: SecretStr | None = Field(
        None, description="API key; by default the provider's usual environment variable."
    )
    business_context: str | None = Field(
        None, description="YAML file with a glossary, table purposes and owners."
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Per request.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries on transient errors.")


class ObservabilityConfig(StrictModel):
    """Logs."""

    log_format: Literal["console", "json"] = Field(
        "console", description="`console` locally, `json` in production."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Level.")


def _indexed(data: Mapping[str, Any]) -> dict[int, dict[str, Any]] | None:
    """An environment source's ``schemas`` when it is ``{"<index>": {...}}``."""
    schemas = data.get("schemas")
    if not isinstance(schemas, Mapping) or not schemas:
        return None
    if not all(isinstance(k, str) and k.isdigit() for k in schemas):
        return None
    return {int(k): dict(v) for k, v in schemas.items() if isinstance(v, Mapping)}


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- the environment
#
# The environment is read here, not by pydantic-settings (whose import is ~100 ms of CPU, paid
# by every `cartridge warp run` before its first read). The rules are the ones that library
# applied to this model (`tests/unit/test_config_env.py` checks them against it): names match
# case-insensitively, `__` separates levels, a value for a section, list or mapping is JSON,
# and a value for anything else is the string itself, validated by the model like a file's.


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_CONTAINERS = (list, dict, set, frozenset, tuple)


def _complexity(annotation: Any) -> tuple[bool, bool]:
    """Whether an environment value for ``annotation`` is JSON, and whether a value that is
    not JSON is kept as a string (a union with a scalar member) instead of refused."""
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        if any(_complexity(arg)[0] for arg in get_args(annotation)):
            return True, True
        return False, False
    if _is_model(annotation) or annotation in _CONTAINERS or origin in _CONTAINERS:
        return True, False
    return False, False


#: Where a nested name leads: a model's field (``FieldInfo``) or a mapping's value type.
_Target = FieldInfo | Any | None


def _next_target(target: _Target, key: str) -> _Target:
    """The field (or mapping value type) that ``key`` names below ``target``."""
    if target is None:
        return None
    annotation = target.annotation if isinstance(target, FieldInfo) else target
    annotation = _strip_annotated(annotation)
    if get_origin(annotation) is dict:
        args = get_args(annotation)
        return args[-1] if args else None
    for arg in get_args(annotation):
        found = _next_target(arg, key)
        if found is not None:
            return found
    if _is_model(annotation):
        for name, field in annotation.model_fields.items():
            if name.lower() == key:
                return field
    return None


def _not_json(name: str, exc: ValueError) -> ConfigError:
    return ConfigError(f"environment variable {name.upper()}: this setting takes JSON ({exc})")


def _decode(name: str, target: _Target, value: str) -> Any:
    """An environment value for ``target``: JSON for a section, list or mapping."""
    if not value or target is None:
        return value
    if isinstance(target, FieldInfo):
        is_json, lenient = _complexity(target.annotation)
    else:  # a mapping's value type
        is_json, lenient = _complexity(target)[0], True
    if not is_json:
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        if lenient:
            return value
        raise _not_json(name, exc) from None


def _explode(prefix: str, field: FieldInfo, env: Mapping[str, str]) -> dict[str, Any]:
    """``PREFIX__A__B=value`` variables as ``{"a": {"b": value}}`` (names lower-cased)."""
    result: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        *keys, last = name[len(prefix) :].split("__")
        node: Any = result
        target: _Target = field
        for key in keys:
            target = _next_target(target, key)
            if isinstance(node, dict):
                node = node.setdefault(key, {})
        if isinstance(node, dict):
            node[last] = _decode(name, _next_target(target, last), value)
    return result


def _environment(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment gives under ``prefix`` (``CARTRIDGE_``), nested."""
    env = {name.lower(): value for name, value in environ.items()}
    data: dict[str, Any] = {}
    for field_name, field in CartridgeSettings.model_fields.items():
        name = (prefix + field_name).lower()
        value = env.get(name)
        is_json, lenient = _complexity(field.annotation)
        if not is_json:
            if value is not None:
                data[field_name] = value
            continue
        nested = _explode(name + "__", field, env)
        if value is None:
            if nested:
                data[field_name] = nested
            continue
        try:
            decoded: Any = json.loads(value)
        except ValueError as exc:
            if not lenient:
                raise _not_json(name, exc) from None
            decoded = value
        if isinstance(decoded, dict):
            decoded = _deep_update(decoded, nested)
        data[field_name] = decoded
    return data


def _deep_update(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mapping by mapping (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _with_indexed(data: dict[str, Any], envs: list[dict[str, Any]]) -> dict[str, Any]:
    """The file's settings with ``CARTRIDGE_SCHEMAS__<i>__…`` merged into its i-th schema
    (a schema's own source connection string, in a cluster) instead of replacing the list.
    ``envs``: the environment's settings, the one that wins last."""
    schemas = data.get("schemas")
    if not isinstance(schemas, list):
        return data
    schemas = list(schemas)
    for env in envs:
        for index, fields in sorted((_indexed(env) or {}).items()):
            if index >= len(schemas):
                raise ConfigError(
                    f"environment variable {ENV_PREFIX}SCHEMAS__{index}__… names schema "
                    f"{index}, but the configuration has {len(schemas)} (counted from 0)"
                )
            own = schemas[index]
            if isinstance(own, BaseModel):
                own = own.model_dump(exclude_unset=True)
            if isinstance(own, Mapping):
                schemas[index] = _deep_merge(own, fields)
    return {**data, "schemas": schemas}


def _settings_data(init: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The file's (or caller's) settings merged with the environment: ``CARTRIDGE_…`` beats
    ``CARTRIDGE_WARP_…`` (the seed's prefix), which beats the file."""
    seed, env = (_environment(prefix, environ) for prefix in (SEED_ENV_PREFIX, ENV_PREFIX))
    data = _with_indexed(_fold_case(init), [seed, env])
    seed, env = (
        {k: v for k, v in e.items() if k != "schemas"} if _indexed(e) else e for e in (seed, env)
    )
    return _deep_update(data, _deep_update(seed, env))


def _fold_case(init: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys matched to the settings' fields case-insensitively (``Mode:`` is
    ``mode``); of two spellings of one key the first is kept."""
    out: dict[str, Any] = {}
    rest = dict(init)
    for field_name in CartridgeSettings.model_fields:
        spellings = [key for key in init if isinstance(key, str) and key.lower() == field_name]
        if spellings:
            out[field_name] = init[spellings[0]]
            for key in spellings:
                rest.pop(key, None)
    out.update(rest)
    return out


class CartridgeSettings(StrictModel):
    """The whole Cartridge configuration. Build it with :func:`load_settings` or
    :func:`settings_from_mapping`, which merge the environment in."""

    source: SourceConfig = Field(description="The operational database to read.")
    destination: DestinationConfig = Field(
        default_factory=lambda: DestinationConfig(), description="The warehouse to write."
    )
    mode: Literal["single", "multi"] = Field(
        "multi",
        description="`single`: one schema per warp process (Kubernetes); `multi`: all in one.",
    )
    state_dir: str = Field(
        ".cartridge", description="Local state: services, schema versions, reports."
    )
    defaults: Defaults = Field(default_factory=Defaults)
    schemas: list[SchemaConfig] = Field(min_length=1, description="The schemas to manage.")
    dbt: DbtConfig = Field(default_factory=DbtConfig)
    ai: AIConfig = Field(default_factory=AIConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        """Fill every schema's sections from ``defaults``, key by key."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        defaults = data.get("defaults") or {}
        if isinstance(defaults, BaseModel):
            defaults = defaults.model_dump()
        if not isinstance(defaults, Mapping) or not isinstance(data.get("schemas"), list):
            return data
        schemas = []
        for schema in data["schemas"]:
            if isinstance(schema, BaseModel):
                schema = schema.model_dump(exclude_unset=True)
            if isinstance(schema, Mapping):
                schema = dict(schema)
                for section in _SECTIONS:
                    base = defaults.get(section)
                    own = schema.get(section)
                    if isinstance(base, Mapping) and (own is None or isinstance(own, Mapping)):
                        schema[section] = {**base, **(own or {})}
                if "deletes" in defaults and "deletes" not in schema:
                    schema["deletes"] = defaults["deletes"]
            schemas.append(schema)
        data["schemas"] = schemas
        return data

    @model_validator(mode="after")
    def _check_unique(self) -> Self:
        seen: set[str] = set()
        for schema in self.schemas:
            if schema.name in seen:
                raise ValueError(f"schema name {schema.name!r} is used twice")
            seen.add(schema.name)
        return self

    def get_schema(self, name: str) -> SchemaConfig:
        for schema in self.schemas:
            if schema.name == name:
                return schema
        known = ", ".join(s.name for s in self.schemas)
        raise ConfigError(f"no schema named {name!r} in the configuration (known: {known})")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def destination_url(self) -> str:
        """The warehouse connection string (secret)."""
        return self.destination.url(self.state_path)

    def source_for(self, schema: str | SchemaConfig) -> SourceConfig:
        """The source ``schema`` reads: its own ``source``, else the global one."""
        cfg = self.get_schema(schema) if isinstance(schema, str) else schema
        return cfg.source or self.source

    def source_url(self, schema: str | SchemaConfig) -> str:
        """The connection string of the source ``schema`` reads (secret)."""
        return self.source_for(schema).url(self.state_path)


# --------------------------------------------------------------------------- loading


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or part.startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _env_names_for(path: str) -> list[str]:
    flat = re.sub(r"\[(\d+)\]", r".\1", path).replace(".", "__").upper()
    return [p + flat for p in (ENV_PREFIX, SEED_ENV_PREFIX) if (p + flat) in os.environ]


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem: ``origin: dotted.path: reason`` (values never echoed)."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        path = _dotted(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md)"
        env = _env_names_for(path)
        where = f" (set by environment variable {env[0]})" if env else ""
        lines.append(f"{origin}: {path}: {msg}{where}")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, Any] | None = None
) -> CartridgeSettings:
    """Load, merge with the environment, and validate. Raises :class:`ConfigError`."""
    file = find_config_file(path)
    data = read_file(file)
    if overrides:
        data = {**data, **overrides}
    return _validated(data, str(file))


def settings_from_mapping(data: Mapping[str, Any], origin: str = "<config>") -> CartridgeSettings:
    """Validate an in-memory configuration (tests, generated configs), merged with the
    environment like a file."""
    return _validated(data, origin)


def _validated(data: Mapping[str, Any], origin: str) -> CartridgeSettings:
    try:
        return CartridgeSettings.model_validate(_settings_data(data, os.environ))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
