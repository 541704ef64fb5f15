"""The request path, top to bottom: each ingress's steps composed in order.

Every endpoint reads the same way: make the request's ``Exchange`` (what becomes its
audit record), run the steps, and on every way out (a reply, a refusal, a bug, a
cancellation) settle the reservation and write exactly one record. The steps return
their values (claims, the parsed request, the route, the ticket, the served attempt);
only this module puts them on the exchange.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CoroutineType

from starlette.responses import Response

from gatekeeper.auth.claims import Claims
from gatekeeper.auth.verifier import TokenVerifier
from gatekeeper.budget.concurrency import ConcurrencyLimiter
from gatekeeper.cache.service import Lookup, ResultCache
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.config import Config
from gatekeeper.continuation import stitch
from gatekeeper.errors import GatewayError
from gatekeeper.exchange import AuditRef, Exchange
from gatekeeper.http.inbound import Readable
from gatekeeper.passes.redeem import Redeemer
from gatekeeper.pipeline import request as step1
from gatekeeper.pipeline import respond as step7
from gatekeeper.pipeline import token as step2
from gatekeeper.pipeline.admission import Admission
from gatekeeper.pipeline.audit import Auditor, Recorder
from gatekeeper.pipeline.ingress import Ingress
from gatekeeper.pipeline.route import Router
from gatekeeper.providers.base import Call
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.routing.router import AUTO

__all__ = ["Pipeline", "Witness"]

Witness = Callable[[AuditRef, tuple[int, int]], None]  # where its audit record is, what it charged


@dataclass(slots=True)
class Pipeline:
    config: Config
    verifier: TokenVerifier
    router: Router
    admission: Admission
    pool: ProviderPool
    auditor: Auditor
    background: set[asyncio.Task[None]] = field(default_factory=set)
    concurrency: ConcurrencyLimiter = field(default_factory=ConcurrencyLimiter)
    passes: Redeemer | None = None  # Privacy Pass redemption (docs/privacy.md), if enabled
    cache: ResultCache | None = None  # the result cache (docs/capacity.md); None: off
    capacity: CapacityGate | None = None  # priority lanes (docs/capacity.md); None: off
    record: Recorder = field(init=False)  # step 8 on every way out

    def __post_init__(self) -> None:
        self.record = Recorder(self.admission, self.auditor, self.background)

    async def authenticate(self, request: Readable) -> Claims:
        """Step 2 alone (the other endpoints that need a key: usage, passes, stored responses)."""
        return await step2.authenticate(request, self.verifier, self.passes)

    # ------------------------------------------------------------------ chat completions

    async def chat_completions(
        self,
        request: Readable,
        rid: str,
        started: float,
        ingress: Ingress | None = None,
        witness: Witness | None = None,
    ) -> Response:
        """Chat completions; with ``ingress``, another API's request and reply around it.

        ``witness`` (a batch line) is told where the request's audit record is, once it
        is acknowledged or spooled, whichever way the request ends."""
        ex = Exchange(rid, started, "chat", witness=witness)
        if ingress is not None:
            ex.ingress = ingress.name
        try:
            ex.claims = claims = await step2.authenticate(request, self.verifier, self.passes)
            req = await step1.read_chat(request, self.config.server, ingress, ex)
            ex.requested_model, ex.stream = req.model, req.stream
            ex.slot = self.concurrency.acquire(claims, req.stream)  # fair share
            if req.model != AUTO:  # "auto" is resolved among the key's allowed models
                step2.check_model_allowed(claims, req.model)
            ex.route = route = self.router.route(  # step 5, before 3–4: USD needs the price
                req, claims, request.headers.get("x-routing-mode"), self.pool.open_breakers()
            )  # its BH_EVENTS event is sent with the audit record, off the critical path
            if self.capacity is not None:  # lanes: a node slot, a wait, or shed (before any charge)
                waiting = self.capacity.enter(
                    ex.slot, claims, request, route.model.provider, route.model.name
                )
                if waiting is not None:
                    await waiting
            ticket = self.admission.admit(ex, req)  # steps 3–4
            # strict budget: waiting for an escrow share
            ex.ticket = await ticket if type(ticket) is CoroutineType else ticket
            native = ingress.native if ingress is not None else None
            call = Call(route.model, ex.upstream_body or req.body, rid, req.include_usage, native)
            lookup = None  # the result cache: a hit, a coalesced flight, or a miss it stores
            if self.cache is not None:
                cc = request.headers.get("cache-control")
                lookup = self.cache.plan(ex, route.model, call, cc)
            if req.stream:
                resume = stitch.allowed(request.headers, ex.claims)
                return await self._stream(ex, call, ingress, lookup, resume)
            if lookup is None:
                served = await self.pool.chat(route.plan, call, self._deadline())  # step 6
            else:
                served = await lookup.chat(ex, route.plan, call, self._deadline())
            ex.served, ex.attempts, ex.usage = served.model, served.attempts, served.result.usage
            ex.upstream_wire = self._wire(served.model)
            ex.reply = served.result
            body = served.result.body
            body = body if ingress is None else ingress.render(body, ex)
            return await step7.reply(self.record, ex, body)  # steps 7–8
        except GatewayError as err:
            await self.record.failed(ex, err, request)
            raise
        finally:  # a bug or a cancellation: still one record, and the reservation released
            if ex.slot is not None:  # a stream's slot has gone to its response
                ex.slot.release()
            if not ex.audited:
                await self.record.unexpected(ex, request)

    async def _stream(
        self,
        ex: Exchange,
        call: Call,
        ingress: Ingress | None,
        lookup: Lookup | None,
        resume: bool,
    ) -> Response:
        assert ex.route is not None
        deadline = self._deadline()
        if lookup is None:
            served = await self.pool.chat_stream(ex.route.plan, call, deadline)  # step 6
        else:  # a cached, coalesced or cache-filling stream is not continued (docs/failover.md)
            served = await lookup.chat_stream(ex, ex.route.plan, call, deadline)
            resume = False
        ex.served, ex.attempts = served.model, served.attempts
        ex.upstream_wire = self._wire(served.model)
        ex.stream_state = served.result.state
        ex.ttft_ms = ex.elapsed_ms()
        # mid-stream failover (docs/failover.md): a cut stream is finished by the next model
        stream, ex.resumed = stitch.stitch(self.pool, served, call, ex.route.plan, deadline, resume)
        out = ingress.stream(ex) if ingress is not None else None
        budget_s = self.config.server.request_timeout_s
        return step7.stream_reply(self.record, ex, stream, out, budget_s)  # steps 7–8

    # ------------------------------------------------------------------ embeddings

    async def embeddings(
        self, request: Readable, rid: str, started: float, witness: Witness | None = None
    ) -> Response:
        ex = Exchange(rid, started, "embeddings", witness=witness)
        try:
            ex.claims = claims = await step2.authenticate(request, self.verifier, self.passes)
            req = await step1.read_embeddings(request, self.config.server)
            ex.requested_model, ex.input_chars = req.model, req.input_chars
            step2.check_model_allowed(claims, req.model)
            ex.slot = self.concurrency.acquire(claims, False)  # fair share
            ex.route = route = self.router.route_embedding(req.model)  # step 5
            if self.capacity is not None:  # lanes: a node slot, a wait, or shed
                waiting = self.capacity.enter(
                    ex.slot, claims, request, route.model.provider, route.model.name
                )
                if waiting is not None:
                    await waiting
            ex.upstream_body = req.body
            ticket = self.admission.admit(ex, None)  # steps 3–4
            ex.ticket = await ticket if type(ticket) is CoroutineType else ticket
            call = Call(route.model, req.body, rid)
            served = await self.pool.embeddings(route.plan, call, self._deadline())  # step 6
            ex.served, ex.attempts, ex.usage = served.model, served.attempts, served.result.usage
            ex.reply = served.result
            return await step7.reply(self.record, ex, served.result.body)  # steps 7–8
        except GatewayError as err:
            await self.record.failed(ex, err, request)
            raise
        finally:  # a bug or a cancellation: still one record, and the reservation released
            if ex.slot is not None:
                ex.slot.release()
            if not ex.audited:
                await self.record.unexpected(ex, request)

    # ------------------------------------------------------------------ helpers

    def _deadline(self) -> float:
        return time.monotonic() + self.config.server.request_timeout_s

    def _wire(self, model: ModelSpec) -> str:
        provider = self.pool.providers.get(model.provider)
        return provider.kind if provider is not None else ""
