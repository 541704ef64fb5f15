"""Mid-stream failover: a stream cut after its first chunk is finished by the next provider.

    seam.py     pure: what was delivered, the resume request, overlap trimming,
                tool-call holding, splicing a continuation's chunks into the stream
    record.py   the segments of a stitched stream (budget, audit record, BH_EVENTS)
    stitch.py   the I/O: wraps the pool's stream, opens continuations at a seam

See docs/failover.md.
"""
