"""What the three bare pass-through baselines share: their command line and server.

Each ``bench.baseline_*`` module only builds its app (the upstream client differs);
``serve`` runs it the same way for all: 1 uvicorn worker, uvloop, httptools, no logs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette


def serve(create_app: Callable[[str], Starlette], description: str) -> None:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001")
    args = p.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )
