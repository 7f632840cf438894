"""The task registry: what `task_ref` (`name` or `name@version`) resolves to.

The operator points `TASKENV_TASKS_PATH` at a TOML file or a directory of them; each file holds
one or more `[[task]]` tables. Without a version the highest one wins.
"""

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskenv.shared.errors import ErrorType, TaskenvError

DEFAULT_IMAGE = "taskenv/default:1"
# The container's own process: it only keeps the sandbox alive between execs.
KEEP_ALIVE = ["/bin/sh", "-c", "echo taskenv sandbox ready; exec sleep 2147483647"]


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(512, ge=16)
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(256, ge=8)
    # Size of the writable /tmp (a tmpfs, charged to the memory limit too): filling it is ENOSPC.
    tmp_mb: int = Field(128, ge=1)


class TaskScript(BaseModel):
    """`provision:` or `teardown:` of task.yaml: a script in the task directory and its timeout."""

    script: str
    timeout: int = 120


class TaskSource(BaseModel):
    """The pushed task version (shared/task_store.py) an environment's spec was made from, with
    what its environment runs: compose services, scripts, verification."""

    model_config = ConfigDict(extra="forbid")

    org: str
    name: str
    version: str
    oci_digest: str
    # Its docker-compose.yaml's services (run beside the sandbox: worker/task_environment.py).
    services: list[str] = Field(default_factory=list)
    # task.yaml `ports:` (service -> ports): service_urls and the template variables.
    ports: dict[str, list[int]] = Field(default_factory=dict)
    # task.yaml `verification:` as validated (None fields left out).
    verification: dict[str, Any] | None = None
    provision: TaskScript | None = None
    teardown: TaskScript | None = None
    # task.yaml `models:` (ids, or roles -> {model, overridable}).
    models: list[str] | dict[str, Any] | None = None
    # task.yaml `egress:`: such tasks are refused at create (this deployment gives no egress).
    egress: dict[str, Any] | None = None


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field("1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    image: str = DEFAULT_IMAGE
    instruction: str | None = None
    lifetime_sec: int | None = Field(None, ge=1)
    # Commands run as this unprivileged user so they cannot kill the sandbox's own process.
    user: str = "1000:1000"
    workdir: str = "/tmp"  # noqa: S108 (inside the sandbox)
    # The image's filesystem is read-only and only /tmp is writable, so a command cannot alter
    # the sandbox's own programs or fill the host's disk. A task whose image needs to write
    # elsewhere (its workdir outside /tmp) turns this off.
    read_only_root: bool = True
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=lambda: list(KEEP_ALIVE))
    resources: Resources = Field(default_factory=Resources)
    # Set for a pushed task: its images are built before the sandbox (worker/task_provision.py).
    source: TaskSource | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class TaskRegistry:
    def __init__(self, tasks: list[TaskSpec]) -> None:
        self._by_name: dict[str, dict[str, TaskSpec]] = {}
        for task in tasks:
            self._by_name.setdefault(task.name, {})[task.version] = task

    def resolve(self, task_ref: str) -> TaskSpec:
        name, _, version = task_ref.partition("@")
        versions = self._by_name.get(name, {})
        if version:
            task = versions.get(version)
        else:
            task = versions[max(versions, key=_version_key)] if versions else None
        if task is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise TaskenvError(ErrorType.NOT_FOUND, f"Task {task_ref!r} not found (known tasks: {known})")
        return task


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in version.split("."))


def load_registry(path: Path) -> TaskRegistry:
    files = sorted(path.glob("*.toml")) if path.is_dir() else [path]
    tasks: list[TaskSpec] = []
    for file in files:
        try:
            data = tomllib.loads(file.read_text())
            tasks.extend(TaskSpec.model_validate(entry) for entry in data.get("task", []))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise ValueError(f"invalid task definition file {file}: {exc}") from exc
    return TaskRegistry(tasks)
