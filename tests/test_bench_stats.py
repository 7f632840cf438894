"""The bench's arithmetic: percentiles, summaries, ratios, answer checks, /proc parsing."""

import random
import statistics

import pytest

from bench.compare import Comparison, compare, difference, ratio
from bench.config import BenchConfig
from bench.report import build, to_json
from bench.results import Results
from bench.rss import RssRecord, parse_status, record_sample
from bench.stats import Sample, Summary, percentile, summarize
from bench.workloads import BUILT_IN, Workload, WorkloadName, check, resolve


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(x) for x in range(1, 11)], 90) == pytest.approx(9.1)
    assert percentile([float(x) for x in range(1, 101)], 99) == pytest.approx(99.01)
    assert percentile([10.0, 20.0], 25) == 12.5


def test_percentile_ends_and_degenerate_inputs():
    values = [3.0, 5.0, 8.0]
    assert percentile(values, 0) == 3.0
    assert percentile(values, 100) == 8.0
    assert percentile([7.0], 50) == percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_percentile_matches_statistics_inclusive_method():
    rng = random.Random(7)
    data = sorted(rng.expovariate(1 / 80) for _ in range(257))
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    for q in range(1, 100):
        assert percentile(data, q) == pytest.approx(cuts[q - 1])


def test_summary_counts_errors_by_status_and_times_only_successes():
    samples = [
        Sample(0.0, 0.1),
        Sample(0.5, 0.7),
        Sample(1.0, 1.3),
        Sample(1.0, 1.001, "429"),
        Sample(1.5, 1.502, "429"),
        Sample(2.0, 4.0, "ReadTimeout"),
    ]
    summary = summarize(samples)
    assert summary.requests == 6 and summary.ok == 3
    assert summary.errors == {"429": 2, "ReadTimeout": 1}
    assert summary.window_sec == pytest.approx(4.0)
    assert summary.throughput == pytest.approx(3 / 4.0)
    assert summary.p50_ms == pytest.approx(200.0)
    assert summary.p90_ms == pytest.approx(280.0)
    assert summary.max_ms == pytest.approx(300.0)


def test_summary_of_nothing_and_of_failures_only():
    empty = summarize([])
    assert (empty.requests, empty.ok, empty.errors, empty.window_sec) == (0, 0, {}, 0.0)
    assert empty.throughput is None and empty.p50_ms is None and empty.max_ms is None
    failed = summarize([Sample(0.0, 1.0, "502"), Sample(0.0, 2.0, "502")])
    assert failed.errors == {"502": 2} and failed.ok == 0
    assert failed.throughput == 0.0 and failed.p99_ms is None


def _summary(p50: float | None, p99: float | None, throughput: float | None) -> Summary:
    return Summary(1, 1, {}, 1.0, throughput, p50, p50, p99, p99)


def test_comparison_ratios_and_differences():
    result = compare(_summary(90.0, 150.0, 12.0), _summary(60.0, 100.0, 15.0))
    assert result == Comparison(
        p50_ratio=1.5, p99_ratio=1.5, throughput_ratio=0.8, p50_diff_ms=30.0, p99_diff_ms=50.0
    )


def test_comparison_with_missing_or_zero_figures_is_none_not_an_error():
    assert ratio(5.0, 0.0) is None and ratio(None, 2.0) is None and ratio(2.0, None) is None
    assert ratio(0.0, 2.0) == 0.0
    assert difference(None, 1.0) is None and difference(3.0, 1.0) == 2.0
    result = compare(summarize([]), _summary(60.0, 100.0, 0.0))
    assert result == Comparison(None, None, None, None, None)


def test_answers_of_built_in_workloads_are_checked():
    assert check(BUILT_IN[WorkloadName.TRUE], 0, "") is None
    assert check(BUILT_IN[WorkloadName.TRUE], 1, "") == "exit 1"
    assert check(BUILT_IN[WorkloadName.ECHO], 0, "hello\n") is None
    assert check(BUILT_IN[WorkloadName.ECHO], 0, "hell") == "output"
    assert BUILT_IN[WorkloadName.K64].expect_output == "a" * 65536
    custom = resolve(WorkloadName.TRUE, "exit 3")
    assert custom == Workload("exit 3") and check(custom, 3, "anything") is None


def test_proc_status_parsing_and_peaks():
    text = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\nThreads:\t3\n"
    assert parse_status(text) == (100000, 123456)
    assert parse_status("Name:\tzombie\n") == (None, None)
    record = RssRecord(pid=1)
    record_sample(record, 100, 150)
    record_sample(record, 300, 310)
    record_sample(record, 200, 310)
    assert (record.before_kib, record.peak_kib, record.hwm_kib, record.samples) == (100, 300, 310, 3)


def test_config_flags_what_cannot_run_and_what_will_be_refused():
    assert BenchConfig().problems() == ["an API key is needed: --api-key or TASKENV_KEY"]
    assert len(BenchConfig(api_key="k", hold=5000, envs=4).warnings()) == 2
    assert len(BenchConfig(api_key="k", hold=5000, envs=160).warnings()) == 1  # starts too slowly for 60 s
    assert not BenchConfig(api_key="k", hold=5000, envs=160, hold_timeout_sec=600).warnings()
    assert BenchConfig(api_key="k", hold=10, hold_sleep_sec=60, hold_timeout_sec=60).problems()


def test_figures_count_every_error_and_never_carry_the_api_key():
    results = Results(exec_taskenv=[Sample(0, 1), Sample(0, 1, "502")], exec_raw=[Sample(0, 1, "exit 1")])
    figures = build(BenchConfig(api_key="tk_secret", provisions=0), results)
    assert figures.errors == 2 and figures.provision is None and figures.hold is None
    assert figures.exec is not None and figures.exec.taskenv.errors == {"502": 1}
    assert "tk_secret" not in to_json(figures)
    k64 = build(BenchConfig(workload=BUILT_IN[WorkloadName.K64]), Results())
    assert k64.config["workload"]["expect_output_bytes"] == 65536 and len(to_json(k64)) < 10_000
