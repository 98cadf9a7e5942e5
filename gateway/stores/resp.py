"""A small Redis client for the request path: one connection, every command pipelined on it
(replies come back in order), replies parsed by hiredis (the C parser redis-py also uses).

Why not redis-py's asyncio client: measured on this machine, it costs ~115 us of CPU for a
PING and ~190 us for one EVALSHA (a connection checked out of a pool and back, a timeout
context per read, ~340 Python calls per command); this client costs ~20 us (bench note in
stores/redis_store.py). The gateway sends Redis only a handful of commands (EVALSHA, SCRIPT LOAD,
ZREM, and AUTH/SELECT on connect), so the client stays this small.

Commands issued in the same turn of the event loop are written together (one system call: on
these machines a loopback round trip costs ~60 us of kernel CPU, so under load this is most of
the saving).

Failures: a refused or dropped connection, or a reply later than `timeout_s` (checked by one
watchdog, not a timer per command), fails every command waiting on the connection with
ConnectionError and closes it; the next command connects again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections import deque
from typing import Any

import hiredis


class RedisReplyError(Exception):
    """Redis answered with an error (e.g. NOSCRIPT, WRONGTYPE)."""


def encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        b = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self._client = client
        encoding = None if client.binary else "utf-8"
        self._reader = hiredis.Reader(notEnoughData=False, replyError=RedisReplyError, encoding=encoding)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiters = self._client._waiters
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not waiters:  # nothing asked for it: the connection is out of step
                self._client._fail(ConnectionError("redis: a reply nobody asked for"))
                return
            future = waiters.popleft()[0]
            if not future.done():
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._fail(ConnectionError(f"redis: connection lost ({exc or 'closed by the server'})"))


class RespClient:
    def __init__(self, url: str, timeout_s: float, *, binary: bool = False) -> None:
        """`binary`: bulk replies stay bytes (the response cache); else they are decoded as UTF-8."""
        self.binary = binary
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("redis", "rediss"):
            raise ValueError(f"redis url must start with redis:// or rediss://, got {u.scheme}://")
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 6379
        self._ssl = ssl.create_default_context() if u.scheme == "rediss" else None
        self._db = int(u.path.strip("/") or 0)
        self._user = urllib.parse.unquote(u.username) if u.username else None
        self._password = urllib.parse.unquote(u.password) if u.password else None
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.Task[None] | None = None
        self._outbox: list[bytes] = []

    async def execute(self, *args: Any) -> Any:
        """One command's reply; ConnectionError (unreachable, dropped, too slow) or RedisReplyError."""
        if self._transport is None:
            await self._connect()
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiters.append((future, time.monotonic()))
        # Commands issued in one turn of the event loop leave in one write (one system call).
        self._outbox.append(encode(args))
        if len(self._outbox) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if self._transport is not None and out:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    async def _connect(self) -> None:
        if self._connecting is not None:  # another command is connecting: wait for it
            await asyncio.shield(self._connecting)
            if self._transport is None:
                raise ConnectionError("redis: not connected")
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port, ssl=self._ssl),
                self._timeout_s,
            )
            self._transport = transport
            setup = []
            if self._password is not None:
                auth = ("AUTH", self._user, self._password) if self._user else ("AUTH", self._password)
                setup.append(self.execute(*auth))
            if self._db:
                setup.append(self.execute("SELECT", self._db))
            if setup:
                await asyncio.gather(*setup)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = loop.create_task(self._watch())
        except (OSError, TimeoutError) as err:
            self._fail(
                ConnectionError(f"redis: cannot connect to {self._host}:{self._port}: {err or 'timeout'}")
            )
            raise ConnectionError(
                f"redis: cannot connect to {self._host}:{self._port}: {err or 'timeout'}"
            ) from None
        finally:
            self._connecting.set_result(None)
            self._connecting = None

    async def _watch(self) -> None:
        """Fail the connection when its oldest command has waited past the timeout."""
        while self._transport is not None:
            await asyncio.sleep(self._timeout_s / 2)
            if self._waiters and time.monotonic() - self._waiters[0][1] > self._timeout_s:
                self._fail(ConnectionError(f"redis: no reply within {self._timeout_s:g} s"))

    def _fail(self, err: Exception) -> None:
        transport, self._transport = self._transport, None
        waiters, self._waiters = self._waiters, deque()
        self._outbox = []
        for future, _ in waiters:
            if not future.done():
                future.set_exception(err)
        if transport is not None:
            transport.abort()

    async def aclose(self) -> None:
        self._fail(ConnectionError("redis: client closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
