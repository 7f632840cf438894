"""The baseline: the least a docker-exec design must do, straight against the engine.

An exec is create, start attached, read the stream to EOF, inspect for the exit code, running
`sh -c CMD` as the sandbox's unprivileged user. A provision is create + start of a container
configured exactly as the worker configures a `default` sandbox, labelled `taskenv.bench=true`
instead of as a managed one (so no taskenv reaper ever touches it).
"""

import asyncio
import time
import uuid
from typing import Any

import aiodocker

from taskenv.bench.ledger import Ledger, guarded
from taskenv.bench.stats import Sample
from taskenv.bench.workloads import Workload, check
from taskenv.shared.settings import DEFAULT_TASKS_DIR
from taskenv.shared.store import container_name
from taskenv.shared.tasks import TaskSpec, load_registry
from taskenv.worker.containers import container_config

LABEL_BENCH = "taskenv.bench"
USER = "1000:1000"
WORKDIR = "/tmp"  # noqa: S108 (inside the sandbox)


def error_name(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        return f"DockerError {exc.status}"
    return type(exc).__name__


def env_container(env_id: str) -> str:
    """The container taskenv runs environment `env_id` in."""
    return container_name(env_id)


async def execute(docker: aiodocker.Docker, container: str, workload: Workload, timeout_sec: int) -> Sample:
    started = time.perf_counter()
    error: str | None
    try:
        async with asyncio.timeout(timeout_sec):
            exe = await docker.containers.container(container).exec(
                ["sh", "-c", workload.command],
                stdout=True,
                stderr=True,
                stdin=False,
                user=USER,
                workdir=WORKDIR,
            )
            output = bytearray()
            async with exe.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    output += message.data
            exit_code = int((await exe.inspect())["ExitCode"] or 0)
        ended = time.perf_counter()
        error = check(workload, exit_code, output.decode(errors="replace"))
    except Exception as exc:
        ended = time.perf_counter()
        error = error_name(exc)
    return Sample(started, ended, error)


def default_spec() -> TaskSpec:
    """The `default` task exactly as a fresh taskenv ships it."""
    return load_registry(DEFAULT_TASKS_DIR).resolve("default")


def raw_config(spec: TaskSpec, name: str) -> dict[str, Any]:
    record = {"id": name, "host": "bench", "org": "bench", "workspace": "bench"}
    config = container_config(record, spec, deployment="bench")
    config["Labels"] = {LABEL_BENCH: "true"}
    return config


def new_name() -> str:
    return f"taskenv-bench-raw-{uuid.uuid4().hex}"


async def _create_and_start(docker: aiodocker.Docker, config: dict[str, Any], name: str) -> None:
    container = await docker.containers.create(config, name=name)
    await container.start()


async def timed_provision(docker: aiodocker.Docker, spec: TaskSpec, ledger: Ledger) -> Sample:
    """Create + start; the name is in the ledger before the request leaves."""
    name = new_name()
    ledger.add_raw(name)
    started = time.perf_counter()
    try:
        await guarded(ledger, _create_and_start(docker, raw_config(spec, name), name))
    except Exception as exc:
        return Sample(started, time.perf_counter(), error_name(exc))
    return Sample(started, time.perf_counter())


async def remove_container(docker: aiodocker.Docker, name: str) -> None:
    """Force-remove by name, whoever labelled it: the bench removes only names it made (its raw
    containers, and the containers of environments it created when their DELETE failed)."""
    try:
        await docker.containers.container(name).delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status != 404:  # not there: already removed
            raise
