"""Provision latency both ways, interleaved in rounds: taskenv (POST, then /status polled until
`ready`) against the same containers made straight through the engine.

For a built-in task the raw side is the `default` sandbox's create + start (bench/raw_side.py).
For a pushed task named `org/name` it is the environment's whole pod (bench/task_side.py): the
sandbox with the task directory, then the compose services in order, each waited for. A warm-up
environment of the task comes first, uncounted: it builds the task's images and stages its
directory on this host (what a second environment finds done), and the raw pod is read from it.
"""

from functools import partial

import aiodocker
import aiohttp

from taskenv.bench import api_side, raw_side, task_side
from taskenv.bench.config import BenchConfig
from taskenv.bench.ledger import Ledger, release
from taskenv.bench.progress import Tracker
from taskenv.bench.raw_side import LABEL_BENCH
from taskenv.bench.results import Results
from taskenv.bench.rounds import Side, interleave
from taskenv.bench.stats import Sample
from taskenv.worker.container_events import ContainerEvents


async def remove_raw(docker: aiodocker.Docker, name: str) -> None:
    """A raw container, or a raw pod with its services and volumes."""
    if name.startswith(task_side.POD_PREFIX):
        await task_side.remove(docker, name)
    else:
        await raw_side.remove_container(docker, name)


async def run(
    config: BenchConfig,
    results: Results,
    tracker: Tracker,
    session: aiohttp.ClientSession,
    docker: aiodocker.Docker,
    url: str,
) -> None:
    """N provisions each way at the same concurrency, interleaved in rounds; each block's
    provisions are taken down before the next block is timed, so neither side pays for the
    other's containers."""
    ledger = results.ledger
    made: list[api_side.Env] = []
    raw = partial(raw_side.timed_provision, docker, raw_side.default_spec(), ledger)
    events = ContainerEvents(docker, f"{LABEL_BENCH}=true")
    if task_side.is_pushed(config.task_ref):
        pod = await _warm_up(config, tracker, session, docker, url, ledger)
        events.start()
        raw = partial(task_side.timed_provision, docker, pod, ledger, config.poll_sec, events)
    pool = set(ledger.envs)

    async def through_taskenv(_: int) -> Sample:
        return await api_side.timed_provision(
            session, url, ledger, config.task_ref, config.lifetime_sec, config.poll_sec, made
        )

    async def release_envs() -> None:
        # What fails here stays in the ledger for the final cleanup, which tries again.
        await release(
            "environment", sorted(ledger.envs - pool), partial(api_side.delete, session, url), ledger.envs
        )

    async def through_engine(_: int) -> Sample:
        return await raw()

    async def release_raw() -> None:
        await release("container", sorted(ledger.raw), partial(remove_raw, docker), ledger.raw)

    count = config.provisions
    sides = (
        Side(
            through_taskenv,
            results.provision_taskenv,
            tracker.phase("provision taskenv", count),
            release_envs,
        ),
        Side(through_engine, results.provision_raw, tracker.phase("provision raw", count), release_raw),
    )
    try:
        await interleave(sides, count, config.rounds, config.provision_concurrency)
    finally:
        await events.close()


async def _warm_up(
    config: BenchConfig,
    tracker: Tracker,
    session: aiohttp.ClientSession,
    docker: aiodocker.Docker,
    url: str,
    ledger: Ledger,
) -> task_side.TaskPod:
    """One environment of the task made ready (its images built, its directory staged), its pod
    read, and deleted again."""
    advance = tracker.phase("provision warm-up", 1)
    env = await api_side.provision(
        session, url, ledger, config.task_ref, config.lifetime_sec, config.poll_sec
    )
    try:
        return await task_side.discover(
            docker, session, config.base_url, config.api_key, config.task_ref, env.id
        )
    finally:
        await release("environment", [env.id], partial(api_side.delete, session, url), ledger.envs)
        advance()
