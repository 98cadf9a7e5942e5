"""auth.forward: the caller's identity sent to backends with each call (metadata or headers),
for their own audit; never the caller's credential."""

from __future__ import annotations

import urllib.parse

from .context import RequestContext


def identity_headers(
    forward: tuple[tuple[str, str], ...], ctx: RequestContext
) -> tuple[tuple[str, str], ...]:
    """(header, value) for each configured (header, principal field) whose value is set; a value
    that is not printable ASCII is percent-encoded (UTF-8), as metadata and headers need."""
    p = ctx.principal
    values = {
        "user": p.user,
        "project": p.project,
        "department": p.department,
        "roles": ",".join(sorted(p.roles)),
        "credential_id": p.credential_id,
        "request_id": ctx.request_id,
    }
    return tuple((header, _header_value(values[field])) for header, field in forward if values[field])


def _header_value(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return urllib.parse.quote(value, safe="")
