"""The SSE parser of the HTTP adapters (adapters/http_client.py sse_batches): however a stream is
cut into network reads (hypothesis), the same `data:` payloads come out in order; CRLF, CR and LF
line ends, multi-line data, comments and other fields are handled; events that arrive in one read
come in one batch."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.http_client import sse_batches


class _Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for c in self._chunks:
            yield c


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Body(chunks)


def batches(chunks: list[bytes]) -> list[list[bytes]]:
    async def run() -> list[list[bytes]]:
        return [b async for b in sse_batches(_Response(chunks))]  # type: ignore[arg-type]

    return asyncio.run(run())


STREAM = (
    b": a comment\r\n"
    b"event: message_start\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"data: line one\n"
    b"data:line two\n\n"
    b"id: 7\rdata: cr only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b"line one\nline two", b"cr only", b"[DONE]"]


def test_one_read_is_one_batch() -> None:
    assert batches([STREAM]) == [EXPECTED]


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    assert batches([b"data: x\n\ndata: tail"]) == [[b"x"], [b"tail"]]


@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=12, unique=True))
def test_any_cut_gives_the_same_payloads(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    got: list[Any] = [d for batch in batches(chunks) for d in batch]
    assert got == EXPECTED


def test_events_that_arrived_before_the_connection_broke_still_come_out() -> None:
    """aiohttp's StreamReader raises a broken payload's error before the data it still holds; the
    events that arrived whole come out first, then TransportError (the part of one that did not)."""
    import aiohttp

    from adapters.http_client import TransportError

    class _Protocol:
        _reading_paused = False

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

    async def run() -> tuple[list[list[bytes]], bool]:
        reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        reader.feed_data(b"data: one\n\ndata: two\n\ndata: thr")  # one read's worth, then the break
        reader.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))
        resp = type("Resp", (), {"content": reader})()
        got: list[list[bytes]] = []
        try:
            async for batch in sse_batches(resp):  # type: ignore[arg-type]
                got.append(batch)
        except TransportError:
            return got, True
        return got, False

    got, broke = asyncio.run(run())
    assert got == [[b"one", b"two"]] and broke
