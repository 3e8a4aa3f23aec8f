"""The configuration file, found and read without validating it (no pydantic).

:mod:`cartridge_dagster.config` validates what these functions read; ``warp run`` also reads the
file here first, to ask for its first snapshot page while the settings are validated
(:mod:`cartridge_dagster.warp.early`). Importing this module costs what ``yaml`` costs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit, urlunsplit

import yaml

from cartridge_dagster.errors import ConfigError

__all__ = ["find_config_file", "inject_credentials", "read_file", "selects"]


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: explicit → ``$CARTRIDGE_CONFIG`` → ``./cartridge.yaml``."""
    candidate = explicit or os.environ.get("CARTRIDGE_CONFIG")
    if candidate:
        path = Path(candidate)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        return path
    for name in ("cartridge.yaml", "cartridge.yml", "cartridge.json"):
        if Path(name).is_file():
            return Path(name)
    raise ConfigError(
        "no configuration file: pass --config FILE, set CARTRIDGE_CONFIG, or create cartridge.yaml",
        hint="examples/demo.yaml is a working configuration for the embedded demo",
    )


def read_file(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (YAML, or JSON for ``.json``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = path.suffix.lstrip(".").upper() or "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def inject_credentials(url: str, username: str | None, password: str | None) -> str:
    """``url`` with ``username``/``password`` URL-encoded into it (ValueError when it already
    holds credentials)."""
    if username is None and password is None:
        return url
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            "give credentials either inside the connection string or as username/password, not both"
        )
    userinfo = quote_plus(username or "")
    if password is not None:
        userinfo += ":" + quote_plus(password)
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def selects(collection: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a schema with these ``include``/``exclude`` lists copies ``collection``
    (``system.*`` collections never)."""
    if collection.startswith("system."):
        return False
    if include and collection not in include:
        return False
    return collection not in exclude
