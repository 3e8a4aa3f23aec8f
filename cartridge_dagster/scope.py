"""What one build of the Cartridge definitions sees: key prefix, group names, known collections.

The Cartridge component (:mod:`cartridge_dagster.component`) builds the same definitions as the
repo's code location, translated for a team's own project (an asset-key prefix, a group-name
template) and from its own state (the collections known from the source). It sets a
:class:`BuildScope` for the duration of the build; the key helpers (``assets/keys.py``) and
:func:`cartridge_dagster.state.known_collections` read it. Code that runs later, inside a run,
captures the scope it was built with (:func:`current_scope`), so a run reports the same keys the
graph declares.

Plain Python (no Dagster import): the core may read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from cartridge_dagster.errors import ConfigError

__all__ = ["BuildScope", "building", "current_scope"]

#: An asset-key prefix part: what Dagster accepts in a key, without the path separator.
_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
_GROUP = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class BuildScope:
    #: Prepended to every Cartridge asset key (``["acme"]`` → ``acme/raw/shop/orders``).
    key_prefix: tuple[str, ...] = ()
    #: Group name of a schema's assets; ``{schema}`` is replaced by the schema's name.
    group_name: str = "{schema}"
    #: Collections per schema from the component's state; None: read the scan's local files.
    collections: Mapping[str, tuple[str, ...]] | None = field(default=None, compare=False)
    #: Configured schemas this build leaves out (their generated dbt models too).
    excluded_schemas: tuple[str, ...] = ()
    #: Key of the component's state in the instance's defs state storage, when it keeps it
    #: there (``VERSIONED_STATE_STORAGE``): a scan run records the collections it found under
    #: it, so the next load of the code location builds from them. None: nothing to record.
    state_key: str | None = None

    def __post_init__(self) -> None:
        for part in self.key_prefix:
            if not _KEY_PART.match(part):
                raise ConfigError(
                    f"key_prefix: {part!r} is not a valid asset-key part "
                    "(letters, digits, '_', '-', '.'; one list item per part)"
                )
        example = self.group_name.replace("{schema}", "shop")
        if "{" in example or "}" in example or not _GROUP.match(example):
            raise ConfigError(
                f"group_name: {self.group_name!r} must give a group name of letters, digits "
                "and '_' (the only placeholder is {schema})"
            )

    def group_for(self, schema: str) -> str:
        return self.group_name.replace("{schema}", schema)


_scope: ContextVar[BuildScope] = ContextVar("cartridge_build_scope", default=BuildScope())  # noqa: B039


def current_scope() -> BuildScope:
    """The scope of the build in progress (the default one outside a component build)."""
    return _scope.get()


@contextmanager
def building(scope: BuildScope) -> Iterator[BuildScope]:
    """Build definitions under ``scope``; the previous scope comes back afterwards."""
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)
