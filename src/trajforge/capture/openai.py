"""Record every model call made with the official ``openai`` client: Chat Completions, Responses
and (legacy) Completions, sync and async, streamed and not, through ``create``, ``parse``, the
``.stream()`` helpers and the ``with_raw_response`` / ``with_streaming_response`` wrappers.

``instrument_openai(recorder)`` wraps the client classes' model-call methods (``RECORDED``) once
per process; ``NOT_RECORDED`` says why each other public method is left alone. A call inside
``with rec.trajectory()`` lands in the current step (one is opened if needed); a call outside any
trajectory gets a trajectory of its own (source ``api``) so nothing is dropped.

The conversions (``chat_request``/``chat_result``/``ChatAccumulator`` and their Responses and
Completions siblings, gathered in ``CONVERSIONS``) read plain wire dicts as well as the SDK's
objects: the capture proxy (:mod:`trajforge.proxy`) turns the JSON it relays into the same
``LlmCall`` with them, so a call recorded either way is the same record.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from trajforge.capture.recorder import Recorder, StepScope, current_step, current_trajectory
from trajforge.records import LlmCall

log = logging.getLogger("trajforge.capture")

_state: dict[str, Any] = {"recorder": None, "originals": []}


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` of a wire dict, or the attribute of the SDK's object: one converter reads both."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


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


def prompts(messages: list[dict[str, Any]]) -> tuple[str | None, str | None]:
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


def chat_request(kwargs: dict[str, Any]) -> LlmCall:
    messages = _dicts(kwargs.get("messages"))
    system, user = prompts(messages)
    max_tokens = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
    return LlmCall(
        model=str(kwargs.get("model") or ""),
        system_prompt=system,
        user_prompt=user,
        messages=messages,
        tools=_tools(kwargs.get("tools")),
        temperature=_num(kwargs.get("temperature")),
        max_tokens=_int_or_none(max_tokens),
        top_p=_num(kwargs.get("top_p")),
        purpose="response",
    )


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dicts of a list of messages or tools (a request's JSON is untrusted: anything else in
    it is not a message)."""
    if value is None or isinstance(value, str | bytes | dict):
        return []
    try:
        items = list(value)
    except TypeError:
        return []
    return [m for m in _plain(items) if isinstance(m, dict)]


def _tools(value: Any) -> list[dict[str, Any]] | None:
    return _dicts(value) or None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def chat_result(call: LlmCall, result: Any, started: float) -> None:
    """Complete ``call`` from a chat completion (the wire JSON or the SDK's object)."""
    call.latency_ms = (time.perf_counter() - started) * 1000
    choices = _get(result, "choices")
    choice = choices[0] if choices else None
    if choice is not None:
        message = _get(choice, "message")
        if message is not None:
            call.response = _str_or_none(_get(message, "content"))
            call.reasoning = _str_or_none(_get(message, "reasoning_content") or _get(message, "reasoning"))
            if _get(message, "tool_calls"):
                call.tool_calls = _plain(_get(message, "tool_calls"))
        call.finish_reason = _str_or_none(_get(choice, "finish_reason"))
    _usage(call, _get(result, "usage"))
    call.model_version = _str_or_none(_get(result, "model"))


def _str_or_none(value: Any) -> str | None:
    """Wire JSON is untrusted: a field that should be text but is not is left out."""
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(call: LlmCall, usage: Any) -> None:
    if usage is None:
        return
    call.prompt_tokens = _int_or_none(_get(usage, "prompt_tokens") or _get(usage, "input_tokens"))
    call.completion_tokens = _int_or_none(_get(usage, "completion_tokens") or _get(usage, "output_tokens"))
    details = _get(usage, "prompt_tokens_details") or _get(usage, "input_tokens_details")
    cached = _int_or_none(_get(details, "cached_tokens")) if details is not None else None
    if cached:
        call.cache_read_input_tokens = cached


Done = Callable[[LlmCall], None]


def _chunk_meta(call: LlmCall, chunk: Any) -> None:
    """What every streamed chunk may carry beside its choices: the served model and the usage."""
    model = _get(chunk, "model")
    if model and isinstance(model, str):
        call.model_version = model
    _usage(call, _get(chunk, "usage"))


class ChatAccumulator:
    """Rebuilds the response of a streamed chat completion from its chunks (wire dicts or the
    SDK's objects) and hands the finished call to ``on_done`` (default: the instrumentation's
    recorder)."""

    def __init__(self, call: LlmCall, started: float, on_done: Done | None = None) -> None:
        self.call = call
        self.started = started
        self.on_done = on_done
        self.text: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.recorded = False

    def add(self, chunk: Any) -> None:
        _chunk_meta(self.call, chunk)
        for choice in _get(chunk, "choices") or []:
            delta = _get(choice, "delta")
            if delta is not None:
                content = _get(delta, "content")
                if content and isinstance(content, str):
                    self.text.append(content)
                for tc in _get(delta, "tool_calls") or []:
                    index = _get(tc, "index")
                    slot = self.tools.setdefault(
                        index if isinstance(index, int) else 0,
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if _get(tc, "id"):
                        slot["id"] = _get(tc, "id")
                    function = _get(tc, "function")
                    if function is not None:
                        slot["function"]["name"] += _str_or_none(_get(function, "name")) or ""
                        slot["function"]["arguments"] += _str_or_none(_get(function, "arguments")) or ""
            finish = _get(choice, "finish_reason")
            if finish and isinstance(finish, str):
                self.call.finish_reason = finish

    def finish(self, cut: bool = False) -> None:
        """The stream ended (``cut``: before its end, e.g. the client went away)."""
        if self.recorded:
            return
        self.recorded = True
        self.call.latency_ms = (time.perf_counter() - self.started) * 1000
        self.call.response = "".join(self.text) if self.text else None
        if self.tools:
            self.call.tool_calls = [self.tools[i] for i in sorted(self.tools)]
        if cut:
            _mark_cut(self.call)
        (self.on_done or _record)(self.call)


def _mark_cut(call: LlmCall) -> None:
    """A stream cut short keeps what arrived, marked so a dataset can leave it out."""
    call.finish_reason = "incomplete"
    call.tags = [*(call.tags or []), "incomplete"]


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


def responses_request(kwargs: dict[str, Any]) -> LlmCall:
    raw_input = kwargs.get("input")
    if isinstance(raw_input, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": raw_input}]
    else:
        messages = _dicts(raw_input)
    instructions = kwargs.get("instructions")
    if instructions and isinstance(instructions, str):
        messages = [{"role": "system", "content": instructions}, *messages]
    system, user = prompts(messages)
    return LlmCall(
        model=str(kwargs.get("model") or ""),
        system_prompt=system,
        user_prompt=user,
        messages=messages,
        tools=_tools(kwargs.get("tools")),
        temperature=_num(kwargs.get("temperature")),
        max_tokens=_int_or_none(kwargs.get("max_output_tokens")),
        top_p=_num(kwargs.get("top_p")),
        purpose="response",
    )


def responses_result(call: LlmCall, response: Any, started: float) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.model_version = _str_or_none(_get(response, "model"))
    texts: list[str] = []
    tools: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for item in _get(response, "output") or []:
        kind = _get(item, "type")
        if kind == "message":
            for part in _get(item, "content") or []:
                if _get(part, "type") == "output_text":
                    texts.append(_str_or_none(_get(part, "text")) or "")
        elif kind == "function_call":
            tools.append(
                {
                    "id": _get(item, "call_id"),
                    "type": "function",
                    "function": {"name": _get(item, "name"), "arguments": _get(item, "arguments")},
                }
            )
        elif kind == "reasoning":
            for part in _get(item, "summary") or []:
                reasoning.append(_str_or_none(_get(part, "text")) or "")
    call.response = "".join(texts) if texts else None
    call.tool_calls = tools or None
    call.reasoning = "\n".join(reasoning) if reasoning else None
    status = _str_or_none(_get(response, "status"))
    call.finish_reason = "tool_calls" if tools else ("stop" if status == "completed" else status)
    _usage(call, _get(response, "usage"))


class ResponsesAccumulator:
    def __init__(self, call: LlmCall, started: float, on_done: Done | None = None) -> None:
        self.call = call
        self.started = started
        self.on_done = on_done
        self.final: Any = None
        self.text: list[str] = []
        self.recorded = False

    def add(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "response.output_text.delta":
            delta = _get(event, "delta")
            if isinstance(delta, str):
                self.text.append(delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.final = _get(event, "response")

    def finish(self, cut: bool = False) -> None:
        if self.recorded:
            return
        self.recorded = True
        if self.final is not None:
            responses_result(self.call, self.final, self.started)
        else:  # the stream was cut short: keep what arrived
            self.call.latency_ms = (time.perf_counter() - self.started) * 1000
            self.call.response = "".join(self.text) or None
            self.call.finish_reason = "incomplete"
            if cut:
                _mark_cut(self.call)
        (self.on_done or _record)(self.call)


# --- (legacy) Completions ------------------------------------------------------------------------


def completion_request(kwargs: dict[str, Any]) -> LlmCall:
    prompt = kwargs.get("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    text = prompt if isinstance(prompt, str) else (None if prompt is None else str(prompt))
    max_tokens = kwargs.get("max_tokens")
    return LlmCall(
        model=str(kwargs.get("model") or ""),
        user_prompt=text,
        messages=[{"role": "user", "content": text}] if text is not None else None,
        temperature=_num(kwargs.get("temperature")),
        max_tokens=_int_or_none(max_tokens),
        top_p=_num(kwargs.get("top_p")),
        purpose="response",
    )


def completion_result(call: LlmCall, result: Any, started: float) -> None:
    call.latency_ms = (time.perf_counter() - started) * 1000
    choices = _get(result, "choices")
    choice = choices[0] if choices else None
    if choice is not None:
        call.response = _str_or_none(_get(choice, "text"))
        call.finish_reason = _str_or_none(_get(choice, "finish_reason"))
    _usage(call, _get(result, "usage"))
    call.model_version = _str_or_none(_get(result, "model"))


class CompletionAccumulator(ChatAccumulator):
    def add(self, chunk: Any) -> None:
        _chunk_meta(self.call, chunk)
        for choice in _get(chunk, "choices") or []:
            text = _get(choice, "text")
            if _get(choice, "index") == 0 and text and isinstance(text, str):
                self.text.append(text)
            finish = _get(choice, "finish_reason")
            if finish and isinstance(finish, str):
                self.call.finish_reason = finish


CONVERSIONS: dict[
    str, tuple[Callable[[dict[str, Any]], LlmCall], Callable[[LlmCall, Any, float], None], type]
] = {
    "chat": (chat_request, chat_result, ChatAccumulator),
    "responses": (responses_request, responses_result, ResponsesAccumulator),
    "completions": (completion_request, completion_result, CompletionAccumulator),
}
"""Per API: the request → ``LlmCall``, the result → its response fields, the stream accumulator."""


# --- patching ------------------------------------------------------------------------------------

# The model calls of the instrumented resources. The ``.stream()`` helpers and the
# ``with_raw_response`` / ``with_streaming_response`` wrappers reach the server through these
# methods, so wrapping them records those paths too.
RECORDED: tuple[str, ...] = (
    "chat.completions.create",
    "chat.completions.parse",
    "chat.completions.stream",  # → chat.completions.create(stream=True)
    "responses.create",
    "responses.parse",
    "responses.stream",  # → responses.create(stream=True), or retrieve(stream=True) to resume
    "completions.create",
)

# Every other public callable of those resources, and why it is not recorded.
# tests/test_openai_instrumentation.py enumerates the installed client (sync and async, plain and
# both wrappers) and fails on a name that is in neither table, so a new client version cannot add
# an unrecorded path silently.
NOT_RECORDED: dict[str, str] = {
    "chat.completions.retrieve": "reads a stored completion: no new model call",
    "chat.completions.update": "edits a stored completion's metadata: no model call",
    "chat.completions.list": "lists stored completions: no model call",
    "chat.completions.delete": "deletes a stored completion: no model call",
    "chat.completions.messages.list": "lists a stored completion's messages: no model call",
    "responses.retrieve": "reads a stored response (or resumes streaming one whose create was recorded)",
    "responses.delete": "deletes a stored response: no model call",
    "responses.cancel": "cancels a background response: no new model call",
    "responses.input_items.list": "lists a stored response's input items: no model call",
    "responses.input_tokens.count": "counts the tokens of an input: generates nothing",
    "responses.compact": "server-side context compaction: its output is an opaque encrypted item, "
    "no text to record",
    "responses.connect": "WebSocket session, not an HTTP call: NOT recorded (README says so)",
}


def _raw_mode(kwargs: dict[str, Any]) -> str | None:
    """'true' for ``with_raw_response``, 'stream' for ``with_streaming_response``, else None."""
    from openai._constants import RAW_RESPONSE_HEADER

    headers = kwargs.get("extra_headers")
    value = headers.get(RAW_RESPONSE_HEADER) if isinstance(headers, dict) else None
    return value if isinstance(value, str) else None


class _Once:
    """Records one call exactly once, from whichever of the raw response's reads comes first."""

    def __init__(
        self,
        call: LlmCall,
        started: float,
        finish: Callable[[LlmCall, Any, float], None],
        accumulator: type,
        stream: bool,
        is_async: bool,
    ) -> None:
        self.call, self.started, self.finish, self.accumulator = call, started, finish, accumulator
        self.stream, self.is_async = stream, is_async
        self.proxy: Any = None
        self.done = False

    def take(self, parsed: Any) -> Any:
        """What ``parse()`` hands the caller: the parsed value, or a recording proxy of the stream."""
        try:
            if self.stream:
                if self.proxy is None:
                    self.done = True
                    kind = _AsyncStreamProxy if self.is_async else _StreamProxy
                    self.proxy = kind(parsed, self.accumulator(self.call, self.started))
                return self.proxy
            if not self.done:
                self.done = True
                self.finish(self.call, parsed, self.started)
                _record(self.call)
        except Exception:
            log.exception("trajforge: reading an openai response failed (the agent continues)")
        return parsed

    def unread(self) -> None:
        """The response closes and the stream was never parsed: keep the request."""
        if not self.done:
            self.done = True
            self.call.latency_ms = (time.perf_counter() - self.started) * 1000
            self.call.finish_reason = "incomplete"
            _record(self.call)


def _hook_raw(result: Any, once: _Once, mode: str) -> None:
    """Make a raw response record its call when its body is read (``parse()``) or closed unread.

    ``with_raw_response`` has the body already: a non-streamed call is recorded at once. A
    streamed one, and every ``with_streaming_response`` call, is recorded when the caller parses
    the body; closing the response without parsing reads a JSON body then (it is small and already
    sent) so the call is kept, and keeps the request of an unread stream.
    """
    original_parse = result.parse
    if mode == "true" and not once.stream:
        once.take(original_parse())
        return
    if inspect.iscoroutinefunction(original_parse):

        async def aparse(*, to: Any = None) -> Any:
            if to is not None:
                return await original_parse(to=to)
            return once.take(await original_parse())

        result.parse = aparse
    else:

        def parse(*, to: Any = None) -> Any:
            if to is not None:
                return original_parse(to=to)
            return once.take(original_parse())

        result.parse = parse
    if mode != "stream":
        return
    original_close = result.close
    if inspect.iscoroutinefunction(original_close):

        async def aclose() -> None:
            if not once.done:
                try:
                    if once.stream:
                        once.unread()
                    else:
                        once.take(await original_parse())
                except Exception:
                    log.exception("trajforge: reading an openai response failed (the agent continues)")
            await original_close()

        result.close = aclose
    else:

        def close() -> None:
            if not once.done:
                try:
                    if once.stream:
                        once.unread()
                    else:
                        once.take(original_parse())
                except Exception:
                    log.exception("trajforge: reading an openai response failed (the agent continues)")
            original_close()

        result.close = close


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

    def done(call: LlmCall, result: Any, started: float, kwargs: dict[str, Any]) -> Any:
        stream = bool(kwargs.get("stream"))
        try:
            mode = _raw_mode(kwargs)
            if mode is not None:
                _hook_raw(result, _Once(call, started, finish, accumulator, stream, is_async), mode)
                return result
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
            return result if call is None else done(call, result, started, kwargs)

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
        return result if call is None else done(call, result, started, kwargs)

    return create


def instrument_openai(recorder: Recorder) -> Callable[[], None]:
    """Record every ``openai`` model call (Chat Completions, Responses, legacy Completions; plain,
    ``parse``, ``stream``, ``with_raw_response`` and ``with_streaming_response``) through
    ``recorder``.

    Calling it again switches the recorder. Returns a function that removes the instrumentation.
    Wrappers are looked up when a resource's ``with_raw_response`` is first used: one created
    before instrumenting keeps calling the unwrapped methods.
    """
    from openai.resources import completions as legacy
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses

    chat, responses, text = CONVERSIONS["chat"], CONVERSIONS["responses"], CONVERSIONS["completions"]
    _state["recorder"] = recorder
    if not _state["originals"]:
        targets = (
            (Completions, "create", chat, False),
            (Completions, "parse", chat, False),
            (AsyncCompletions, "create", chat, True),
            (AsyncCompletions, "parse", chat, True),
            (Responses, "create", responses, False),
            (Responses, "parse", responses, False),
            (AsyncResponses, "create", responses, True),
            (AsyncResponses, "parse", responses, True),
            (legacy.Completions, "create", text, False),
            (legacy.AsyncCompletions, "create", text, True),
        )
        for cls, name, (build, finish, acc), is_async in targets:
            original = cls.__dict__[name]
            _state["originals"].append((cls, name, original))
            setattr(cls, name, _wrap(original, build, finish, acc, is_async))

    def uninstrument() -> None:
        for cls, name, original in _state["originals"]:
            setattr(cls, name, original)
        _state["originals"] = []
        _state["recorder"] = None

    return uninstrument
