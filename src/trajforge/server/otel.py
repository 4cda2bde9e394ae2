"""``POST /v1/traces`` and ``POST /v1/logs``: OTLP/HTTP ingest of OpenTelemetry GenAI spans and events.

Any agent that emits OpenTelemetry GenAI spans feeds trajforge by pointing its OTLP/HTTP exporter
here (``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:2138``; with a token,
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>``). Bodies are protobuf or OTLP/JSON,
optionally gzip; the answer is in the request's encoding, as the OTLP/HTTP spec asks: an
``Export*ServiceResponse`` (``partialSuccess`` counts the spans rejected one by one) or, for a
request refused whole, a ``google.rpc.Status`` whose message says why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from trajforge.capture.transport import TransientError
from trajforge.errors import TooLarge, TrajforgeError
from trajforge.server.trajectories import _read_body
from trajforge.store import Store

router = APIRouter(tags=["opentelemetry"])

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


def _openapi(what: str, response: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    obj = {"schema": {"type": "object"}}
    status = {"content": {_PROTOBUF: binary, _JSON: obj}}
    return {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                # Only the JSON form is declared as a schema: OpenAPI cannot describe a protobuf
                # message, and the API's property tests generate bodies from what is declared.
                "content": {_JSON: obj},
                "description": (
                    f"An OTLP `{what}`, as `{_PROTOBUF}` (binary protobuf) or `{_JSON}` (OTLP/JSON: "
                    "ids in hex); gzip with `Content-Encoding: gzip`"
                ),
            }
        },
        "responses": {
            200: {
                "content": {_PROTOBUF: binary, _JSON: obj},
                "description": f"`{response}`; `partialSuccess` counts the records rejected one by one",
            },
            400: {**status, "description": "Not an OTLP request: a `google.rpc.Status` says why"},
            401: {
                "content": {_JSON: obj},
                "description": "Missing or wrong bearer token (when the server has one)",
            },
            413: {**status, "description": "The body (or its decompressed form) is over the size limit"},
            415: {
                **status,
                "description": "Content-Type is neither application/x-protobuf nor application/json",
            },
            503: {**status, "description": "The store is unavailable: the exporter retries"},
        },
        "response_class": Response,
    }


def _error(status: int, message: str, encoding: str) -> Response:
    from trajforge.otel.decode import status_body

    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(
        status_body(status, message, encoding), status_code=status, media_type=encoding, headers=headers
    )


async def _export(request: Request, kind: str) -> Response:
    from trajforge.otel.decode import BadOtlp, media_type

    encoding = media_type(request.headers.get("content-type"))
    if encoding is None:
        return _error(
            415,
            f"Content-Type must be {_PROTOBUF} or {_JSON}, not {request.headers.get('content-type')!r}",
            _JSON,
        )
    try:
        raw = await _read_body(request)
    except TooLarge as exc:
        return _error(413, exc.message, encoding)
    except TrajforgeError as exc:  # gzip that does not inflate, an unknown Content-Encoding
        return _error(400, exc.message, encoding)
    store: Store = request.app.state.store
    try:
        body = await run_in_threadpool(ingest, store, raw, encoding, kind)
    except BadOtlp as exc:
        return _error(400, str(exc), encoding)
    except TransientError as exc:
        return _error(503, f"the store is unavailable: {exc}", encoding)
    return Response(body, media_type=encoding)


def ingest(store: Store, raw: bytes, encoding: str, kind: str) -> bytes:
    """Decode, assemble and store one export request; the encoded response. Runs off the event
    loop: decoding 512 spans and their write take tens of milliseconds."""
    from trajforge.otel import assemble, decode

    decoded = decode.decode_traces(raw, encoding) if kind == "traces" else decode.decode_logs(raw, encoding)
    assemble.ingest(store, decoded, kind)
    make = decode.trace_response if kind == "traces" else decode.logs_response
    return make(decoded.rejected, decoded.error_message, encoding)


@router.post(
    "/v1/traces",
    summary="OTLP/HTTP trace export (OpenTelemetry GenAI spans → trajectories)",
    **_openapi("ExportTraceServiceRequest", "ExportTraceServiceResponse"),
)
async def export_traces(request: Request) -> Response:
    return await _export(request, "traces")


@router.post(
    "/v1/logs",
    summary="OTLP/HTTP log export (GenAI events: the content of the LLM calls of their spans)",
    **_openapi("ExportLogsServiceRequest", "ExportLogsServiceResponse"),
)
async def export_logs(request: Request) -> Response:
    return await _export(request, "logs")
