"""The I/O of mid-stream failover: one client stream over several upstream streams.

``stitch`` wraps the pool's stream when continuation is allowed. While nothing fails
it passes the upstream's bytes on as they are (tool-call chunks are held until their
arguments are whole, see ``ToolHold``). When the stream is cut, stalls or carries an
error event, the next model in the plan is asked to go on from the seam
(``resume_request``), and its chunks are spliced in (``Splicer``) until it ends; the
stream then closes with one final chunk that carries ``finish_reason`` and the
continuation report (``x_gatekeeper.continued``), and the summed usage if asked for.
If no provider can go on, the original ``StreamInterrupted`` is raised as before.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import structlog

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.accounting_segments import charge_segments
from gatekeeper.budget.segments import Continued, Segment
from gatekeeper.continuation.seam import (
    OverlapTrimmer,
    Splicer,
    ToolHold,
    completion_cap,
    delivered,
    resume_request,
)
from gatekeeper.errors import ProviderError, StreamInterrupted
from gatekeeper.providers.base import Call, ReplyStream
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import ProviderPool, Served
from gatekeeper.routing.matrix import ModelSpec

log = structlog.get_logger("gatekeeper.continuation")

HEADER = "x-gatekeeper-continuation"  # "off": this request's stream is never continued
_OFF = frozenset({"off", "false", "0", "no"})
CHARS_PER_TOKEN = 4  # English runs ~4.5 characters a token: this estimate errs high


def allowed(headers: Mapping[str, str], claims: Claims | None) -> bool:
    """Whether a request may be continued: on unless its header or its key says off."""
    value = headers.get(HEADER)
    if value is not None and value.strip().lower() in _OFF:
        return False
    return claims is None or claims.stream_continuation is not False


def stitch(
    pool: ProviderPool,
    served: Served[ReplyStream],
    call: Call,
    plan: Sequence[ModelSpec],
    deadline: float,
    enabled: bool,
) -> tuple[ReplyStream | StitchedStream, Continued | None]:
    """The stream to pump, and its segment record (None: it is not continued)."""
    body = call.body
    n = body.get("n")
    provider = pool.providers.get(served.model.provider)
    native = call.native is not None and provider is not None and provider.kind == "anthropic"
    if (
        not enabled
        or pool.policy.max_continuations <= 0
        or native  # Anthropic's own events passed through: not spliceable (docs/failover.md)
        or (n is not None and n != 1)
        or not isinstance(body.get("messages"), list)
    ):
        return served.result, None
    stream = StitchedStream(pool, served, call, plan, deadline)
    return stream, stream.record


async def drain(
    stream: ReplyStream | StitchedStream, send: Callable[[bytes], Awaitable[None]]
) -> None:
    """Send every part of ``stream.rest``; a stitched stream cut while nothing was wrapped
    is resumed here, so an uncut stream costs no wrapper per chunk."""
    rest: AsyncIterator[bytes] | None = stream.rest
    while rest is not None:
        try:
            async for part in rest:
                await send(part)
            return
        except StreamInterrupted as cut:
            rest = stream.resume(cut) if isinstance(stream, StitchedStream) else None
            if rest is None:
                raise


class StitchedStream:
    """Looks like the pool's ``ReplyStream`` (``first``, ``rest``, ``state``, ``aclose``)."""

    def __init__(
        self,
        pool: ProviderPool,
        served: Served[ReplyStream],
        call: Call,
        plan: Sequence[ModelSpec],
        deadline: float,
    ) -> None:
        self.pool, self.call, self.plan, self.deadline = pool, call, plan, deadline
        self._current = served.result
        self.state = served.result.state
        self.record = Continued(
            [
                Segment(
                    served.model,
                    self._wire(served.model),
                    call.body,
                    served.result.state,
                    served.attempts,
                )
            ]
        )
        self._next = len(served.attempts)  # the plan index after the serving model
        tools = bool(call.body.get("tools") or call.body.get("functions"))
        self._hold = ToolHold() if tools else None
        self._splicer: Splicer | None = None
        self._text = ""  # answer text the client has, as of the last seam
        self._ending: str | None = None  # a finish_reason to close with, no upstream needed
        first = served.result.first
        self.first = self._hold.feed(first) if self._hold is not None else first
        # nothing has failed: the upstream's own iterator, no wrapper per chunk (the pump
        # calls ``resume`` when it is cut); held tool calls need every chunk seen
        self.rest: AsyncIterator[bytes] = self._current.rest if self._hold is None else self._run()

    def _wire(self, model: ModelSpec) -> str:
        provider = self.pool.providers.get(model.provider)
        return provider.kind if provider is not None else ""

    async def aclose(self) -> None:
        await self._current.aclose()

    # ------------------------------------------------------------------ the pump's side

    def resume(self, exc: StreamInterrupted) -> AsyncIterator[bytes] | None:
        """What follows a cut of ``rest``: the spliced continuation, or None when ``rest``
        already was the stitching iterator (its own seams are behind it: ``exc`` is final)."""
        if self.rest is not self._current.rest:
            return None
        self.rest = self._run(exc)
        return self.rest

    async def _run(self, cut: StreamInterrupted | None = None) -> AsyncIterator[bytes]:
        source = self._current.rest
        while True:
            if cut is not None:
                nxt = await self._seam(cut)
                cut = None
                if nxt is None:
                    break
                self._current = nxt
                out = self._pass(nxt.first)
                if out:
                    yield out
                source = nxt.rest
            try:
                async for part in source:
                    out = self._pass(part)
                    if out:
                        yield out
            except StreamInterrupted as exc:
                cut = exc
                continue
            break
        if self._hold is not None and self._hold.partial:  # ended without a finish_reason
            yield self._hold.flush()
        if self._splicer is not None:
            yield self._end()

    def _pass(self, part: bytes) -> bytes:
        if self._splicer is not None:
            part = self._splicer.feed(part)
        if self._hold is not None:
            part = self._hold.feed(part)
        return part

    # ------------------------------------------------------------------ at a seam

    async def _seam(self, exc: StreamInterrupted) -> ReplyStream | None:
        """The next stream to splice in; None: end now with ``_ending``; or raise ``exc``."""
        segments = self.record.segments
        if len(segments) > self.pool.policy.max_continuations or self._current.state.overflow:
            raise exc
        splicer = self._splicer
        if splicer is None:  # the first seam: what the original stream delivered
            seen = delivered(self._current.state.payloads)
            self._text = seen.text
            splicer = Splicer(seen.head, OverlapTrimmer(""), 0, self.call.include_usage)
            if seen.finish is not None:  # the answer was complete: nothing to continue
                self._splicer = None
                return None
        else:
            self._text += splicer.text
            if splicer.final is not None:
                self._splicer, self._ending = splicer, str(splicer.final["finish_reason"])
                return None
        self._splicer = splicer
        hold = self._hold
        if hold is not None:
            if not hold.partial and hold.complete:  # cut after whole tool calls
                self._ending = "tool_calls"
                return None
            hold.drop()  # a call cut mid-arguments is started again
        left = self._completion_left()
        if left is not None and left <= 0:
            self._ending = "length"
            return None
        return await self._open(exc, splicer, left)

    def _completion_left(self) -> int | None:
        """The cap for the next segment: the original's less what was generated so far,
        estimated at ``CHARS_PER_TOKEN`` (no tokenizer on the way to the next chunk;
        the segments are counted exactly when the stream is charged)."""
        cap = completion_cap(self.call.body)
        if cap is None:
            return None
        return cap - math.ceil(len(self._text) / CHARS_PER_TOKEN)

    async def _open(
        self, exc: StreamInterrupted, splicer: Splicer, left: int | None
    ) -> ReplyStream | None:
        failed: list[Attempt] = []
        cut = self.record.segments[-1].model
        last = Attempt(cut.provider, cut.name, None, exc.code, 0.0)  # the segment that broke
        while self._next < len(self.plan):
            model = self.plan[self._next]
            self._next += 1
            self.pool.hook.failover(self.call.request_id, last, model)  # events, metrics
            wire = self._wire(model)
            resume = resume_request(self.call.body, wire, self._text, left)
            call = Call(model, resume.body, self.call.request_id, False)
            try:
                served = await self.pool.chat_stream((model,), call, self.deadline)
            except ProviderError as err:
                last = Attempt(model.provider, model.name, err.upstream_status, err.code, 0.0)
                failed.append(last)
                continue
            self.record.segments.append(
                Segment(
                    model,
                    wire,
                    resume.body,
                    served.result.state,
                    (*failed, *served.attempts),
                    seam=len(self._text),
                    reason=exc.code or "",
                    cap=left,
                )
            )
            log.info(
                "continuation.started",
                request_id=call.request_id,
                provider=model.provider,
                seam=len(self._text),
                reason=exc.code,
            )
            splicer.trimmer = OverlapTrimmer(resume.tail, resume.min_overlap)
            splicer.tool_offset = len(self._hold.complete) if self._hold is not None else 0
            splicer.text, splicer.final = "", None
            return served.result
        raise exc

    def _end(self) -> bytes:
        """The stream's last chunks: held text, the finish with the report, the usage."""
        splicer = self._splicer
        assert splicer is not None
        out = splicer.flush()
        finish = self._ending or (splicer.final or {}).get("finish_reason") or "stop"
        charges, total, cost = charge_segments(self.record.segments, "complete", 0)
        self.record.charges, self.record.cost_usd = charges, cost
        report = {"continued": self.record.report()}
        out += splicer.chunk({}, str(finish), x_gatekeeper=report)
        if self.call.include_usage:
            out += splicer.usage_chunk(total.prompt, total.completion)
        return out
