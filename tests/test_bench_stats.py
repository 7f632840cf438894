"""The bench's arithmetic: percentiles, summaries, rounds, ratios, answer checks, /proc parsing."""

import random
import statistics

import pytest
from rich.console import Console

from taskenv.bench.compare import Comparison, compare, difference, ratio
from taskenv.bench.config import BenchConfig
from taskenv.bench.report import build, render, to_json
from taskenv.bench.results import Results
from taskenv.bench.rounds import block_sizes, order
from taskenv.bench.rss import RssRecord, parse_status, record_sample
from taskenv.bench.stats import Sample, Summary, percentile, summarize, summarize_blocks
from taskenv.bench.workloads import BUILT_IN, Workload, WorkloadName, check, resolve


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


def test_blocks_count_only_their_own_time_towards_throughput():
    # Two blocks of 2 s each, 10 s apart (the other side ran in between): 4 s measured, not 14.
    first = [Sample(0.0, 1.0), Sample(0.5, 2.0), Sample(1.0, 1.5, "429")]
    second = [Sample(12.0, 13.0), Sample(12.0, 14.0)]
    summary = summarize_blocks([first, [], second])
    assert (summary.requests, summary.ok, summary.errors, summary.blocks) == (5, 4, {"429": 1}, 2)
    assert summary.window_sec == pytest.approx(4.0)
    assert summary.throughput == pytest.approx(4 / 4.0)
    assert summary.max_ms == pytest.approx(2000.0)
    assert summarize(first + second).window_sec == pytest.approx(14.0)
    assert summarize_blocks([]) == summarize([])


def test_rounds_split_evenly_and_alternate_which_side_goes_first():
    assert block_sizes(40, 2) == [20, 20]
    assert block_sizes(10, 4) == [3, 3, 2, 2]
    assert block_sizes(3, 4) == [1, 1, 1]
    assert block_sizes(0, 4) == []
    assert block_sizes(7, 1) == [7]
    assert all(sum(block_sizes(n, r)) == n for n in range(30) for r in range(1, 9))
    assert [order(i) for i in range(4)] == [(0, 1), (1, 0), (0, 1), (1, 0)]
    with pytest.raises(ValueError):
        block_sizes(5, 0)


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
    assert len(BenchConfig(api_key="k", hold=5000, envs=625).warnings()) == 1  # starts too slowly for 60 s
    assert not BenchConfig(api_key="k", hold=5000, envs=625, hold_timeout_sec=600).warnings()
    assert BenchConfig(api_key="k", hold=10, hold_sleep_sec=60, hold_timeout_sec=60).problems()
    assert BenchConfig(api_key="k", rounds=0).problems()


def test_figures_count_every_error_and_never_carry_the_api_key():
    results = Results(
        exec_taskenv=[[Sample(0, 1)], [Sample(3, 4, "502")]], exec_raw=[[Sample(1, 2, "exit 1")], []]
    )
    figures = build(BenchConfig(api_key="tk_secret", provisions=0), results)
    assert figures.errors == 2 and figures.provision is None and figures.hold is None
    assert figures.exec is not None and figures.exec.taskenv.errors == {"502": 1}
    assert figures.exec.taskenv.blocks == 2 and figures.exec.raw.blocks == 1
    assert figures.exec.rounds == 4 and figures.config["rounds"] == 4
    assert "tk_secret" not in to_json(figures)
    k64 = build(BenchConfig(workload=BUILT_IN[WorkloadName.K64]), Results())
    assert k64.config["workload"]["expect_output_bytes"] == 65536 and len(to_json(k64)) < 10_000


def test_the_report_says_how_it_interleaved_and_what_concurrency_blocks_allowed():
    results = Results(
        exec_taskenv=[[Sample(0, 1)], [Sample(3, 4)]],
        exec_raw=[[Sample(1, 2)], [Sample(2, 3)]],
        provision_taskenv=[[Sample(0, 1), Sample(0, 1)], [Sample(3, 4), Sample(3, 4)]],
        provision_raw=[[Sample(1, 2), Sample(1, 2)], [Sample(2, 3), Sample(2, 3)]],
    )
    config = BenchConfig(execs=2, concurrency=1, provisions=4, provision_concurrency=10, rounds=2)
    console = Console(record=True, width=250)
    render(build(config, results), console)
    text = " ".join(console.export_text().split())  # titles wrap at the table width
    assert "2 per side at concurrency 1 over 4 environments, interleaved in 2 rounds" in text
    assert "4 per side at concurrency 2 (the block size; 10 asked), interleaved in 2 rounds" in text
    assert "waited for with ?wait_sec" in text
