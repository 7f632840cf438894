"""Who is calling: API keys for the workspace's routes, execute tokens for `execute`."""

import base64
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.requests import Request

from taskenv.api.exec_targets import ExecTarget
from taskenv.api.ratelimit import OrgRate, lookup_api_key
from taskenv.api.state import app_state
from taskenv.shared import apikeys, keys
from taskenv.shared.errors import ErrorType, TaskenvError, authentication_failed, environment_not_found
from taskenv.shared.secrets import hash_secret, matches


@dataclass(frozen=True)
class Workspace:
    org: str
    workspace: str


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else value.strip()


def _basic_password(value: str | None) -> str | None:
    """The password of `Basic base64(user:password)`: `dn task push` sends `__token__:<key>`."""
    scheme, _, encoded = (value or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return password or None


def api_key_of(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    return request.headers.get("x-api-key") or _basic_password(authorization) or _bearer(authorization)


def execute_token_of(request: Request) -> str | None:
    """`X-Environment-Token: <token>`, or `Bearer <token>` as the dreadnode SDK sends it."""
    return _bearer(request.headers.get("x-environment-token"))


async def authenticate(redis: Redis, request: Request) -> Workspace:
    """The org and workspace the caller's API key belongs to."""
    key = api_key_of(request)
    if not key:
        raise authentication_failed()
    state = app_state(request)
    lockout = state.lockout
    lockout.check(request)
    # Looked up by its SHA-256: the lookup's timing depends on the hash, not on the key. The
    # same round trip counts the request against its org's rate.
    found = await lookup_api_key(redis, hash_secret(key), time.time(), OrgRate.of(state.settings))
    if found is None:
        raise await lockout.failed(request)
    return Workspace(*found)


async def require_workspace(redis: Redis, request: Request) -> Workspace:
    """The path's org and workspace, if the caller's API key belongs to them."""
    scope = await authenticate(redis, request)
    if (scope.org, scope.workspace) != (request.path_params["org"], request.path_params["workspace"]):
        raise TaskenvError(
            ErrorType.PERMISSION, "This API key is not valid for this organization or workspace"
        )
    return scope


async def create_api_key(redis: Redis, org: str, workspace: str) -> str:
    """Make a key, store only its hash, and return the key itself once."""
    return await apikeys.create(redis, org, workspace)


async def require_execute_token(redis: Redis, request: Request, target: ExecTarget | None) -> None:
    """401 for a missing or unknown token; 403 for a real token of another workspace (whatever
    the id: whether it exists elsewhere is never told) or of another environment of this one;
    404 for an environment not in this workspace."""
    token = execute_token_of(request)
    if not token:
        raise authentication_failed()
    state = app_state(request)
    state.lockout.check(request)
    org, workspace = request.path_params["org"], request.path_params["workspace"]
    in_path = target is not None and (target.org, target.workspace) == (org, workspace)
    if in_path and target is not None and matches(token, target.token_hash):
        return
    owner_id = await redis.get(keys.execute_token(hash_secret(token)))
    if owner_id is None:
        raise await state.lockout.failed(request)
    owner = await state.targets.get(owner_id)
    if owner is None or (owner.org, owner.workspace) != (org, workspace):
        raise TaskenvError(
            ErrorType.PERMISSION, "This execute token is not valid for this organization or workspace"
        )
    if not in_path:
        raise environment_not_found(request.path_params["env_id"])
    raise TaskenvError(ErrorType.PERMISSION, "This execute token belongs to another environment")
