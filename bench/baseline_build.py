"""Another build of Gatekeeper (a checkout with its own ``.venv``), run beside this one.

``python -m bench.run --baseline ../gk-before`` starts that checkout's gateway with its
own harness (its config format may differ), its own nats-server, in front of this run's
upstream, and measures it right after this build in every round (streams included):
each "within 5 % of before" bar is the median of the per-round ratios, from one run,
not from two runs hours apart.

Prepare the checkout once::

    git worktree add ../gk-before <commit> && make -C ../gk-before .venv/.installed-dev
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Run with the baseline's interpreter in the baseline's tree: only names that every
# build since the bench existed provides (bench.run.launch_gateway, EmbeddedNats, Issuer).
LAUNCHER = """
import contextlib, json, sys
from pathlib import Path
from bench.run import launch_gateway
from gatekeeper.bus.embedded import EmbeddedNats
from tests.harness.gateway import Issuer
upstream, tmp = sys.argv[1], Path(sys.argv[2])
with contextlib.ExitStack() as stack:
    nats = EmbeddedNats(tmp / "nats", name="baseline-nats")
    stack.callback(nats.stop)
    nats.start()
    issuer = Issuer(tmp / "issuer")
    gw = launch_gateway(stack, tmp, upstream, nats.url, issuer, 1)
    full = issuer.token("bench", budget_tokens=10**12, rpm=10**9, tpm=10**12)
    print(json.dumps({"url": gw.url, "token": full, "pid": gw.proc.pid}), flush=True)
    sys.stdin.read()  # until the bench closes it
"""


@dataclass(frozen=True, slots=True)
class Baseline:
    label: str  # "baseline 9f675ce"
    url: str
    token: str
    pid: int  # the gateway's supervisor (its process tree is measured)


def commit_of(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or tree.name


def start(tree: Path, upstream_url: str, tmp: Path, stack: contextlib.ExitStack) -> Baseline:
    """The baseline's gateway, up and answering; stopped when ``stack`` closes."""
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{tree}: no .venv (make -C {tree} .venv/.installed-dev)")
    work = tmp / "baseline"
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "launcher.log", "wb")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(
        [str(python), "-c", LAUNCHER, upstream_url, str(work)],
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )

    def stop() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise RuntimeError(
            f"baseline {tree} did not start:\n{(work / 'launcher.log').read_text()[-3000:]}"
        )
    info = json.loads(line)
    return Baseline(f"baseline {commit_of(tree)}", info["url"], info["token"], int(info["pid"]))
