"""AI-written prose for generated models (optional; the default ``none`` is deterministic).

:func:`build_describer` returns the function the generator calls per collection: deterministic
docs first, then — with a provider — the provider's structured answer merged over them. Answers
are cached by the hash of (provider, model, prompt version, prompt), which contains the schema,
so an unchanged schema never calls the provider again and regeneration stays byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.init.ai.prompt import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    AIOutput,
    build_prompt,
    merge_output,
    parse_output,
)
from cartridge_dagster.init.ai.providers import AIProvider, AIProviderError, make_provider
from cartridge_dagster.init.ai.sqlguard import RejectedSQL, check_sql
from cartridge_dagster.init.describe import (
    BusinessContext,
    CollectionDocs,
    describe_collection,
    load_business_context,
)
from cartridge_dagster.init.naming import staging_model_name
from cartridge_dagster.observability import get_logger

__all__ = [
    "AIDescriber",
    "RejectedSQL",
    "build_describer",
    "check_sql",
    "make_provider",
]

log = get_logger(__name__)
Progress = Callable[[str], None]


class AIDescriber:
    """Describes collections with a provider, a cache and the deterministic fallback."""

    def __init__(
        self,
        provider: AIProvider,
        context: BusinessContext,
        cache_dir: Path | None,
        progress: Progress | None = None,
    ) -> None:
        self.provider = provider
        self.context = context
        self.cache_dir = cache_dir
        self.progress = progress
        self.calls = 0
        self.cache_hits = 0
        self.rejections: dict[str, str] = {}

    def _cache_path(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(
            "\x00".join(
                [self.provider.name, self.provider.model, PROMPT_VERSION, SYSTEM_PROMPT, prompt]
            ).encode()
        ).hexdigest()
        return self.cache_dir / self.provider.name / f"{key}.json"

    def answer(self, prompt: str, label: str) -> AIOutput:
        path = self._cache_path(prompt)
        if path is not None and path.exists():
            try:
                self.cache_hits += 1
                return AIOutput.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValidationError):
                self.cache_hits -= 1
        self.calls += 1

        def on_text(chars: int) -> None:
            if self.progress is not None:
                self.progress(f"{self.provider.name}: {label}: {chars} characters")

        text = self.provider.complete(SYSTEM_PROMPT, prompt, on_text)
        output = parse_output(text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(output.model_dump(), sort_keys=True, indent=1) + "\n", encoding="utf-8"
            )
        return output

    def __call__(self, schema: str, collection: str, coll: Mapping[str, Any]) -> CollectionDocs:
        base = describe_collection(schema, collection, coll, self.context)
        prompt = build_prompt(
            schema, collection, coll, staging_model_name(schema, collection), self.context
        )
        try:
            output = self.answer(prompt, collection)
        except (ValueError, ValidationError) as exc:
            reason = f"answer rejected (not the required JSON): {str(exc)[:200]}"
            self.rejections[collection] = reason
            log.warning("init.ai.rejected", schema=schema, table=collection, reason=reason)
            return base
        accepted = []
        for suggestion in output.suggestions:
            try:
                check_sql(suggestion.sql)
            except RejectedSQL as exc:
                self.rejections[f"{collection}:{suggestion.name}"] = str(exc)
                log.warning(
                    "init.ai.sql_rejected", schema=schema, table=collection, reason=str(exc)
                )
                continue
            accepted.append(suggestion)
        return merge_output(base, output.model_copy(update={"suggestions": accepted}))


def build_describer(
    settings: CartridgeSettings,
    *,
    provider: str | None = None,
    progress: Progress | None = None,
    http_client: Any = None,
    base_url: str | None = None,
) -> AIDescriber | None:
    """The describer for ``provider`` (default: the config's); ``None`` means deterministic."""
    made = make_provider(settings.ai, provider, http_client=http_client, base_url=base_url)
    if made is None:
        return None
    if progress is not None:
        progress(f"describing with {made.name} ({made.model})")
    return AIDescriber(
        made,
        load_business_context(settings.ai.business_context),
        settings.state_path / "ai_cache",
        progress,
    )


__all__ += ["AIProviderError"]
