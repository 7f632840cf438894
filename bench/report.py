"""The figures of a run, as a rich table for people and as JSON for the record."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from taskenv.bench.compare import Comparison, compare
from taskenv.bench.config import BenchConfig
from taskenv.bench.ledger import CleanupResult
from taskenv.bench.results import Results
from taskenv.bench.rounds import block_sizes
from taskenv.bench.rss import RssRecord
from taskenv.bench.stats import Blocks, Summary, summarize, summarize_blocks


@dataclass(frozen=True)
class Pair:
    """Both sides of one phase; `rounds` is how many rounds their blocks were planned in. For
    execs also the runner floor (bench/runner_side.py), when the environments have runners."""

    taskenv: Summary
    raw: Summary
    compare: Comparison
    rounds: int
    runner: Summary | None = None
    versus_runner: Comparison | None = None


PERCENTILES = "linear interpolation between closest ranks (Hyndman-Fan type 7, numpy's default)"


@dataclass(frozen=True)
class Figures:
    """Latencies in ms over successful requests; throughput in successful requests per second
    of the window (first request sent to last answered, summed over a side's blocks), which for
    the hold is its completion time."""

    config: dict[str, Any]
    exec: Pair | None
    provision: Pair | None
    hold: Summary | None
    api_rss: RssRecord | None
    environments_created: int
    raw_containers_created: int
    environments_left: list[str]
    raw_containers_left: list[str]
    cleanup: CleanupResult | None
    stopped: str | None
    percentiles: str = PERCENTILES
    # Why the exec phase had no runner side.
    runner_skipped: str | None = None

    @property
    def errors(self) -> int:
        summaries = [self.hold] if self.hold else []
        for pair in (self.exec, self.provision):
            if pair:
                summaries += [pair.taskenv, pair.raw, *([pair.runner] if pair.runner else [])]
        return sum(sum(s.errors.values()) for s in summaries)

    @property
    def clean(self) -> bool:
        """Nothing left behind and no cleanup step failed."""
        failed = bool(self.cleanup and self.cleanup.failures)
        return not (failed or self.environments_left or self.raw_containers_left)


def _measured(pair: Pair | None) -> bool:
    return pair is not None and pair.taskenv.requests + pair.raw.requests > 0


def _pair(taskenv: Blocks, raw: Blocks, count: int, rounds: int, runner: Blocks | None = None) -> Pair:
    t, r = summarize_blocks(taskenv), summarize_blocks(raw)
    floor = summarize_blocks(runner) if runner else None
    versus = compare(t, floor) if floor else None
    return Pair(t, r, compare(t, r), len(block_sizes(count, rounds)), floor, versus)


def build(config: BenchConfig, results: Results) -> Figures:
    settings = asdict(config)
    del settings["api_key"]
    workload = config.workload
    expected = workload.expect_output
    settings["workload"] = {
        "command": workload.command,
        "expect_exit": workload.expect_exit,
        "expect_output_bytes": None if expected is None else len(expected.encode()),
    }
    ledger = results.ledger
    return Figures(
        config=settings,
        exec=(
            _pair(results.exec_taskenv, results.exec_raw, config.execs, config.rounds, results.exec_runner)
            if config.execs
            else None
        ),
        provision=(
            _pair(results.provision_taskenv, results.provision_raw, config.provisions, config.rounds)
            if config.provisions
            else None
        ),
        hold=summarize(results.hold) if config.hold else None,
        api_rss=results.rss,
        environments_created=len(ledger.created_envs),
        raw_containers_created=len(ledger.created_raw),
        environments_left=sorted(ledger.envs),
        raw_containers_left=sorted(ledger.raw),
        cleanup=results.cleanup,
        stopped=results.stopped,
        runner_skipped=results.runner_skipped,
    )


def to_json(figures: Figures) -> str:
    return json.dumps(asdict(figures), indent=2)


def write_json(figures: Figures, path: Path) -> None:
    path.write_text(to_json(figures) + "\n")


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.1f}"


def _errors(summary: Summary) -> str:
    if not summary.errors:
        return "0"
    return ", ".join(f"{status}x{count}" for status, count in summary.errors.items())


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f} MiB"


def _rounds(pair: Pair) -> str:
    return "1 round" if pair.rounds == 1 else f"{pair.rounds} rounds"


def _concurrency(asked: int, count: int, rounds: int) -> str:
    """No more requests are in flight than a block holds."""
    block = max(block_sizes(count, rounds), default=0)
    if block >= asked:
        return f"concurrency {asked}"
    return f"concurrency {block} (the block size; {asked} asked)"


def pair_table(title: str, pair: Pair, unit: str) -> Table:
    floor, versus = pair.runner, pair.versus_runner
    caption = "ratio: taskenv / raw docker; diff: taskenv - raw docker"
    if floor:
        caption += "; runner floor: the same containers' runners driven directly, no HTTP or queue"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    columns = ["", "taskenv", "raw docker", "ratio", "diff ms"]
    if floor:
        columns += ["runner floor", "taskenv / floor"]
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")
    t, r, c = pair.taskenv, pair.raw, pair.compare

    def row(name: str, *cells: str, floor_cells: tuple[str, str] = ("", "")) -> None:
        table.add_row(name, *cells, *(floor_cells if floor else ()))

    def of_floor(value: str, ratio: float | None = None) -> tuple[str, str]:
        return value, _num(ratio, 2, "x") if ratio is not None else ""

    row(
        "requests",
        str(t.requests),
        str(r.requests),
        "",
        "",
        floor_cells=of_floor(str(floor.requests) if floor else ""),
    )
    row("errors", _errors(t), _errors(r), "", "", floor_cells=of_floor(_errors(floor) if floor else ""))
    # Each block from its first request sent to its last answered: what throughput divides by.
    row(
        "measured s (sum of blocks)",
        _num(t.window_sec, 2),
        _num(r.window_sec, 2),
        "",
        "",
        floor_cells=of_floor(_num(floor.window_sec, 2) if floor else ""),
    )
    row(
        f"throughput ({unit}/s)",
        _num(t.throughput, 2),
        _num(r.throughput, 2),
        _num(c.throughput_ratio, 2, "x"),
        "",
        floor_cells=of_floor(_num(floor.throughput, 2), versus.throughput_ratio)
        if floor and versus
        else ("", ""),
    )
    for label, name in (("p50 ms", "p50"), ("p90 ms", "p90"), ("p99 ms", "p99"), ("max ms", "max")):
        ratio_of = getattr(c, f"{name}_ratio", None)
        diff_of = getattr(c, f"{name}_diff_ms", None)
        floor_value = _num(getattr(floor, f"{name}_ms")) if floor else ""
        floor_ratio = getattr(versus, f"{name}_ratio", None) if versus else None
        row(
            label,
            _num(getattr(t, f"{name}_ms")),
            _num(getattr(r, f"{name}_ms")),
            _num(ratio_of, 2, "x") if name in ("p50", "p99") else "",
            _signed(diff_of) if name in ("p50", "p99") else "",
            floor_cells=of_floor(floor_value, floor_ratio),
        )
    return table


def hold_table(title: str, hold: Summary, rss: RssRecord | None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("taskenv", justify="right")
    table.add_row("requests", str(hold.requests))
    table.add_row("errors", _errors(hold))
    table.add_row("completion s (first sent to last answered)", _num(hold.window_sec, 2))
    table.add_row("p50 / p99 / max ms", f"{_num(hold.p50_ms)} / {_num(hold.p99_ms)} / {_num(hold.max_ms)}")
    if rss is not None:
        table.add_row(f"API pid {rss.pid} RSS before", _mib(rss.before_kib))
        table.add_row(f"API peak RSS ({rss.samples} samples)", _mib(rss.peak_kib))
        table.add_row("API VmHWM at end", _mib(rss.hwm_kib))
        if rss.error:
            table.add_row("RSS sampling stopped", rss.error)
    return table


def render(figures: Figures, console: Console) -> None:
    config = figures.config
    workload = config["workload"]["command"]
    if figures.exec and _measured(figures.exec):
        title = (
            f"exec `{workload}`: {config['execs']} per side at"
            f" {_concurrency(config['concurrency'], config['execs'], config['rounds'])}"
            f" over {config['envs']} environments, interleaved in {_rounds(figures.exec)}"
            f" (warm-up {config['warmup']} per side)"
        )
        console.print(pair_table(title, figures.exec, "exec"))
    if figures.provision and _measured(figures.provision):
        title = (
            f"provision: {config['provisions']} per side at"
            f" {_concurrency(config['provision_concurrency'], config['provisions'], config['rounds'])},"
            f" interleaved in {_rounds(figures.provision)}"
            " (taskenv: POST to status ready, waited for with ?wait_sec)"
        )
        console.print(pair_table(title, figures.provision, "provision"))
    if figures.hold and (figures.hold.requests or figures.api_rss):
        title = f"hold: {config['hold']} execs of `sleep {config['hold_sleep_sec']:g}` at once"
        console.print(hold_table(title, figures.hold, figures.api_rss))
    console.print(
        f"made {figures.environments_created} environments and {figures.raw_containers_created} raw"
        f" containers; left behind: {len(figures.environments_left)} environments,"
        f" {len(figures.raw_containers_left)} raw containers"
    )
    cleanup = figures.cleanup
    if cleanup is not None:
        for failure in cleanup.failures:
            console.print(f"[red]cleanup failure:[/red] {failure}")
    for env_id in figures.environments_left:
        console.print(f"[red]environment not deleted:[/red] {env_id}")
    for name in figures.raw_containers_left:
        console.print(f"[red]raw container not removed:[/red] {name}")
    if figures.runner_skipped:
        console.print(
            "[yellow]no runner floor:[/yellow] the environments' runners did not answer"
            f" ({figures.runner_skipped})"
        )
    if figures.stopped:
        console.print(f"[yellow]run stopped early:[/yellow] {figures.stopped}")
