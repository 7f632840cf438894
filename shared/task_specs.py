"""What an environment is made from: a `task_ref` resolved to a sandbox spec.

Pushed tasks come first, as Dreadnode resolves them (the caller's own, then public ones; see
shared/task_refs.py); the operator's built-in tasks (TASKENV_TASKS_PATH, `default` among them)
are there for every org after that. A pushed task's environment is, for now, the default
sandbox with the task's instruction; its compose services are built (worker/task_build.py)
before it is provisioned.
"""

from redis.asyncio import Redis

from taskenv.shared import task_keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.task_refs import TaskRef, resolve
from taskenv.shared.task_store import TaskVersion
from taskenv.shared.tasks import DEFAULT_IMAGE, TaskRegistry, TaskScript, TaskSource, TaskSpec


async def spec_for(
    blobs: Redis, registry: TaskRegistry, caller: str, task_ref: str, *, sandbox_image: str = DEFAULT_IMAGE
) -> tuple[TaskSpec, bool]:
    """The spec `task_ref` names for `caller`, and whether no host holds its images yet (its
    environments start out `building`)."""
    ref = TaskRef.parse(task_ref)
    version = await resolve(blobs, caller, ref)
    if version is not None:
        unbuilt = bool(version.build_services or version.service_images) and not await blobs.scard(
            task_keys.task_built_hosts(version.oci_digest)
        )  # type: ignore[misc]
        return spec_of(version, sandbox_image), unbuilt
    if ref.org is not None and ref.org != caller:
        raise TaskenvError(ErrorType.NOT_FOUND, f"Task {task_ref!r} not found")
    builtin = ref.name if ref.version is None else f"{ref.name}@{ref.version}"
    return registry.resolve(builtin), False


def spec_of(version: TaskVersion, sandbox_image: str = DEFAULT_IMAGE) -> TaskSpec:
    source = TaskSource(
        org=version.org,
        name=version.name,
        version=version.version,
        oci_digest=version.oci_digest,
        services=version.services,
        ports=version.ports,
        verification=version.verification,
        provision=TaskScript.model_validate(version.provision) if version.provision else None,
        teardown=TaskScript.model_validate(version.teardown) if version.teardown else None,
        models=version.models,
        egress=version.egress,
    )
    return TaskSpec(
        name=version.name,
        version=version.version,
        image=sandbox_image,
        instruction=version.instruction,
        source=source,
    )
