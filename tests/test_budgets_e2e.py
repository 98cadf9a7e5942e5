"""Budgets through the real front door: a user's, its project's and its department's budgets
each refuse in turn (RESOURCE_EXHAUSTED naming the budget, RetryInfo until the window resets);
a restart restores the window's spend from the ledger; two replicas on one Redis and one
PostgreSQL: the budget's spend equals the sum of the calls' usage, and both report the same."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.rpc import error_details_pb2, status_pb2
from meshgate.v1 import admin_pb2, admin_pb2_grpc, generate_pb2, inference_pb2_grpc

from tests.helpers import api_key_auth, llm_pool
from tests.openai_standin import OpenAIStandIn
from tests.postgres_server import PostgresServer
from tests.procs import ROOT, Gateway, make_key
from tests.redis_server import RedisServer

BUDGETS = [
    {"name": "bob-tokens", "scope": "user", "who": {"users": ["bob"]}, "limit": 40, "unit": "tokens"},
    {"name": "ads-tokens", "scope": "project", "limit": 90, "unit": "tokens"},
    {"name": "eng-tokens", "scope": "department", "limit": 150, "unit": "tokens", "window": "daily"},
]


def _chat() -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hello budget world")])
    return generate_pb2.GenerateRequest(
        model="echo", messages=[msg], sampling=generate_pb2.SamplingParams(max_tokens=6)
    )


def _until_refused(address: str, key: str, limit: int = 60) -> tuple[int, int, grpc.RpcError]:
    """Calls until one is refused: (answered, tokens they used, the refusal)."""
    tokens = 0
    with grpc.insecure_channel(address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for n in range(limit):
            try:
                r = stub.Generate(_chat(), timeout=10, metadata=(("authorization", f"Bearer {key}"),))
            except grpc.RpcError as err:
                return n, tokens, err
            tokens += r.usage.prompt_tokens + r.usage.completion_tokens
    raise AssertionError(f"no refusal after {limit} calls")


def _retry_delay(err: grpc.RpcError) -> float:
    for k, v in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if k == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(v)
            for d in status.details:
                info = error_details_pb2.RetryInfo()
                if d.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return -1.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("budgets") / "keys.yaml"
    return path, {
        "bob": make_key(path, "--user", "bob", "--project", "ads", "--department", "eng"),
        "carol": make_key(path, "--user", "carol", "--project", "ads", "--department", "eng"),
        "dave": make_key(path, "--user", "dave", "--project", "web", "--department", "eng"),
        "root": make_key(path, "--user", "root", "--role", "admin"),
    }


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    yield server
    server.close()


def _config(llm: OpenAIStandIn, keys_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "pools": {"llm": llm_pool(llm.base_url)},
        "auth": api_key_auth(keys_file),
        "budgets": {"limits": BUDGETS},
        **extra,
    }


def test_each_level_refuses_in_turn_and_a_restart_keeps_the_spend(
    llm: OpenAIStandIn, keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    keys_file, k = keys
    config = _config(llm, keys_file, ledger={"path": str(tmp_path / "usage.db"), "flush_interval_s": 0.2})
    gw = Gateway(config).start()
    try:
        gw.wait_serving("llm")
        n_bob, used_bob, err = _until_refused(gw.address, k["bob"])
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget bob-tokens (user bob, 40 tokens per month) is exhausted" in (err.details() or "")
        assert 0 < used_bob <= 40 and n_bob >= 2
        month_end = _retry_delay(err)
        assert 0 < month_end <= 31 * 86400
        n_carol, used_carol, err = _until_refused(gw.address, k["carol"])  # no user budget: the project's
        assert "budget ads-tokens (project ads, 90 tokens per month)" in (err.details() or "")
        assert used_bob + used_carol <= 90 and n_carol >= 2
        _, used_dave, err = _until_refused(gw.address, k["dave"])  # project web: the department's
        assert "budget eng-tokens (department eng, 150 tokens per day)" in (err.details() or "")
        assert used_bob + used_carol + used_dave <= 150 and 0 < _retry_delay(err) <= 86400
        with grpc.insecure_channel(gw.address) as ch:
            listed = admin_pb2_grpc.AdminStub(ch).ListBudgets(
                admin_pb2.ListBudgetsRequest(budget="eng-tokens"),
                timeout=10,
                metadata=(("authorization", f"Bearer {k['root']}"),),
            )
        (eng,) = listed.budgets
        assert (eng.scope, eng.key, eng.unit, eng.limit) == ("department", "eng", "tokens", 150)
        assert eng.spent == pytest.approx(used_bob + used_carol + used_dave) and eng.over_soft_threshold
        assert eng.remaining == pytest.approx(150 - eng.spent) and eng.window_end - eng.window_start <= 86400
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "budgets",
                "--target",
                gw.address,
                "--api-key",
                k["root"],
                "--key",
                "web",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=True,
        ).stdout
        assert "ads-tokens" in out and "project=web" in out and "department=eng" in out
        page = gw.metrics_text()
        assert 'meshgate_budget_refusals_total{budget="eng-tokens"} 1.0' in page
        assert 'meshgate_budget_used_ratio{budget="bob-tokens",key="user=bob"}' in page
    finally:
        gw.stop()
    again = Gateway(config).start()  # spend comes back from the ledger: still refused
    try:
        again.wait_serving("llm")
        n, _, err = _until_refused(again.address, k["dave"])
        assert n == 0 and "budget eng-tokens" in (err.details() or "")
    finally:
        again.stop()


def test_two_replicas_share_budgets_and_the_ledger(
    llm: OpenAIStandIn, keys: tuple[Path, dict[str, str]], redis_server: RedisServer
) -> None:
    keys_file, k = keys
    pg = PostgresServer().start()
    prefix = f"e2e-{uuid.uuid4().hex[:6]}:"
    try:
        config = _config(
            llm,
            keys_file,
            ledger={"store": "postgres", "url": pg.url, "flush_interval_s": 0.2},
            redis={"url": redis_server.url, "prefix": prefix},
        )
        config["budgets"] = {"store": "redis", "limits": BUDGETS}
        replicas = [Gateway(config).start(), Gateway(config).start()]
        try:
            for gw in replicas:
                gw.wait_serving("llm")
            used = 0
            for key in (k["carol"], k["dave"]):  # alternate replicas until refused
                for i in range(60):
                    with grpc.insecure_channel(replicas[i % 2].address) as ch:
                        try:
                            r = inference_pb2_grpc.InferenceStub(ch).Generate(
                                _chat(), timeout=10, metadata=(("authorization", f"Bearer {key}"),)
                            )
                        except grpc.RpcError as e:
                            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                            break
                    used += r.usage.prompt_tokens + r.usage.completion_tokens
            assert used <= 150
            # the department's bucket in Redis holds exactly what the calls used
            client = redis.Redis.from_url(redis_server.url)
            (bucket,) = [key for key in client.keys(f"{prefix}bg:eng-tokens:*")]
            level = float(client.hget(bucket, "t") or 0)
            assert 150 - level == pytest.approx(used)
            time.sleep(0.5)  # each replica writes its records within one flush interval
            reports = []
            for gw in replicas:
                with grpc.insecure_channel(gw.address) as ch:
                    r = admin_pb2_grpc.AdminStub(ch).GetUsage(
                        admin_pb2.GetUsageRequest(since=time.time() - 600, group_by=["department"]),
                        timeout=10,
                        metadata=(("authorization", f"Bearer {k['root']}"),),
                    )
                reports.append({tuple(row.group): row.tokens_in + row.tokens_out for row in r.rows})
            assert reports[0] == reports[1] == {("eng",): used}
        finally:
            for gw in replicas:
                gw.stop()
    finally:
        pg.remove()
