"""Cost tracking through the real front door, into a real ledger (SQLite file): every call is
recorded with its tokens, GPU-seconds and cost; a real Triton call's GPU-seconds match the time
it ran; a cancelled stream is charged for what it streamed; a cache hit is recorded as one, at
the cache price; Admin/GetUsage and `meshgate usage --csv` agree with the ledger's rows; a
kill -9 under load loses no call that completed more than one flush interval before it."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from meshgate.v1 import admin_pb2, admin_pb2_grpc, generate_pb2, inference_pb2, inference_pb2_grpc, tensor_pb2
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from tests.helpers import add_sub_request, api_key_auth, llm_pool
from tests.openai_standin import OpenAIStandIn
from tests.procs import ROOT, Gateway, Triton, make_key

COST_PER_HOUR = 36.0  # 0.01 per GPU-second
PRICE_IN, PRICE_OUT = 1.0, 2.0  # per 1,000 tokens


class World:
    def __init__(self, gw: Gateway, keys: dict[str, str], llm: OpenAIStandIn, db: Path) -> None:
        self.gw, self.keys, self.llm, self.db = gw, keys, llm, db

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def usage(self, *group_by: str, since: float = 0.0) -> Any:
        with grpc.insecure_channel(self.gw.address) as ch:
            return admin_pb2_grpc.AdminStub(ch).GetUsage(
                admin_pb2.GetUsageRequest(since=since or time.time() - 3600, group_by=list(group_by)),
                timeout=10,
                metadata=self.md("root"),
            )

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as db:
            return db.execute(query).fetchall()


def _config(triton: Triton, llm: OpenAIStandIn, keys_file: Path, db: Path, **ledger: Any) -> dict[str, Any]:
    return {
        "pools": {
            "tritons": {
                "endpoints": [
                    {
                        "id": "triton-a",
                        "address": triton.address,
                        "backend": "triton",
                        "models": ["add_sub", "sleep"],
                        "meta": {"cost_per_hour": str(COST_PER_HOUR)},
                    }
                ]
            },
            "llm": llm_pool(llm.base_url),
        },
        "auth": api_key_auth(keys_file),
        "ledger": {"path": str(db), "flush_interval_s": 0.2, **ledger},
        "prices": {"models": {"ech*": {"in_per_1k": PRICE_IN, "out_per_1k": PRICE_OUT}}, "cache_hit": 0.5},
        "cache": {"models": ["add_sub"]},
    }


@pytest.fixture(scope="module")
def world(triton_a: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("usage")
    keys_file = tmp / "keys.yaml"
    keys = {
        "bob": make_key(keys_file, "--user", "bob", "--project", "ads", "--department", "eng"),
        "alice": make_key(keys_file, "--user", "alice", "--project", "search", "--department", "eng"),
        "root": make_key(keys_file, "--user", "root", "--role", "admin"),
    }
    llm = OpenAIStandIn()
    gw = Gateway(_config(triton_a, llm, keys_file, tmp / "usage.db")).start()
    try:
        gw.wait_serving("tritons")
        gw.wait_serving("llm")
        yield World(gw, keys, llm, tmp / "usage.db")
    finally:
        gw.stop()
        llm.close()


def _chat(text: str) -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text=text)])
    return generate_pb2.GenerateRequest(model="echo", messages=[msg])


def _sleep(ms: int) -> Any:
    t = tensor_pb2.Tensor(name="MS", datatype="DATA_TYPE_INT64", shape=[1], raw=np.int64([ms]).tobytes())
    return inference_pb2.InferRequest(model="sleep", inputs=[t])


def test_calls_are_recorded_with_tokens_gpu_seconds_and_cost(world: World) -> None:
    since = time.time() - 1
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for i in range(3):
            stub.Infer(add_sub_request([float(i)], [1.0]), timeout=10, metadata=world.md("bob"))
        stub.Infer(_sleep(400), timeout=10, metadata=world.md("bob"))
        for _ in range(2):
            answer = stub.Generate(_chat("hello world"), timeout=10, metadata=world.md("alice"))
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)
    rows = {tuple(r.group): r for r in world.usage("user", "model", since=since).rows}
    assert set(rows) == {("bob", "add_sub"), ("bob", "sleep"), ("alice", "echo")}
    adds, sleep, echo = rows["bob", "add_sub"], rows["bob", "sleep"], rows["alice", "echo"]
    assert (adds.calls, adds.errors, adds.cache_hits) == (3, 0, 0)
    # the sleep model ran 400 ms on the endpoint's one slot: 0.4 GPU-seconds (within 10%)
    assert 0.4 <= sleep.gpu_seconds <= 0.44, sleep.gpu_seconds
    assert sleep.cost == pytest.approx(sleep.gpu_seconds * COST_PER_HOUR / 3600)
    assert adds.cost == pytest.approx(adds.gpu_seconds * COST_PER_HOUR / 3600) and adds.cost > 0
    assert (echo.calls, echo.tokens_in, echo.tokens_out, echo.gpu_seconds) == (2, 4, 6, 0.0)
    assert echo.cost == pytest.approx(2 * (2 * PRICE_IN + 3 * PRICE_OUT) / 1000)
    # what the ledger holds, row by row
    kept = world.rows(
        "SELECT user_name, project, department, model, pool, endpoint, status FROM usage_records"
        f" WHERE ts >= {since} AND model = 'sleep'"
    )
    assert kept == [("bob", "ads", "eng", "sleep", "tritons", "triton-a", "OK")]


def test_a_cancelled_stream_is_charged_for_what_it_streamed(world: World) -> None:
    since = time.time()
    world.llm.token_interval_s = 0.05
    try:
        with grpc.insecure_channel(world.gw.address) as ch:
            words = " ".join(f"w{i}" for i in range(200))
            stream = inference_pb2_grpc.InferenceStub(ch).GenerateStream(
                _chat(words), timeout=30, metadata=world.md("alice")
            )
            got = 0
            for msg in stream:
                if msg.WhichOneof("event") == "delta":
                    got += len(msg.delta.split())  # words: deltas that came together are one message
                if got >= 3:
                    stream.cancel()
                    break
        time.sleep(0.5)
    finally:
        world.llm.token_interval_s = 0.0
    rows = {r.group[0]: r for r in world.usage("status", "model", since=since).rows if r.group[1] == "echo"}
    row = rows["CANCELLED"]
    assert row.calls == 1
    assert 3 <= row.tokens_out <= 20 and row.tokens_in > 0
    assert row.cost == pytest.approx((row.tokens_in * PRICE_IN + row.tokens_out * PRICE_OUT) / 1000)


def test_a_cache_hit_is_recorded_at_the_cache_price(world: World) -> None:
    since = time.time()
    with grpc.insecure_channel(world.gw.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for _ in range(2):
            stub.Infer(add_sub_request([42.0], [1.0]), timeout=10, metadata=world.md("bob"))
    (row,) = world.usage(since=since).rows
    assert (row.calls, row.cache_hits) == (2, 1)
    (hit,) = world.rows(f"SELECT cost, gpu_seconds FROM usage_records WHERE ts >= {since} AND cache_hit")
    assert hit == (0.5, 0.0)


def test_the_report_and_the_csv_match_the_ledger(world: World) -> None:
    since = time.time() - 3600
    report = world.usage("project", since=since)
    assert report.currency == "USD" and report.unwritten == 0
    in_db = dict(
        world.rows(f"SELECT project, COUNT(*) FROM usage_records WHERE ts >= {since} GROUP BY project")
    )
    assert {r.group[0]: r.calls for r in report.rows} == in_db
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "usage",
            "--target",
            world.gw.address,
            "--api-key",
            world.keys["root"],
            "--by",
            "project",
            "--since",
            "1h",
            "--csv",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    ).stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["project"]: int(r["calls"]) for r in table} == in_db
    costs = dict(
        world.rows(f"SELECT project, SUM(cost) FROM usage_records WHERE ts >= {since} GROUP BY project")
    )
    for r in table:
        assert float(r["cost"]) == pytest.approx(costs[r["project"]], abs=1e-6)
        assert r["currency"] == "USD"
    # a client's mistakes are named
    with grpc.insecure_channel(world.gw.address) as ch, pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminStub(ch).GetUsage(
            admin_pb2.GetUsageRequest(group_by=["password"]), timeout=10, metadata=world.md("root")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group_by" in (err.value.details() or "")
    with grpc.insecure_channel(world.gw.address) as ch, pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminStub(ch).GetUsage(
            admin_pb2.GetUsageRequest(), timeout=10, metadata=world.md("bob")
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_kill_9_loses_nothing_older_than_one_flush_interval(
    triton_a: Triton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("crash")
    keys_file = tmp / "keys.yaml"
    key = make_key(keys_file, "--user", "load", "--project", "crash")
    llm = OpenAIStandIn()
    interval = 0.5
    config = _config(triton_a, llm, keys_file, tmp / "usage.db", flush_interval_s=interval)
    del config["cache"]
    gw = Gateway(config).start()
    done: list[tuple[float, str]] = []  # (when the answer arrived, request id)
    stop = threading.Event()

    def load(worker: int) -> None:
        with grpc.insecure_channel(gw.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            for i in range(100_000):
                if stop.is_set():
                    return
                rid = f"crash-{worker}-{i}"
                md = (("authorization", f"Bearer {key}"), ("x-request-id", rid))
                try:
                    stub.Infer(add_sub_request([1.0], [float(i)]), timeout=5, metadata=md)
                except grpc.RpcError:
                    return  # the gateway is gone
                done.append((time.monotonic(), rid))

    def answered_by_triton() -> int:  # the backend's own count of add_sub calls it answered
        with grpc.insecure_channel(triton_a.address) as ch:
            stats = kpb_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
                kpb.ModelStatisticsRequest(name="add_sub"), timeout=10
            )
        return sum(m.inference_stats.success.count for m in stats.model_stats)

    try:
        gw.wait_serving("tritons")
        before = answered_by_triton()
        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        killed_at = time.monotonic()
        gw.kill()
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        gw.stop()
    safe = {rid for at, rid in done if at < killed_at - interval - 0.1}
    assert len(safe) > 100
    answered = answered_by_triton() - before
    with sqlite3.connect(tmp / "usage.db") as db:  # what a restart would find
        kept = {r[0] for r in db.execute("SELECT request_id FROM usage_records WHERE project = 'crash'")}
    assert safe <= kept, f"{len(safe - kept)} of {len(safe)} calls lost"
    # the ledger never holds a call the backend did not answer, and lost at most the last interval
    assert len(kept) <= answered
    print(
        f"kill -9: backend answered {answered}, client saw {len(done)}, ledger kept {len(kept)}, lost {answered - len(kept)}"
    )
    assert kept <= {rid for _, rid in done} | {f"crash-{w}-{i}" for w in range(4) for i in range(100_000)}
    restarted = Gateway(config).start()  # and the gateway opens the ledger it left
    try:
        restarted.wait_serving("tritons")
        with grpc.insecure_channel(restarted.address) as ch:
            inference_pb2_grpc.InferenceStub(ch).Infer(
                add_sub_request([1.0], [1.0]), timeout=10, metadata=(("authorization", f"Bearer {key}"),)
            )
    finally:
        restarted.stop()
        llm.close()
    with sqlite3.connect(tmp / "usage.db") as db:
        assert (
            db.execute("SELECT COUNT(*) FROM usage_records WHERE project = 'crash'").fetchone()[0]
            == len(kept) + 1
        )
