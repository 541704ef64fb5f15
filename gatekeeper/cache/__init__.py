"""The result cache and in-flight coalescing (docs/capacity.md).

policy.py   pure: which policy applies, whether a request may be looked up / stored,
            the canonical cache key
entry.py    pure: a cached answer as signed bytes (node key), and opening it again
store.py    I/O: the KV bucket BH_CACHE (and Object Store BH_CACHE_OBJ for big entries)
flight.py   one node's in-flight calls: identical requests share one upstream call
service.py  what the pipeline calls: lookup, coalesce, store, charge per policy
"""
