"""An org's secrets, under `/api/v1/org/{org}/secrets`, with the SDK's `UserSecret` shapes. Any
API key of the org manages them (a key of another org: 403); values are written, never read
back: every answer carries the same `masked_value`, which reveals nothing, not even a length.
An environment names secrets by id (`secret_ids`) and its commands get them by name.
"""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskenv.api.auth import Workspace, authenticate
from taskenv.api.body import parse_json
from taskenv.api.state import app_state
from taskenv.shared import secrets_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.sealing import optional
from taskenv.shared.secrets_store import NAME_MAX_CHARS, NAME_PATTERN, VALUE_MAX_BYTES, SecretInfo

MASKED_VALUE = "********"

SecretValue = Annotated[
    str,
    Field(
        min_length=1,
        description=f"At most {VALUE_MAX_BYTES} bytes in UTF-8, no NUL: written, never read back",
        json_schema_extra={"pattern": "^[^\\u0000]*$", "maxLength": VALUE_MAX_BYTES},
    ),
]


class SecretCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(
        max_length=NAME_MAX_CHARS,
        pattern=NAME_PATTERN,
        description="The environment variable commands get it as; unique in the org",
    )
    value: SecretValue


class SecretUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: SecretValue


class UserSecret(BaseModel):
    """A secret as answers show it: never its value."""

    id: str
    name: str
    provider: str | None = None
    masked_value: str = MASKED_VALUE
    created_at: str
    updated_at: str


class UserSecretsList(BaseModel):
    secrets: list[UserSecret]
    total: int


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def shown(info: SecretInfo) -> UserSecret:
    return UserSecret(
        id=info.id, name=info.name, created_at=_iso(info.created_at), updated_at=_iso(info.updated_at)
    )


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


async def _in_org(request: Request) -> Workspace:
    scope = await authenticate(app_state(request).records, request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key is not valid for this organization")
    return scope


async def create_secret(request: Request) -> Response:
    scope = await _in_org(request)
    body = await parse_json(request, SecretCreate)
    state = app_state(request)
    sealer = optional(state.settings.secrets_key)
    info = await secrets_store.create(state.records, sealer, scope.org, body.name, body.value)
    return _json(shown(info), 201)


async def list_secrets(request: Request) -> Response:
    scope = await _in_org(request)
    found = await secrets_store.listed(app_state(request).records, scope.org)
    return _json(UserSecretsList(secrets=[shown(info) for info in found], total=len(found)))


async def get_secret(request: Request) -> Response:
    scope = await _in_org(request)
    info = await secrets_store.get(app_state(request).records, scope.org, request.path_params["secret_id"])
    return _json(shown(info))


async def update_secret(request: Request) -> Response:
    scope = await _in_org(request)
    body = await parse_json(request, SecretUpdate)
    state = app_state(request)
    sealer = optional(state.settings.secrets_key)
    info = await secrets_store.update(
        state.records, sealer, scope.org, request.path_params["secret_id"], body.value
    )
    return _json(shown(info))


async def delete_secret(request: Request) -> Response:
    scope = await _in_org(request)
    secret_id = request.path_params["secret_id"]
    if not await secrets_store.delete(app_state(request).records, scope.org, secret_id):
        raise secrets_store.not_found([secret_id])
    return Response(status_code=204)


def routes() -> list[Route]:
    secrets = "/api/v1/org/{org}/secrets"
    one = secrets + "/{secret_id}"
    return [
        Route(secrets, create_secret, methods=["POST"]),
        Route(secrets, list_secrets, methods=["GET"]),
        Route(one, get_secret, methods=["GET"]),
        Route(one, update_secret, methods=["PUT"]),
        Route(one, delete_secret, methods=["DELETE"]),
    ]
