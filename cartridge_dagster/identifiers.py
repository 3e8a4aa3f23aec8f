"""SQL identifiers: the one quoting function, and stable names for hostile source names.

No SQL in Cartridge is built from a name any other way than through :func:`quote_ident` (and
:func:`qualified` for ``schema.table``). Source names (collections, field paths) become PostgreSQL
names through :func:`pg_name`, which is deterministic: the same source name always gives the same
column or table name, names over PostgreSQL's 63-byte limit get a stable hash suffix, and
:func:`assign_names` resolves collisions (case, punctuation) deterministically.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "assign_names",
    "pg_name",
    "qualified",
    "quote_ident",
    "quote_literal",
    "short_hash",
]

#: PostgreSQL's NAMEDATALEN - 1.
MAX_IDENTIFIER_BYTES = 63

_SAFE = re.compile(r"[^a-z0-9_]+")


def quote_ident(name: str) -> str:
    """Quote ``name`` as a PostgreSQL identifier.

    Doubles embedded quotes, rejects NUL (PostgreSQL cannot store it in a name) and names that
    PostgreSQL would silently truncate: callers map long names through :func:`pg_name` first.
    """
    if not isinstance(name, str) or name == "":
        raise ValueError("an SQL identifier must be a non-empty string")
    if "\x00" in name:
        raise ValueError(f"SQL identifier contains a NUL character: {name!r}")
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"SQL identifier is longer than {MAX_IDENTIFIER_BYTES} bytes: {name!r}; map it "
            "through pg_name() first"
        )
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, both parts quoted."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_literal(value: str) -> str:
    """Quote a string as an SQL literal (for the rare DDL that cannot take parameters)."""
    if "\x00" in value:
        raise ValueError("SQL literal contains a NUL character")
    return "'" + value.replace("'", "''") + "'"


def short_hash(text: str, length: int = 8) -> str:
    """A stable hex digest of ``text`` (sha1; used for names, not security)."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:length]


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")


def pg_name(source_name: str, *, prefix: str = "", max_bytes: int = MAX_IDENTIFIER_BYTES) -> str:
    """A readable, lower-case, SQL-safe name for a source name.

    ``customer.address.zip`` → ``customer__address__zip``; ``$type`` → ``type``; ``Größe`` →
    ``grosse``; ``select`` stays ``select`` (quoting makes keywords safe). Empty results become
    ``field_<hash>``. Names longer than ``max_bytes`` keep a prefix and get ``_<hash>`` of the full
    source name, so distinct long names stay distinct and the mapping is stable.
    """
    text = unicodedata.normalize("NFKD", source_name)
    text = text.replace("ß", "ss")
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.replace(".", "__").lower()
    text = _SAFE.sub("_", text)
    text = re.sub(r"_{3,}", "__", text).strip("_")
    if not text:
        text = f"field_{short_hash(source_name)}"
    if text[0].isdigit():
        text = f"_{text}"
    text = prefix + text
    if len(text.encode("utf-8")) > max_bytes:
        suffix = "_" + short_hash(source_name)
        text = _truncate_utf8(text, max_bytes - len(suffix)).rstrip("_") + suffix
    return text


def assign_names(
    source_names: Iterable[str], *, reserved: Iterable[str] = (), prefix: str = ""
) -> dict[str, str]:
    """Map each source name to a unique SQL name, deterministically.

    Collisions (``Name`` and ``name``; ``a.b`` and ``a__b``) are resolved in sorted order of the
    source names: the first keeps the plain name, later ones get a hash suffix of their own source
    name. ``reserved`` names (e.g. ``_id``, ``_cartridge_deleted``) are never handed out.
    """
    taken = {r.lower() for r in reserved}
    mapping: dict[str, str] = {}
    for source in sorted(set(source_names)):
        candidate = pg_name(source, prefix=prefix)
        if candidate.lower() in taken:
            suffix = "_" + short_hash(source)
            base = _truncate_utf8(candidate, MAX_IDENTIFIER_BYTES - len(suffix)).rstrip("_")
            candidate = base + suffix
            n = 1
            while candidate.lower() in taken:  # astronomically rare: hash collision
                suffix = "_" + short_hash(f"{source}#{n}")
                candidate = _truncate_utf8(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix
                n += 1
        taken.add(candidate.lower())
        mapping[source] = candidate
    return mapping
