"""The OpenAI Files and Batch APIs, executed by the gateway nodes on JetStream.

    settings   ``batches:`` config (pure)
    lines      input file checks, slicing (pure)
    results    line results, verification, output/error files (pure)
    status     the Batch object, status arithmetic, pagination (pure)
    multipart  the upload form parser (pure, bounded)
    signing    signed values any node can check (node keys)
    store      KV BH_BATCHES + object store BH_FILES (I/O)
    execute    one line through the live pipeline as its creator
    audited    the finalizer's last check: the lines' records read back from BH_AUDIT
    worker     pull loops on BH_JOBS: slices, finalize
    api        the HTTP endpoints

docs/batches.md describes the API, the layout on JetStream and the guarantees.
"""
