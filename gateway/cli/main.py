"""The `meshgate` command: serve, check-config, models, infer.

meshgate serve [--config F] [--workers N]
meshgate check-config F
meshgate models [MODEL] [--target HOST:PORT] [--json]
meshgate admin pools | drain POOL ID | undrain POOL ID | reload | principals
meshgate usage [--by project,model] [--since 7d] [--csv]
meshgate budgets [--budget NAME] [--key VALUE]
meshgate infer --model M --input NAME:DTYPE:SHAPE=1,2,3 [--input NAME:DTYPE=@x.npy] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from adapters.scrub import ScrubFilter

from ..config import ConfigError, load_config
from ..observe.logs import formatter
from ..policy.auth.keys import KeyFileError
from ..server import ports


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshgate", description="meshgate: gRPC inference mesh gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="YAML config file (default: the embedded default)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")

    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("file")

    from . import keys
    from .consul import add_arguments

    add_arguments(sub)
    keys.add_arguments(sub)

    from . import admin
    from .client import add_connection_arguments

    admin.add_arguments(sub)
    from . import usage

    usage.add_arguments(sub)
    h = sub.add_parser("health", help="grpc.health.v1 check: exit 0 when SERVING (container health checks)")
    add_connection_arguments(h)
    h.add_argument("--service", default="", help="a pool's name, or '' for the gateway as a whole")
    for name, help_ in (("models", "list the models the gateway serves"), ("infer", "run one inference")):
        q = sub.add_parser(name, help=help_)
        add_connection_arguments(q)
        q.add_argument("--json", action="store_true", help="print JSON")
        if name == "models":
            q.add_argument(
                "model", nargs="?", default="", help="one model: its endpoints and what routing sees of each"
            )
        if name == "infer":
            q.add_argument("--model", required=True)
            q.add_argument("--version", default="")
            q.add_argument(
                "--input",
                action="append",
                required=True,
                metavar="NAME:DTYPE:SHAPE=VALUES",
                help="e.g. INPUT0:FP32:2x2=1,2,3,4 or INPUT0:FP32=@x.npy (repeat per input)",
            )
            q.add_argument("--output", action="append", default=[], help="output to return (default: all)")
            q.add_argument("--region", default="", help="preferred region")
            q.add_argument("--prefer", choices=["latency", "cost"], default=None, help="routing preference")
            q.add_argument("--id", default="", help="request id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "serve":
        return _serve(args.config, args.workers)
    # `meshgate models | head`: end quietly when the reader goes away, as Unix tools do (not
    # for `serve`, which must not die of a closed stdout).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command == "keys":
        from . import keys as keys_cli

        return keys_cli.run(args)
    if args.command in ("register", "deregister"):
        from . import consul as consul_cli

        return consul_cli.register(args) if args.command == "register" else consul_cli.deregister(args)
    from . import client

    try:
        if args.command == "admin":
            from . import admin

            return admin.run(args)
        if args.command in ("usage", "budgets"):
            from . import usage

            return usage.run(args) if args.command == "usage" else usage.budgets(args)
        if args.command == "health":
            return client.health(args)
        if args.command == "models":
            return client.model_endpoints(args) if args.model else client.models(args)
        if args.command == "infer":
            return client.infer(args)
    except client.UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _check_config(path: str) -> int:
    try:
        config, _ = load_config(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    n = sum(len(p.endpoints) for p in config.pools.values())
    print(f"{path}: OK ({len(config.pools)} pool(s), {n} endpoint(s), listen {config.server.listen})")
    return 0


def _serve(path: str | None, workers: int) -> int:
    try:
        config, name = load_config(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # configured secrets never reach a log line
        handler.addFilter(ScrubFilter(skip=("meshgate.access",)))
        handler.setFormatter(formatter(config.log_format))
    if workers > 1:
        return _serve_workers(path, workers)
    from ..server.app import serve

    runner: Any = asyncio.run
    if config.server.uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            logging.getLogger("meshgate").info("uvloop not installed; using asyncio's loop")
    try:
        result: int = runner(serve(config, name, path))
    except (OSError, KeyFileError) as err:
        print(f"meshgate: {err}", file=sys.stderr)
        return 1
    return result


def _serve_workers(path: str | None, workers: int) -> int:
    """N processes listening on the same port (SO_REUSEPORT); the kernel spreads connections.

    Worker i > 0 serves metrics on the metrics port + i (port 0 stays 0).
    """
    config, _ = load_config(path)
    try:  # only our own workers may share the port: refuse an address another process holds
        ports.ensure_free(config.server.listen)
    except OSError as err:
        print(f"meshgate: {err}", file=sys.stderr)
        return 1
    procs = []
    for i in range(workers):
        env = dict(os.environ, **{ports.WORKER_ENV: "1"})
        if i and config.metrics.listen:
            host, _, port = config.metrics.listen.rpartition(":")
            env["MESHGATE_METRICS_LISTEN"] = f"{host}:{int(port) + i if int(port) else 0}"
        cmd = [sys.executable, "-m", "gateway", "serve"] + (["--config", path] if path else [])
        procs.append(subprocess.Popen(cmd, env=env))

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # reload: every worker re-reads the config
    codes = [p.wait() for p in procs]
    return max(codes)
