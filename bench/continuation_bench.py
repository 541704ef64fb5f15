"""Mid-stream failover, in process: what it costs when nothing fails, and how fast a seam is.

Run: ``nice .venv/bin/python -m bench.continuation_bench``. Not a test: timings depend
on the machine. Both upstreams are ``MemoryTransport`` replies behind the real
``OpenAIProvider`` adapter and ``ProviderPool`` (no sockets, so the figures are the
gateway's own work, not the network's):

* chunks/s of a 2,000-chunk stream pumped as is and through ``stitch`` (nothing fails);
* cut → first continued chunk: the time between the last chunk of a stream that is cut
  after 40 chunks and the first chunk of the continuation (seam reading, the resume
  request, the second upstream's first chunk, splicing), p50 and p95 over 200 seams.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

import orjson
import structlog

from gatekeeper.continuation.stitch import drain, stitch
from gatekeeper.providers.base import Call
from gatekeeper.providers.memory import MemoryTransport, Scripted, Sent
from gatekeeper.providers.openai import OpenAIProvider
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.providers.transport import ConnectionClosed
from gatekeeper.routing.matrix import ModelSpec

HEAD = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def piece(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({**HEAD, "choices": [choice]}) + b"\n\n"


def stream_body(n: int) -> tuple[bytes, ...]:
    parts = [piece({"role": "assistant", "content": ""})]
    parts += [piece({"content": f"word{i} "}) for i in range(n)]
    return (*parts, piece({}, "stop"), b"data: [DONE]\n\n")


def provider(name: str, replies: list[Scripted]) -> OpenAIProvider:
    def handler(sent: Sent) -> Scripted:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    cfg = ProviderConfig(name=name, kind="openai", base_url="http://x/v1", api_key="k")
    return OpenAIProvider(cfg, MemoryTransport(handler))


def model(name: str) -> ModelSpec:
    return ModelSpec(name, name, name, "chat", 0.001, 0.002, 128000, 4096)


CALL_BODY = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def pump(pool: ProviderPool, plan: tuple[ModelSpec, ...], wrap: bool) -> float:
    call = Call(plan[0], CALL_BODY, "rid")
    started = time.perf_counter()
    served = await pool.chat_stream(plan, call, time.monotonic() + 60)
    stream = stitch(pool, served, call, plan, time.monotonic() + 60, True)[0] if wrap else None
    source = stream if stream is not None else served.result
    async for _ in source.rest:
        pass
    return time.perf_counter() - started


async def seam(pool: ProviderPool, plan: tuple[ModelSpec, ...]) -> float:
    call = Call(plan[0], CALL_BODY, "rid")
    served = await pool.chat_stream(plan, call, time.monotonic() + 60)
    stream, _ = stitch(pool, served, call, plan, time.monotonic() + 60, True)
    times = [time.perf_counter()]

    async def note(_: bytes) -> None:
        times.append(time.perf_counter())

    await drain(stream, note)  # as the pump does
    if len(times) < 42:
        raise RuntimeError("the continuation never came")
    return times[41] - times[40]  # the first chunk after the 40 the cut stream delivered


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = 2000
    whole = Scripted(headers={"content-type": "text/event-stream"}, body=stream_body(n))
    pool = ProviderPool({"a": provider("a", [whole]), "b": provider("b", [whole])})
    plan = (model("a"), model("b"))
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(40):  # interleaved, so drift hits both alike
        for wrap in (False, True):
            runs[wrap].append(await pump(pool, plan, wrap))
    for wrap, label in ((False, "as is"), (True, "stitched")):
        print(f"{label:<9} {n / statistics.median(runs[wrap]):>12,.0f} chunks/s (median of 40)")

    cut = Scripted(
        headers={"content-type": "text/event-stream"},
        body=stream_body(200)[:41],
        fail=ConnectionClosed("cut"),
    )
    rest = Scripted(headers={"content-type": "text/event-stream"}, body=stream_body(20))
    cut_pool = ProviderPool({"a": provider("a", [cut]), "b": provider("b", [rest])})
    samples = sorted([await seam(cut_pool, plan) for _ in range(200)])
    p50, p95 = samples[len(samples) // 2], samples[int(len(samples) * 0.95)]
    print(f"cut → first continued chunk: p50 {p50 * 1e6:,.0f} µs, p95 {p95 * 1e6:,.0f} µs")


if __name__ == "__main__":
    asyncio.run(main())
