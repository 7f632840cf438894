"""The identity routes Dreadnode's `dn` CLI reads before any environment command
(`/user`, `/org/{org}`, `/org/{org}/ws[/{workspace}]`). taskenv has no users or org admin:
an API key *is* one org and workspace, and these routes describe just that."""

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import Workspace, authenticate, require_workspace
from api.state import app_state
from shared.errors import ErrorType, TaskenvError

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


def _organization(scope: Workspace, lifetime_max: int, lifetime_default: int) -> dict[str, Any]:
    return {
        "id": scope.org,
        "key": scope.org,
        "name": scope.org,
        "effective_max_sandbox_runtime_seconds": lifetime_max,
        "max_sandbox_runtime_source_level": "platform",
        "effective_default_sandbox_runtime_seconds": min(lifetime_default, lifetime_max),
        "default_sandbox_runtime_source_level": "platform",
        "platform_max_sandbox_runtime_seconds": lifetime_max,
        "platform_default_sandbox_runtime_seconds": min(lifetime_default, lifetime_max),
        "created_at": _EPOCH,
        "updated_at": _EPOCH,
    }


def _workspace(scope: Workspace) -> dict[str, Any]:
    return {
        "id": f"{scope.org}/{scope.workspace}",
        "key": scope.workspace,
        "name": scope.workspace,
        "org_id": scope.org,
        "org_name": scope.org,
        "is_default": True,
        "created_at": _EPOCH,
        "updated_at": _EPOCH,
    }


async def get_user(request: Request) -> Response:
    scope = await authenticate(app_state(request).records, request)
    name = f"{scope.org}-{scope.workspace}"
    return JSONResponse({"id": name, "username": name, "email_address": f"{name}@taskenv.local"})


async def get_organization(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key is not valid for this organization")
    settings = state.settings
    return JSONResponse(_organization(scope, settings.max_lifetime_sec, settings.default_lifetime_sec))


async def list_workspaces(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key is not valid for this organization")
    return JSONResponse([_workspace(scope)])


async def get_workspace(request: Request) -> Response:
    scope = await require_workspace(app_state(request).records, request)
    return JSONResponse(_workspace(scope))
