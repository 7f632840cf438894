"""taskenv against the raw engine: every ratio and difference the report shows, computed here only."""

from dataclasses import dataclass

from taskenv.bench.stats import Summary


@dataclass(frozen=True)
class Comparison:
    """Ratios are taskenv / raw (above 1: taskenv is slower, or for throughput faster);
    differences are taskenv - raw in ms. None when a side has no figure or the divisor is 0."""

    p50_ratio: float | None
    p99_ratio: float | None
    throughput_ratio: float | None
    p50_diff_ms: float | None
    p99_diff_ms: float | None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def difference(minuend: float | None, subtrahend: float | None) -> float | None:
    if minuend is None or subtrahend is None:
        return None
    return minuend - subtrahend


def compare(taskenv: Summary, raw: Summary) -> Comparison:
    return Comparison(
        p50_ratio=ratio(taskenv.p50_ms, raw.p50_ms),
        p99_ratio=ratio(taskenv.p99_ms, raw.p99_ms),
        throughput_ratio=ratio(taskenv.throughput, raw.throughput),
        p50_diff_ms=difference(taskenv.p50_ms, raw.p50_ms),
        p99_diff_ms=difference(taskenv.p99_ms, raw.p99_ms),
    )
