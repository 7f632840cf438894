"""`taskenv bench` from start to exit code: check the targets, run with a progress bar, report.

Exit codes: 0 the whole run finished with no errors and nothing left behind; 1 errors, a cut
short or failed run, or something not cleaned up; 2 a refused configuration; 130 Ctrl-C
(after cleanup and the report of what was measured until then).
"""

import asyncio
import os
import resource
import sys
from dataclasses import replace
from pathlib import Path

import uvloop
from rich.console import Console

from taskenv.bench.config import BenchConfig
from taskenv.bench.interrupt import first_interrupt_stops
from taskenv.bench.progress import RichTracker, rich_progress
from taskenv.bench.report import build, render, to_json, write_json
from taskenv.bench.results import Results
from taskenv.bench.run import describe, run_with_clients
from taskenv.bench.safety import NotLocalError, require_local_docker, require_loopback_url


def raise_fd_limit() -> int:
    """Lift the soft open-files limit (often 1024) to the hard one: each request in flight holds
    a socket, and the hold phase holds thousands. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        soft = hard
    return soft


PLOT_HINT = "a plot needs matplotlib: pip install 'taskenv[bench]'"


def plotting_available() -> bool:
    """matplotlib is the `bench` extra: without it the bench runs, only a plot is refused."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(config: BenchConfig, *, as_json: bool, json_path: Path | None, plot_path: Path | None) -> int:
    limit = raise_fd_limit()
    # With --json, stdout carries only the figures; everything else goes to stderr.
    console = Console(stderr=as_json)
    if plot_path is not None and not plotting_available():
        console.print(PLOT_HINT, style="red", markup=False)
        return 2
    try:
        base_url = require_loopback_url(config.base_url)
        require_local_docker(os.environ.get("DOCKER_HOST"))
    except NotLocalError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    problems = config.problems()
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        return 2
    for warning in config.warnings():
        console.print(f"[yellow]warning:[/yellow] {warning}")
    wanted = config.connections + 64
    if limit != resource.RLIM_INFINITY and limit < wanted:
        console.print(
            f"[yellow]warning:[/yellow] open-files limit {limit} is below the {wanted} this run may use"
        )

    config = replace(config, base_url=base_url)
    results = Results()
    code = 0
    with rich_progress() as progress:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                work = run_with_clients(config, results, RichTracker(progress))
                runner.run(first_interrupt_stops(work, lambda line: console.print(line, style="yellow")))
        except (KeyboardInterrupt, asyncio.CancelledError):
            results.stopped = results.stopped or "interrupted"
            code = 130
        except Exception as exc:
            results.stopped = results.stopped or f"failed: {describe(exc)}"
            code = 1

    figures = build(config, results)
    render(figures, console)
    if as_json:
        print(to_json(figures), file=sys.stdout, flush=True)
    if json_path is not None:
        write_json(figures, json_path)
        console.print(f"figures written to {json_path}")
    if plot_path is not None:
        from taskenv.bench.plot import plot  # matplotlib is the `bench` extra: imported only when asked

        if plot(results, plot_path):
            console.print(f"latency plot written to {plot_path}")
        else:
            console.print("[yellow]no plot: no successful request to draw[/yellow]")
    if code == 0 and (figures.stopped or figures.errors or not figures.clean):
        code = 1
    return code
