"""API keys as the operator manages them: created, listed by org, revoked.

A key is stored only as its SHA-256 (`keys.api_key`), which is also how requests look it up;
the API keeps no copy of a key, so deleting that record refuses the key on the very next
request of every API process. Each key is also in its org's index, so listing reads indexes
instead of scanning the keyspace. A key's id is the start of its hash: printable, and useless
for calling the API.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from taskenv.shared import keys, scripts
from taskenv.shared.secrets import hash_secret, new_api_key

ID_CHARS = 12
MIN_PREFIX_CHARS = 6


@dataclass(frozen=True)
class KeyInfo:
    id: str
    org: str
    workspace: str
    created_at: datetime

    def to_json(self) -> dict[str, str]:
        """As the API writes its records: ISO 8601 times."""
        return {
            "id": self.id,
            "org": self.org,
            "workspace": self.workspace,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }


class UnknownKey(LookupError):
    """No key has this id, or several have (too short a prefix)."""


def key_id(key_hash: str) -> str:
    return key_hash[:ID_CHARS]


async def create(redis: Redis, org: str, workspace: str) -> str:
    """Make a key, store only its hash, and return the key itself once."""
    key = new_api_key()
    key_hash = hash_secret(key)
    await scripts.CREATE_API_KEY.run(
        redis,
        api_key=keys.api_key(key_hash),
        org_index=keys.api_key_index(org),
        orgs=keys.API_KEY_ORGS,
        org=org,
        workspace=workspace,
        created_at=repr(time.time()),
        key_hash=key_hash,
    )
    return key


async def _hashes(redis: Redis, org: str | None) -> list[str]:
    orgs = [org] if org is not None else sorted(await redis.smembers(keys.API_KEY_ORGS))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for name in orgs:
            pipe.zrange(keys.api_key_index(name), 0, -1)
        found = await pipe.execute()
    return [key_hash for hashes in found for key_hash in hashes]


async def listed(redis: Redis, org: str | None = None) -> list[KeyInfo]:
    """Every indexed key (of one org, or all), oldest first; never the key itself."""
    hashes = await _hashes(redis, org)
    async with redis.pipeline(transaction=False) as pipe:
        for key_hash in hashes:
            pipe.hmget(keys.api_key(key_hash), ["org", "workspace", "created_at"])
        rows = await pipe.execute()
    found = [
        KeyInfo(key_id(key_hash), row[0], row[1], datetime.fromtimestamp(float(row[2] or 0), UTC))
        for key_hash, row in zip(hashes, rows, strict=True)
        if row[0] is not None
    ]
    return sorted(found, key=lambda k: k.created_at)


async def revoke(redis: Redis, prefix: str) -> KeyInfo:
    """Revoke the one key whose id starts with `prefix`; from the next request on, every API
    process refuses it."""
    prefix = prefix.strip().lower()
    if len(prefix) < MIN_PREFIX_CHARS:
        raise UnknownKey(f"give at least {MIN_PREFIX_CHARS} characters of the key's id (taskenv keys ls)")
    hashes = [h for h in await _hashes(redis, None) if prefix and h.startswith(prefix)]
    if len(hashes) != 1:
        raise UnknownKey(
            f"no API key has id {prefix!r}" if not hashes else f"{len(hashes)} API keys match {prefix!r}"
        )
    key_hash = hashes[0]
    org, workspace, created_at = await redis.hmget(  # type: ignore[misc]
        keys.api_key(key_hash), ["org", "workspace", "created_at"]
    )
    if org is None:
        raise UnknownKey(f"no API key has id {prefix!r}")
    await scripts.REVOKE_API_KEY.run(
        redis,
        api_key=keys.api_key(key_hash),
        org_index=keys.api_key_index(org),
        orgs=keys.API_KEY_ORGS,
        key_hash=key_hash,
        org=org,
    )
    return KeyInfo(key_id(key_hash), org, workspace, datetime.fromtimestamp(float(created_at or 0), UTC))
