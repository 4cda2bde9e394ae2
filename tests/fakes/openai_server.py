"""A small OpenAI-compatible server on loopback, for tests: Chat Completions, Responses and
(legacy) Completions, plain and streamed (Server-Sent Events), with deterministic answers chosen by ``answer``;
Embeddings and the model list too.

Knobs for the capture proxy's tests: ``fail`` (a status, an error body and extra headers) makes
every model call answer with that error; ``stream_delay_s`` pauses between streamed events;
``headers`` keeps each request's headers; ``keep_alive=True`` speaks HTTP/1.1 with persistent
connections (closed by the fake after ``idle_timeout_s`` idle), counted in ``connections``;
``tls=(certfile, keyfile)`` serves HTTPS.

It speaks the real wire protocol, so the real ``openai`` client (and any HTTP client) is tested
against it exactly as against a hosted API.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[list[dict[str, Any]], dict[str, Any]], str | dict[str, Any]]


def echo_answer(messages: list[dict[str, Any]], request: dict[str, Any]) -> str | dict[str, Any]:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if request.get("tools"):
        return {
            "tool": request["tools"][0]["function"]["name"]
            if "function" in request["tools"][0]
            else request["tools"][0]["name"],
            "arguments": {"q": content},
        }
    return f"echo: {content}"


class FakeOpenAI:
    def __init__(
        self,
        answer: Answer = echo_answer,
        *,
        keep_alive: bool = False,
        idle_timeout_s: float | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.answer = answer
        self.keep_alive = keep_alive
        self.idle_timeout_s = idle_timeout_s
        self.connections = 0
        self.closed_connections = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail: tuple[int, Any, dict[str, str]] | None = None
        self.stream_delay_s = 0.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.base_url = f"https://localhost:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if fake.keep_alive else "HTTP/1.0"
            timeout = fake.idle_timeout_s  # an idle persistent connection is closed after it

            def setup(self) -> None:
                fake.connections += 1
                super().setup()

            def finish(self) -> None:
                super().finish()
                fake.closed_connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, events: Iterator[Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if fake.keep_alive:  # no length and no chunking here: the end of the body is the close
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                for event in events:
                    payload = event if isinstance(event, str) else json.dumps(event)
                    self.wfile.write(f"data: {payload}\n\n".encode())
                    self.wfile.flush()
                    if fake.stream_delay_s:
                        time.sleep(fake.stream_delay_s)

            def do_GET(self) -> None:
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, **request})
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if fake.fail is not None:
                    status, body, extra = fake.fail
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path.endswith("/embeddings"):
                    vectors = request.get("input")
                    inputs = vectors if isinstance(vectors, list) else [vectors]
                    data = [
                        {"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(len(str(text)))]}
                        for i, text in enumerate(inputs)
                    ]
                    usage = {"prompt_tokens": 3, "total_tokens": 3}
                    self._json(
                        200, {"object": "list", "data": data, "model": request.get("model"), "usage": usage}
                    )
                elif self.path.endswith("/chat/completions"):
                    self._chat(request)
                elif self.path.endswith("/v1/completions"):
                    self._completions(request)
                elif self.path.endswith("/responses"):
                    self._responses(request)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def _chat(self, request: dict[str, Any]) -> None:
                answer = fake.answer(request.get("messages") or [], request)
                model = request.get("model", "fake-model")
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                if isinstance(answer, dict):
                    call = {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": answer["tool"], "arguments": json.dumps(answer["arguments"])},
                    }
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                    finish = "tool_calls"
                else:
                    message = {"role": "assistant", "content": answer}
                    finish = "stop"
                if not request.get("stream"):
                    self._json(
                        200,
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                            "usage": usage,
                        },
                    )
                    return

                def chunks() -> Iterator[Any]:
                    base = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                    }
                    if isinstance(answer, dict):
                        args = message["tool_calls"][0]["function"]["arguments"]
                        first = {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": answer["tool"], "arguments": ""},
                        }
                        yield {
                            **base,
                            "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}],
                        }
                        for i in range(0, len(args), 5):
                            part = {"index": 0, "function": {"arguments": args[i : i + 5]}}
                            yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [part]}}]}
                    else:
                        for i in range(0, len(answer), 4):
                            yield {**base, "choices": [{"index": 0, "delta": {"content": answer[i : i + 4]}}]}
                    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
                    if (request.get("stream_options") or {}).get("include_usage"):
                        yield {**base, "choices": [], "usage": usage}
                    yield "[DONE]"

                self._sse(chunks())

            def _responses(self, request: dict[str, Any]) -> None:
                raw = request.get("input")
                messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
                answer = fake.answer(messages, request)
                text = answer if isinstance(answer, str) else json.dumps(answer)
                response = {
                    "id": "resp_1",
                    "object": "response",
                    "created_at": 0,
                    "model": request.get("model", "fake-model"),
                    "status": "completed",
                    "output": [
                        {
                            "type": "message",
                            "id": "msg_1",
                            "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": text, "annotations": []}],
                        }
                    ],
                    "usage": {"input_tokens": 13, "output_tokens": 5, "total_tokens": 18},
                    "parallel_tool_calls": False,
                    "tool_choice": "auto",
                    "tools": [],
                }
                if not request.get("stream"):
                    self._json(200, response)
                    return

                def events() -> Iterator[Any]:
                    # The whole event sequence of the real API: the client's ``.stream()`` helper
                    # rebuilds the response from it and refuses a delta before ``response.created``.
                    seq = iter(range(1_000_000))
                    started = {**response, "status": "in_progress", "output": [], "usage": None}
                    item = response["output"][0]
                    part = {"type": "output_text", "text": "", "annotations": []}
                    where = {"item_id": "msg_1", "output_index": 0}
                    yield {"type": "response.created", "response": started, "sequence_number": next(seq)}
                    yield {
                        "type": "response.output_item.added",
                        "output_index": 0,
                        "item": {**item, "status": "in_progress", "content": []},
                        "sequence_number": next(seq),
                    }
                    yield {
                        "type": "response.content_part.added",
                        **where,
                        "content_index": 0,
                        "part": part,
                        "sequence_number": next(seq),
                    }
                    for i in range(0, len(text), 4):
                        yield {
                            "type": "response.output_text.delta",
                            **where,
                            "content_index": 0,
                            "delta": text[i : i + 4],
                            "sequence_number": next(seq),
                            "logprobs": [],
                        }
                    yield {
                        "type": "response.output_text.done",
                        **where,
                        "content_index": 0,
                        "text": text,
                        "sequence_number": next(seq),
                        "logprobs": [],
                    }
                    yield {
                        "type": "response.content_part.done",
                        **where,
                        "content_index": 0,
                        "part": {**part, "text": text},
                        "sequence_number": next(seq),
                    }
                    yield {
                        "type": "response.output_item.done",
                        "output_index": 0,
                        "item": item,
                        "sequence_number": next(seq),
                    }
                    yield {"type": "response.completed", "response": response, "sequence_number": next(seq)}

                self._sse(events())

            def _completions(self, request: dict[str, Any]) -> None:
                prompt = request.get("prompt")
                prompt = " ".join(prompt) if isinstance(prompt, list) else prompt
                answer = fake.answer([{"role": "user", "content": prompt}], {**request, "tools": None})
                text = answer if isinstance(answer, str) else json.dumps(answer)
                model = request.get("model", "fake-model")
                usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
                base = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": model}
                if not request.get("stream"):
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    self._json(200, {**base, "choices": [choice], "usage": usage})
                    return

                def chunks() -> Iterator[Any]:
                    for i in range(0, len(text), 4):
                        piece = {"index": 0, "text": text[i : i + 4], "finish_reason": None, "logprobs": None}
                        yield {**base, "choices": [piece]}
                    yield {
                        **base,
                        "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}],
                    }
                    if (request.get("stream_options") or {}).get("include_usage"):
                        yield {**base, "choices": [], "usage": usage}
                    yield "[DONE]"

                self._sse(chunks())

        return Handler

    def __enter__(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_openai(answer: Answer = echo_answer) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer) as server:
        yield server
