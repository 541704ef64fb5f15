"""Step 5 of the pipeline: score the request, then choose a model from the matrix.

    complexity = score(messages, tools=bool(tools))
    route = choose(matrix, requested_model=model, mode=mode, complexity=complexity, ...)

Everything here is pure; the caller supplies health (p99 TTFT per model) and the
providers whose circuit breakers are open.
"""

from gatekeeper.routing.matrix import (
    CAPABILITIES,
    Matrix,
    ModelSpec,
    load_matrix,
    parse_matrix,
    parse_models,
)
from gatekeeper.routing.router import (
    AUTO,
    DEFAULT_QUALITY_THRESHOLD,
    ROUTING_MODES,
    Requirements,
    Route,
    RoutingMode,
    choose,
    estimate_tokens,
    parse_mode,
    required_quality,
)
from gatekeeper.routing.scorer import TASK_CLASSES, Complexity, TaskClass, score

__all__ = [
    "AUTO",
    "CAPABILITIES",
    "DEFAULT_QUALITY_THRESHOLD",
    "ROUTING_MODES",
    "TASK_CLASSES",
    "Complexity",
    "Matrix",
    "ModelSpec",
    "Requirements",
    "Route",
    "RoutingMode",
    "TaskClass",
    "choose",
    "estimate_tokens",
    "load_matrix",
    "parse_matrix",
    "parse_mode",
    "parse_models",
    "required_quality",
    "score",
]
