"""The floor: the environments' own runners driven straight from the bench process, with no
HTTP, queue or worker in between (runner/PROTOCOL.md).

Each environment gets one session of the bench's own (a `docker exec` of the runner, opened at
its first exec, so the warm-up pays for it), beside the worker's, over the transport the
deployment's worker uses: a socket in the environment's link dir when its sandbox mounts one
(found in the engine's inspect; the bench runs beside the engine), else the exec's stdio. What
it measures is the runner, that transport and one asyncio client: what is left when taskenv
itself costs nothing. Environments made without the runner (TASKENV_EXEC_BACKEND=docker) answer
`RunnerLost` here: the side is then all errors, which the report shows.
"""

import asyncio
import time
from collections import defaultdict

import aiodocker

from taskenv.bench.raw_side import USER, WORKDIR
from taskenv.bench.stats import Sample
from taskenv.bench.workloads import Workload, check
from taskenv.shared.store import container_name
from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_client import RunnerSession
from taskenv.worker.runner_link import mounted_link_dir
from taskenv.worker.runner_sessions import open_session

OUTPUT_LIMIT = 1024 * 1024


class RunnerSide:
    def __init__(self, docker: aiodocker.Docker) -> None:
        self._docker = docker
        self._sessions: dict[str, RunnerSession] = {}
        self._opening: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def execute(self, env_id: str, workload: Workload, timeout_sec: int) -> Sample:
        started = time.perf_counter()
        try:
            session = await self._session(env_id)
            output = CappedOutput(OUTPUT_LIMIT)
            ended = await session.run(
                workload.command, workdir=WORKDIR, user=USER, output=output, within_sec=timeout_sec
            )
            error = check(workload, ended.status, output.text())
        except Exception as exc:
            return Sample(started, time.perf_counter(), type(exc).__name__)
        return Sample(started, time.perf_counter(), error)

    async def _session(self, env_id: str) -> RunnerSession:
        async with self._opening[env_id]:
            session = self._sessions.get(env_id)
            if session is None or not session.alive:
                link_dir = await mounted_link_dir(self._docker, container_name(env_id), env_id)
                session = await open_session(self._docker, env_id, link_dir=link_dir)
                self._sessions[env_id] = session
            return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def unavailable(self, env_id: str) -> str | None:
        """Why this side cannot run (the environment has no runner), or None when it can."""
        try:
            await self._session(env_id)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
