"""Secrets stored per org: a name (an environment variable's) and a value that is written, never
read back by anyone but a worker putting it into an environment.

One Redis hash per org (`keys.org_secrets`): `id:<id>` holds a record (JSON: name, value sealed
under TASKENV_SECRETS_KEY, times) and `name:<name>` the id, so a name is unique in its org. The
scripts below change both fields at once. Listing, checking ids and deleting never open a value
(nor need the key); only `create`, `update` and `values` do, with the process's `Sealer`
(None: the deployment has no key, and they answer 503).
"""

import json
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from taskenv.shared import keys, scripts
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.scripts import SecretOutcome
from taskenv.shared.sealing import Sealer, Unsealable, required

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
NAME_MAX_CHARS = 128
VALUE_MAX_BYTES = 64 * 1024
# An org's secrets at most: each environment that names some reads them in one round trip.
MAX_PER_ORG = 1000
# Ids named at once by one request (an environment's `secret_ids`).
MAX_IDS = 100
_NAME = re.compile(NAME_PATTERN)


class SecretInfo(BaseModel):
    """A secret as anyone may see it: never its value."""

    id: str
    name: str
    created_at: datetime
    updated_at: datetime


def _time(stored: Any) -> datetime:
    try:
        return datetime.fromtimestamp(float(stored), UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.fromtimestamp(0, UTC)


def _record(raw: str) -> dict[str, Any]:
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError("a secret's record is not an object")
    return record


def _info(secret_id: str, record: dict[str, Any]) -> SecretInfo:
    return SecretInfo(
        id=secret_id,
        name=str(record.get("name", "")),
        created_at=_time(record.get("created_at")),
        updated_at=_time(record.get("updated_at")),
    )


def _invalid(field: str, message: str) -> TaskenvError:
    error = {"loc": ["body", field], "msg": message, "type": "value_error"}
    return TaskenvError(ErrorType.VALIDATION, f"Invalid secret {field}: {message}", errors=[error])


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise _invalid(
            "name",
            "must be an environment variable's name: a letter or _, then letters, digits or _,"
            f" at most {NAME_MAX_CHARS} characters",
        )
    return name


def check_value(value: str) -> bytes:
    """The value as stored: UTF-8 text an environment variable can hold."""
    if not value:
        raise _invalid("value", "must not be empty")
    if "\0" in value:
        raise _invalid("value", "must not contain NUL characters: an environment variable cannot")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("value", "must be valid UTF-8 text") from None
    if len(data) > VALUE_MAX_BYTES:
        raise _invalid("value", f"must be at most {VALUE_MAX_BYTES} bytes in UTF-8, not {len(data)}")
    return data


def _shown(secret_id: str) -> str:
    """An id as an answer may repeat it: only a well-formed one (nothing pasted by mistake)."""
    try:
        return str(uuid.UUID(secret_id))
    except (ValueError, TypeError, AttributeError):
        return "(malformed id)"


def not_found(ids: Iterable[str]) -> TaskenvError:
    shown = sorted({_shown(i) for i in ids})
    noun = "Secret" if len(shown) == 1 else "Secrets"
    return TaskenvError(ErrorType.NOT_FOUND, f"{noun} not found in this organization: {', '.join(shown)}")


def _fields(ids: Iterable[str]) -> list[str]:
    return [f"id:{secret_id}" for secret_id in ids]


def _distinct(ids: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_IDS:
        raise _invalid("secret_ids", f"name at most {MAX_IDS} secrets")
    return unique


def _seal(found: Sealer | None, data: bytes) -> str:
    return required(found).seal(data)


async def create(redis: Redis, sealer: Sealer | None, org: str, name: str, value: str) -> SecretInfo:
    check_name(name)
    sealed = _seal(sealer, check_value(value))
    now = repr(time.time())
    secret_id = str(uuid.uuid4())
    record = {"name": name, "value": sealed, "created_at": now, "updated_at": now}
    outcome = await scripts.CREATE_SECRET.run(
        redis,
        secrets=keys.org_secrets(org),
        id=secret_id,
        name=name,
        record=json.dumps(record),
        max=MAX_PER_ORG,
    )
    if outcome == SecretOutcome.NAME_TAKEN:
        raise TaskenvError(
            ErrorType.ALREADY_EXISTS, f"A secret named {name} already exists in this organization"
        )
    if outcome == SecretOutcome.FULL:
        raise TaskenvError(
            ErrorType.CONFLICT, f"This organization already has {MAX_PER_ORG} secrets, the most it may"
        )
    return _info(secret_id, record)


async def listed(redis: Redis, org: str) -> list[SecretInfo]:
    """Every secret of the org, oldest first; never a value."""
    found = await redis.hgetall(keys.org_secrets(org))  # type: ignore[misc]
    infos = []
    for field, raw in found.items():
        if field.startswith("id:"):
            try:
                infos.append(_info(field[3:], _record(raw)))
            except ValueError:
                continue
    return sorted(infos, key=lambda info: (info.created_at, info.id))


async def get(redis: Redis, org: str, secret_id: str) -> SecretInfo:
    raw = await redis.hget(keys.org_secrets(org), f"id:{secret_id}")  # type: ignore[misc]
    if raw is None:
        raise not_found([secret_id])
    return _info(secret_id, _record(raw))


async def update(redis: Redis, sealer: Sealer | None, org: str, secret_id: str, value: str) -> SecretInfo:
    """A new value; environments made before keep the one they were made with."""
    sealed = _seal(sealer, check_value(value))
    outcome = await scripts.UPDATE_SECRET.run(
        redis, secrets=keys.org_secrets(org), id=secret_id, value=sealed, updated_at=repr(time.time())
    )
    if outcome == SecretOutcome.MISSING:
        raise not_found([secret_id])
    return await get(redis, org, secret_id)


async def delete(redis: Redis, org: str, secret_id: str) -> bool:
    outcome = await scripts.DELETE_SECRET.run(redis, secrets=keys.org_secrets(org), id=secret_id)
    return bool(outcome == SecretOutcome.DELETED)


async def _records(redis: Redis, org: str, ids: Iterable[str]) -> dict[str, str]:
    """id -> stored record of each id; 404 naming every id the org does not have."""
    wanted = _distinct(ids)
    if not wanted:
        return {}
    rows = await redis.hmget(keys.org_secrets(org), _fields(wanted))  # type: ignore[misc]
    missing = [secret_id for secret_id, raw in zip(wanted, rows, strict=True) if raw is None]
    if missing:
        raise not_found(missing)
    return dict(zip(wanted, rows, strict=True))


async def check_ids(redis: Redis, org: str, ids: Iterable[str]) -> None:
    """404 naming the ids this org has no secret of (another org's included); opens nothing."""
    await _records(redis, org, ids)


async def values(redis: Redis, sealer: Sealer | None, org: str, ids: Iterable[str]) -> dict[str, str]:
    """name -> value of each secret named: what a worker puts into an environment."""
    records = await _records(redis, org, ids)
    if not records:
        return {}
    opener = required(sealer)
    found: dict[str, str] = {}
    for secret_id, raw in records.items():
        try:
            record = _record(raw)
            found[str(record["name"])] = opener.unseal(str(record["value"])).decode("utf-8")
        except (Unsealable, ValueError, KeyError, UnicodeDecodeError):
            raise TaskenvError(
                ErrorType.APP,
                f"Secret {_shown(secret_id)} cannot be opened with this deployment's"
                " TASKENV_SECRETS_KEY (was the key changed? restore it, or store the secret again)",
            ) from None
    return found
