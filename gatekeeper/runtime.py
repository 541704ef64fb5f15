"""Process-level tuning for a worker, applied once its node has started.

The garbage collector: a request allocates on the order of a thousand container
objects, nearly all freed by reference counting when the request ends. CPython's
default first-generation threshold (700 allocations) runs a collection in the
middle of almost every request, and each one scans what that request still holds
(and promotes it, so the older generations are scanned again later). With a
threshold of 10,000 most request objects are gone before any scan; ``gc.freeze()``
moves everything built at start (config, catalog, clients, compiled patterns) out
of the collector's sight for good. Cyclic garbage (exception tracebacks) is still
collected, a few requests later than by default. ``server.gc_tuning: false`` keeps
CPython's defaults. BENCHMARKS.md records the measured effect.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc() -> None:
    """Collect once, freeze what start-up built, raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
