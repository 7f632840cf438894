"""An org's secrets, under `/api/v1/org/{org}/secrets`, with the SDK's `UserSecret` shapes. Any
API key of the org manages them (a key of another org: 403); values are written, never read
back: every answer carries the same `masked_value`, which reveals nothing, not even a length.
An environment names secrets by id (`secret_ids`) and its commands get them by name.
"""

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskenv.api.auth import Workspace, authenticate
from taskenv.api.body import parse_json
from taskenv.api.state import app_state
from taskenv.shared import secrets_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.sealing import optional
from taskenv.shared.secret_models import SecretCreate, SecretUpdate, UserSecretsList, shown


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
