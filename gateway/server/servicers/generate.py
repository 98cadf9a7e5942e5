"""meshgate.v1 Generate / GenerateStream / Embed messages <-> adapters.llm types."""

from __future__ import annotations

from typing import Any

from meshgate.v1 import generate_pb2, routing_pb2

from adapters.llm import ChatMessage, EmbedCall, GenerateCall, StreamEnd, ToolCall, ToolDefinition, Usage

from ...pipeline.attempts import Route

_FINISH = {
    "stop": generate_pb2.FINISH_REASON_STOP,
    "length": generate_pb2.FINISH_REASON_LENGTH,
    "tool_calls": generate_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": generate_pb2.FINISH_REASON_CONTENT_FILTER,
}


def generate_call(req: Any) -> GenerateCall:
    s = req.sampling
    return GenerateCall(
        model=req.model,
        messages=tuple(
            ChatMessage(m.role, "".join(p.text for p in m.content), m.tool_call_id) for m in req.messages
        ),
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        stop=tuple(s.stop),
        seed=s.seed if s.HasField("seed") else None,
        tools=tuple(ToolDefinition(t.name, t.description, t.parameters_json) for t in req.tools),
        request_id=req.id,
        metadata=dict(req.metadata),
    )


def embed_call(req: Any) -> EmbedCall:
    return EmbedCall(req.model, tuple(req.inputs), req.dimensions)


def route_pb(route: Route) -> Any:
    return routing_pb2.RouteInfo(
        pool=route.pool,
        endpoint=route.endpoint,
        backend=route.backend,
        attempts=route.attempts,
        model=route.model,
        skipped=route.skipped,
        cache_hit=route.cache_hit,
    )


def usage_pb(u: Usage) -> Any:
    return generate_pb2.Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens
    )


def tool_calls_pb(calls: tuple[ToolCall, ...]) -> list[Any]:
    return [generate_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json) for c in calls]


def finish_pb(reason: str) -> Any:
    return _FINISH.get(reason, generate_pb2.FINISH_REASON_UNSPECIFIED)


def end_pb(end: StreamEnd, route: Route) -> Any:
    return generate_pb2.GenerateStreamResponse(
        end=generate_pb2.GenerateEnd(
            finish_reason=finish_pb(end.finish_reason),
            usage=usage_pb(end.usage),
            tool_calls=tool_calls_pb(end.tool_calls),
            route=route_pb(route),
            model=end.model,
        )
    )
