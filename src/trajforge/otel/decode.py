"""OTLP/HTTP bodies into :class:`~trajforge.otel.spans.Span` and ``LogEvent`` records, and the
responses the OTLP/HTTP spec asks for.

Both encodings of the spec are read with the generated ``opentelemetry-proto`` classes:
``application/x-protobuf`` directly, ``application/json`` (OTLP/JSON) through
``google.protobuf.json_format`` after turning its hex ``traceId``/``spanId`` into the base64 that
the proto3 JSON mapping expects (enums as names or numbers and 64-bit integers as strings are
already accepted by ``json_format``). Nothing here knows attribute names or the store.

A span with missing or all-zero ids, or times that are not times (zero, before its start, after
year 9999), is rejected on its own and counted; the rest of the request goes on. A body that is
not OTLP at all is a :class:`BadOtlp` (400, its reason in the response's ``Status.message``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from trajforge import jsonutil
from trajforge.limits import MAX_JSON_DEPTH, MAX_TIME_MS
from trajforge.otel.spans import LogEvent, Span, SpanEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

MAX_NS = MAX_TIME_MS * 1_000_000
"""The latest time a span may carry (the store's times end in year 9999)."""
MAX_VALUE_DEPTH = MAX_JSON_DEPTH - 8
"""Deepest attribute value kept: the assembler nests attributes a few levels down in metadata."""


class BadOtlp(ValueError):
    """The body is not an OTLP export request in the declared encoding (HTTP 400)."""


def media_type(content_type: str | None) -> str | None:
    """The OTLP encoding named by a ``Content-Type`` header, or None when it is neither."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base if base in (PROTOBUF, JSON) else None


# --- values ---------------------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


def any_value(v: AnyValue, depth: int = 0) -> Any:
    """An ``AnyValue`` as a Python value (str, bool, int, float, bytes, list, dict, None)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        if depth >= MAX_VALUE_DEPTH:
            raise _TooDeep
        return [any_value(x, depth + 1) for x in v.array_value.values]
    if kind == "kvlist_value":
        if depth >= MAX_VALUE_DEPTH:
            raise _TooDeep
        return {kv.key: any_value(kv.value, depth + 1) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        # Bytes are not JSON: kept as base64 text so metadata stays storable.
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict (a key given twice: the last wins, as in the SDKs)."""
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        # Scalars inline: this runs for every attribute of every span.
        if kind == "string_value":
            out[kv.key] = v.string_value
        elif kind == "int_value":
            out[kv.key] = v.int_value
        else:
            out[kv.key] = any_value(v)
    return out


# --- requests -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Decoded:
    """What a request held: the good records, and how many were rejected and why (the first few)."""

    spans: list[Span] = field(default_factory=list)
    logs: list[LogEvent] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < 5:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = (
            "" if self.rejected <= len(self.reasons) else f" (and {self.rejected - len(self.reasons)} more)"
        )
        return "; ".join(self.reasons) + more


def _parse(
    body: bytes, encoding: str, msg: Message, id_fields: tuple[str, ...], path: tuple[str, ...]
) -> None:
    if encoding == PROTOBUF:
        try:
            msg.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise BadOtlp(f"the body is not a valid {type(msg).__name__} protobuf: {exc}") from exc
        return
    try:
        data = jsonutil.loads(body)
    except ValueError as exc:
        raise BadOtlp(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadOtlp(f"the body must be a JSON object ({type(msg).__name__})")
    _hex_ids_to_base64(data, path, id_fields)
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=True, max_recursion_depth=MAX_JSON_DEPTH * 2)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as exc:
        raise BadOtlp(f"the body is not a valid OTLP/JSON {type(msg).__name__}: {exc}") from exc


def _hex_ids_to_base64(data: Any, path: tuple[str, ...], id_fields: tuple[str, ...]) -> None:
    """OTLP/JSON writes ids as hex; the proto3 JSON mapping of ``bytes`` is base64. Walk to the
    records along ``path`` (lists of objects, camelCase or snake_case keys) and convert in place.
    An id that is not hex is rejected with its record (for its length), not the whole body."""
    level = [data]
    for key in path:
        nxt: list[Any] = []
        for obj in level:
            if isinstance(obj, dict):
                items = obj.get(key, obj.get(_snake(key)))
                if isinstance(items, list):
                    nxt.extend(i for i in items if isinstance(i, dict))
        level = nxt
    for rec in level:
        for key in id_fields:
            for name in (key, _snake(key)):
                value = rec.get(name)
                if isinstance(value, str):
                    try:
                        rec[name] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        rec[name] = _NOT_HEX  # rejected with its record, by length
        links = rec.get("links")
        for link in links if isinstance(links, list) else ():  # anything else: the parser says why
            if isinstance(link, dict):
                for name in ("traceId", "spanId", "trace_id", "span_id"):
                    if isinstance(link.get(name), str):
                        try:
                            link[name] = base64.b64encode(bytes.fromhex(link[name])).decode()
                        except ValueError:
                            link[name] = _NOT_HEX


_NOT_HEX = base64.b64encode(b"\xff").decode()
"""What an id that is not hex becomes: one byte, which no id length allows."""


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _bad_time(start: int, end: int) -> str | None:
    if start <= 0 or end <= 0:
        return "a start or end time is missing"
    if end < start:
        return "ends before it starts"
    if end > MAX_NS:
        return "a time is after the year 9999"
    return None


def _records(
    out: Decoded, resources: Iterable[Any], scopes: str, records: str
) -> Iterator[tuple[dict[str, Any], str, Any]]:
    """Each record of an export request (spans or log records) with its resource's attributes and
    its scope's name; the records of a resource whose attributes nest too deep are rejected."""
    for rs in resources:
        try:
            resource = attributes(rs.resource.attributes)
        except _TooDeep:
            for scope in getattr(rs, scopes):
                for _ in getattr(scope, records):
                    out.reject("resource attribute nested too deep")
            continue
        for scope in getattr(rs, scopes):
            for record in getattr(scope, records):
                yield resource, scope.scope.name, record


def decode_traces(body: bytes, encoding: str) -> Decoded:
    """An ``ExportTraceServiceRequest`` body as spans; bad spans rejected one by one."""
    req = ExportTraceServiceRequest()
    _parse(
        body, encoding, req, ("traceId", "spanId", "parentSpanId"), ("resourceSpans", "scopeSpans", "spans")
    )
    out = Decoded()
    for resource, scope, s in _records(out, req.resource_spans, "scope_spans", "spans"):
        tid, sid, pid = s.trace_id, s.span_id, s.parent_span_id
        name = s.name[:200]
        if len(tid) != 16 or not any(tid):
            out.reject(f"span {name!r}: traceId must be 16 bytes, not all zero")
            continue
        if len(sid) != 8 or not any(sid):
            out.reject(f"span {name!r}: spanId must be 8 bytes, not all zero")
            continue
        if pid and len(pid) != 8:
            out.reject(f"span {name!r}: parentSpanId must be 8 bytes or empty")
            continue
        start, end = s.start_time_unix_nano, s.end_time_unix_nano
        problem = _bad_time(start, end)
        if problem is not None:
            out.reject(f"span {name!r} ({sid.hex()}): {problem}")
            continue
        try:
            attrs = attributes(s.attributes)
            events = [SpanEvent(e.name, e.time_unix_nano, attributes(e.attributes)) for e in s.events]
        except _TooDeep:
            out.reject(f"span {name!r} ({sid.hex()}): an attribute is nested too deep")
            continue
        out.spans.append(
            Span(
                trace_id=tid.hex(),
                span_id=sid.hex(),
                parent_span_id=pid.hex() if pid and any(pid) else None,
                name=s.name,
                start_ns=start,
                end_ns=end,
                kind=int(s.kind),
                status_code=int(s.status.code),
                status_message=s.status.message,
                attributes=attrs,
                events=events,
                resource=resource,
                scope=scope,
            )
        )
    return out


def decode_logs(body: bytes, encoding: str) -> Decoded:
    """An ``ExportLogsServiceRequest`` body as log events; bad records rejected one by one."""
    req = ExportLogsServiceRequest()
    _parse(body, encoding, req, ("traceId", "spanId"), ("resourceLogs", "scopeLogs", "logRecords"))
    out = Decoded()
    for resource, scope, r in _records(out, req.resource_logs, "scope_logs", "log_records"):
        tid, sid = r.trace_id, r.span_id
        if (tid and len(tid) != 16) or (sid and len(sid) != 8):
            out.reject("log record: traceId must be 16 bytes and spanId 8 bytes (or both empty)")
            continue
        t = r.time_unix_nano or r.observed_time_unix_nano
        if t > MAX_NS:
            out.reject("log record: its time is after the year 9999")
            continue
        try:
            attrs = attributes(r.attributes)
            body_value = any_value(r.body) if r.HasField("body") else None
        except _TooDeep:
            out.reject("log record: a value is nested too deep")
            continue
        event_name = r.event_name or str(attrs.get("event.name", ""))
        out.logs.append(
            LogEvent(
                event_name=event_name,
                time_ns=t,
                trace_id=tid.hex() if tid and any(tid) else None,
                span_id=sid.hex() if sid and any(sid) else None,
                attributes=attrs,
                body=body_value,
                resource=resource,
                scope=scope,
            )
        )
    return out


# --- responses ------------------------------------------------------------------------------------


def _encode(msg: Message, encoding: str) -> bytes:
    if encoding == JSON:
        return json_format.MessageToJson(msg, indent=None).encode()
    return msg.SerializeToString()


def trace_response(rejected: int, message: str, encoding: str) -> bytes:
    """An ``ExportTraceServiceResponse``: empty when all was accepted, else ``partialSuccess``."""
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    return _encode(resp, encoding)


def logs_response(rejected: int, message: str, encoding: str) -> bytes:
    """An ``ExportLogsServiceResponse``: empty when all was accepted, else ``partialSuccess``."""
    resp = ExportLogsServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_log_records = rejected
        resp.partial_success.error_message = message
    return _encode(resp, encoding)


_STATUS: Any = None


def _status_class() -> Any:
    """``google.rpc.Status`` (what OTLP/HTTP error bodies are), built from its descriptor in a pool
    of our own: its generated module lives in ``googleapis-common-protos``, which the core install
    does not carry, and a private pool cannot clash with that module when it is loaded too."""
    global _STATUS
    if _STATUS is None:
        fdp = descriptor_pb2.FileDescriptorProto(
            name="trajforge/google_rpc_status.proto", package="google.rpc", syntax="proto3"
        )
        m = fdp.message_type.add(name="Status")
        f = descriptor_pb2.FieldDescriptorProto
        m.field.add(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL, json_name="code")
        m.field.add(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="message")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _STATUS = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))
    return _STATUS


GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
"""HTTP status → ``google.rpc.Code`` (INVALID_ARGUMENT, UNAUTHENTICATED, …): informative only, the
spec says clients act on the HTTP status."""


def status_body(http_status: int, message: str, encoding: str) -> bytes:
    """An OTLP/HTTP error body: a ``google.rpc.Status`` in the request's encoding."""
    status = _status_class()(code=GRPC_CODES.get(http_status, 2), message=message)
    return _encode(status, encoding)
