"""The request pipeline through the real gateway process: what every call gets at the front door
(request id, access log, metrics), fallback on both paths, and one bad endpoint among good ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshgate.v1 import generate_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc

from tests.helpers import metric_value
from tests.openai_standin import OpenAIStandIn
from tests.procs import Gateway, wait_until

KEY = "sk-pipeline-0123456789abcdef"


def llm_endpoint(eid: str, standin: OpenAIStandIn, models: list[str], key_file: Path) -> dict[str, Any]:
    return {
        "id": eid,
        "address": "127.0.0.1:1",
        "backend": "openai",
        "models": models,
        "base_url": standin.base_url,
        "api_key_file": str(key_file),
    }


@pytest.fixture(scope="module")
def llms() -> Iterator[dict[str, OpenAIStandIn]]:
    standins = {"big": OpenAIStandIn(api_key=KEY), "small": OpenAIStandIn(api_key=KEY)}
    standins["big"].model_ids = ["big"]
    standins["small"].model_ids = ["small"]
    yield standins
    for s in standins.values():
        s.close()


@pytest.fixture(scope="module")
def gateway(llms: dict[str, OpenAIStandIn], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Pools big and small, and a third pool `broken` whose only endpoint names a key file that
    does not exist; alias `chat` falls back from big to small."""
    keys = tmp_path_factory.mktemp("keys")
    (keys / "ok.key").write_text(KEY + "\n")
    config = {
        "pools": {
            "big": {"endpoints": [llm_endpoint("big-1", llms["big"], ["big"], keys / "ok.key")]},
            "broken": {"endpoints": [llm_endpoint("broken-1", llms["big"], ["lost"], keys / "missing.key")]},
            "small": {"endpoints": [llm_endpoint("small-1", llms["small"], ["small"], keys / "ok.key")]},
        },
        "routing": {"aliases": {"chat": {"fallback": [{"model": "big"}, {"model": "small"}]}}},
    }
    gw = Gateway(config).start()
    try:
        gw.wait_serving("big").wait_serving("small")
        yield gw
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def reset(llms: dict[str, OpenAIStandIn]) -> None:
    for s in llms.values():
        s.fail_next(0, 0)


def request(model: str = "chat") -> Any:
    msg = generate_pb2.ChatMessage(role="user", content=[generate_pb2.ContentPart(text="hello")])
    return generate_pb2.GenerateRequest(model=model, messages=[msg])


def test_one_unbuildable_endpoint_does_not_blank_the_other_pools(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        models = models_pb2_grpc.ModelsStub(ch).ListModels(models_pb2.ListModelsRequest())
        names = {m.name: m.ready for m in models.models}
        resp = inference_pb2_grpc.InferenceStub(ch).Generate(request("small"), timeout=10)
    assert names == {"big": True, "small": True}  # the broken endpoint is not in the table
    assert resp.route.endpoint == "small-1"
    page = gateway.metrics_text()
    assert (
        metric_value(
            page, "meshgate_discovery_invalid_entries_total", reason="unreadable_file", source="static"
        )
        == 1
    )
    log = gateway.log()
    assert log.count("endpoint skipped: pool=broken id=broken-1") == 1
    assert "missing.key" in log and "Traceback" not in log


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_fallback_answers_from_small_when_big_fails_every_call(
    gateway: Gateway, llms: dict[str, OpenAIStandIn], stream: bool
) -> None:
    llms["big"].fail_next(503, 1000)
    with grpc.insecure_channel(gateway.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        if stream:
            msgs = list(stub.GenerateStream(request(), timeout=10))
            text, route = "".join(m.delta for m in msgs[:-1]), msgs[-1].end.route
        else:
            resp = stub.Generate(request(), timeout=10)
            text, route = resp.text, resp.route
    assert text == "echo: hello"
    assert (route.pool, route.model) == ("small", "small")
    assert route.skipped == ["big: down"]


def test_request_id_is_echoed_and_each_call_gets_one_access_log_line(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        _, call = stub.Generate.with_call(
            request("small"), metadata=(("x-request-id", "req-abc-1"),), timeout=10
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "req-abc-1"
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(request("no-such-model"), metadata=(("x-request-id", "req-abc-2"),), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(caught.value.trailing_metadata())["x-request-id"] == "req-abc-2"  # type: ignore[attr-defined]
        _, generated = stub.Generate.with_call(request("small"), timeout=10)
        own_id = dict(generated.trailing_metadata())["x-request-id"]
        assert len(own_id) == 16
    wait_until(lambda: "request_id=req-abc-2" in gateway.log(), 5, "the access log line")
    lines = [x for x in gateway.log().splitlines() if "request_id=req-abc-" in x]
    assert len(lines) == 2
    assert "method=Generate code=OK" in lines[0] and "pool=small endpoint=small-1 attempts=1" in lines[0]
    assert "code=NOT_FOUND" in lines[1] and "Traceback" not in gateway.log()


def test_models_and_kserve_calls_go_through_the_same_front_door(gateway: Gateway) -> None:
    before = gateway.metrics_text()
    with grpc.insecure_channel(gateway.address) as ch:
        models = models_pb2_grpc.ModelsStub(ch)
        models.ListModels(models_pb2.ListModelsRequest())
        with pytest.raises(grpc.RpcError) as caught:
            models.GetModel(models_pb2.GetModelRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    page = gateway.metrics_text()

    def delta(method: str, code: str) -> float:
        return metric_value(page, "meshgate_requests_total", code=code, method=method) - metric_value(
            before, "meshgate_requests_total", code=code, method=method
        )

    assert delta("ListModels", "OK") == 1 and delta("GetModel", "NOT_FOUND") == 1
