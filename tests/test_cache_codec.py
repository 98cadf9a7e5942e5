"""The shared cache's entry format (gateway/policy/cache/codec.py): every kind of answer comes
back equal, and bytes that are not an entry (corrupt, truncated, another version, a pickle)
are a miss, never an exception or code run."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from adapters import InferResult, Tensor
from adapters.kserve_wire import response_from_result
from adapters.llm import EmbedResult, GenerateResult, StreamEnd, TextDelta, ToolCall, Usage
from gateway.pipeline.attempts import Route
from gateway.policy.cache import codec

ROUTE = Route("tritons", "triton-a", "triton", 1, "add_sub", ("big: down",), False)
usages = st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
tools = st.tuples(*[st.builds(ToolCall, st.text(), st.text(), st.text())] * 2)
texts = st.text()


@given(texts, texts, usages, tools)
def test_generate_answers_round_trip(
    text: str, reason: str, usage: Usage, calls: tuple[ToolCall, ...]
) -> None:
    answer = GenerateResult("echo", text, reason, usage, calls)
    assert codec.decode(codec.encode((answer, ROUTE))) == (answer, ROUTE)


def test_text_that_is_not_valid_unicode_survives() -> None:
    answer = GenerateResult("echo", "half a pair \ud800 and emoji \U0001f600", "stop", Usage())
    assert codec.decode(codec.encode((answer, ROUTE))) == (answer, ROUTE)


@given(st.lists(texts, max_size=20), usages)
def test_streams_round_trip(deltas: list[str], usage: Usage) -> None:
    messages = (*[TextDelta(d) for d in deltas], StreamEnd("echo", "stop", usage, ()))
    assert codec.decode(codec.encode((messages, ROUTE))) == (messages, ROUTE)


@given(st.lists(st.lists(st.floats(allow_nan=False), max_size=8), max_size=4), usages)
def test_embeddings_round_trip(vectors: list[list[float]], usage: Usage) -> None:
    answer = EmbedResult("emb", tuple(tuple(v) for v in vectors), usage)
    assert codec.decode(codec.encode((answer, ROUTE))) == (answer, ROUTE)


def test_tensor_answers_round_trip_with_their_bytes() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    answer = InferResult("add_sub", "1", "r1", (Tensor("OUTPUT0", "FP32", (2, 3), raw=raw),))
    for value in (answer, (answer, answer)):  # a unary answer, a stream of answers
        got = codec.decode(codec.encode((value, ROUTE)))
        assert got is not None and got[1] == ROUTE
        items = got[0] if isinstance(got[0], tuple) else (got[0],)
        for item in items:
            assert response_from_result(item) == response_from_result(answer)
            assert item.outputs[0].shape == (2, 3) and item.outputs[0].raw == raw


def test_what_is_not_an_entry_is_a_miss() -> None:
    good = codec.encode((GenerateResult("echo", "hi", "stop", Usage(1, 2, 0)), ROUTE))
    for bad in (
        b"",
        b"MGC1",
        good[:-1],
        good + b"x",
        b"MGC2" + good[4:],
        good.replace(b'"g"', b'"z"'),
        pickle.dumps(("anything", ROUTE)),
        bytes(range(256)),
    ):
        assert codec.decode(bad) is None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    codec.decode(b"MGC1" + data)
    codec.decode(data)
