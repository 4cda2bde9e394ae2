"""One small interface to a language model, used by the LLM judge (and later by the optimizers and
evaluation): any OpenAI-compatible Chat Completions endpoint — Ollama, vLLM, llama.cpp server,
LM Studio, a hosted API.

Nothing here reaches the network unless the user configured the URL; tests run it against a
protocol-faithful fake server on loopback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from trajforge import settings
from trajforge.errors import InvalidInput, LMError

Message = dict[str, Any]


class LM(Protocol):
    """What the judge, optimizers and evaluation need from a model."""

    @property
    def name(self) -> str:
        """A label for reports: model and where it runs."""
        ...

    def chat(self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        """The assistant's reply text to ``messages``."""
        ...


@dataclass
class OpenAICompatibleLM:
    """Chat Completions over HTTP. ``api_key`` defaults to ``TRAJFORGE_LM_API_KEY`` (then
    ``OPENAI_API_KEY``); local servers need none. Transient failures (connection errors, 429,
    5xx) are retried with backoff; anything else is an :class:`LMError` naming the endpoint."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 2
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidInput(
                f"the model URL must start with http:// or https://, got {self.base_url!r}", "baseUrl"
            )
        if not self.model:
            raise InvalidInput("a model name is required", "model")
        self.base_url = self.base_url.rstrip("/")
        if self.api_key is None:
            self.api_key = os.environ.get(settings.LM_API_KEY) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(timeout=self.timeout_s, headers=headers, follow_redirects=False)

    @property
    def name(self) -> str:
        return f"{self.model}@{self.base_url}"

    def chat(self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        body = {
            "model": self.model,
            "messages": list(messages),
            "temperature": temperature,
            "max_tokens": max_tokens,
            **self.extra_body,
        }
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.post(url, json=body)
            except httpx.HTTPError as exc:
                if attempt < self.max_retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise LMError(f"{url}: {exc}") from exc
            if (resp.status_code == 429 or resp.status_code >= 500) and attempt < self.max_retries:
                time.sleep(0.5 * 2**attempt)
                continue
            if resp.status_code != 200:
                raise LMError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
            try:
                content = resp.json()["choices"][0]["message"].get("content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise LMError(f"{url} did not return a chat completion: {resp.text[:300]}") from exc
            return content if isinstance(content, str) else ""
        raise LMError(f"{url}: no answer after {self.max_retries + 1} attempts")

    def close(self) -> None:
        self._client.close()


def from_settings(model: str | None = None, base_url: str | None = None, api_key: str | None = None) -> LM:
    """The model named by arguments, falling back to ``TRAJFORGE_LM_BASE_URL``/``TRAJFORGE_LM_MODEL``."""
    base_url = base_url or os.environ.get(settings.LM_BASE_URL)
    model = model or os.environ.get(settings.LM_MODEL)
    if not base_url:
        raise InvalidInput(
            f"no model endpoint: pass a base URL or set {settings.LM_BASE_URL} "
            "(e.g. http://127.0.0.1:11434/v1 for Ollama)",
            "baseUrl",
        )
    if not model:
        raise InvalidInput(f"no model: pass one or set {settings.LM_MODEL}", "model")
    return OpenAICompatibleLM(base_url=base_url, model=model, api_key=api_key)
