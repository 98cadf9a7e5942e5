"""Background loops that survive: a loop that fails is counted and restarted; readiness keeps
going when an adapter has a bug."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from discovery import Endpoint, ModelRef, PoolSnapshot
from gateway.config import ReadinessConfig
from gateway.endpoints import EndpointTable
from gateway.endpoints.readiness import ReadinessChecker
from gateway.observe.metrics import Metrics
from gateway.server import background


async def test_a_failing_loop_is_counted_and_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "_FIRST_DELAY_S", 0.01)
    metrics = Metrics(CollectorRegistry())
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise KeyError("a bug")
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(background.supervise("probe", flaky, metrics))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if runs == 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == 3  # failed twice, running the third time
    assert metrics.background_errors == {("probe",): 2}


class BuggyAdapter:
    """server_live raises what no adapter may raise (a bug): not a BackendError."""

    async def server_live(self, timeout: float) -> bool:
        raise TypeError("unsupported operand")

    async def model_ready(self, model: str, version: str, timeout: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class GoodAdapter(BuggyAdapter):
    async def server_live(self, timeout: float) -> bool:
        return True


async def test_readiness_marks_a_buggy_adapter_not_ready_and_checks_the_others() -> None:
    table = EndpointTable(lambda ep: BuggyAdapter() if ep.id == "bad" else GoodAdapter())  # type: ignore[arg-type,return-value]
    eps = tuple(
        Endpoint(i, "p", "127.0.0.1", n, "triton", (ModelRef("m"),)) for n, i in enumerate(("bad", "good"), 1)
    )
    table.apply(PoolSnapshot("static", "p", eps))
    checker = ReadinessChecker(table, ReadinessConfig())
    states = {s.endpoint.id: s for s in table.states()}
    await asyncio.gather(*(checker.check(s) for s in states.values()))
    assert states["good"].health.live and states["good"].health.ready_models
    assert not states["bad"].health.live
    assert states["bad"].health.message == "readiness check failed: TypeError: unsupported operand"
