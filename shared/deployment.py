"""A deployment's identity: the one Redis it keeps its state in, named by an id stored there.

Several deployments may share one Docker engine (a test suite next to `taskenv up`, a staging
stack next to production). Every container carries its deployment's id as a label, and a
deployment lists, reaps and removes only containers with its own. The id is written once, by
the first worker ever to start against that Redis (`SET NX`): a random one, or
`TASKENV_DEPLOYMENT` when set. A worker remembers the id it started with, so a Redis that lost
everything (restarted empty, or a wrong URL) is recognised by the id missing or changed.
"""

import secrets

from redis.asyncio import Redis

from taskenv.shared import keys, scripts


class DeploymentMismatch(Exception):
    """TASKENV_DEPLOYMENT names another deployment than the one this Redis belongs to."""

    def __init__(self, wanted: str, held: str) -> None:
        super().__init__(
            f"TASKENV_DEPLOYMENT is {wanted!r} but this Redis belongs to deployment {held!r}:"
            " check TASKENV_REDIS_URL, or set TASKENV_DEPLOYMENT to the deployment's id"
        )


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def join(redis: Redis, wanted: str = "") -> str:
    """The id of the deployment this Redis belongs to, making it `wanted` (or a random id) if it
    has none yet. Raises `DeploymentMismatch` if `wanted` is set and Redis holds another."""
    proposed = wanted or secrets.token_hex(8)
    held = str(_text(await scripts.JOIN_DEPLOYMENT.run(redis, deployment=keys.DEPLOYMENT, proposed=proposed)))
    if wanted and held != wanted:
        raise DeploymentMismatch(wanted, held)
    return held


async def current(redis: Redis) -> str | None:
    """The id Redis holds now, or None if it holds none (wiped, or never joined)."""
    return _text(await redis.get(keys.DEPLOYMENT))
