"""The identity routes Dreadnode's `dn` CLI reads before any environment command
(`/user`, `/org/{org}`, `/org/{org}/ws[/{workspace}]`). taskenv has no users or org admin:
an API key *is* one org and workspace, and these routes describe just that."""

from datetime import UTC, datetime

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response

from taskenv.api.auth import Workspace as Scope
from taskenv.api.auth import authenticate, require_workspace
from taskenv.api.state import app_state
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import Organization, User, Workspace

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_WORKSPACES = TypeAdapter(list[Workspace])


def _json(body: str | bytes) -> Response:
    return Response(body, media_type="application/json")


def _organization(scope: Scope, lifetime_max: int, lifetime_default: int) -> Organization:
    default = min(lifetime_default, lifetime_max)
    return Organization(
        id=scope.org,
        key=scope.org,
        name=scope.org,
        effective_max_sandbox_runtime_seconds=lifetime_max,
        max_sandbox_runtime_source_level="platform",
        effective_default_sandbox_runtime_seconds=default,
        default_sandbox_runtime_source_level="platform",
        platform_max_sandbox_runtime_seconds=lifetime_max,
        platform_default_sandbox_runtime_seconds=default,
        created_at=_EPOCH,
        updated_at=_EPOCH,
    )


def _workspace(scope: Scope) -> Workspace:
    return Workspace(
        id=f"{scope.org}/{scope.workspace}",
        key=scope.workspace,
        name=scope.workspace,
        org_id=scope.org,
        org_name=scope.org,
        is_default=True,
        created_at=_EPOCH,
        updated_at=_EPOCH,
    )


async def _in_org(request: Request) -> Scope:
    scope = await authenticate(app_state(request).records, request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key is not valid for this organization")
    return scope


async def get_user(request: Request) -> Response:
    scope = await authenticate(app_state(request).records, request)
    name = f"{scope.org}-{scope.workspace}"
    user = User(id=name, username=name, email_address=f"{name}@taskenv.local")
    return _json(user.model_dump_json())


async def get_organization(request: Request) -> Response:
    scope = await _in_org(request)
    settings = app_state(request).settings
    organization = _organization(scope, settings.max_lifetime_sec, settings.default_lifetime_sec)
    return _json(organization.model_dump_json())


async def list_workspaces(request: Request) -> Response:
    scope = await _in_org(request)
    return _json(_WORKSPACES.dump_json([_workspace(scope)]))


async def get_workspace(request: Request) -> Response:
    scope = await require_workspace(app_state(request).records, request)
    return _json(_workspace(scope).model_dump_json())
