"""The HTTP client of the HTTP adapters (OpenAI-compatible, vLLM, Anthropic, TF Serving): one
aiohttp session per endpoint, and the SSE parser of streamed answers.

Why aiohttp: measured on this machine, httpx cost ~830 us of CPU per request where aiohttp
costs ~80 us (the load probe moved first; bench-stream and bench-peers measure this path). It
has no HTTP/2: every concurrent call holds its own keep-alive HTTP/1.1 connection (at most
`limit` per endpoint, kept for `keepalive_s`).

Per call: the caller's deadline is the request's total timeout (connect at most 5 s of it). A
stream's context manager releases its response when left; a response not read to its end
closes its connection, so a caller that goes away stops the upstream generation. Failures
without an HTTP answer are TransportError (`timeout` says which kind), so adapters map them
to gRPC codes in one place (http_llm.transport_error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import aiohttp
import orjson

from .tls import ClientTLS


class TransportError(Exception):
    """No HTTP answer: refused, reset, TLS failure, timeout (`timeout`), or the client closed."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class HTTPResponse(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class HTTPClient:
    def __init__(
        self,
        base_url: str,
        *,
        tls: ClientTLS | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = 1024,
        keepalive_s: float = 60.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._ssl: Any = tls.ssl_context() if tls is not None else None
        self._server_name = tls.server_name if tls is not None else ""
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._connect_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise TransportError("the adapter's connections are closed")
        if self._session is None:  # created in the running loop, at first use
            connector = aiohttp.TCPConnector(
                limit=self._limit, keepalive_timeout=self._keepalive_s, ssl=self._ssl if self._ssl else True
            )
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=connector,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    def _kwargs(self, json_body: Any, timeout: float | None, headers: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "timeout": aiohttp.ClientTimeout(total=timeout, connect=self._connect_s),
            "headers": dict(headers) if headers else None,
        }
        if json_body is not None:
            kw["data"] = orjson.dumps(json_body)
            kw["headers"] = {**(kw["headers"] or {}), "content-type": "application/json"}
        if self._server_name:
            kw["server_hostname"] = self._server_name
        return kw

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: float | None = None,
        headers: Any = None,
    ) -> HTTPResponse:
        """The whole answer (any status); TransportError when there is none."""
        session = self._open()
        try:
            async with session.request(
                method, self.base_url + path, **self._kwargs(json_body, timeout, headers)
            ) as resp:
                return HTTPResponse(resp.status, resp.headers, await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise _transport(err) from None
        except RuntimeError as err:  # aiohttp: "Session is closed" (the adapter retired mid-call)
            raise TransportError(f"the adapter's connections are closed ({err})") from None

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: float | None = None,
        headers: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response with its body unread (status and headers in; SSE: sse_batches)."""
        session = self._open()
        try:
            async with session.request(
                method, self.base_url + path, **self._kwargs(json_body, timeout, headers)
            ) as resp:
                yield resp
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise _transport(err) from None
        except RuntimeError as err:
            raise TransportError(f"the adapter's connections are closed ({err})") from None

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _transport(err: BaseException) -> TransportError:
    if isinstance(err, asyncio.TimeoutError):
        return TransportError("timed out", timeout=True)
    if isinstance(err, aiohttp.ClientPayloadError):
        return TransportError("the connection closed before the response was complete")
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return TransportError("the server closed the connection")
    if isinstance(err, aiohttp.ClientConnectorError):
        return TransportError(f"cannot connect: {err.os_error.strerror or err.os_error}")
    return TransportError(f"{type(err).__name__}: {err}")


async def sse_batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of a server-sent event stream, as bytes, in batches: every event
    complete after one network read comes in one list, so a burst of tokens is handled (and
    sent to the caller) once. Multi-line data is joined with newlines; other fields and comments
    are skipped; CR, LF and CRLF line ends are all accepted. When the connection breaks, the
    events that arrived whole before it still come out, then TransportError."""
    buf = b""
    try:
        async for chunk in resp.content.iter_any():
            batch, buf = _events(buf + chunk)
            if batch:
                yield batch
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        if isinstance(err, aiohttp.ClientPayloadError):
            batch, buf = _events(buf + _unread(resp.content))
            if batch:
                yield batch
        raise _transport(err) from None
    last = _data(buf.rstrip(b"\r\n"))
    if last is not None:
        yield [last]


def _events(buf: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the complete events in `buf`, and what is left of it."""
    if b"\r" in buf:
        keep = b"\r" if buf.endswith(b"\r") else b""  # maybe half of a CRLF
        body = buf[:-1] if keep else buf
        buf = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + keep
    if b"\n\n" not in buf:
        return [], buf
    *events, buf = buf.split(b"\n\n")
    return [d for d in map(_data, events) if d is not None], buf


def _unread(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp had received but not handed out when the connection broke: its StreamReader
    raises the error before the data it holds, so the last events a provider sent before it cut
    the stream (often the usage) would be lost. aiohttp's own fields, read defensively."""
    held = getattr(content, "_buffer", None)
    if not held:
        return b""
    return b"".join(held)[getattr(content, "_buffer_offset", 0) :]


def _data(event: bytes) -> bytes | None:
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[1:] if line[:1] == b" " else line for line in lines)
