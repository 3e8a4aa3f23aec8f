"""OpenAI, Anthropic and Gemini behind one interface: ``complete(system, user) -> text``.

Every provider streams (the SDKs' streaming APIs) and reports progress as characters arrive;
retries on transient errors (connection, timeout, 429, 5xx) use tenacity with capped exponential
backoff and jitter, and nothing else is retried. The SDK's own retries are turned off so there is
exactly one retry policy. Tests inject an HTTP client (``httpx2.Client``: the httpx fork
these SDK versions use) whose transport replays recorded
exchanges; in production the SDKs build their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import httpx
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cartridge_dagster.config import AIConfig
from cartridge_dagster.errors import CartridgeError, ConfigError, TransientError

__all__ = [
    "DEFAULT_MODELS",
    "KEY_ENV",
    "AIProvider",
    "AIProviderError",
    "AnthropicProvider",
    "GeminiProvider",
    "OpenAIProvider",
    "is_transient",
    "make_provider",
]

DEFAULT_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.0-flash",
}
KEY_ENV = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}

OnText = Callable[[int], None]


class AIProviderError(CartridgeError):
    """The provider refused or failed (not transient, or retries exhausted)."""


class AITransientError(AIProviderError, TransientError):
    pass


class AIProvider(Protocol):
    name: str
    model: str

    def complete(self, system: str, user: str, on_text: OnText | None = None) -> str: ...


def is_transient(exc: BaseException) -> bool:
    """Connection problems, timeouts, rate limits and server errors of any of the three SDKs."""
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return True
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - ships with the SDKs
        pass
    try:
        import openai

        if isinstance(exc, openai.APIConnectionError | openai.RateLimitError):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code == 429 or exc.status_code >= 500
    except ImportError:  # pragma: no cover - optional SDK
        pass
    try:
        import anthropic

        if isinstance(exc, anthropic.APIConnectionError | anthropic.RateLimitError):
            return True
        if isinstance(exc, anthropic.APIStatusError):
            return exc.status_code in (429, 529) or exc.status_code >= 500
    except ImportError:  # pragma: no cover
        pass
    try:
        from google.genai import errors as genai_errors

        if isinstance(exc, genai_errors.APIError):
            code = int(getattr(exc, "code", 0) or 0)
            return code == 429 or code >= 500
    except ImportError:  # pragma: no cover
        pass
    return False


def _api_key(config: AIConfig, provider: str) -> str:
    if config.api_key is not None:
        return config.api_key.get_secret_value()
    for name in KEY_ENV[provider]:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigError(
        f"ai.provider is {provider!r} but no API key is set",
        hint=f"set {' or '.join(KEY_ENV[provider])} (or ai.api_key), or use --ai-provider none",
    )


def _with_retries(config: AIConfig, name: str, call: Callable[[], str]) -> str:
    attempt = retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(config.max_retries + 1),
        wait=wait_exponential_jitter(initial=0.5, max=20.0, jitter=0.5),
        reraise=True,
    )(call)
    try:
        return attempt()
    except CartridgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - SDK errors: classify, never echo keys
        kind = AITransientError if is_transient(exc) else AIProviderError
        raise kind(f"{name}: {type(exc).__name__}: {_safe_message(exc)}") from None


def _safe_message(exc: BaseException) -> str:
    text = str(exc)
    return text[:300]


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        config: AIConfig,
        *,
        http_client: Any = None,
        base_url: str | None = None,
    ) -> None:
        import openai

        self.config = config
        self.model = config.model or DEFAULT_MODELS["openai"]
        self.client = openai.OpenAI(
            api_key=_api_key(config, "openai"),
            http_client=http_client,
            base_url=base_url,
            max_retries=0,
            timeout=config.timeout_seconds,
        )

    def complete(self, system: str, user: str, on_text: OnText | None = None) -> str:
        def call() -> str:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                response_format={"type": "json_object"},
                temperature=0,
                stream=True,
            )
            return _collect(
                (chunk.choices[0].delta.content for chunk in stream if chunk.choices), on_text
            )

        return _with_retries(self.config, self.name, call)


def _collect(texts: Iterable[str | None], on_text: OnText | None) -> str:
    """Join streamed text pieces, reporting the characters received so far."""
    parts: list[str] = []
    received = 0
    for text in texts:
        if not text:
            continue
        parts.append(text)
        received += len(text)
        if on_text is not None:
            on_text(received)
    return "".join(parts)


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        config: AIConfig,
        *,
        http_client: Any = None,
        base_url: str | None = None,
    ) -> None:
        import anthropic

        self.config = config
        self.model = config.model or DEFAULT_MODELS["anthropic"]
        kwargs: dict[str, Any] = {}
        if base_url:
            kwargs["base_url"] = base_url
        self.client = anthropic.Anthropic(
            api_key=_api_key(config, "anthropic"),
            http_client=http_client,
            max_retries=0,
            timeout=config.timeout_seconds,
            **kwargs,
        )

    def complete(self, system: str, user: str, on_text: OnText | None = None) -> str:
        def call() -> str:
            with self.client.messages.stream(
                model=self.model,
                max_tokens=4096,
                system=system,
                messages=[{"role": "user", "content": user}],
            ) as stream:
                return _collect(stream.text_stream, on_text)

        return _with_retries(self.config, self.name, call)


class GeminiProvider:
    name = "gemini"

    def __init__(
        self,
        config: AIConfig,
        *,
        http_client: Any = None,
        base_url: str | None = None,
    ) -> None:
        from google import genai
        from google.genai import types

        self.config = config
        self.model = config.model or DEFAULT_MODELS["gemini"]
        options: dict[str, Any] = {"timeout": int(config.timeout_seconds * 1000)}
        if http_client is not None:
            options["httpx_client"] = http_client
        if base_url:
            options["base_url"] = base_url
        self._types = types
        self.client = genai.Client(
            api_key=_api_key(config, "gemini"), http_options=types.HttpOptions(**options)
        )

    def complete(self, system: str, user: str, on_text: OnText | None = None) -> str:
        types = self._types

        def call() -> str:
            stream = self.client.models.generate_content_stream(
                model=self.model,
                contents=user,
                config=types.GenerateContentConfig(
                    system_instruction=system,
                    response_mime_type="application/json",
                    temperature=0,
                ),
            )
            return _collect((chunk.text for chunk in stream), on_text)

        return _with_retries(self.config, self.name, call)


_PROVIDERS: dict[str, type[OpenAIProvider] | type[AnthropicProvider] | type[GeminiProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def make_provider(
    config: AIConfig,
    name: str | None = None,
    *,
    http_client: Any = None,
    base_url: str | None = None,
) -> AIProvider | None:
    """The provider named ``name`` (default ``config.provider``); ``None`` for ``none``."""
    chosen = name or config.provider
    if chosen == "none":
        return None
    cls = _PROVIDERS.get(chosen)
    if cls is None:
        raise ConfigError(
            f"unknown AI provider {chosen!r}; choose one of none, {', '.join(sorted(_PROVIDERS))}"
        )
    return cls(config, http_client=http_client, base_url=base_url)
