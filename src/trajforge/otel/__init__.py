"""OpenTelemetry ingest: OTLP/HTTP traces and logs in, trajectories out.

- :mod:`.spans`: the decoded span and log records, and what the mapping makes of one span;
- :mod:`.decode`: OTLP/HTTP bodies (protobuf or JSON, gzip bounded) into spans, and the responses;
- :mod:`.mapping`: one table per convention (GenAI semconv, OpenLLMetry, OpenInference) from span
  attributes to LLM calls, action results and provider accesses;
- :mod:`.assemble`: spans into write batches (grouping, deterministic ids, idempotent by span id).

The routes that mount this on the server live in :mod:`trajforge.server.otel`.
"""
