"""Per-request samples and what one series of them adds up to.

Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7, the default
of numpy and R, and the "inclusive" method of `statistics.quantiles`): for sorted x[0..n-1]
the q-th percentile sits at rank h = (n - 1) * q / 100 and is x[floor(h)] plus the fraction of
h times the gap to the next value. p0 is the minimum, p100 the maximum, a single sample is every
percentile.
"""

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent and answered (time.perf_counter seconds), and why it
    failed, if it did (an HTTP status, an exception class name, `exit N`, `output`)."""

    started: float
    ended: float
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.ended - self.started


# One side's samples, in the blocks (rounds) they were measured in.
Blocks = list[list[Sample]]


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of already sorted values; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latencies are over successful requests only: a fast 429 is not a fast exec.
    Throughput is successful requests per second of the window: the sum, over the blocks the
    samples were measured in, of each block's first request sent to its last answered (one
    block: the whole series), so the time the other side ran between blocks is not counted.
    `blocks` counts the blocks with at least one request."""

    requests: int
    ok: int
    errors: dict[str, int]
    window_sec: float
    throughput: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    blocks: int = 1


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def flatten(blocks: Iterable[Sequence[Sample]]) -> list[Sample]:
    return [sample for block in blocks for sample in block]


def window(block: Sequence[Sample]) -> float:
    """First request sent to last answered; 0 for no requests."""
    return max(s.ended for s in block) - min(s.started for s in block) if block else 0.0


def summarize(samples: Iterable[Sample]) -> Summary:
    """One series measured in one go."""
    return summarize_blocks([list(samples)])


def summarize_blocks(blocks: Iterable[Sequence[Sample]]) -> Summary:
    """One side measured in blocks, interleaved with the other side's."""
    measured = [block for block in blocks if block]
    samples = flatten(measured)
    errors = Counter(s.error for s in samples if s.error is not None)
    latencies = sorted(s.latency for s in samples if s.error is None)
    window_sec = sum(window(block) for block in measured)
    return Summary(
        requests=len(samples),
        ok=len(latencies),
        errors=dict(sorted(errors.items())),
        window_sec=window_sec,
        throughput=len(latencies) / window_sec if window_sec > 0 else None,
        p50_ms=_ms(percentile(latencies, 50)),
        p90_ms=_ms(percentile(latencies, 90)),
        p99_ms=_ms(percentile(latencies, 99)),
        max_ms=_ms(latencies[-1] if latencies else None),
        blocks=len(measured),
    )
