"""A real PostgreSQL (Debian's postgresql package) in a temporary data directory, on 127.0.0.1
with a free port, run as an unprivileged user (the package's `postgres` account when the tests
run as root: PostgreSQL refuses to run as root). Trust auth for user `meshgate` on loopback
only. `stop()`/`start()` again on the same port and data to test outages."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.procs import Proc, free_ports, wait_until


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: make test installs it (deploy/demo/system-deps.sh test)"
        )
    return found[-1]


def _as_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer(Proc):
    def __init__(self) -> None:
        super().__init__("postgres")
        self.port = free_ports(1)[0]
        self.dir = Path(tempfile.mkdtemp(prefix="meshgate-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            [
                *_as_user(),
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "meshgate",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://meshgate@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        self.spawn(
            [
                *_as_user(),
                _bin("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.dir),
                "-c",
                "fsync=off",  # a test database: durability against a power cut is not under test
                "-c",
                "max_connections=40",
            ]
        )
        wait_until(self._answers, 30, "postgres to accept connections")
        return self

    def _answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"postgres exited:\n{self.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        done = subprocess.run(
            [_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "meshgate"],
            capture_output=True,
        )
        return done.returncode == 0

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected; SIGTERM would wait for them)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
