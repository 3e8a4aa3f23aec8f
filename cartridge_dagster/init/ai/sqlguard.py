"""The allowlist any AI-proposed SQL must pass before dbt even parses it.

Allowed: one ``SELECT`` (or ``WITH … SELECT``) statement; Jinja only as ``{{ ref('…') }}``,
``{{ source('…', '…') }}`` and ``{{ config(…) }}`` expressions with plain literal arguments; no
``{% … %}`` blocks, no ``{# … #}`` comments; no statement separators; no data-changing or
session-changing keywords anywhere outside string literals. A failure names the reason.
"""

from __future__ import annotations

import re

from cartridge_dagster.errors import CartridgeError

__all__ = ["RejectedSQL", "check_sql"]

_JINJA_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)
_ALLOWED_CALL = re.compile(
    r"^\s*(ref\(\s*'[A-Za-z0-9_]+'\s*(,\s*'[A-Za-z0-9_]+'\s*)?\)"
    r"|source\(\s*'[A-Za-z0-9_]+'\s*,\s*'[A-Za-z0-9_]+'\s*\)"
    r"|config\(\s*([a-z_]+\s*=\s*"
    r"('[A-Za-z0-9_ ,-]*'|\[[A-Za-z0-9_ ,'\"-]*\]|true|false|True|False|[0-9]+)\s*,?\s*)*\))"
    r"\s*$"
)
_FORBIDDEN = re.compile(
    r"\b(insert|update|delete|merge|drop|create|alter|truncate|grant|revoke|copy|call|do|"
    r"execute|prepare|vacuum|analyze|cluster|reindex|comment|lock|listen|notify|set|reset|"
    r"begin|commit|rollback|savepoint|refresh|security|into|pg_sleep|pg_read_file|"
    r"pg_write_file|lo_import|lo_export|dblink|pg_terminate_backend|current_setting|"
    r"set_config)\b",
    re.I,
)
_STRING = re.compile(r"'(?:[^']|'')*'")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_MAX_CHARS = 20000


class RejectedSQL(CartridgeError):
    """AI-proposed SQL that failed the allowlist (or dbt parse)."""


def check_sql(sql: str) -> str:
    """Return ``sql`` (stripped) when it passes the allowlist; raise :class:`RejectedSQL`."""
    if len(sql) > _MAX_CHARS:
        raise RejectedSQL(f"longer than {_MAX_CHARS} characters")
    if "\x00" in sql:
        raise RejectedSQL("contains a NUL character")
    if "{%" in sql or "%}" in sql:
        raise RejectedSQL("Jinja statements ({% … %}) are not allowed; only ref/source/config")
    if "{#" in sql or "#}" in sql:
        raise RejectedSQL("Jinja comments are not allowed")
    for match in _JINJA_EXPR.finditer(sql):
        if not _ALLOWED_CALL.match(match.group(1)):
            raise RejectedSQL(
                f"Jinja expression {{{{{match.group(1).strip()[:60]}}}}} is not ref(), "
                "source() or config() with literal arguments"
            )
    rest = _JINJA_EXPR.sub(" __jinja__ ", sql)
    if "{" in rest or "}" in rest:
        raise RejectedSQL("stray Jinja delimiter")
    code = _BLOCK_COMMENT.sub(" ", rest)
    code = _LINE_COMMENT.sub(" ", code)
    code = _STRING.sub("''", code)
    if "/*" in code or "*/" in code:
        raise RejectedSQL("unterminated comment")
    if code.count("'") % 2:
        raise RejectedSQL("unterminated string literal")
    body = code.strip().rstrip(";").strip()
    if ";" in body:
        raise RejectedSQL("more than one statement")
    if not re.match(r"^(__jinja__\s*)*(select|with)\b", body, re.I):
        raise RejectedSQL("not a SELECT statement")
    bad = _FORBIDDEN.search(body)
    if bad:
        raise RejectedSQL(f"keyword {bad.group(1).upper()!r} is not allowed in a model")
    return sql.strip().rstrip(";").strip() + "\n"
