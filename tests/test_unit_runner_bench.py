"""The bench's third side (the runner floor): its place in the rounds and in the report."""

import io

from rich.console import Console

from taskenv.bench.config import BenchConfig
from taskenv.bench.report import build, render
from taskenv.bench.results import Results
from taskenv.bench.rounds import order
from taskenv.bench.stats import Sample


def test_three_sides_rotate_so_none_always_follows_another():
    assert [order(i, 3) for i in range(3)] == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert [order(i) for i in range(2)] == [(0, 1), (1, 0)]


def text_of(results: Results, config: BenchConfig) -> str:
    console = Console(file=io.StringIO(), width=200)
    render(build(config, results), console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_report_shows_the_floor_and_taskenv_against_it():
    config = BenchConfig(api_key="k", execs=2, rounds=1, provisions=0)
    results = Results(
        exec_taskenv=[[Sample(0, 0.004), Sample(0, 0.006)]],
        exec_raw=[[Sample(0, 0.05), Sample(0, 0.05)]],
        exec_runner=[[Sample(0, 0.002), Sample(0, 0.002)]],
    )
    figures = build(config, results)
    assert figures.exec is not None and figures.exec.runner is not None
    assert figures.exec.versus_runner is not None and figures.exec.versus_runner.p50_ratio == 2.5
    text = text_of(results, config)
    assert "runner floor" in text and "taskenv / floor" in text and "2.50x" in text


def test_without_runners_the_report_says_why():
    config = BenchConfig(api_key="k", execs=1, rounds=1, provisions=0)
    results = Results(
        exec_taskenv=[[Sample(0, 1)]], exec_raw=[[Sample(0, 1)]], runner_skipped="RunnerLost: no hello"
    )
    assert build(config, results).exec.runner is None  # type: ignore[union-attr]
    assert "no runner floor" in text_of(results, config)
