"""Who may share the gateway's port, and who holds it when we cannot bind.

gRPC turns SO_REUSEPORT on by default on Linux. With it, a second, unrelated `meshgate serve`
(any process of the same user that also sets it) could bind the same address, and the kernel
would split new connections between the two: measured, 40 fresh connections went 23/17. So the
gateway binds with SO_REUSEPORT only when it is one of `meshgate serve --workers N`'s own
processes (the parent sets WORKER_ENV after checking that the address is free), and a bind that
fails says which process holds the address, read from /proc (Linux; elsewhere just "in use").
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

WORKER_ENV = "MESHGATE_SHARED_LISTENER"  # set by `serve --workers` for its own workers only


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def split_hostport(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def ensure_free(listen: str) -> None:
    """Raise OSError saying why (and which process holds it) when `listen` (host:port) cannot
    be bound by this process alone."""
    problem = bind_problem(listen)
    if problem:
        raise OSError(problem)


def bind_problem(listen: str) -> str:
    """Why `listen` cannot be bound without SO_REUSEPORT ("" when it can, right now)."""
    host, port = split_hostport(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As grpc and the metrics server bind: SO_REUSEADDR lets a restart bind over its own
        # TIME_WAIT connections, and still refuses an address that a socket listens on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                by = f", held by {holder}" if holder else ""
                return f"cannot listen on {listen}: address in use{by}"
            return f"cannot listen on {listen}: {err.strerror or err}"
    return ""


def port_holder(port: int) -> str:
    """'pid 123 (meshgate serve --config x.yaml)' for the process listening on TCP `port`, or ''."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return ""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return f"pid {proc.name} ({_cmdline(proc)})"
    return ""


def _cmdline(proc: Path) -> str:
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    return text if len(text) <= 120 else text[:119] + "\u2026"
