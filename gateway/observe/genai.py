"""Time to first token, time per output token and tokens per call, by pool and model, and the
same under the names the OpenTelemetry GenAI semantic conventions give them (in Prometheus form:
gen_ai.server.time_to_first_token -> gen_ai_server_time_to_first_token_seconds), so dashboards
built for those conventions work on meshgate's page unchanged.

    meshgate_time_to_first_token_seconds{pool,model}    streams: call start -> first delta out
    meshgate_time_per_output_token_seconds{pool,model}  streams: (end - first delta) / (tokens - 1)
    gen_ai_server_request_duration_seconds{gen_ai_operation_name,gen_ai_request_model}
    gen_ai_server_time_to_first_token_seconds{...}, gen_ai_server_time_per_output_token_seconds{...}
    gen_ai_client_token_usage{gen_ai_operation_name,gen_ai_request_model,gen_ai_token_type}
                                                        tokens per call (input, output), as the
                                                        gateway's calls to providers used them

Plain dicts updated on the event loop, turned into families at scrape time (metrics.py says why).
Labels are bounded: pools and models come from configuration and discovery, not from callers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from adapters.llm import Usage

from .hist import TOKEN_BUCKETS, Histogram, histogram_family, observe

OPERATIONS = {"generate": "chat", "embed": "embeddings"}  # the conventions' gen_ai.operation.name


class GenAIMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttft: dict[tuple[str, str], Histogram] = {}
        self.tpot: dict[tuple[str, str], Histogram] = {}
        self.duration: dict[tuple[str, str], Histogram] = {}
        self.ttft_genai: dict[tuple[str, str], Histogram] = {}
        self.tpot_genai: dict[tuple[str, str], Histogram] = {}
        self.tokens: dict[tuple[str, str, str], Histogram] = {}
        registry.register(self)

    def call_done(
        self,
        kind: str,
        pool: str,
        model: str,
        seconds: float,
        first_token_s: float | None,
        usage: Usage | None,
    ) -> None:
        """An answered Generate, GenerateStream or Embed call. `first_token_s`: seconds from the
        call's start to its first delta out (streams only)."""
        operation = OPERATIONS.get(kind)
        if operation is None:
            return
        observe(self.duration, (operation, model), seconds)
        if usage is not None:
            if usage.prompt_tokens:
                observe(self.tokens, (operation, model, "input"), usage.prompt_tokens, TOKEN_BUCKETS)
            if usage.completion_tokens:
                observe(self.tokens, (operation, model, "output"), usage.completion_tokens, TOKEN_BUCKETS)
        if first_token_s is None:
            return
        observe(self.ttft, (pool, model), first_token_s)
        observe(self.ttft_genai, (operation, model), first_token_s)
        if usage is not None and usage.completion_tokens > 1:
            per_token = (seconds - first_token_s) / (usage.completion_tokens - 1)
            observe(self.tpot, (pool, model), per_token)
            observe(self.tpot_genai, (operation, model), per_token)

    def collect(self) -> Iterator[Any]:
        genai = ["gen_ai_operation_name", "gen_ai_request_model"]
        yield histogram_family(
            "meshgate_time_to_first_token_seconds",
            "Streams: seconds from the call's start to its first token out, by pool and model.",
            ["pool", "model"],
            self.ttft,
        )
        yield histogram_family(
            "meshgate_time_per_output_token_seconds",
            "Streams: seconds per output token after the first, by pool and model.",
            ["pool", "model"],
            self.tpot,
        )
        yield histogram_family(
            "gen_ai_server_request_duration_seconds",
            "GenAI server request duration (OpenTelemetry gen_ai.server.request.duration).",
            genai,
            self.duration,
        )
        yield histogram_family(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token (OpenTelemetry gen_ai.server.time_to_first_token).",
            genai,
            self.ttft_genai,
        )
        yield histogram_family(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first (OpenTelemetry gen_ai.server.time_per_output_token).",
            genai,
            self.tpot_genai,
        )
        yield histogram_family(
            "gen_ai_client_token_usage",
            "Tokens per call, input and output (OpenTelemetry gen_ai.client.token.usage).",
            [*genai, "gen_ai_token_type"],
            self.tokens,
        )
