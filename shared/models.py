"""Wire models: what clients send and receive (Dreadnode's task-environment API)."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

EXEC_TIMEOUT_MAX_SEC = 600
# The command is one argument of the worker's `sh -c` (worker/execute.py), and the kernel takes
# at most MAX_ARG_STRLEN bytes per argument (32 pages of 4 KiB, its terminating NUL included):
# counted in UTF-8 bytes, not characters. Longer commands could only fail inside the sandbox,
# looking like the command's own failure.
COMMAND_MAX_BYTES = 128 * 1024 - 1
# `[org/]name[@version]`, each part non-empty. Dreadnode's SDK writes kebab-case names and
# MAJOR.MINOR.PATCH or `latest`; taskenv's task files also allow capitals, dots and underscores
# and versions such as "1" (shared/tasks.py), so a part is what those files allow.
_REF_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
TASK_REF_PATTERN = rf"^(?:{_REF_PART}/)?{_REF_PART}(?:@{_REF_PART})?$"
# `name@latest` (any case, as the SDK reads it) is the name's highest version.
LATEST = "latest"
_SECONDS_MAX_DIGITS = 10
# Larger bodies are refused before they are read whole.
REQUEST_BODY_MAX_BYTES = 1024 * 1024


class EnvironmentState(StrEnum):
    BUILDING = "building"
    PROVISIONING = "provisioning"
    READY = "ready"
    FAILED = "failed"
    TORN_DOWN = "torn_down"


def _whole_seconds(value: Any) -> Any:
    """A JSON integer (30, or 30.0: JSON Schema's integers), or a string of ASCII digits ("30",
    as Dreadnode's API takes it). Python's own int parsing would also take "5_0", " 5 ", "+5"
    and non-ASCII digits; pydantic's would take booleans. Other types go on to pydantic's refusal."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number of seconds, not a boolean")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= _SECONDS_MAX_DIGITS):
            raise ValueError(
                f"must be a whole number of seconds: an integer, or a string of 1 to"
                f" {_SECONDS_MAX_DIGITS} digits 0-9"
            )
        return int(value)
    return value


# At least 1 (stated inside the type, so a JSON schema of `Seconds | None` keeps its `minimum`).
Seconds = Annotated[int, Field(ge=1), BeforeValidator(_whole_seconds)]


class ProvisionRequest(BaseModel):
    # Unknown fields are ignored, as Dreadnode's API does, so newer SDKs keep working.
    model_config = ConfigDict(extra="ignore")

    task_ref: str = Field(min_length=1, max_length=200, pattern=TASK_REF_PATTERN)
    inputs: dict[str, Any] | None = None
    secret_ids: list[str] | None = None
    project_id: str | None = None
    timeout_sec: Seconds | None = None
    model_overrides: dict[str, Any] | None = None


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # No `max_length` (characters): the limit is in bytes, checked below, and its error says so.
    command: str = Field(
        min_length=1,
        description=f"At most {COMMAND_MAX_BYTES} bytes in UTF-8",
        json_schema_extra={"pattern": "^[^\\u0000]*$", "maxLength": COMMAND_MAX_BYTES},
    )
    timeout_sec: Seconds = Field(30, le=EXEC_TIMEOUT_MAX_SEC)

    @field_validator("command")
    @classmethod
    def _passable_to_exec(cls, command: str) -> str:
        """What the kernel can pass as one process argument, refused here with a reason instead
        of failing inside the sandbox: a C string (no NUL) of at most MAX_ARG_STRLEN bytes."""
        if "\0" in command:
            raise ValueError("must not contain NUL characters: a shell command cannot carry them")
        size = len(command.encode("utf-8", "surrogatepass"))
        if size > COMMAND_MAX_BYTES:
            raise ValueError(
                f"must be at most {COMMAND_MAX_BYTES} bytes in UTF-8 (the kernel's limit on one"
                f" process argument), not {size}"
            )
        return command


class ExecuteResponse(BaseModel):
    exit_code: int
    output: str


class VerifyResponse(BaseModel):
    """POST …/verify (a taskenv extension): whether the environment passes its task's check."""

    passed: bool
    method: str = Field(description="The task's verification method: flag or script")
    detail: str = Field(description="Why, starting with the outcome's word (matched, mismatch, ...)")
    output: str = Field(description="The flag file's head or the script's output tail, at most 4 KiB")


class EnvironmentStatus(BaseModel):
    id: str
    state: EnvironmentState
    expires_at: datetime | None
    error: str | None
    # Both here as well: the SDK polls /status until `ready` and takes them from its answer.
    instruction: str | None = None
    # Dreadnode's shape, `{service: {"url", "host", "port", "urls": {"<port>": url}}}`, as the
    # SDK's templating reads it: a task's services, reachable from the sandbox on its loopback.
    service_urls: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Environment(EnvironmentStatus):
    task_ref: str
    created_at: datetime
    # The task's verification as the SDK's `verify_env_state` reads it (None: the task has none).
    task_verification: dict[str, Any] | None = None


class ProvisionedEnvironment(Environment):
    execute_token: str


class EnvironmentPage(BaseModel):
    environments: list[Environment]
    page: int
    limit: int
    total: int
    total_pages: int
    has_next: bool
    has_previous: bool


class LogsResponse(BaseModel):
    logs: str


class Health(BaseModel):
    status: str


# The identity routes the `dn` CLI reads before any environment command. taskenv has no users
# or org admin: an API key is one org and workspace, and these describe just that (the fields
# are those Dreadnode's SDK requires).


class User(BaseModel):
    id: str
    username: str
    email_address: str


class Organization(BaseModel):
    id: str
    key: str
    name: str
    effective_max_sandbox_runtime_seconds: int
    max_sandbox_runtime_source_level: str
    effective_default_sandbox_runtime_seconds: int
    default_sandbox_runtime_source_level: str
    platform_max_sandbox_runtime_seconds: int
    platform_default_sandbox_runtime_seconds: int
    created_at: datetime
    updated_at: datetime


class Workspace(BaseModel):
    id: str
    key: str
    name: str
    org_id: str
    org_name: str
    is_default: bool
    created_at: datetime
    updated_at: datetime
