#!/usr/bin/env python3
"""The Python reference: a bare grpc.aio pass-through proxy (raw bytes, no parsing, no policy).

Every method is forwarded to one upstream as opaque bytes with the caller's deadline. It is the
ceiling of what any Python gateway built on grpc.aio can do on this machine.

    python bench/bare_proxy.py --listen 127.0.0.1:9000 --upstream 127.0.0.1:9001
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc


class PassThrough(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._calls: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(method)

        async def handler(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            reply: bytes = await call(request, timeout=context.time_remaining())
            return reply

        return grpc.unary_unary_rpc_method_handler(handler)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    channel = grpc.aio.insecure_channel(args.upstream)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([PassThrough(channel)])
    server.add_insecure_port(args.listen)
    await server.start()
    print(f"bare proxy: {args.listen} -> {args.upstream}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
