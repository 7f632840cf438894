"""The one place that knows error types, their HTTP status and the canonical envelope.

Dreadnode's envelope is a flat object: `{"code", "detail", "type", "errors"}`, plus
extra fields where an error carries data (a timed-out exec's partial `output`).
"""

import math
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorType(StrEnum):
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    METHOD_NOT_ALLOWED = "method_not_allowed_error"
    ALREADY_EXISTS = "already_exists_error"
    CONFLICT = "conflict_error"
    VALIDATION = "validation_error"
    INVALID_REQUEST = "invalid_request_error"
    PAYLOAD_TOO_LARGE = "payload_too_large_error"
    # The request (its head or its body) did not arrive whole in time (api/http.py).
    REQUEST_TIMEOUT = "request_timeout_error"
    UPGRADE_REQUIRED = "upgrade_required_error"
    RATE_LIMIT = "rate_limit_error"
    APP = "app_error"
    BAD_GATEWAY = "bad_gateway_error"
    UNAVAILABLE = "service_unavailable_error"
    TIMEOUT = "timeout_error"


STATUS: dict[ErrorType, int] = {
    ErrorType.AUTHENTICATION: 401,
    ErrorType.PERMISSION: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.ALREADY_EXISTS: 409,
    ErrorType.CONFLICT: 409,
    ErrorType.VALIDATION: 422,
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.PAYLOAD_TOO_LARGE: 413,
    ErrorType.REQUEST_TIMEOUT: 408,
    ErrorType.UPGRADE_REQUIRED: 426,
    ErrorType.RATE_LIMIT: 429,
    ErrorType.APP: 500,
    ErrorType.BAD_GATEWAY: 502,
    ErrorType.UNAVAILABLE: 503,
    ErrorType.TIMEOUT: 504,
}


class Reason(StrEnum):
    """Why an error happened, carried as data for code to test; its detail, for people and the
    SDK's readers, starts with the same word (`because`)."""

    HOST_LOST = "host_lost"
    WORKER_LOST = "worker_lost"
    CONTAINER_GONE = "container_gone"
    RUNNER_LOST = "runner_lost"
    TORN_DOWN = "torn_down"


_TYPE_OF_STATUS = {status: error_type for error_type, status in reversed(STATUS.items())}


class FieldError(BaseModel):
    """One field that failed validation (422)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorEnvelope(BaseModel):
    """The body of every error answer: what `TaskenvError.envelope()` sends and what the
    OpenAPI document describes. Errors that carry data add fields (see `ExecTimeoutEnvelope`)."""

    model_config = ConfigDict(extra="allow")

    code: int
    detail: str
    type: ErrorType
    errors: list[FieldError] | None


class ExecTimeoutEnvelope(ErrorEnvelope):
    """504 of an execute: the command's output up to its deadline comes with the error."""

    output: str


class TaskenvError(Exception):
    """An error that reaches the client as an envelope; raise it anywhere on a request's path."""

    def __init__(
        self,
        error_type: ErrorType,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        reason: Reason | None = None,
    ) -> None:
        super().__init__(detail)
        self.type = error_type
        self.detail = detail
        self.reason = reason
        self.errors = errors
        self.extra = extra or {}
        # HTTP headers of the answer, such as a 429's `Retry-After`.
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS[self.type]

    def envelope(self) -> dict[str, Any]:
        fields = {"code": self.status, "detail": self.detail, "type": self.type, "errors": self.errors}
        return ErrorEnvelope.model_validate({**self.extra, **fields}).model_dump(mode="json")

    def to_wire(self) -> dict[str, Any]:
        """What a worker returns through Redis so the API can raise the same error."""
        reason = str(self.reason) if self.reason else None
        return {"type": str(self.type), "detail": self.detail, "extra": self.extra, "reason": reason}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "TaskenvError":
        try:
            error_type = ErrorType(str(data.get("type")))
        except ValueError:
            error_type = ErrorType.APP
        reason = data.get("reason")
        return cls(
            error_type,
            str(data.get("detail", "")),
            extra=data.get("extra") or None,
            reason=Reason(reason) if reason in tuple(Reason) else None,
        )


def because(
    reason: Reason, why: str, error_type: ErrorType = ErrorType.BAD_GATEWAY, **kwargs: Any
) -> TaskenvError:
    """An error whose detail reads `<reason>: <why>` (the words clients match) and whose
    `reason` says the same as data."""
    return TaskenvError(error_type, f"{reason}: {why}", reason=reason, **kwargs)


def for_status(status: int, detail: str) -> TaskenvError:
    """An error for a bare HTTP status (Starlette's 404 for unknown routes, 405...)."""
    return TaskenvError(_TYPE_OF_STATUS.get(status, ErrorType.APP), detail)


def rate_limited(detail: str, retry_after_sec: float) -> TaskenvError:
    """429 with `Retry-After` in whole seconds (at least 1): the one way a refusal says when to
    come back."""
    return TaskenvError(
        ErrorType.RATE_LIMIT, detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_sec)))}
    )


def authentication_failed() -> TaskenvError:
    return TaskenvError(ErrorType.AUTHENTICATION, "Authentication failed")


def environment_not_found(env_id: str) -> TaskenvError:
    # Only a well-formed id is repeated: whatever else sits in the path (a token pasted there by
    # mistake) is not echoed into an answer that clients log.
    try:
        shown = str(uuid.UUID(env_id))
    except ValueError:
        shown = "with that id"
    return TaskenvError(ErrorType.NOT_FOUND, f"Environment {shown} not found")
