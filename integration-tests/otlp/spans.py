"""Spans for the tail-sampling integration test, encoded and decoded with the OpenTelemetry
protobuf bindings from PyPI (`opentelemetry-proto`): an OTLP implementation independent of
breadcrumb's.

    spans.py generate OUT_DIR TRACES PARTITIONS SEED   batches + manifest.json
    spans.py decode DIR                                 (trace id, span id) of every span, JSON
"""
import json
import os
import random
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

BASE_NS = 1_700_000_000_000 * 1_000_000
MS = 1_000_000


def attribute(key, value):
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_trace(rng, index):
    """A trace: its spans (root first), whether a span failed, its duration in ms."""
    trace_id = rng.randbytes(16)
    start = BASE_NS + index * 30 * MS
    kind = "error" if index % 11 == 0 else "slow" if index % 7 == 0 else "plain"
    duration_ms = rng.randint(600, 900) if kind == "slow" else rng.randint(20, 200)
    root_id = rng.randbytes(8)
    spans = [Span(trace_id=trace_id, span_id=root_id, name="GET /checkout",
                  kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start,
                  end_time_unix_nano=start + duration_ms * MS,
                  attributes=[attribute("http.route", "/checkout"), attribute("retry", False)])]
    for child in range(rng.randint(1, 5)):
        child_start = start + rng.randint(0, duration_ms // 2) * MS
        failed = kind == "error" and child == 0
        spans.append(Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root_id,
                          name=f"db.query.{child}", kind=Span.SPAN_KIND_CLIENT,
                          start_time_unix_nano=child_start,
                          end_time_unix_nano=child_start + rng.randint(1, duration_ms // 2) * MS,
                          attributes=[attribute("db.rows", rng.randint(0, 50))],
                          status=Status(code=Status.STATUS_CODE_ERROR, message="timeout")
                          if failed else Status()))
    return trace_id, spans, kind == "error", duration_ms


def request(groups):
    """One request: per (service, spans) group a ResourceSpans."""
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource={"attributes": [attribute("service.name", service)]},
                      scope_spans=[ScopeSpans(scope={"name": "checkout-lib", "version": "1.0"},
                                              spans=spans)])
        for service, spans in groups if spans])


def generate(out_dir, traces, partitions, seed):
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"traces": [], "batches": []}
    pending = {partition: [] for partition in range(partitions)}

    def flush(partition):
        if not pending[partition]:
            return
        # Children and roots come from two services, as a gateway and a database client would.
        groups = [("gateway", [s for s in pending[partition] if not s.parent_span_id]),
                  ("db-client", [s for s in pending[partition] if s.parent_span_id])]
        name = f"batch-{len(manifest['batches']):05}.bin"
        with open(os.path.join(out_dir, name), "wb") as file:
            file.write(request(groups).SerializeToString())
        manifest["batches"].append({"file": name, "partition": partition})
        pending[partition] = []

    for index in range(traces):
        partition = index % partitions
        trace_id, spans, error, duration_ms = make_trace(rng, index)
        manifest["traces"].append({"trace_id": trace_id.hex(), "partition": partition,
                                   "spans": [span.span_id.hex() for span in spans],
                                   "error": error, "duration_ms": duration_ms})
        # Children first, then the root (it ends last); now and then the root comes in the
        # next batch, as an SDK flushing between them would send it.
        pending[partition].extend(spans[1:])
        if rng.random() < 0.3:
            flush(partition)
        pending[partition].append(spans[0])
        if len(pending[partition]) >= 12:
            flush(partition)
    for partition in range(partitions):
        flush(partition)
    with open(os.path.join(out_dir, "manifest.json"), "w") as file:
        json.dump(manifest, file)


def decode(directory):
    spans = []
    for name in sorted(os.listdir(directory)):
        request = ExportTraceServiceRequest()
        with open(os.path.join(directory, name), "rb") as file:
            request.ParseFromString(file.read())
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append([span.trace_id.hex(), span.span_id.hex()])
    json.dump(spans, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "generate":
        generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "decode":
        decode(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
