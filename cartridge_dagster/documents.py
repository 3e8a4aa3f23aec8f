"""BSON documents → analytics-friendly JSON (the raw landing contract in DESIGN.md).

ObjectId → 24-hex string; datetime → ISO-8601 UTC string with milliseconds and ``Z``;
Decimal128 → an exact JSON number; Binary → base64 string (UUID subtype → canonical UUID string);
UUID → canonical string; Int64 → number; Timestamp → ``{"t": …, "i": …}``; Regex →
``{"$regex": …, "$options": …}``; MinKey/MaxKey → ``{"$minKey": 1}``/``{"$maxKey": 1}``;
Code → its source text; DBRef → ``{"$ref": …, "$id": …}``.

Values PostgreSQL's ``jsonb`` cannot hold follow :class:`ValuePolicy` and are counted in
:class:`ConversionStats`: NUL (U+0000) in strings is stripped or the document is rejected;
NaN/±Infinity become strings (``"NaN"``, ``"Infinity"``), null, or reject the document.
Rejected documents raise :class:`UnlandableDocument`, which names the field path, so the caller
can dead-letter them; nothing is dropped silently.

:func:`canonical_hash` gives the same digest for a document converted here and for the same
document read back from ``jsonb``, which is what reconciliation compares.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import struct
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import orjson
from bson import (
    DBRef,
    Decimal128,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.binary import Binary, UuidRepresentation
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.errors import TerminalError

__all__ = [
    "ConversionStats",
    "UnlandableDocument",
    "ValuePolicy",
    "canonical_hash",
    "canonical_id",
    "document_json",
    "raw_document_json",
    "split_event",
    "to_jsonable",
]

try:  # the C fast path (hatch_build.py compiles it at install; optional)
    from cartridge_dagster import _bsonjson
except ImportError:  # pragma: no cover - an install without a C compiler
    _bsonjson = None  # type: ignore[assignment]

#: Whether raw BSON converts in C (without building Python objects); see raw_document_json.
FAST_BSON: bool = _bsonjson is not None

#: How Cartridge decodes BSON (and how its PyMongo client is configured): timezone-aware UTC
#: datetimes, dates outside Python's range as ``DatetimeMS``, standard UUIDs.
DECODE_OPTIONS: Any = CodecOptions(
    tz_aware=True,
    tzinfo=dt.UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)
#: The same, reading documents as ``RawBSONDocument`` (bytes, decoded only when looked into).
RAW_OPTIONS: Any = DECODE_OPTIONS.with_options(document_class=RawBSONDocument)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UNPACK_QQ = struct.Struct("<QQ").unpack


class UnlandableDocument(TerminalError):
    """A document that cannot be landed under the configured policy (goes to dead letters)."""

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ValuePolicy:
    nul_in_strings: Literal["strip", "dead_letter"] = "strip"
    non_finite_numbers: Literal["string", "null", "dead_letter"] = "string"


@dataclass
class ConversionStats:
    nul_stripped: int = 0
    non_finite: int = 0
    out_of_range_dates: int = 0
    by_field: dict[str, int] = field(default_factory=dict)

    def note(self, path: str) -> None:
        self.by_field[path] = self.by_field.get(path, 0) + 1


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:  # naive datetimes are UTC (the embedded engine returns them)
        return value.isoformat(timespec="milliseconds") + "Z"
    if value.utcoffset():
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _datetime_ms(value: DatetimeMS, stats: ConversionStats, path: str) -> str:
    millis = int(value)
    try:
        return _iso(_EPOCH + dt.timedelta(milliseconds=millis))
    except OverflowError:
        stats.out_of_range_dates += 1
        stats.note(path)
        return f"{millis}ms"


def _oid_hex(value: ObjectId) -> str:
    """``str(ObjectId)`` at half the cost: the 12 bytes PyMongo keeps in a slot, as hex."""
    try:
        return value._ObjectId__id.hex()  # type: ignore[attr-defined, no-any-return]
    except AttributeError:  # a PyMongo without the slot
        return str(value)


def canonical_id(value: Any) -> str:
    """The ``_id`` column value: ObjectId as 24 hex chars, strings as is, others as JSON."""
    if type(value) is ObjectId:
        return _oid_hex(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    jsonable = to_jsonable(value, ValuePolicy(), ConversionStats(), "_id")
    return orjson.dumps(jsonable, option=orjson.OPT_SORT_KEYS).decode()


def to_jsonable(value: Any, policy: ValuePolicy, stats: ConversionStats, path: str = "") -> Any:
    """Convert one BSON value (recursively) to JSON-able Python."""
    if isinstance(value, str):
        if "\x00" in value:
            if policy.nul_in_strings == "dead_letter":
                raise UnlandableDocument(
                    f"field {path or '(root)'!r} contains a NUL character",
                    path=path,
                    reason="nul_in_string",
                )
            stats.nul_stripped += 1
            stats.note(path)
            return value.replace("\x00", "")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # Int64 is an int
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return _non_finite(str(value), policy, stats, path)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            skey = str(key)
            if "\x00" in skey:
                if policy.nul_in_strings == "dead_letter":
                    raise UnlandableDocument(
                        f"a field name under {path or '(root)'!r} contains a NUL character",
                        path=path,
                        reason="nul_in_key",
                    )
                stats.nul_stripped += 1
                skey = skey.replace("\x00", "")
            out[skey] = to_jsonable(item, policy, stats, f"{path}.{skey}" if path else skey)
        return out
    if isinstance(value, list | tuple):
        child = f"{path}[]"
        return [to_jsonable(item, policy, stats, child) for item in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, Decimal128):
        dec = value.to_decimal()
        if not dec.is_finite():
            text = "NaN" if dec.is_nan() else ("-Infinity" if dec.is_signed() else "Infinity")
            return _non_finite(text, policy, stats, path)
        return orjson.Fragment(_decimal_text(dec))
    if isinstance(value, Decimal):
        if not value.is_finite():
            return _non_finite(str(value), policy, stats, path)
        return orjson.Fragment(_decimal_text(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary):
        if value.subtype in (3, 4) and len(value) == 16:
            return str(uuid.UUID(bytes=bytes(value)))
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, DatetimeMS):
        return _datetime_ms(value, stats, path)
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    if isinstance(value, Regex):
        return {"$regex": to_jsonable(value.pattern, policy, stats, path), "$options": value.flags}
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, MinKey):
        return {"$minKey": 1}
    if isinstance(value, MaxKey):
        return {"$maxKey": 1}
    if isinstance(value, DBRef):
        return {"$ref": value.collection, "$id": to_jsonable(value.id, policy, stats, path)}
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "pattern") and hasattr(value, "flags"):  # re.Pattern
        return {"$regex": value.pattern, "$options": ""}
    return str(value)


def _decimal_text(dec: Decimal) -> str:
    # JSON numbers have no "+" exponents issue; Decimal's str is valid JSON for finite values
    # except forms like "1E+3", which JSON allows ("1E+3" is valid). Normalise "-0" too.
    text = str(dec)
    return "0" if text in ("-0", "0E-0") else text


def _non_finite(text: str, policy: ValuePolicy, stats: ConversionStats, path: str) -> Any:
    if policy.non_finite_numbers == "dead_letter":
        raise UnlandableDocument(
            f"field {path or '(root)'!r} holds {text}, which JSON cannot represent",
            path=path,
            reason="non_finite_number",
        )
    stats.non_finite += 1
    stats.note(path)
    if policy.non_finite_numbers == "null":
        return None
    return text.replace("inf", "Infinity").replace("nan", "NaN")


class _NeedsPolicy(Exception):
    """The fast path met a value a policy must decide on: use the full conversion."""


_D128_SPECIAL = 3 << 61
_D128_MAX_COEFFICIENT = 10**34 - 1


def _decimal128_parts(value: Decimal128) -> tuple[int, int]:
    """(high, low) 64-bit halves; PyMongo keeps them in slots (``bid`` packs them to bytes)."""
    try:
        return value._Decimal128__high, value._Decimal128__low  # type: ignore[attr-defined]
    except AttributeError:  # a PyMongo without the slots: the public (slower) way
        low, high = _UNPACK_QQ(value.bid)
        return high, low


def _decimal128_text(value: Decimal128) -> str:
    """``Decimal128`` → the same text as ``str(value.to_decimal())``, without PyMongo's slow
    pure-Python ``to_decimal`` for the common (finite, canonical) encodings.

    Plain notation (what ``Decimal.__str__`` prints when the exponent is <= 0 and the adjusted
    exponent >= -6: prices, quantities, amounts) is formatted here; other forms go through
    ``Decimal``."""
    high, low = _decimal128_parts(value)
    if high & _D128_SPECIAL == _D128_SPECIAL:
        raise _NeedsPolicy  # NaN, Infinity, or the rare large-coefficient form
    coefficient = ((high & 0x1FFFFFFFFFFFF) << 64) | low
    if coefficient > _D128_MAX_COEFFICIENT:
        raise _NeedsPolicy
    exponent = ((high >> 49) & 0x3FFF) - 6176
    sign = "-" if high >> 63 else ""
    digits = str(coefficient)
    size = len(digits)
    if exponent <= 0 and exponent + size > -6:
        if exponent == 0:
            text = digits
        elif size > -exponent:
            text = f"{digits[:exponent]}.{digits[exponent:]}"
        else:
            text = "0." + "0" * (-exponent - size) + digits
        return "0" if sign and text == "0" else sign + text
    return _decimal_text(Decimal(f"{sign}{coefficient}E{exponent}"))


def _binary_text(value: Binary) -> str:
    if value.subtype in (3, 4) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    return base64.b64encode(bytes(value)).decode("ascii")


def _decimal128_fragment(value: Decimal128) -> Any:
    return orjson.Fragment(_decimal128_text(value))


_FAST_TYPES: dict[type, Any] = {
    ObjectId: _oid_hex,
    dt.datetime: _iso,
    Decimal128: _decimal128_fragment,
    Binary: _binary_text,
    bytes: lambda v: base64.b64encode(v).decode("ascii"),
    Timestamp: lambda v: {"t": v.time, "i": v.inc},
}


def _fast_default(value: Any) -> Any:
    """orjson's ``default`` for BSON types; anything a policy must see goes the slow way."""
    convert = _FAST_TYPES.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(_decimal_text(value))
    raise _NeedsPolicy


def _has_non_finite(value: Any) -> bool:
    """Whether a NaN or ±Infinity float hides anywhere in ``value`` (dicts and lists walked).

    ``x - x`` is ``0.0`` for every finite float and NaN for NaN and ±Infinity, so one
    subtraction and one comparison test a float; scalars are never pushed on a stack."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif kind is float:
        return bool(value - value != 0.0)
    elif isinstance(value, dict):
        items = value.values()
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is float:
            if item - item != 0.0:
                return True
        elif kind in _SCALARS:
            continue
        elif _has_non_finite(item):
            return True
    return False


#: Types that can hold no float: the walk skips them without a call.
_SCALARS = frozenset(
    {str, int, bool, type(None), ObjectId, dt.datetime, Decimal128, Binary, bytes, uuid.UUID}
)


_FAST_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def document_json(
    document: dict[str, Any],
    policy: ValuePolicy | None = None,
    stats: ConversionStats | None = None,
) -> bytes:
    """The ``document`` column value (JSON bytes) for one BSON document.

    Fast path: orjson walks the document natively (BSON types through ``default``); the output
    is only kept when no policy applies: no ``\u0000`` escape (a NUL in a string or key) and,
    when the output has a ``null`` (orjson writes NaN/Infinity as null), no non-finite float.
    Otherwise the full conversion (:func:`to_jsonable`) runs, applies the policies and counts.
    Both give the same bytes for documents the fast path accepts.
    """
    try:
        out = orjson.dumps(document, default=_fast_default, option=_FAST_OPTIONS)
    except (_NeedsPolicy, orjson.JSONEncodeError, TypeError):
        out = None
    if (
        out is not None
        and b"\\u0000" not in out
        and (b"null" not in out or not _has_non_finite(document))
    ):
        return out
    stats = stats if stats is not None else ConversionStats()
    return orjson.dumps(to_jsonable(document, policy or ValuePolicy(), stats))


def raw_document_json(raw: bytes | memoryview) -> tuple[str, bytes] | None:
    """``(canonical_id(_id), document_json(document))`` straight from BSON bytes, or ``None``.

    The C fast path (``_bsonjson.c``) for documents read raw (PyMongo's ``RawBSONDocument``):
    no Python objects are built for the document. It writes the bytes :func:`document_json`
    writes for the common BSON types and returns ``None`` for anything a policy or the Python
    conversion must decide (NUL, NaN, rarer types, dates out of range, an unusual ``_id``);
    the caller then decodes with :data:`DECODE_OPTIONS` and converts in Python.
    """
    if _bsonjson is None:
        return None
    return _bsonjson.convert(raw)


def split_event(raw: bytes | memoryview) -> tuple[bytes, bytes | None, bytes | None] | None:
    """A change event's BSON → (the event without ``fullDocument`` and
    ``fullDocumentBeforeChange``, those documents' BSON or ``None``), in C; ``None`` without
    the extension or for BSON it cannot walk."""
    if _bsonjson is None:
        return None
    return _bsonjson.split_event(raw)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        return orjson.Fragment(format(value.normalize(), "f"))
    if isinstance(value, float):
        return _canonical(Decimal(repr(value)))
    return value


def canonical_hash(json_text: str | bytes) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, normalised numbers).

    The same document gives the same digest whether it comes from :func:`document_json` or is
    read back from PostgreSQL's ``jsonb`` (which reorders keys and keeps numbers exactly).
    """
    parsed = json.loads(json_text, parse_float=Decimal, parse_int=Decimal)
    canonical = orjson.dumps(_canonical(parsed), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
