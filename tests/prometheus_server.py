"""A real Prometheus (Debian's `prometheus` package) on 127.0.0.1 with a free port and a
temporary TSDB, scraping the given targets every second and evaluating deploy/prometheus's alert
rules; `query()` runs PromQL through its HTTP API."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.procs import ROOT, Proc, free_ports, wait_until


class PrometheusServer(Proc):
    def __init__(self, targets: list[str], rule_files: tuple[Path, ...] = ()) -> None:
        super().__init__("prometheus")
        self.port = free_ports(1)[0]
        self.dir = Path(tempfile.mkdtemp(prefix="meshgate-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "meshgate", "static_configs": [{"targets": targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: make test installs Debian's prometheus package"
        self.spawn(
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=str(ROOT),
        )
        wait_until(self._ready, 30, "prometheus to be ready")
        return self

    def _ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"prometheus exited:\n{self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant query's result (a vector's samples); AssertionError with Prometheus's
        message when the expression does not evaluate."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{promql}: {err.read().decode()}") from None
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's series (unix times), for plots."""
        args = {"query": promql, "start": start, "end": end, "step": step}
        url = f"http://127.0.0.1:{self.port}/api/v1/query_range?" + urllib.parse.urlencode(args)
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
