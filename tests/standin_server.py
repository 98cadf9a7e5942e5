"""The plumbing every HTTP stand-in shares: an aiohttp app on 127.0.0.1 (free port), served by
its own event loop in a daemon thread, so synchronous tests can drive it."""

from __future__ import annotations

import asyncio
import ssl
import threading

from aiohttp import web


class ThreadedServer:
    """Subclasses implement `_routes(app)`; `port` is set once the server listens."""

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context  # serve HTTPS (the context may require client certificates)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _serve(self) -> int:
        app = web.Application()
        self._routes(app)
        # Streams in progress must not hold shutdown open.
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
