"""One bench run, phase by phase, inside the overall deadline, with cleanup whatever ends it.

Phases: a pool of K environments; execs through taskenv, then the same execs straight through
the engine in the same containers (each after its own warm-up); provision latency both ways;
the hold of many waiting execs. Each phase is skipped when its count is 0.
"""

import asyncio
from functools import partial

import aiodocker
import httpx

from bench import api_side, raw_side
from bench.config import BenchConfig
from bench.ledger import cleanup, complete, release
from bench.load import Call, round_robin, run_phase
from bench.progress import Tracker
from bench.results import Results
from bench.rss import RssRecord, sample_until
from bench.stats import Sample, summarize
from bench.workloads import hold_workload
from worker.docker import connect, disconnect


class PoolError(RuntimeError):
    """The environments the execs need did not all become ready."""


def describe(exc: BaseException) -> str:
    """The first real error of a possibly nested exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def run_bench(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    client: httpx.AsyncClient,
    docker: aiodocker.Docker,
) -> None:
    """Fill `results`; stop at `config.max_seconds`; on any ending, take down all it made."""
    url = api_side.envs_url(config.base_url, config.org, config.workspace)
    deadline = asyncio.timeout(config.max_seconds)
    try:
        async with deadline:
            await _phases(config, results, tracker, client, docker, url)
    except TimeoutError:
        if not deadline.expired():
            results.stopped = "failed: TimeoutError"
            raise
        results.stopped = f"max-seconds ({config.max_seconds:g} s) reached"
    except asyncio.CancelledError:
        results.stopped = "interrupted"
        raise
    except Exception as exc:
        results.stopped = f"failed: {describe(exc)}"
        raise
    finally:
        results.cleanup = await complete(
            cleanup(results.ledger, partial(_delete_env, client, url, docker), partial(_remove_raw, docker))
        )


async def run_with_clients(config: BenchConfig, results: Results, tracker: Tracker) -> None:
    """`run_bench` with an HTTP client and a Docker client of its own."""
    client = api_side.make_client(
        config.api_key, connections=config.connections, read_timeout_sec=config.read_timeout_sec
    )
    docker = connect()
    try:
        await run_bench(config, results, tracker, client, docker)
    finally:
        await client.aclose()
        await disconnect(docker)


async def _delete_env(client: httpx.AsyncClient, url: str, docker: aiodocker.Docker, env_id: str) -> None:
    """DELETE through the API; if that fails, still remove its container from the engine."""
    try:
        await api_side.delete(client, url, env_id)
    except Exception as exc:
        await raw_side.remove_container(docker, raw_side.env_container(env_id))
        raise api_side.Failure(
            api_side.error_name(exc), f"DELETE failed ({exc}); container removed directly"
        ) from exc


async def _remove_raw(docker: aiodocker.Docker, name: str) -> None:
    await raw_side.remove_container(docker, name)


async def _phases(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    client: httpx.AsyncClient,
    docker: aiodocker.Docker,
    url: str,
) -> None:
    await api_side.check_access(client, url)
    envs: list[api_side.Env] = []
    if config.execs or config.hold:
        envs = await _pool(config, results, tracker, client, url)
    if config.execs:
        await _execs(config, results, tracker, client, docker, url, envs)
    if config.provisions:
        await _provisions(config, results, tracker, client, docker, url)
    if config.hold:
        await _hold(config, results, tracker, client, url, envs)


async def _pool(
    config: BenchConfig, results: Results, tracker: Tracker, client: httpx.AsyncClient, url: str
) -> list[api_side.Env]:
    envs: list[api_side.Env] = []
    samples: list[Sample] = []

    async def one(_: int) -> Sample:
        return await api_side.timed_provision(
            client, url, results.ledger, config.task_ref, config.lifetime_sec, config.poll_sec, envs
        )

    advance = tracker.phase("environments", config.envs)
    await run_phase(one, config.envs, config.provision_concurrency, samples, advance)
    errors = summarize(samples).errors
    if errors:
        raise PoolError(
            f"{sum(errors.values())} of {config.envs} environments did not become ready: {errors}"
        )
    return envs


async def _execs(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    client: httpx.AsyncClient,
    docker: aiodocker.Docker,
    url: str,
    envs: list[api_side.Env],
) -> None:
    pick = round_robin(len(envs))

    async def through_taskenv(number: int) -> Sample:
        return await api_side.execute(client, url, envs[pick(number)], config.workload, config.timeout_sec)

    async def raw(number: int) -> Sample:
        container = raw_side.env_container(envs[pick(number)].id)
        return await raw_side.execute(docker, container, config.workload, config.timeout_sec)

    sides: list[tuple[str, Call, list[Sample]]] = [
        ("taskenv", through_taskenv, results.exec_taskenv),
        ("raw", raw, results.exec_raw),
    ]
    for side, call, out in sides:
        if config.warmup:
            advance = tracker.phase(f"exec {side} warm-up", config.warmup)
            await run_phase(call, config.warmup, config.concurrency, [], advance)
        await run_phase(
            call, config.execs, config.concurrency, out, tracker.phase(f"exec {side}", config.execs)
        )


async def _provisions(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    client: httpx.AsyncClient,
    docker: aiodocker.Docker,
    url: str,
) -> None:
    """N provisions each way at the same concurrency; each side's are taken down before the
    other side's are timed, so neither pays for the other's containers."""
    ledger = results.ledger
    made: list[api_side.Env] = []
    before = set(ledger.envs)

    async def through_taskenv(_: int) -> Sample:
        return await api_side.timed_provision(
            client, url, ledger, config.task_ref, config.lifetime_sec, config.poll_sec, made
        )

    advance = tracker.phase("provision taskenv", config.provisions)
    await run_phase(
        through_taskenv, config.provisions, config.provision_concurrency, results.provision_taskenv, advance
    )
    # What fails here stays in the ledger for the final cleanup, which tries again.
    await release(
        "environment", sorted(ledger.envs - before), partial(api_side.delete, client, url), ledger.envs
    )

    spec = raw_side.default_spec()

    async def raw(_: int) -> Sample:
        return await raw_side.timed_provision(docker, spec, ledger)

    advance = tracker.phase("provision raw", config.provisions)
    await run_phase(raw, config.provisions, config.provision_concurrency, results.provision_raw, advance)
    await release("container", sorted(ledger.raw), partial(_remove_raw, docker), ledger.raw)


async def _hold(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    client: httpx.AsyncClient,
    url: str,
    envs: list[api_side.Env],
) -> None:
    """All `hold` execs at once, each sleeping, while the API process's memory is sampled."""
    pick = round_robin(len(envs))
    workload = hold_workload(config.hold_sleep_sec)

    async def wait(number: int) -> Sample:
        return await api_side.execute(client, url, envs[pick(number)], workload, config.hold_timeout_sec)

    stop = asyncio.Event()
    sampler = None
    if config.api_pid is not None:
        results.rss = RssRecord(config.api_pid)
        sampler = asyncio.create_task(sample_until(results.rss, stop))
    try:
        await run_phase(wait, config.hold, config.hold, results.hold, tracker.phase("hold", config.hold))
    finally:
        stop.set()
        if sampler is not None:
            await sampler
