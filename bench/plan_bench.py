"""What the deferred failover plan saves: p50 µs of ``LiveRouter.route`` for a named model,
with the plan left for later (the pool asks only after a failed first attempt) and with
the plan worked out at once (score the prompt, rank each provider's peer).

Run: ``nice .venv/bin/python -m bench.plan_bench``. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from gatekeeper.routing.live import LiveRouter
from gatekeeper.routing.matrix import load_matrix
from gatekeeper.validate import ChatRequest, validate_chat

MODELS_YAML = Path(__file__).resolve().parent.parent / "config" / "gatekeeper.yaml"
ROUNDS = 5000
CHAIN = ("openai", "anthropic", "demo")
NO_BREAKERS: frozenset[str] = frozenset()
PROMPTS = {
    "short": "What is 2+2?",
    "paragraph": " ".join(["Summarize the following notes for the weekly email."] * 12),
}


def p50_us(fn: Callable[[], object]) -> float:
    for _ in range(500):
        fn()
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    matrix = load_matrix(MODELS_YAML)
    router = LiveRouter(matrix, CHAIN, default_mode="cost", quality_threshold=0.0)
    named = next(m.name for m in matrix if m.kind == "chat")
    print(f"named model {named!r}; p50 µs of route()")
    print(f"{'prompt':<10} {'deferred':>9} {'at once':>9} {'saved':>7}")
    for label, text in PROMPTS.items():
        body = {"model": named, "messages": [{"role": "user", "content": text}]}
        req = validate_chat(body)

        def deferred(req: ChatRequest = req) -> object:
            return router.route(req, None, None, NO_BREAKERS).model

        def at_once(req: ChatRequest = req) -> object:
            return router.route(req, None, None, NO_BREAKERS).full_plan()

        d, a = p50_us(deferred), p50_us(at_once)
        print(f"{label:<10} {d:>9.2f} {a:>9.2f} {a - d:>7.2f}")


if __name__ == "__main__":
    main()
