"""A real Redis (Debian's redis-server) on 127.0.0.1 with a free port and no persistence, in its
own process group; `stop()`/`start()` again on the same port to test outages and recovery."""

from __future__ import annotations

import socket

from tests.procs import Proc, free_ports, wait_until


class RedisServer(Proc):
    def __init__(self) -> None:
        super().__init__("redis")
        self.port = free_ports(1)[0]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
        )
        wait_until(self._answers, 15, "redis-server to answer PING")
        return self

    def _answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"redis-server exited:\n{self.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
