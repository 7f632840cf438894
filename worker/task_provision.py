"""Before a pushed task's environment gets its sandbox: its images, built on this host if they
are not yet (worker/task_build.py). The environment shows `building` meanwhile (a flag on its
`provisioning` record, so quotas, claims and the reaper see it as provisioning), and turns
`failed` with `error: "task build failed: ..."` and the build log's tail if the build fails."""

import time
from dataclasses import dataclass

import aiodocker
from redis.asyncio import Redis

from taskenv.shared import keys, store, task_store
from taskenv.shared.environment_record import EnvironmentRecord
from taskenv.shared.models import EnvironmentState
from taskenv.shared.settings import Settings
from taskenv.shared.task_store import TaskVersion
from taskenv.shared.tasks import TaskSpec
from taskenv.worker.task_build import BuildFailed, BuildPolicy, PullPolicy, ensure_built

BUILDING_FIELD = "building"
BUILD_LOG_FIELD = "build_log"


def policy_of(settings: Settings) -> BuildPolicy:
    return BuildPolicy(
        pull=PullPolicy(settings.pull),
        timeout_sec=settings.task_build_timeout_sec,
        image_budget_bytes=settings.task_image_budget_bytes,
        max_task_bytes=settings.max_task_bytes,
    )


@dataclass(frozen=True)
class Prepared:
    """An environment that may go on to its sandbox: its record as loaded, its spec, and the
    stored version of its task (None for a built-in one), whose images are on this host."""

    record: EnvironmentRecord
    spec: TaskSpec
    version: TaskVersion | None = None


async def prepare(
    records: Redis, blobs: Redis, docker: aiodocker.Docker, env_id: str, settings: Settings, deployment: str
) -> Prepared | EnvironmentState:
    """The environment, when it may go on to its sandbox (nothing to build, or built); else the
    state it is in instead (failed: its record says why; or torn down meanwhile)."""
    record = await store.load(records, env_id)
    if record is None or record.state is not EnvironmentState.PROVISIONING:
        return record.state if record else EnvironmentState.TORN_DOWN
    spec = TaskSpec.model_validate_json(record.spec)
    source = spec.source
    if source is None:
        return Prepared(record, spec)
    # Builds, services and scripts take longer than a sandbox: the reaper waits for them (a lost
    # worker still fails it at once).
    budget = settings.task_build_timeout_sec + settings.provision_timeout_sec + settings.control_timeout_sec
    await extend_stalled_deadline(records, env_id, budget)
    version = await task_store.get_version(blobs, source.org, source.name, source.version)

    flagged = False

    async def building() -> None:
        nonlocal flagged
        flagged = True
        await store.set_if_state(records, env_id, EnvironmentState.PROVISIONING, **{BUILDING_FIELD: "1"})

    try:
        if version is None:
            raise BuildFailed(f"{source.org}/{source.name}@{source.version} was deleted")
        await ensure_built(
            blobs, docker, version, host=settings.host_id, deployment=deployment, policy=policy_of(settings),
            on_build=building,
        )  # fmt: skip
    except BuildFailed as failed:
        await _fail(records, env_id, failed.reason, failed.log_tail)
        return EnvironmentState.FAILED
    except (aiodocker.DockerError, ValueError) as exc:  # the engine, or an unreadable stored task
        await _fail(records, env_id, str(exc)[:400], "")
        return EnvironmentState.FAILED
    if not flagged and not record.building:
        # Never shown `building` (by the API, or above): nothing to undo in the record (a
        # teardown meanwhile is seen when the environment turns ready).
        return Prepared(record, spec, version)
    if await store.set_if_state(records, env_id, EnvironmentState.PROVISIONING, **{BUILDING_FIELD: "0"}):
        return Prepared(record, spec, version)
    return EnvironmentState.TORN_DOWN


async def extend_stalled_deadline(records: Redis, env_id: str, seconds: float) -> None:
    """The reaper's stalled-provision deadline for this environment, moved out."""
    await records.zadd(keys.PROVISIONING, {env_id: time.time() + seconds}, xx=True)


async def _fail(records: Redis, env_id: str, reason: str, log_tail: str) -> None:
    await store.set_if_state(
        records, env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.FAILED,
        error=f"task build failed: {reason}", **{BUILDING_FIELD: "0", BUILD_LOG_FIELD: log_tail},
    )  # fmt: skip
