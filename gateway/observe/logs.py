"""Log output: one line of text (the default), or one JSON object per line (`log_format: json`)
for log pipelines, each carrying the call's request id and W3C trace id where there is a call:
the access log passes them along (it is written after the call's context is gone), every other
line made while a call is handled takes them from the call's context."""

from __future__ import annotations

import datetime
import json
import logging

from ..pipeline.context import RequestContext, current_or_none
from .tracing import trace_id

__all__ = ["JsonFormatter", "call_fields", "formatter", "trace_id"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def call_fields(ctx: RequestContext) -> dict[str, str]:
    """`extra=` for a log line about `ctx` made outside its context (the access log): its request
    id, and its trace and span ids: the gateway's server span when traced, else the caller's."""
    if ctx.trace is not None:
        trace, span = ctx.trace.ids()
        return {"request_id": ctx.request_id, "trace_id": trace, "span_id": span}
    return {"request_id": ctx.request_id, "trace_id": trace_id(ctx.traceparent)}


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", "request_id", "trace_id", "span_id", "exception"}:
    keys with nothing to say are left out."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, str] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        fields = {"trace_id": getattr(record, "trace_id", ""), "span_id": getattr(record, "span_id", "")}
        if request_id is None:
            ctx = current_or_none()
            if ctx is not None:
                fields = call_fields(ctx)
                request_id = fields["request_id"]
        if request_id:
            doc["request_id"] = request_id
        for key in ("trace_id", "span_id"):
            if fields.get(key):
                doc[key] = fields[key]
        if record.exc_text:
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
