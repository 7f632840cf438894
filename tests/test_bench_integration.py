"""A tiny bench against the real service and the real engine: right counts, no errors, nothing left."""

import subprocess

import pytest

from taskenv.bench.config import BenchConfig
from taskenv.bench.progress import NullTracker
from taskenv.bench.report import build
from taskenv.bench.results import Results
from taskenv.bench.run import run_with_clients
from tests.helpers import async_http

pytestmark = pytest.mark.integration


def containers(*filters: str) -> list[str]:
    args = ["docker", "ps", "-aq"] + [part for f in filters for part in ("--filter", f)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


async def test_tiny_bench_counts_right_and_cleans_up(service):
    config = BenchConfig(
        base_url=service.base_url,
        api_key=service.key,
        org="acme",
        workspace="main",
        envs=2,
        execs=10,
        concurrency=2,
        warmup=2,
        rounds=3,
        provisions=2,
        provision_concurrency=2,
        hold=4,
        hold_sleep_sec=1,
        api_pid=service.api.pid,
        max_seconds=300,
    )
    results = Results()
    await run_with_clients(config, results, NullTracker())
    figures = build(config, results)

    assert figures.stopped is None
    assert figures.exec is not None and figures.provision is not None and figures.hold is not None
    for summary in (figures.exec.taskenv, figures.exec.raw):
        assert (summary.requests, summary.ok, summary.errors, summary.blocks) == (10, 10, {}, 3)
    for summary in (figures.provision.taskenv, figures.provision.raw):
        assert (summary.requests, summary.ok, summary.errors, summary.blocks) == (2, 2, {}, 2)
    assert figures.exec.rounds == 3 and figures.provision.rounds == 2
    assert (figures.hold.requests, figures.hold.ok, figures.hold.errors) == (4, 4, {})
    assert figures.api_rss is not None and figures.api_rss.peak_kib and figures.api_rss.error is None
    assert figures.exec.compare.p50_ratio is not None
    assert figures.environments_created == 4 and figures.raw_containers_created == 2
    assert figures.clean and figures.errors == 0

    assert containers("label=taskenv.bench") == []
    async with async_http(headers={"X-API-Key": service.key}) as http:
        for env_id in results.ledger.created_envs:
            status = (await http.get(f"{service.envs_url()}/{env_id}/status")).json()
            assert status["state"] == "torn_down", status
            assert containers(f"name=^taskenv-{env_id}$") == []
