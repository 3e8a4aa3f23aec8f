"""The Cartridge config file as it ships to a cluster: secrets out, environment names in.

A ConfigMap is readable by anyone who can read the namespace, so every secret field of the
config (every ``SecretStr`` in :class:`~cartridge_dagster.config.CartridgeSettings`: connection
strings, passwords, the AI key) is removed from the file and named instead: its value comes from
the ``CARTRIDGE_<PATH>`` environment variable (``CARTRIDGE_SOURCE__CONNECTION_STRING``…), which
pods load from a Secret. The config loader already lets the environment fill and override any
field, so the exported file plus the Secret is the whole configuration.

This module never imports dagster.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr

from cartridge_dagster.config import ENV_PREFIX, CartridgeSettings

__all__ = ["ExportedConfig", "export_config", "secret_field_paths"]

#: Connection strings always come from the Secret in a cluster, even when the file has none
#: (``destination: local`` means the laptop's PostgreSQL, which a cluster does not have).
REQUIRED_SECRET_PATHS: tuple[tuple[str, ...], ...] = (
    ("source", "connection_string"),
    ("destination", "connection_string"),
)

#: Settings a cluster needs whatever the file says: state on a mounted volume, JSON logs.
PRODUCTION_OVERRIDES: Mapping[str, Any] = {
    "mode": "single",
    "observability": {"log_format": "json"},
}


@dataclass(frozen=True)
class ExportedConfig:
    """The config without secrets, and the environment variables that carry them."""

    data: dict[str, Any]
    secret_env: tuple[str, ...]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Pydantic model classes inside an annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_secret(arg) for arg in typing.get_args(annotation))
    return False


def secret_field_paths(model: type[BaseModel] = CartridgeSettings) -> list[tuple[str, ...]]:
    """Every path to a ``SecretStr`` field, from the model classes themselves.

    A path through a list of models has ``"*"`` for the index. New secret fields are found
    without touching this module.
    """
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        if _is_secret(info.annotation):
            paths.append((name,))
            continue
        is_list = typing.get_origin(info.annotation) is list
        for sub in _models_in(info.annotation):
            for rest in secret_field_paths(sub):
                paths.append((name, "*", *rest) if is_list else (name, *rest))
    return paths


def env_name(path: tuple[str | int, ...]) -> str:
    """``("source", "connection_string")`` → ``CARTRIDGE_SOURCE__CONNECTION_STRING``."""
    return ENV_PREFIX + "__".join(str(part).upper() for part in path)


def _pop_path(data: Any, path: tuple[str, ...], done: tuple[str | int, ...] = ()) -> list[Any]:
    """Remove ``path`` from nested dicts/lists; return the concrete paths that were present."""
    if not path:
        return []
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(data, list):
            return []
        found: list[Any] = []
        for index, item in enumerate(data):
            found.extend(_pop_path(item, rest, (*done, index)))
        return found
    if not isinstance(data, dict) or head not in data:
        return []
    if not rest:
        present = data.pop(head) is not None
        return [(*done, head)] if present else []
    return _pop_path(data[head], rest, (*done, head))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def export_config(raw: Mapping[str, Any], *, state_dir: str) -> ExportedConfig:
    """The config file's own data (as written, defaults unexpanded) ready for a ConfigMap.

    ``raw`` must be the file's content, not a loaded settings object: values that came from the
    renderer's environment must never reach the output.
    """
    data = copy.deepcopy(dict(raw))
    envs: list[str] = []
    for path in secret_field_paths():
        for concrete in _pop_path(data, path):
            envs.append(env_name(concrete))
    for path in REQUIRED_SECRET_PATHS:
        if env_name(path) not in envs:
            envs.append(env_name(path))
    for section in ("source", "destination"):
        if section not in data:
            data[section] = {}
    data = _merge(data, {**PRODUCTION_OVERRIDES, "state_dir": state_dir})
    # Stable order: secrets in the order the model declares them.
    order = {env_name(p): i for i, p in enumerate(REQUIRED_SECRET_PATHS)}
    envs.sort(key=lambda name: (order.get(name, len(order)), name))
    return ExportedConfig(data=data, secret_env=tuple(dict.fromkeys(envs)))
