"""Test-only crash points (never set in a deployment).

``GATEKEEPER_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches
``crash_point(<point>)``: a real crash at a controlled point between two steps, for
the tests that show nothing is lost there (docs/batches.md).
"""

from __future__ import annotations

import os
import signal

ENV = "GATEKEEPER_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
