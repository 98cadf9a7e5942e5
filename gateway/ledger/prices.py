"""What a call costs (prices config and the endpoints' Meta).

    tokens:  (prompt - cached) / 1000 x in_per_1k + cached / 1000 x cached_per_1k
             + completion / 1000 x out_per_1k      (prompt tokens include the cached ones, as
                                                    OpenAI and Anthropic report them)
    GPU:     each backend attempt held one of its endpoint's `slots` for `seconds`:
             gpu_seconds = seconds / slots, cost = gpu_seconds x cost_per_hour / 3600
             (self-hosted backends; an external API, `openai` or `anthropic`, has no GPU of
             ours unless its endpoint states a cost_per_hour)
    a cache hit: prices.cache_hit (no tokens, no GPU)

A faster GPU finishes sooner, so it is charged less time at its own hourly cost; the endpoint's
relative `capacity` needs no term of its own. Token prices: the first prices.models glob that
matches the model that answered, else the endpoint's Meta price_in_per_1k, price_out_per_1k,
price_cached_per_1k (default: the input price). A Meta value that is not a number >= 0 counts as
no price (discovery keeps Meta as given).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from adapters.llm import Usage
from discovery import Endpoint

from ..pipeline.stages import Call, Outcome, settled_usage
from .config import PricesConfig, TokenPrice

_EXTERNAL = frozenset({"openai", "anthropic"})  # provider APIs: billed per token, no GPU of ours


class Charge(NamedTuple):
    gpu_seconds: float
    cost: float


class Prices:
    def __init__(self, config: PricesConfig) -> None:
        self.config = config
        self._models = [(re.compile(fnmatch.translate(glob)), price) for glob, price in config.models.items()]
        self._by_model: dict[str, TokenPrice | None] = {}
        # id(endpoint) -> (endpoint, its Meta token price, its cost per GPU-second)
        self._endpoints: dict[int, tuple[Endpoint, TokenPrice | None, float]] = {}

    def charge(
        self, model: str, usage: Usage | None, held: Sequence[tuple[Endpoint, float]], cache_hit: bool
    ) -> Charge:
        if cache_hit:
            return Charge(0.0, self.config.cache_hit)
        gpu_seconds = cost = 0.0
        answered: Endpoint | None = None
        for endpoint, seconds in held:
            _, _, per_second = self._endpoint(endpoint)
            answered = endpoint
            if endpoint.backend in _EXTERNAL and not per_second:
                continue
            share = seconds / endpoint.slots
            gpu_seconds += share
            cost += share * per_second
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            price = self._model_price(model)
            if price is None and answered is not None:
                price = self._endpoint(answered)[1]
            if price is not None:
                cached = min(usage.cached_tokens, usage.prompt_tokens)
                cached_price = price.in_per_1k if price.cached_per_1k is None else price.cached_per_1k
                cost += (
                    (usage.prompt_tokens - cached) * price.in_per_1k
                    + cached * cached_price
                    + usage.completion_tokens * price.out_per_1k
                ) / 1000.0
        return Charge(gpu_seconds, cost)

    def of_call(self, call: Call, outcome: Outcome) -> Charge:
        """What a call that ended cost, worked out once (the ledger and the budgets both ask)."""
        record = call.ctx.record
        if record.charge is None:
            usage = settled_usage(call, outcome)
            record.charge = self.charge(record.model or call.model, usage, record.held, call.hit is not None)
        charge: Charge = record.charge
        return charge

    def worst_case(
        self, model: str, prompt_tokens: int, output_tokens: int, endpoints: Sequence[Endpoint], hold_s: float
    ) -> float:
        """The most a call can cost before it is routed: its estimated prompt and output tokens at
        the dearest token price among `endpoints` (the model's own price first), plus `hold_s`
        of a slot of the dearest self-hosted endpoint."""
        price = self._model_price(model)
        p_in = p_out = gpu = 0.0
        if price is not None:
            p_in, p_out = price.in_per_1k, price.out_per_1k
        for endpoint in endpoints:
            _, meta_price, per_second = self._endpoint(endpoint)
            if price is None and meta_price is not None:
                p_in, p_out = max(p_in, meta_price.in_per_1k), max(p_out, meta_price.out_per_1k)
            if endpoint.backend not in _EXTERNAL or per_second:
                gpu = max(gpu, per_second / endpoint.slots)
        return (prompt_tokens * p_in + output_tokens * p_out) / 1000.0 + hold_s * gpu

    def _model_price(self, model: str) -> TokenPrice | None:
        if model in self._by_model:
            return self._by_model[model]
        price = next((p for pattern, p in self._models if pattern.fullmatch(model)), None)
        if len(self._by_model) < 10_000:
            self._by_model[model] = price
        return price

    def _endpoint(self, endpoint: Endpoint) -> tuple[Endpoint, TokenPrice | None, float]:
        cached = self._endpoints.get(id(endpoint))
        if cached is not None and cached[0] is endpoint:
            return cached
        meta = endpoint.meta
        p_in, p_out = _number(meta.get("price_in_per_1k")), _number(meta.get("price_out_per_1k"))
        price = None
        if p_in is not None or p_out is not None:
            price = TokenPrice(
                in_per_1k=p_in or 0.0,
                out_per_1k=p_out or 0.0,
                cached_per_1k=_number(meta.get("price_cached_per_1k")),
            )
        entry = (endpoint, price, (_number(meta.get("cost_per_hour")) or 0.0) / 3600.0)
        if len(self._endpoints) > 10_000:
            self._endpoints.clear()
        self._endpoints[id(endpoint)] = entry
        return entry


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and math.isfinite(value) else None
