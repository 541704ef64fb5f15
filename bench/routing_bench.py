"""How long routing takes: p50 microseconds for score() and for score() + choose().

Run: ``.venv/bin/python bench/routing_bench.py`` (target: both at or under 50 µs).
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gatekeeper.routing import Complexity, Requirements, Route, choose, load_matrix, score

MODELS_YAML = Path(__file__).resolve().parent.parent / "config" / "gatekeeper.yaml"
ROUNDS = 2000
TARGET_US = 50.0

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer concisely."}
PROMPTS = {
    "greeting": "Hello! How are you today?",
    "arithmetic": "What is 2+2?",
    "legal": "Write a legal contract",
    "tests": "Generate unit tests",
    "code review": (
        "Review this Python function for bugs and suggest a fix:\n```python\n"
        "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
        "    return total / len(xs) - 1\n```"
    ),
    "plan": (
        "Plan our migration from a monolith to services step by step:\n"
        "1. map the domains\n2. carve out auth\n3. move billing\n4. retire the old app\n"
        "Compare the trade-offs of each order and recommend one."
    ),
    "paragraph": " ".join(["Summarize the following notes for the weekly email."] * 12),
}


def p50_us(fn: Callable[[], object]) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    matrix = load_matrix(MODELS_YAML)
    health: Mapping[str, float] = {"llama-3.1-8b": 0.18, "gpt-4o-mini": 0.35, "gpt-4o": 0.6}
    print(f"{'prompt':<12} {'chars':>5} {'score()':>8} {'+choose()':>10}  model   (p50 µs)")
    worst = 0.0
    for label, text in PROMPTS.items():
        messages = [SYSTEM, {"role": "user", "content": text}]

        def scored(messages: list[dict[str, str]] = messages) -> Complexity:
            return score(messages)

        def routed(messages: list[dict[str, str]] = messages) -> Route:
            return choose(
                matrix,
                requested_model="auto",
                mode="cost",
                complexity=score(messages),
                needs=Requirements.of_chat(messages),
                health=health,
            )

        score_us, route_us = p50_us(scored), p50_us(routed)
        worst = max(worst, route_us)
        print(
            f"{label:<12} {len(text):>5} {score_us:>8.1f} {route_us:>10.1f}  {routed().model.name}"
        )
    verdict = "within" if worst <= TARGET_US else "OVER"
    print(f"worst score()+choose() p50: {worst:.1f} µs, {verdict} the {TARGET_US:.0f} µs target")
    print(
        "(+choose() includes Requirements.of_chat(), i.e. estimate_tokens(), as the pipeline does)"
    )


if __name__ == "__main__":
    main()
