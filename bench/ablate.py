"""What a part of the gateway costs: one build against itself with the part switched off.

    .venv/bin/python -m bench.ablate --off slot-signing [--off …] [--rounds 6]
                                     [--streams 2000 | --connections 32 --duration 5]
                                     [--tree ../before] [--keys N]

Starts one ``bench.upstream`` and, in front of it, two gateways of the same checkout
(this one, or ``--tree``): one whole, one with the named parts switched off by
``bench/ablate_site/sitecustomize.py`` (see its ``PARTS``; nothing in ``gatekeeper``
knows about it). Then it alternates them round by round as ``bench.ab`` does and
prints, as the median of the per-round ratios, whole ÷ ablated:

* CPU per request or stream: what the parts cost (1.05× = 5 % of the whole's CPU
  is theirs);
* throughput and p50 (or TTFT p50 for streams).

The same checkout against itself with nothing off gives the noise floor
(``--off nothing``). ``--keys N`` (wrk only) spreads the requests over N keys, each
with its own budget counters, as a gateway serving many applications sees them; one
key (the default) is the best case for anything done per counter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import baseline_build
from bench.ab import Build, alternate, parse_rounds, report_ratios, spread
from bench.run import start_server
from gatekeeper.bus.embedded import free_port
from tests.harness.gateway import Issuer

__all__ = ["main"]

SITE = Path(__file__).resolve().parent / "ablate_site"
OFF_ENV = "GATEKEEPER_BENCH_OFF"


@contextlib.contextmanager
def switched_off(parts: list[str]) -> Iterator[None]:
    """The environment a gateway started inside this block inherits."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", OFF_ENV)}
    os.environ["PYTHONPATH"] = str(SITE)
    os.environ[OFF_ENV] = ",".join(p for p in parts if p != "nothing")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def keys(work: Path, n: int) -> tuple[str, ...]:
    """``n`` keys of their own tenants from a launched gateway's issuer (none for 1)."""
    return spread(Issuer(work / "baseline" / "issuer"), n)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--off", action="append", required=True, help="a part (repeatable)")
    p.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    opts = parse_rounds(p)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-ablate-")))
        port = free_port()
        start_server(stack, "bench.upstream", ["--chunks", str(opts.chunks)], tmp, port)
        upstream = f"http://127.0.0.1:{port}"
        whole = baseline_build.start(opts.tree, upstream, tmp / "whole", stack)
        with switched_off(opts.off):
            part = baseline_build.start(opts.tree, upstream, tmp / "ablated", stack)
        label = "+".join(opts.off) + " off"
        ours = Build("whole", whole.url, whole.token, whole.pid, keys(tmp / "whole", opts.keys))
        theirs = Build(label, part.url, part.token, part.pid, keys(tmp / "ablated", opts.keys))
        mine, other = alternate(ours, theirs, opts)
        many = f", {opts.keys} keys" if opts.keys > 1 else ""
        print(f"{baseline_build.commit_of(opts.tree)}{many}: whole ÷ {label}")
        report_ratios(mine, other, opts)


if __name__ == "__main__":
    main()
