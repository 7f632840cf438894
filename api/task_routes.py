"""The task registry routes `dn task list|info|pull|delete|publish|unpublish` read, under
`/api/v1/org/{org}/tasks`, with Dreadnode's JSON shapes: a `tasks` page, a version's detail (with
`oci_digest`, which `dn task push` compares to skip an unchanged version), `versions` newest first,
`readme`. An org changes only its own tasks; it reads its own and other orgs' public ones.
Records are read through the API's bytes client (`state.arq`), as the OCI routes store them.
"""

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskenv.api.auth import Workspace, authenticate
from taskenv.api.body import parse_json, parse_query
from taskenv.api.state import app_state
from taskenv.shared import task_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.task_refs import visible_version
from taskenv.shared.task_store import TaskVersion

SANDBOX_PROVIDER = "docker"


class TaskListQuery(BaseModel):
    page: int = Field(1, ge=1)
    limit: int = Field(50, ge=1, le=200)
    search: str | None = Field(None, max_length=200)
    include_public: bool = False


class VisibilityRequest(BaseModel):
    is_public: bool


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def task_json(version: TaskVersion, *, is_public: bool) -> dict[str, Any]:
    return {
        "id": f"{version.qualified_name}@{version.version}",
        "org": version.org,
        "name": version.name,
        "version": version.version,
        "description": version.description,
        "instruction": version.instruction,
        "is_public": is_public,
        "difficulty": version.difficulty,
        "source": version.source,
        "tags": version.tags,
        "author": version.author,
        "license": version.license,
        "repository": version.repository,
        "max_agent_timeout_sec": version.max_agent_timeout_sec,
        "ports": version.ports,
        "egress": version.egress,
        "models": version.models,
        "verification_method": version.verification_method,
        "sandbox_provider": SANDBOX_PROVIDER,
        "oci_digest": version.oci_digest,
        "manifest_digest": version.manifest_digest,
        "size_bytes": version.size,
        "has_readme": version.readme is not None,
        "created_at": _time(version.created_at),
    }


async def _caller(request: Request) -> Workspace:
    return await authenticate(app_state(request).records, request)


async def _owner(request: Request) -> Workspace:
    scope = await _caller(request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key may change only its own organization's tasks")
    return scope


def _not_found(org: str, name: str, version: str | None = None) -> TaskenvError:
    return TaskenvError(ErrorType.NOT_FOUND, f"Task {org}/{name}{'@' + version if version else ''} not found")


async def _visible(request: Request, version: str | None) -> TaskVersion:
    scope = await _caller(request)
    org, name = request.path_params["org"], request.path_params["name"]
    found = await visible_version(app_state(request).arq, scope.org, org, name, version)
    if found is None:
        raise _not_found(org, name, version)
    return found


async def list_tasks(request: Request) -> Response:
    state = app_state(request)
    scope = await _owner(request)
    query = parse_query(request, TaskListQuery)
    owned = [(scope.org, name) for name in await task_store.names(state.arq, scope.org)]
    public = set(await task_store.public_names(state.arq))
    others = sorted(entry for entry in public if entry[0] != scope.org) if query.include_public else []
    rows = []
    for org, name in owned + others:
        latest = await task_store.latest(state.arq, org, name)
        if latest is not None and _matches(latest, query.search):
            rows.append(task_json(latest, is_public=(org, name) in public))
    start = (query.page - 1) * query.limit
    total_pages = max(1, -(-len(rows) // query.limit))
    return JSONResponse(
        {
            "tasks": rows[start : start + query.limit],
            "page": query.page,
            "limit": query.limit,
            "total": len(rows),
            "total_pages": total_pages,
            "has_next": query.page < total_pages,
            "has_previous": query.page > 1,
        }
    )


def _matches(version: TaskVersion, search: str | None) -> bool:
    if not search:
        return True
    needle = search.lower()
    return needle in version.name.lower() or needle in (version.description or "").lower()


async def get_task(request: Request) -> Response:
    found = await _visible(request, request.path_params.get("version"))
    is_public = await task_store.is_public(app_state(request).arq, found.org, found.name)
    return JSONResponse(task_json(found, is_public=is_public))


async def list_versions(request: Request) -> Response:
    found = await _visible(request, None)
    versions = await task_store.versions(app_state(request).arq, found.org, found.name)
    return JSONResponse({"name": found.name, "org": found.org, "versions": versions})


async def get_readme(request: Request) -> Response:
    found = await _visible(request, None)
    if found.readme is None:
        raise TaskenvError(ErrorType.NOT_FOUND, f"Task {found.qualified_name}@{found.version} has no README")
    return JSONResponse({"name": found.name, "version": found.version, "content": found.readme})


async def get_instruction(request: Request) -> Response:
    found = await _visible(request, None)
    return JSONResponse({"name": found.name, "version": found.version, "instruction": found.instruction})


async def delete_version(request: Request) -> Response:
    state = app_state(request)
    scope = await _owner(request)
    name, version = request.path_params["name"], request.path_params["version"]
    found = await task_store.get_version(state.arq, scope.org, name, version)
    if found is None or not await task_store.delete_version(state.arq, found):
        raise _not_found(scope.org, name, version)
    return Response(status_code=204)


async def set_visibility(request: Request) -> Response:
    state = app_state(request)
    scope = await _owner(request)
    name = request.path_params["name"]
    body = await parse_json(request, VisibilityRequest)
    if not await task_store.set_public(state.arq, scope.org, name, body.is_public):
        raise _not_found(scope.org, name)
    return JSONResponse({"org": scope.org, "name": name, "is_public": body.is_public})


def routes() -> list[Route]:
    """Outside the OpenAPI document, which describes the task-environment API."""
    tasks = "/api/v1/org/{org}/tasks"
    one = tasks + "/{name}"
    table = [
        (tasks, list_tasks, "GET"),
        (one + "/versions", list_versions, "GET"),
        (one + "/readme", get_readme, "GET"),
        (one + "/instruction", get_instruction, "GET"),
        (one + "/visibility", set_visibility, "PATCH"),
        (one, get_task, "GET"),
        (one + "/{version}", get_task, "GET"),
        (one + "/{version}", delete_version, "DELETE"),
    ]
    return [
        Route(path, endpoint, methods=[method], include_in_schema=False) for path, endpoint, method in table
    ]
