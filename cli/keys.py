"""`taskenv keys`: create, list and revoke API keys (shared/apikeys.py). A key is printed once,
at creation; afterwards only its id (the start of its hash) is ever shown."""

import json

from taskenv.cli.failures import Refused
from taskenv.cli.table import table
from taskenv.shared import apikeys
from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings


async def create(settings: Settings, org: str, workspace: str) -> str:
    redis = records_client(settings)
    try:
        return await apikeys.create(redis, org, workspace)
    finally:
        await redis.aclose()


async def count(settings: Settings) -> int:
    redis = records_client(settings)
    try:
        return len(await apikeys.listed(redis))
    finally:
        await redis.aclose()


async def list_keys(settings: Settings, org: str | None, *, as_json: bool) -> str:
    redis = records_client(settings)
    try:
        found = await apikeys.listed(redis, org)
    finally:
        await redis.aclose()
    if as_json:
        return json.dumps([k.to_json() for k in found], indent=2)
    rows = [[k.id, k.org, k.workspace, k.to_json()["created_at"]] for k in found]
    return table(rows, ["ID", "ORG", "WORKSPACE", "CREATED"]) if rows else "no API key (taskenv keys create)"


async def revoke(settings: Settings, key_id: str) -> str:
    redis = records_client(settings)
    try:
        revoked = await apikeys.revoke(redis, key_id)
    except apikeys.UnknownKey as exc:
        raise Refused(str(exc)) from None
    finally:
        await redis.aclose()
    return f"revoked {revoked.id} ({revoked.org}/{revoked.workspace}): refused from now on"
