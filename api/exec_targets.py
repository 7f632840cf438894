"""What the execute path needs to know of an environment, cached in each API process.

These fields never change once an environment exists, so after the first command only its
state is read, inside the admission script that also enqueues the command: one round trip
to Redis per command instead of two.
"""

from dataclasses import dataclass

from cachetools import LRUCache
from redis.asyncio import Redis

from taskenv.shared import store
from taskenv.shared.tasks import TaskSpec


@dataclass(frozen=True)
class ExecTarget:
    org: str
    workspace: str
    token_hash: str
    # Empty until a host's worker takes the provision: such a target is not cached.
    host: str
    user: str
    workdir: str


class TargetCache:
    def __init__(self, redis: Redis, size: int = 100_000) -> None:
        self.redis = redis
        self._targets: LRUCache[str, ExecTarget] = LRUCache(maxsize=size)

    async def get(self, env_id: str) -> ExecTarget | None:
        target = self._targets.get(env_id)
        if target is None:
            record = await store.load(self.redis, env_id)
            if record is None:
                return None
            spec = TaskSpec.model_validate_json(record.spec)
            target = ExecTarget(
                org=record.org,
                workspace=record.workspace,
                token_hash=record.token_hash,
                host=record.host,
                user=spec.user,
                workdir=spec.workdir,
            )
            if target.host:
                self._targets[env_id] = target
        return target

    def forget(self, env_id: str) -> None:
        self._targets.pop(env_id, None)
