"""Wire models: what clients send and receive (Dreadnode's task-environment API)."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXEC_TIMEOUT_MAX_SEC = 600
COMMAND_MAX_CHARS = 256 * 1024
# Larger bodies are refused before they are read whole.
REQUEST_BODY_MAX_BYTES = 1024 * 1024


class EnvironmentState(StrEnum):
    BUILDING = "building"
    PROVISIONING = "provisioning"
    READY = "ready"
    FAILED = "failed"
    TORN_DOWN = "torn_down"


class ProvisionRequest(BaseModel):
    # Unknown fields are ignored, as Dreadnode's API does, so newer SDKs keep working.
    model_config = ConfigDict(extra="ignore")

    task_ref: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] | None = None
    secret_ids: list[str] | None = None
    project_id: str | None = None
    timeout_sec: int | None = Field(None, ge=1)
    model_overrides: dict[str, Any] | None = None


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: str = Field(
        min_length=1, max_length=COMMAND_MAX_CHARS, json_schema_extra={"pattern": "^[^\\u0000]*$"}
    )
    # Lax as Dreadnode's API is: "30" and 30.0 are 30; 30.5, null and booleans are refused.
    timeout_sec: int = Field(30, ge=1, le=EXEC_TIMEOUT_MAX_SEC)

    @field_validator("command")
    @classmethod
    def _passable_to_exec(cls, command: str) -> str:
        """A process's arguments are C strings: a NUL cannot be passed. Refused here with a
        reason, instead of failing in the engine."""
        if "\0" in command:
            raise ValueError("must not contain NUL characters: a shell command cannot carry them")
        return command

    @field_validator("timeout_sec", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds, not a boolean")
        return value


class ExecuteResponse(BaseModel):
    exit_code: int
    output: str


class EnvironmentStatus(BaseModel):
    id: str
    state: EnvironmentState
    expires_at: datetime | None
    error: str | None


class Environment(EnvironmentStatus):
    task_ref: str
    created_at: datetime
    instruction: str | None
    # Dreadnode's shape, `{service: {"url": ..., "port": ...}}`, as the SDK reads it; taskenv's
    # sandboxes have no network, so it is always empty.
    service_urls: dict[str, dict[str, Any]] = Field(default_factory=dict)


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
