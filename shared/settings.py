"""Every tunable in one place, read from `TASKENV_*` environment variables."""

import socket
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskenv.shared.keys import WAKE_LIST_MAX
from taskenv.shared.tasks import DEFAULT_IMAGE
from taskenv.shared.user_agents import parse_minimums

DEFAULT_TASKS_DIR = Path(__file__).parent / "tasks"


class ExecBackend(StrEnum):
    """How a worker runs commands: through each sandbox's runner (runner/PROTOCOL.md), or one
    `docker exec` per command."""

    RUNNER = "runner"
    DOCKER = "docker"


class RunnerTransportKind(StrEnum):
    """How a worker's frames reach a sandbox's runner (runner/PROTOCOL.md, Transport): the stdio
    of a `docker exec` (works against any engine, a remote DOCKER_HOST included), or a unix socket
    in a host directory shared with the engine (dockerd off the per-command path)."""

    EXEC = "exec"
    SOCKET = "socket"


# A unix socket's path holds at most 107 bytes: the link dir, an environment id (36) and a
# socket's name (14, worker/runner_link.py) must fit, with their slashes.
MAX_RUNNER_LINK_DIR = 48


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKENV_", extra="ignore", populate_by_name=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: int = Field(64, ge=4)

    # Redis Sentinel (high availability): with sentinels set ("host:port,host:port"), the master
    # of `redis_sentinel_master` is used; TASKENV_REDIS_URL then gives only password and db.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = ""

    # The Docker host this worker drives. Its environments' execs, logs and teardowns go to this
    # host's own queue; provisions go to a queue that every host's workers share. (`TASKENV_QUEUE`
    # is its former name.)
    host_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        validation_alias=AliasChoices("TASKENV_HOST_ID", "TASKENV_QUEUE"),
    )
    # The identity of this deployment (its Redis): every container it makes is labelled with it,
    # and nothing acts on another deployment's containers on a shared Docker engine. Empty: a
    # random id, made by the first worker and kept in Redis. Set: Redis must hold this id (or
    # none yet), else the worker refuses to start.
    deployment: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    # Environments one host holds at most (provisioning or ready): a host at its cap takes no
    # provisions, and other hosts' workers do.
    host_max_environments: int = Field(1000, ge=1)
    # Workers heartbeat this often; a host (or a worker process) silent for `host_dead_after_sec`
    # is lost: its environments fail and the requests waiting on it get 502 at once.
    heartbeat_sec: float = Field(1.0, gt=0)
    host_dead_after_sec: float = Field(10.0, gt=0)
    worker_max_jobs: int = Field(1000, ge=1)
    # Provisions one worker process runs at once: a small number spreads a burst over hosts.
    worker_max_provisions: int = Field(4, ge=1)
    worker_idle_wait_sec: float = Field(1.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Oldest clients served, by User-Agent product: "dreadnode-sdk=2.0.52,taskenv=0.1.0". An
    # older client gets 426 naming the minimum; other products, and clients that send no
    # version, are not checked. Empty (the default): no minimum.
    min_client_versions: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    tasks_path: Path = DEFAULT_TASKS_DIR
    # The image of a pushed task's sandbox, where its commands run (its services run their own).
    sandbox_image: str = DEFAULT_IMAGE
    # Pushed tasks (docs/tasks.md): one task archive at most this many bytes, compressed and
    # uncompressed; an org's stored archives at most `task_storage_bytes` (in Redis).
    max_task_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    task_storage_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Images a task names with `image:` that the engine lacks: pulled ("missing") or refused
    # ("never": offline hosts, and the tests). Builds never pull and have no network.
    pull: Literal["missing", "never"] = "never"
    task_build_timeout_sec: float = Field(600.0, gt=0)
    # Built task images of this deployment on a host: past this total, the least recently used
    # (and not in use) are removed.
    task_image_budget_bytes: int = Field(10 * 1024**3, ge=0)
    output_limit_bytes: int = Field(1024 * 1024, ge=1024)
    # How long the API waits past an exec's deadline for the worker's answer.
    result_grace_sec: float = Field(0.75, gt=0)
    exec_backend: ExecBackend = ExecBackend.RUNNER
    # The runner the workers put into sandboxes; unset: this checkout's runner/build/taskenv-runner.
    runner_binary: Path | None = None
    # `socket` needs `runner_link_dir`: an absolute host path, the same in the worker as on the
    # engine's host (`taskenv up` sets both; compose.yaml mounts it at the same path).
    runner_transport: RunnerTransportKind = RunnerTransportKind.EXEC
    runner_link_dir: Path | None = None
    # Budget for jobs that are not commands (provision, teardown, logs).
    control_timeout_sec: float = Field(60.0, gt=0)
    # A task environment's services must be started (healthy, or done for one-shot services) and
    # its provision script finished within this; past it the environment fails naming the
    # service or script (worker/task_environment.py).
    provision_timeout_sec: float = Field(300.0, gt=0)
    # Each compose service of a task gets these unless its compose file asks for less
    # (`mem_limit`, `cpus`, `pids_limit`, `deploy.resources.limits`): never more.
    service_memory_mb: int = Field(512, ge=16)
    service_cpus: float = Field(1.0, gt=0)
    service_pids: int = Field(512, ge=8)
    # The key that seals org secrets and each environment's variables at rest (Fernet: 32 bytes,
    # url-safe base64; `taskenv up` makes one in its home). Empty: secrets cannot be stored.
    secrets_key: str = Field("", repr=False)
    # DELETE waits this long for the container's removal; past it the reaper finishes the job.
    teardown_wait_sec: float = Field(10.0, gt=0)
    default_lifetime_sec: int = Field(3600, ge=1)
    max_lifetime_sec: int = Field(24 * 3600, ge=1)
    # Admission control: past these bounds requests get 429 with Retry-After, so no queue grows
    # without limit. Commands running at once in one environment (shared/commands.py); the
    # setting keeps the name operators already set, TASKENV_MAX_EXECS_PER_ENV:
    max_execs_per_env: int = Field(8, ge=1)
    # Requests per second one org may make, all API processes and routes together (execute
    # included), and the burst it may spend at once: a token bucket in Redis. 0: no limit.
    org_rate_per_sec: float = Field(1000.0, ge=0)
    org_rate_burst: int = Field(5000, ge=1)
    # Jobs one queue may hold (waiting and running); past it, new work is refused. At most the
    # wake list's cap (keys.WAKE_LIST_MAX), so every admitted job is announced to the workers.
    max_queue_depth: int = Field(10_000, ge=1, le=WAKE_LIST_MAX)
    # Quotas (0: unlimited), counted atomically by every API process: live environments
    # (provisioning or ready) and commands running at once, per org and per workspace. The
    # defaults keep one org well below a host's TASKENV_HOST_MAX_ENVIRONMENTS, so one greedy org
    # cannot fill a host and refuse every other org's provisions.
    org_max_environments: int = Field(200, ge=0)
    workspace_max_environments: int = Field(200, ge=0)
    org_max_running_commands: int = Field(500, ge=0)
    workspace_max_running_commands: int = Field(500, ge=0)
    # A connection that sends no complete request head within this many seconds is answered 408
    # and closed; a request body not received whole within its own bound, 408 too.
    header_timeout_sec: float = Field(10.0, gt=0)
    body_timeout_sec: float = Field(30.0, gt=0)
    # An idle keep-alive connection is closed after this long: longer than clients keep theirs
    # (httpx, and so Dreadnode's SDK: 5 s; load balancers: 60 s), so that the client closes
    # first. A server closing a connection as the client sends on it fails that request, and a
    # POST is not retried.
    keep_alive_sec: int = Field(65, ge=1)
    # Retry-After (s) of a 429 for an environment at its command limit or a full queue.
    busy_retry_after_sec: int = Field(1, ge=1)
    # How long an execute's Idempotency-Key is remembered, with the first answer (never less
    # than until that command's deadline).
    idempotency_ttl_sec: int = Field(600, ge=1)
    # Torn-down records stay listable this long.
    record_retention_sec: int = Field(24 * 3600, ge=0)
    reap_interval_sec: int = Field(5, ge=1, le=59)
    logs_tail_lines: int = Field(200, ge=1)
    # "json" (one JSON object per line, with the request id) or "text".
    log_format: str = Field("json", pattern="^(json|text)$")

    @model_validator(mode="after")
    def _runner_link_fits(self) -> "Settings":
        link = self.runner_link_dir
        if self.runner_transport == RunnerTransportKind.SOCKET and link is None:
            raise ValueError("TASKENV_RUNNER_TRANSPORT=socket needs TASKENV_RUNNER_LINK_DIR")
        if link is not None and not (link.is_absolute() and len(bytes(link)) <= MAX_RUNNER_LINK_DIR):
            raise ValueError(
                f"TASKENV_RUNNER_LINK_DIR must be absolute, at most {MAX_RUNNER_LINK_DIR} characters"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> "Settings":
        if self.heartbeat_sec * 2 > self.host_dead_after_sec:
            raise ValueError("TASKENV_HEARTBEAT_SEC must be at most half of TASKENV_HOST_DEAD_AFTER_SEC")
        return self

    # Past this many unknown API keys or execute tokens from one address within the window,
    # that address gets 429 (with Retry-After) until the window ends.
    auth_fail_limit: int = Field(100, ge=1)
    auth_fail_window_sec: int = Field(60, ge=1)

    @field_validator("secrets_key")
    @classmethod
    def _secrets_key_usable(cls, value: str) -> str:
        if value.strip():
            from taskenv.shared.sealing import key_problem

            problem = key_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("min_client_versions", mode="before")
    @classmethod
    def _parse_min_client_versions(cls, value: object) -> object:
        if isinstance(value, dict):
            value = ",".join(f"{product}={wanted}" for product, wanted in value.items())
        return parse_minimums(value) if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
