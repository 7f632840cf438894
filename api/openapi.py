"""The OpenAPI 3.1 document (`/api/v1/openapi.json`) and its offline docs page (`/api/v1/docs`).

Paths and methods come from the app's own routes (api/app.py lists them, once); what each route
takes and answers is declared here, by route name, with the pydantic models the handlers use
(shared/models.py) and the error envelope of shared/errors.py, so the document cannot drift
from the wire. Every route must have an entry (a unit test checks), or be marked
`include_in_schema=False`.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib.resources import files
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from taskenv.api.environments import ListQuery, StatusQuery
from taskenv.shared.errors import STATUS, ErrorEnvelope, ExecTimeoutEnvelope
from taskenv.shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from taskenv.shared.idempotency import MAX_KEY_CHARS as IDEMPOTENCY_KEY_MAX_CHARS
from taskenv.shared.models import (
    Environment,
    EnvironmentPage,
    EnvironmentStatus,
    ExecuteRequest,
    ExecuteResponse,
    Health,
    LogsResponse,
    Organization,
    ProvisionedEnvironment,
    ProvisionRequest,
    User,
    VerifyResponse,
    Workspace,
)
from taskenv.shared.secret_models import SecretCreate, SecretUpdate, UserSecret, UserSecretsList
from taskenv.shared.user_agents import VERSION

OPENAPI_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/v1/docs"


class Auth(StrEnum):
    NONE = "none"
    API_KEY = "api_key"
    EXECUTE_TOKEN = "execute_token"  # noqa: S105 (a kind of credential, not one)


@dataclass(frozen=True)
class Doc:
    """What one route takes and answers. `ok` is the success status and its body: a model, a
    list of a model, a media type for non-JSON bodies, or None for no body. `errors` lists the
    route's own error statuses; those that follow from its credential, body or query are added
    by `statuses`."""

    summary: str
    tag: str
    auth: Auth
    ok: tuple[int, type[BaseModel] | tuple[type[BaseModel]] | str | None]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: tuple[dict[str, Any], ...] = ()  # request header parameters (not credentials)
    description: str = ""

    def statuses(self, path_params: Iterable[str]) -> list[int]:
        found = {*self.errors, *_EVERY_ROUTE_ERRORS}
        if self.auth is not Auth.NONE:
            # Missing or unknown; too many unknown ones or the org's rate; Redis is down.
            found |= {401, 429, 503}
        if self.auth is Auth.EXECUTE_TOKEN or "org" in path_params:
            found.add(403)  # a real credential for another org, workspace or environment
        if self.body is not None:
            # 408: the body did not arrive whole within TASKENV_BODY_TIMEOUT_SEC (api/http.py).
            found |= {400, 408, 413, 422}
        if self.query is not None:
            found.add(422)
        return sorted(found)


# Every route may answer these: a client older than the operator's minimum, or a bug.
_EVERY_ROUTE_ERRORS = (426, 500)

DOCS: dict[str, Doc] = {
    "health": Doc("Liveness of the API process", "service", Auth.NONE, (200, Health)),
    "metrics": Doc(
        "Prometheus metrics", "service", Auth.NONE, (200, "text/plain; version=0.0.4; charset=utf-8")
    ),
    "get_user": Doc(
        "The caller, as the dn CLI reads it",
        "identity",
        Auth.API_KEY,
        (200, User),
        description="An API key belongs to one org and workspace; the user is named after them.",
    ),
    "get_organization": Doc("The caller's organization", "identity", Auth.API_KEY, (200, Organization)),
    "list_workspaces": Doc(
        "The workspaces of the caller's organization visible to its key",
        "identity",
        Auth.API_KEY,
        (200, (Workspace,)),
    ),
    "get_workspace": Doc("The caller's workspace", "identity", Auth.API_KEY, (200, Workspace)),
    "create_environment": Doc(
        "Provision a task environment",
        "environments",
        Auth.API_KEY,
        (201, ProvisionedEnvironment),
        (404,),
        body=ProvisionRequest,
        description="Answers at once in state `provisioning` with the one-time `execute_token`; "
        "poll `/status` until `ready`. 404: unknown task.",
    ),
    "list_environments": Doc(
        "List the workspace's environments, newest first",
        "environments",
        Auth.API_KEY,
        (200, EnvironmentPage),
        query=ListQuery,
    ),
    "get_environment": Doc("One environment", "environments", Auth.API_KEY, (200, Environment), (404,)),
    "get_status": Doc(
        "An environment's state (poll it until ready, or wait with `wait_sec`: a taskenv extension)",
        "environments",
        Auth.API_KEY,
        (200, EnvironmentStatus),
        (404,),
        query=StatusQuery,
    ),
    "delete_environment": Doc(
        "Tear down an environment (idempotent)",
        "environments",
        Auth.API_KEY,
        (204, None),
        (404, 502),
        description="204 once the container is removed. 502: the Docker engine refused.",
    ),
    "get_logs": Doc(
        "Tail of the sandbox's own output",
        "environments",
        Auth.API_KEY,
        (200, LogsResponse),
        (404, 409, 502, 504),
        description="409: the environment is not `ready`. 504: its host's worker did not answer.",
    ),
    "execute": Doc(
        "Run a shell command in the environment",
        "environments",
        Auth.EXECUTE_TOKEN,
        (200, ExecuteResponse),
        (404, 409, 502, 504),
        body=ExecuteRequest,
        headers=(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_CHARS},
                "description": "A retry with the same key in the same environment gets the first "
                "request's answer instead of running the command again (409 with another body).",
            },
        ),
        description="`sh` evaluates `command` as the task's user; stderr is merged into stdout in "
        "order. 409: the environment is not `ready`, or the Idempotency-Key was used with "
        "another body. 429: also when too many commands already run in it (see `Retry-After`). "
        "502 `container_gone: …`: its container was removed or stopped outside taskenv. 504: "
        "`timeout_sec` passed; the body carries the partial `output`.",
    ),
    "verify_environment": Doc(
        "Check the environment against its task's verification (a taskenv extension)",
        "environments",
        Auth.API_KEY,
        (200, VerifyResponse),
        (404, 409, 422, 502, 504),
        description="`flag`: the file at the task's `path` in the sandbox, stripped, against its "
        "`value` or `hash` (`alg:hex`, bare hex = sha256); `script`: the task's script runs in the "
        "sandbox within its `timeout`, exit 0 passes. A check that fails or runs out of time "
        "answers 200 with `passed: false` and the reason in `detail`. 409: the environment is not "
        "`ready`, or its task declares no verification. 422 `unsupported`: a judge method (this "
        "deployment runs no LLM judge; the SDK's verify_env_state runs it from "
        "`task_verification`). 502: the Docker engine failed. 504: its host's worker did not answer.",
    ),
    "create_secret": Doc(
        "Store a secret in the organization",
        "secrets",
        Auth.API_KEY,
        (201, UserSecret),
        (409,),
        body=SecretCreate,
        description="The value is sealed at rest and never answered (`masked_value` is constant). "
        "409: the org has a secret of that name. 503: the deployment has no TASKENV_SECRETS_KEY.",
    ),
    "list_secrets": Doc(
        "The organization's secrets, never a value", "secrets", Auth.API_KEY, (200, UserSecretsList)
    ),
    "get_secret": Doc("One secret, never its value", "secrets", Auth.API_KEY, (200, UserSecret), (404,)),
    "update_secret": Doc(
        "Replace a secret's value",
        "secrets",
        Auth.API_KEY,
        (200, UserSecret),
        (404,),
        body=SecretUpdate,
        description="Environments made before keep the value they were made with. 503: the "
        "deployment has no TASKENV_SECRETS_KEY.",
    ),
    "delete_secret": Doc("Delete a secret", "secrets", Auth.API_KEY, (204, None), (404,)),
}

_ERROR_TEXT = {
    400: "Malformed JSON, a body that is not an object, or a content type other than JSON",
    401: "Missing or unknown credential",
    403: "A valid credential for another organization, workspace or environment",
    404: "No such environment in this workspace, or unknown task or secret",
    408: "The request body did not arrive whole in time (TASKENV_BODY_TIMEOUT_SEC); the connection is closed",
    409: "The environment is in the wrong state for this, or a secret's name is taken",
    413: "Request body over 1 MiB",
    422: "The body or query fails validation; `errors` lists every field with its `loc`",
    426: "Client older than the operator's minimum (TASKENV_MIN_CLIENT_VERSIONS); `detail` names it",
    429: "Too many requests (the org's rate, failed authentications from this address, a busy "
    "environment, a full queue, the org's or workspace's quota of live environments or running "
    "commands, named in `detail`); retry after `Retry-After` seconds",
    500: "Internal error",
    503: "The service's store (Redis) is unavailable or refuses writes; retry after `Retry-After` seconds",
    502: "The Docker engine failed (container gone, daemon refusing)",
    504: "The deadline passed",
}

_SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "ApiKeyBearer": {"type": "http", "scheme": "bearer", "description": "The API key as a bearer token"},
    "EnvironmentToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Environment-Token",
        "description": "The environment's execute token, bare or as `Bearer <token>`",
    },
}
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.NONE: [],
    Auth.API_KEY: [{"ApiKey": []}, {"ApiKeyBearer": []}],
    Auth.EXECUTE_TOKEN: [{"EnvironmentToken": []}],
}


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[Route]:
    """Every endpoint route with its full path (Starlette's `{param}` syntax is OpenAPI's)."""
    for route in routes:
        if isinstance(route, Mount) and route.routes:
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:
            yield Route(prefix + route.path, route.endpoint, methods=route.methods, name=route.name)


def undocumented(routes: list[BaseRoute]) -> list[str]:
    return [f"{sorted(r.methods or ())} {r.path} ({r.name})" for r in _walk(routes) if r.name not in DOCS]


class _Schemas:
    """Component schemas for every model used, in the mode each is used in."""

    def __init__(self) -> None:
        inputs: set[type[BaseModel]] = {d.body for d in DOCS.values() if d.body}
        inputs |= {d.query for d in DOCS.values() if d.query}
        outputs: set[type[BaseModel]] = {ErrorEnvelope, ExecTimeoutEnvelope}
        for doc in DOCS.values():
            body = doc.ok[1]
            if isinstance(body, tuple):
                outputs.add(body[0])
            elif isinstance(body, type):
                outputs.add(body)
        keyed: list[tuple[type[BaseModel], JsonSchemaMode]] = [
            (m, "validation") for m in sorted(inputs, key=str)
        ]
        keyed += [(m, "serialization") for m in sorted(outputs, key=str)]
        self.names, top = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
        self.components: dict[str, Any] = top.get("$defs", {})

    def of(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.names[(model, mode)])

    def query_parameters(self, model: type[BaseModel]) -> list[dict[str, Any]]:
        # The query model stays out of the components: each field is a parameter of its own.
        name = self.of(model, "validation")["$ref"].rsplit("/", 1)[1]
        schema = self.components.pop(name)
        required = set(schema.get("required", ()))
        return [
            {"name": field, "in": "query", "required": field in required, "schema": prop}
            for field, prop in schema["properties"].items()
        ]


def _error_response(status: int, envelope: type[ErrorEnvelope], schemas: _Schemas) -> dict[str, Any]:
    types = sorted(str(t) for t, s in STATUS.items() if s == status)
    schema = {
        "allOf": [schemas.of(envelope, "serialization")],
        "properties": {"code": {"const": status}, "type": {"enum": types}},
    }
    response: dict[str, Any] = {
        "description": _ERROR_TEXT.get(status, "Error"),
        "content": {"application/json": {"schema": schema}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}}
    return response


def _ok_response(body: Any, schemas: _Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "No content" if body is None else "Success"}
    if isinstance(body, str):
        response["content"] = {body: {"schema": {"type": "string"}}}
    elif isinstance(body, tuple):
        schema = {"type": "array", "items": schemas.of(body[0], "serialization")}
        response["content"] = {"application/json": {"schema": schema}}
    elif body is not None:
        response["content"] = {"application/json": {"schema": schemas.of(body, "serialization")}}
    return response


def _operation(route: Route, doc: Doc, schemas: _Schemas) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.param_convertors
    ]
    if doc.query is not None:
        parameters += schemas.query_parameters(doc.query)
    parameters += doc.headers
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": doc.summary,
        "tags": [doc.tag],
        "security": _SECURITY[doc.auth],
        "parameters": parameters,
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.of(doc.body, "validation")}},
        }
    responses = {str(doc.ok[0]): _ok_response(doc.ok[1], schemas)}
    for status in doc.statuses(route.param_convertors):
        envelope = ExecTimeoutEnvelope if (route.name, status) == ("execute", 504) else ErrorEnvelope
        responses[str(status)] = _error_response(status, envelope, schemas)
    operation["responses"] = responses
    return operation


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in _walk(routes):
        doc = DOCS.get(route.name)
        if doc is None:
            continue  # tests/test_unit_openapi.py fails on this; the server still answers
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(route, doc, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskenv",
            "version": VERSION,
            "description": "Self-hosted task environments behind Dreadnode's task-environment API. "
            "Every error answers with the envelope `{code, detail, type, errors}`.",
        },
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": _SECURITY_SCHEMES},
    }


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = JSONResponse(build_document(request.app.routes)).body
    return Response(state.openapi, media_type="application/json")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taskenv API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
<link rel="icon" type="image/png" href="{static}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
window.onload = () => {{
  window.ui = SwaggerUIBundle({{url: "{openapi}", dom_id: "#swagger-ui", deepLinking: true}});
}};
</script>
</body>
</html>
"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_PAGE.format(static=DOCS_PATH + "/static", openapi=OPENAPI_PATH))


def routes() -> list[Route | Mount]:
    """The document and its docs page; Swagger UI's assets come from the swagger-ui-py package,
    so the page works without reaching any other host."""
    assets = StaticFiles(directory=str(files("swagger_ui") / "static"))
    return [
        Route(OPENAPI_PATH, openapi_json, methods=["GET"], include_in_schema=False),
        Route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False),
        Mount(DOCS_PATH + "/static", app=assets, name="docs_static"),
    ]
