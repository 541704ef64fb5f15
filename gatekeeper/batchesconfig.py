"""``batches:``: the Files and Batch APIs' sizes and the workers' pace (pure parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.yamlread import Section


@dataclass(frozen=True, slots=True)
class BatchesConfig:
    """Caps and pacing of batch work (docs/batches.md)."""

    enabled: bool = True
    max_file_bytes: int = 50 * 1024 * 1024  # one uploaded file (413 above)
    max_lines: int = 50_000  # lines of one batch input file
    max_line_bytes: int = 1024 * 1024  # one request line
    max_result_bytes: int = 900 * 1024  # one line's recorded result (bigger: an error line)
    slice_lines: int = 50  # lines per job slice on BH_JOBS
    workers: int = 2  # slices one node runs at once
    ack_wait_s: float = 30.0  # BH_JOBS consumer AckWait (a slice in progress is kept alive)
    max_deliver: int = 20  # deliveries of one slice before it is given up
    rate_limit_retries: int = 3  # a line refused by a rate limit is tried again this often
    requeue_every_s: float = 30.0  # how often a node re-queues batches whose queueing broke off
    test_completion_window_s: float = 0.0  # TEST-ONLY: a batch expires this soon (0: the 24h)


_DEFAULT = BatchesConfig()


def parse_batches(data: object) -> BatchesConfig:
    s = Section(data, "batches")
    s.unknown(
        {
            "enabled",
            "max_file_bytes",
            "max_lines",
            "max_line_bytes",
            "max_result_bytes",
            "slice_lines",
            "workers",
            "ack_wait_s",
            "max_deliver",
            "rate_limit_retries",
            "requeue_every_s",
            "test_completion_window_s",
        }
    )
    d = _DEFAULT
    return BatchesConfig(
        enabled=s.flag("enabled", d.enabled),
        max_file_bytes=s.integer("max_file_bytes", d.max_file_bytes, minimum=1024),
        max_lines=s.integer("max_lines", d.max_lines, minimum=1),
        max_line_bytes=s.integer("max_line_bytes", d.max_line_bytes, minimum=1024),
        max_result_bytes=s.integer("max_result_bytes", d.max_result_bytes, minimum=4096),
        slice_lines=s.integer("slice_lines", d.slice_lines, minimum=1),
        workers=s.integer("workers", d.workers, minimum=0),
        ack_wait_s=s.number("ack_wait_s", d.ack_wait_s),
        max_deliver=s.integer("max_deliver", d.max_deliver, minimum=1),
        rate_limit_retries=s.integer("rate_limit_retries", d.rate_limit_retries),
        requeue_every_s=s.number("requeue_every_s", d.requeue_every_s),
        test_completion_window_s=s.number(
            "test_completion_window_s", d.test_completion_window_s, positive=False
        ),
    )
