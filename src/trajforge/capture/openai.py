"""Record every call made with the official ``openai`` client: Chat Completions and Responses,
sync and async, streaming and not.

``instrument_openai(recorder)`` wraps the client classes' ``create`` methods once per process. A
call inside ``with rec.trajectory()`` lands in the current step (one is opened if needed); a call
outside any trajectory gets a trajectory of its own (source ``api``) so nothing is dropped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from trajforge.capture.recorder import Recorder, StepScope, current_step, current_trajectory
from trajforge.records import LlmCall

log = logging.getLogger("trajforge.capture")

_state: dict[str, Any] = {"recorder": None, "originals": []}


def _plain(value: Any) -> Any:
    """Pydantic models and lists of them → plain JSON-able data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and "text" in p]
        return "\n".join(parts) if parts else None
    return str(content)


def _prompts(messages: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    system = next(
        (_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")), None
    )
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), None)
    return system, user


def _step_for(recorder: Recorder) -> tuple[StepScope | None, Any]:
    """The step to record into, and a trajectory opened just for this call (or None)."""
    step = current_step()
    traj = current_trajectory()
    if step is not None and not step._closed and (traj is None or step.trajectory is traj):
        return step, None
    if traj is not None:
        return traj._implicit_step(), None
    own = recorder.trajectory(source="api", metadata={"instrumentation": "openai"})
    return own.step(), own


def _record(call: LlmCall) -> None:
    recorder: Recorder | None = _state["recorder"]
    if recorder is None:
        return
    try:
        step, own = _step_for(recorder)
        if step is not None:
            step.record_call(call)
            if own is not None:
                step.close()
                own.end("completed" if call.finish_reason != "error" else "error")
    except Exception:
        log.exception("trajforge: recording an openai call failed (the agent continues)")


# --- Chat Completions ----------------------------------------------------------------------------


def _chat_request(kwargs: dict[str, Any]) -> LlmCall:
    messages = _plain(list(kwargs.get("messages") or []))
    system, user = _prompts(messages)
    max_tokens = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
    return LlmCall(
        model=str(kwargs.get("model") or ""),
        system_prompt=system,
        user_prompt=user,
        messages=messages,
        tools=_plain(kwargs.get("tools")) if kwargs.get("tools") else None,
        temperature=_num(kwargs.get("temperature")),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        top_p=_num(kwargs.get("top_p")),
        purpose="response",
    )


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _chat_result(call: LlmCall, result: Any, started: float) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    choice = result.choices[0] if getattr(result, "choices", None) else None
    if choice is not None:
        message = choice.message
        call.response = message.content
        call.reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
        if message.tool_calls:
            call.tool_calls = _plain(message.tool_calls)
        call.finish_reason = choice.finish_reason
    _usage(call, getattr(result, "usage", None))
    call.model_version = getattr(result, "model", None)


def _usage(call: LlmCall, usage: Any) -> None:
    if usage is None:
        return
    call.prompt_tokens = getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", None)
    call.completion_tokens = getattr(usage, "completion_tokens", None) or getattr(
        usage, "output_tokens", None
    )
    details = getattr(usage, "prompt_tokens_details", None) or getattr(usage, "input_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached:
        call.cache_read_input_tokens = cached


class _ChatAccumulator:
    """Rebuilds the response of a streamed chat completion from its chunks."""

    def __init__(self, call: LlmCall, started: float) -> None:
        self.call = call
        self.started = started
        self.text: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.recorded = False

    def add(self, chunk: Any) -> None:
        if getattr(chunk, "model", None):
            self.call.model_version = chunk.model
        _usage(self.call, getattr(chunk, "usage", None))
        for choice in getattr(chunk, "choices", None) or []:
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self.text.append(delta.content)
                for tc in delta.tool_calls or []:
                    slot = self.tools.setdefault(
                        tc.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function is not None:
                        slot["function"]["name"] += tc.function.name or ""
                        slot["function"]["arguments"] += tc.function.arguments or ""
            if choice.finish_reason:
                self.call.finish_reason = choice.finish_reason

    def finish(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        self.call.latency_ms = (time.perf_counter() - self.started) * 1000
        self.call.response = "".join(self.text) if self.text else None
        if self.tools:
            self.call.tool_calls = [self.tools[i] for i in sorted(self.tools)]
        _record(self.call)


class _StreamProxy:
    """Wraps an ``openai.Stream``: passes every event through and records when the stream ends."""

    def __init__(self, stream: Any, acc: Any) -> None:
        self._stream = stream
        self._acc = acc

    def __iter__(self) -> Iterator[Any]:
        try:
            for event in self._stream:
                self._safe_add(event)
                yield event
        finally:
            self._acc.finish()

    def _safe_add(self, event: Any) -> None:
        try:
            self._acc.add(event)
        except Exception:
            log.exception("trajforge: reading a stream event failed (the agent continues)")

    def __enter__(self) -> _StreamProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._acc.finish()
        self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncStreamProxy(_StreamProxy):
    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for event in self._stream:
                self._safe_add(event)
                yield event
        finally:
            self._acc.finish()

    async def __aenter__(self) -> _AsyncStreamProxy:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._acc.finish()
        await self._stream.close()


# --- Responses -----------------------------------------------------------------------------------


def _responses_request(kwargs: dict[str, Any]) -> LlmCall:
    raw_input = kwargs.get("input")
    if isinstance(raw_input, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": raw_input}]
    else:
        messages = [m for m in _plain(list(raw_input or [])) if isinstance(m, dict)]
    instructions = kwargs.get("instructions")
    if instructions:
        messages = [{"role": "system", "content": instructions}, *messages]
    system, user = _prompts(messages)
    return LlmCall(
        model=str(kwargs.get("model") or ""),
        system_prompt=system,
        user_prompt=user,
        messages=messages,
        tools=_plain(kwargs.get("tools")) if kwargs.get("tools") else None,
        temperature=_num(kwargs.get("temperature")),
        max_tokens=kwargs.get("max_output_tokens")
        if isinstance(kwargs.get("max_output_tokens"), int)
        else None,
        top_p=_num(kwargs.get("top_p")),
        purpose="response",
    )


def _responses_result(call: LlmCall, response: Any, started: float) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.model_version = getattr(response, "model", None)
    texts, tools, reasoning = [], [], []
    for item in getattr(response, "output", None) or []:
        kind = getattr(item, "type", None)
        if kind == "message":
            for part in item.content or []:
                if getattr(part, "type", None) == "output_text":
                    texts.append(part.text)
        elif kind == "function_call":
            tools.append(
                {
                    "id": getattr(item, "call_id", None),
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
        elif kind == "reasoning":
            for part in getattr(item, "summary", None) or []:
                reasoning.append(getattr(part, "text", ""))
    call.response = "".join(texts) if texts else None
    call.tool_calls = tools or None
    call.reasoning = "\n".join(reasoning) if reasoning else None
    status = getattr(response, "status", None)
    call.finish_reason = "tool_calls" if tools else ("stop" if status == "completed" else status)
    _usage(call, getattr(response, "usage", None))


class _ResponsesAccumulator:
    def __init__(self, call: LlmCall, started: float) -> None:
        self.call = call
        self.started = started
        self.final: Any = None
        self.text: list[str] = []
        self.recorded = False

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", "")
        if kind == "response.output_text.delta":
            self.text.append(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.final = event.response

    def finish(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        if self.final is not None:
            _responses_result(self.call, self.final, self.started)
        else:  # the stream was cut short: keep what arrived
            self.call.latency_ms = (time.perf_counter() - self.started) * 1000
            self.call.response = "".join(self.text) or None
            self.call.finish_reason = "incomplete"
        _record(self.call)


# --- patching ------------------------------------------------------------------------------------


def _wrap(
    original: Callable[..., Any],
    build: Callable[[dict[str, Any]], LlmCall],
    finish: Callable[[LlmCall, Any, float], None],
    accumulator: type,
    is_async: bool,
) -> Callable[..., Any]:
    def prepare(kwargs: dict[str, Any]) -> LlmCall | None:
        if _state["recorder"] is None:
            return None
        try:
            return build(kwargs)
        except Exception:
            log.exception("trajforge: reading an openai request failed (the agent continues)")
            return None

    def done(call: LlmCall, result: Any, started: float, stream: bool) -> Any:
        try:
            if stream:
                proxy = _AsyncStreamProxy if is_async else _StreamProxy
                return proxy(result, accumulator(call, started))
            finish(call, result, started)
            _record(call)
        except Exception:
            log.exception("trajforge: reading an openai response failed (the agent continues)")
        return result

    def failed(call: LlmCall, exc: BaseException, started: float) -> None:
        call.latency_ms = (time.perf_counter() - started) * 1000
        call.finish_reason = "error"
        call.response = None
        call.tags = [f"error:{type(exc).__name__}"]
        _record(call)

    if is_async:

        @functools.wraps(original)
        async def async_create(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = prepare(kwargs)
            started = time.perf_counter()
            try:
                result = await original(self, *args, **kwargs)
            except BaseException as exc:
                if call is not None:
                    failed(call, exc, started)
                raise
            return result if call is None else done(call, result, started, bool(kwargs.get("stream")))

        return async_create

    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = prepare(kwargs)
        started = time.perf_counter()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            if call is not None:
                failed(call, exc, started)
            raise
        return result if call is None else done(call, result, started, bool(kwargs.get("stream")))

    return create


def instrument_openai(recorder: Recorder) -> Callable[[], None]:
    """Record every ``openai`` Chat Completions and Responses call through ``recorder``.

    Calling it again switches the recorder. Returns a function that removes the instrumentation.
    """
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses

    _state["recorder"] = recorder
    if not _state["originals"]:
        targets = (
            (Completions, _chat_request, _chat_result, _ChatAccumulator, False),
            (AsyncCompletions, _chat_request, _chat_result, _ChatAccumulator, True),
            (Responses, _responses_request, _responses_result, _ResponsesAccumulator, False),
            (AsyncResponses, _responses_request, _responses_result, _ResponsesAccumulator, True),
        )
        for cls, build, finish, acc, is_async in targets:
            original = cls.create
            _state["originals"].append((cls, original))
            cls.create = _wrap(original, build, finish, acc, is_async)  # type: ignore[method-assign]

    def uninstrument() -> None:
        for cls, original in _state["originals"]:
            cls.create = original
        _state["originals"] = []
        _state["recorder"] = None

    return uninstrument
