"""The audit trail: one JSON line per call on logger `meshgate.audit` (auth.audit_log, with an
authenticator configured): who (principal, how it authenticated, credential id, peer), what
(method, the model asked for and the one that answered, pool, endpoint, attempts), the outcome
(code, ms). Never payloads, tokens or keys."""

from __future__ import annotations

import json
import time

import grpc

from ..pipeline.context import RequestContext


def audit_line(ctx: RequestContext, code: grpc.StatusCode, seconds: float) -> str:
    p, r = ctx.principal, ctx.record
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": ctx.request_id,
            "user": p.user,
            "project": p.project,
            "department": p.department,
            "roles": sorted(p.roles),
            "auth": p.auth,
            "credential_id": p.credential_id,
            "peer": ctx.peer,
            "method": ctx.method,
            "model": r.requested,
            "answered_by": r.model,
            "pool": r.pool,
            "endpoint": r.endpoint,
            "attempts": r.attempts,
            "request_bytes": r.bytes_in,
            "response_bytes": r.bytes_out,
            "stream_messages": r.delivered,
            "code": code.name,
            "ms": round(seconds * 1000.0, 2),
        },
        separators=(",", ":"),
    )
