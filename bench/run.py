"""One bench run, phase by phase, inside the overall deadline, with cleanup whatever ends it.

Phases: a pool of K environments; execs through taskenv, the same execs straight through the
engine in the same containers, and through the same containers' runners driven directly (the
floor; one warm-up each, then interleaved in rounds); provision
latency both ways (interleaved likewise); the hold of many waiting execs. Each phase is skipped
when its count is 0.
"""

import asyncio
from functools import partial

import aiodocker
import aiohttp

from taskenv.bench import api_side, provision_phase, raw_side
from taskenv.bench.config import BenchConfig
from taskenv.bench.ledger import cleanup, complete
from taskenv.bench.load import round_robin, run_phase
from taskenv.bench.progress import Tracker
from taskenv.bench.results import Results
from taskenv.bench.rounds import Side, interleave
from taskenv.bench.rss import RssRecord, sample_until
from taskenv.bench.runner_side import RunnerSide
from taskenv.bench.stats import Sample, summarize
from taskenv.bench.workloads import hold_workload
from taskenv.worker.docker import connect, disconnect


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
    session: aiohttp.ClientSession,
    docker: aiodocker.Docker,
) -> None:
    """Fill `results`; stop at `config.max_seconds`; on any ending, take down all it made."""
    url = api_side.envs_url(config.base_url, config.org, config.workspace)
    deadline = asyncio.timeout(config.max_seconds)
    try:
        async with deadline:
            await _phases(config, results, tracker, session, docker, url)
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
            cleanup(
                results.ledger,
                partial(_delete_env, session, url, docker),
                partial(provision_phase.remove_raw, docker),
            )
        )


async def run_with_clients(config: BenchConfig, results: Results, tracker: Tracker) -> None:
    """`run_bench` with an HTTP session and a Docker client of its own."""
    session = api_side.make_session(
        config.api_key, connections=config.connections, read_timeout_sec=config.read_timeout_sec
    )
    docker = connect()
    try:
        await run_bench(config, results, tracker, session, docker)
    finally:
        await session.close()
        await disconnect(docker)


async def _delete_env(
    session: aiohttp.ClientSession, url: str, docker: aiodocker.Docker, env_id: str
) -> None:
    """DELETE through the API; if that fails, still remove its container from the engine."""
    try:
        await api_side.delete(session, url, env_id)
    except Exception as exc:
        await raw_side.remove_container(docker, raw_side.env_container(env_id))
        raise api_side.Failure(
            api_side.error_name(exc), f"DELETE failed ({exc}); container removed directly"
        ) from exc


async def _phases(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    session: aiohttp.ClientSession,
    docker: aiodocker.Docker,
    url: str,
) -> None:
    await api_side.check_access(session, url)
    envs: list[api_side.Env] = []
    if config.execs or config.hold:
        envs = await _pool(config, results, tracker, session, url)
    if config.execs:
        await _execs(config, results, tracker, session, docker, url, envs)
    if config.provisions:
        await provision_phase.run(config, results, tracker, session, docker, url)
    if config.hold:
        await _hold(config, results, tracker, session, url, envs)


async def _pool(
    config: BenchConfig, results: Results, tracker: Tracker, session: aiohttp.ClientSession, url: str
) -> list[api_side.Env]:
    envs: list[api_side.Env] = []
    samples: list[Sample] = []

    async def one(_: int) -> Sample:
        return await api_side.timed_provision(
            session, url, results.ledger, config.task_ref, config.lifetime_sec, config.poll_sec, envs
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
    session: aiohttp.ClientSession,
    docker: aiodocker.Docker,
    url: str,
    envs: list[api_side.Env],
) -> None:
    pick = round_robin(len(envs))

    async def through_taskenv(number: int) -> Sample:
        return await api_side.execute(session, url, envs[pick(number)], config.workload, config.timeout_sec)

    async def raw(number: int) -> Sample:
        container = raw_side.env_container(envs[pick(number)].id)
        return await raw_side.execute(docker, container, config.workload, config.timeout_sec)

    runners = RunnerSide(docker)

    async def floor(number: int) -> Sample:
        return await runners.execute(envs[pick(number)].id, config.workload, config.timeout_sec)

    try:
        calls = [("taskenv", through_taskenv), ("raw", raw)]
        results.runner_skipped = await runners.unavailable(envs[0].id)
        if results.runner_skipped is None:
            calls.append(("runner", floor))
        for side, call in calls:
            if config.warmup:
                advance = tracker.phase(f"exec {side} warm-up", config.warmup)
                await run_phase(call, config.warmup, config.concurrency, [], advance)
        blocks = {"taskenv": results.exec_taskenv, "raw": results.exec_raw, "runner": results.exec_runner}
        sides = [
            Side(call, blocks[side], tracker.phase(f"exec {side}", config.execs)) for side, call in calls
        ]
        await interleave(sides, config.execs, config.rounds, config.concurrency)
    finally:
        await runners.close()


async def _hold(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    session: aiohttp.ClientSession,
    url: str,
    envs: list[api_side.Env],
) -> None:
    """All `hold` execs at once, each sleeping, while the API process's memory is sampled.

    Their connections open over `hold_ramp_sec`, not in one instant: thousands of simultaneous
    SYNs overflow the kernel's listen backlog (`net.core.somaxconn`, 4096 here) and get reset,
    which measures the kernel, not the service. Every exec outlasts the ramp, so all are in
    flight together once it ends."""
    pick = round_robin(len(envs))
    workload = hold_workload(config.hold_sleep_sec)
    spacing = config.hold_ramp_sec / max(config.hold, 1)

    async def wait(number: int) -> Sample:
        await asyncio.sleep(number * spacing)
        return await api_side.execute(session, url, envs[pick(number)], workload, config.hold_timeout_sec)

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
