"""The request pipeline: one module per step, composed in order by ``flow``.

      shield       auth.shield (app.FastPaths)   per-IP limits before any token is looked at
    2 token        pipeline.token                Ed25519 PASETO or a Privacy Pass → Claims
    1 request      pipeline.request              read (capped), parse, validate → ChatRequest
      fair share   budget.ConcurrencyLimiter     in-flight slot per key/tenant (a Held)
    5 route        pipeline.route                model + failover plan → RouteDecision
      lanes        capacity.CapacityGate         node upstream slots: priority lanes, shedding
    3 rate limit   pipeline.admission            rpm / tpm         } one atomic reservation
    4 budget       pipeline.admission            tokens / usd      } → Ticket
      cache        cache.ResultCache             per-tenant answers, coalescing (off by default)
    6 providers    providers.ProviderPool        the plan with failover → Served (attempts);
                   continuation.stitch           a stream cut mid-way finished by the next model
    7 respond      pipeline.respond              JSON or SSE (OpenAI's wire format)
    8 audit        pipeline.audit                one record per request (BH_AUDIT), settled

``flow.Pipeline`` runs them in that order for chat completions (and, through the
adapters of ``pipeline.ingress``, for Responses and Messages) and for embeddings. The
token is checked before the body is read: an unauthenticated client's body is never
parsed. The route comes before admission because a USD reservation needs the chosen
model's price; deciding it is pure.
"""

from gatekeeper.pipeline.admission import Admission
from gatekeeper.pipeline.audit import Auditor
from gatekeeper.pipeline.flow import Pipeline, Witness
from gatekeeper.pipeline.ingress import Ingress, IngressStream
from gatekeeper.pipeline.route import Router
from gatekeeper.pipeline.token import GRANTED_CLAIMS

__all__ = [
    "GRANTED_CLAIMS",
    "Admission",
    "Auditor",
    "Ingress",
    "IngressStream",
    "Pipeline",
    "Router",
    "Witness",
]
