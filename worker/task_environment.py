"""An environment made whole, on the host that claimed it: the sandbox, then its task's compose
services beside it, then its provision script, then the variables its commands run with.

1. The sandbox (worker/containers.py) owns the environment's network namespace (network
   `none`: a loopback and nothing else). A pushed task's directory is staged read-only at
   /home/user/task in it (worker/task_volume.py), its solution left out.
2. Its compose services join that namespace (`container:<sandbox>`: worker/pod.py), in
   dependency order, each waited for (started, healthy, or done for one-shot services):
   `localhost:<port>` reaches them from the sandbox and from each other, and nothing else does.
3. Its variables: service URLs from task.yaml `ports`, the request's inputs, the org's secrets,
   the models (shared/task_variables.py); then `provision.sh` runs in the sandbox with them and
   its JSON object adds more.
4. The record's ready fields: the variables sealed (worker/command_env.py), `service_urls`, and
   the instruction rendered with every known variable.

Any step that fails raises `Unmade` with the reason (naming the service or the script, with its
output's tail); the caller fails the environment and removes what was made. Everything is
bounded by TASKENV_PROVISION_TIMEOUT_SEC.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiodocker.containers import DockerContainer
from redis.asyncio import Redis

from taskenv.shared import secrets_store, task_services
from taskenv.shared.environment_record import EnvironmentRecord
from taskenv.shared.errors import TaskenvError
from taskenv.shared.task_store import TaskVersion
from taskenv.shared.task_variables import (
    command_env,
    model_variables,
    render_instruction,
    service_urls,
    template_variables,
)
from taskenv.shared.tasks import TaskScript, TaskSource, TaskSpec
from taskenv.worker import containers, pod, sandbox_run, task_volume
from taskenv.worker.context import WorkerContext
from taskenv.worker.runner_link import keep_alive_with_runner
from taskenv.worker.task_build import image_tag
from taskenv.worker.task_files import ParsedTask, Unreadable

TASK_DIR = task_volume.TASK_DIR
# The tail of a failed script's output kept in the environment's error.
ERROR_TAIL_CHARS = 2000


class Unmade(Exception):
    """The environment cannot be made: `reason` says why, `log_tail` shows it (GET /logs)."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass
class Made:
    """What a ready environment's record gains, and its variables for the worker's memory."""

    fields: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


async def make(
    worker: WorkerContext,
    blobs: Redis,
    record: EnvironmentRecord,
    spec: TaskSpec,
    version: TaskVersion | None,
) -> Made:
    """`version` is the stored version of the task `spec.source` names (None for a built-in task)."""
    deadline_at = time.time() + worker.settings.provision_timeout_sec
    source = spec.source
    task = await _task_files(worker, blobs, source) if source is not None else None
    mounts = [await _staged(worker, source, task)] if source is not None and task is not None else []
    plans = (
        _plans(worker, task, version) if source is not None and task is not None and source.services else []
    )
    boot = None
    if worker.runners is not None:
        mounts += worker.runners.link_mounts(record.id)
        boot = worker.runners.boot(record.id, spec)
    try:
        sandbox = await containers.create(
            worker.docker, record.to_hash(),
            spec.model_copy(update={"command": keep_alive_with_runner(boot)}) if boot else spec,
            worker.deployment, worker.runners.volume if worker.runners else None, extra_mounts=mounts,
        )  # fmt: skip
        if plans:
            await _start_services(worker, record, plans, sandbox, deadline_at, warm=boot is None)
        else:
            await sandbox.start()
    except BaseException:
        if boot is not None:
            boot.close()
        raise
    if boot is not None and worker.runners is not None:
        worker.runners.adopt(record.id, boot, str(sandbox.id))
    urls = service_urls(source.ports) if source is not None else {}
    inputs = _json(record.inputs, {})
    base = await _base_variables(worker, record, source)
    provided: dict[str, str] = {}
    if source is not None and source.provision is not None:
        variables = command_env(template_variables(urls, {}, inputs), *base)
        provided = await _provision(worker, record, spec, source.provision, variables, deadline_at)
    template = template_variables(urls, provided, inputs)
    variables = command_env(template, *base)
    fields = {"instruction": render_instruction(spec.instruction or "", template)}
    if urls:
        fields["service_urls"] = json.dumps(urls)
    if variables:
        if worker.variables is None:
            raise Unmade("this worker keeps no environment variables (started without its context)")
        fields["variables"] = worker.variables.seal(variables)
    return Made(fields=fields, variables=variables)


async def _task_files(worker: WorkerContext, blobs: Redis, source: TaskSource) -> ParsedTask:
    try:
        return await worker.task_files.get(blobs, source, worker.settings.max_task_bytes)
    except Unreadable as exc:
        raise Unmade(str(exc)) from None


async def _staged(worker: WorkerContext, source: TaskSource, task: ParsedTask) -> dict[str, Any]:
    try:
        volume = await task_volume.ensure_staged(
            worker.docker, source.oci_digest, task.files, deployment=worker.deployment,
            image=worker.settings.sandbox_image, exclude={task.solution},
        )  # fmt: skip
    except task_volume.StagingFailed as exc:
        raise Unmade(f"the task directory could not be staged: {exc}") from None
    return task_volume.sandbox_mount(volume)


def _plans(
    worker: WorkerContext, task: ParsedTask, version: TaskVersion | None
) -> list[task_services.ServicePlan]:
    if not isinstance(task.compose, dict):
        raise Unmade("the task's docker-compose.yaml is missing or not a mapping")
    # Services with a `build:` run the image built for this version (worker/task_build.py).
    images = {name: image_tag(version, name) for name in version.build_services} if version else {}
    try:
        return task_services.plans(task.compose, task.files, images=images, settings=worker.settings)
    except task_services.ServiceError as exc:
        raise Unmade(str(exc)) from None


async def _start_services(
    worker: WorkerContext,
    record: EnvironmentRecord,
    plans: list[task_services.ServicePlan],
    sandbox: DockerContainer,
    deadline_at: float,
    *,
    warm: bool,
) -> None:
    """The sandbox's start and the services' creation side by side, then the services' starts."""
    runners = worker.runners
    # The runner's session opens while the services come up (their healthchecks' wait is idle
    # time for the engine), not after `ready`, when it would take from the next provision;
    # not at all (`warm` False) when the sandbox's runner connects by itself (`RunnerPool.boot`).
    on_started = (lambda: runners.warm(record.id)) if runners is not None and warm else None
    try:
        await pod.start_services(
            worker.docker, env_id=record.id, sandbox_id=str(sandbox.id), plans=plans,
            labels=containers.labels_of(record.to_hash(), worker.deployment), deadline_at=deadline_at,
            on_started=on_started, events=worker.events, sandbox_started=sandbox.start(),
        )  # fmt: skip
    except pod.PodFailed as failed:
        raise Unmade(str(failed), failed.log_tail) from None


async def _base_variables(
    worker: WorkerContext, record: EnvironmentRecord, source: TaskSource | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The org's secrets the request named, and the models' variables."""
    secret_ids = _json(record.secret_ids, [])
    secrets: dict[str, str] = {}
    if secret_ids:
        try:
            secrets = await secrets_store.values(worker.records, worker.sealer, record.org, secret_ids)
        except TaskenvError as exc:
            raise Unmade(f"secrets: {exc.detail}") from None
    try:
        models = model_variables(source.models if source else None, _json(record.model_overrides, {}))
    except TaskenvError as exc:
        raise Unmade(f"models: {exc.detail}") from None
    return secrets, models


async def _provision(
    worker: WorkerContext,
    record: EnvironmentRecord,
    spec: TaskSpec,
    step: TaskScript,
    variables: dict[str, str],
    deadline_at: float,
) -> dict[str, str]:
    """provision.sh's JSON object; `Unmade` when it fails, times out or prints anything else."""
    timeout = min(float(step.timeout), max(deadline_at - time.time(), 1.0))
    try:
        return await sandbox_run.run_provision(
            worker, record.id, f"{TASK_DIR}/{step.script}", timeout_sec=timeout, env=variables,
            user=spec.user,
        )  # fmt: skip
    except sandbox_run.ScriptFailed as failed:
        tail = failed.output[-ERROR_TAIL_CHARS:]
        raise Unmade(f"provision script {step.script}: {failed.reason}", tail) from None


def _json(value: str, default: Any) -> Any:
    return json.loads(value) if value else default
