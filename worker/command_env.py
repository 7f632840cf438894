"""The variables an environment's commands run with (`ExecJob.env`): its template variables,
secrets and models, upper-cased (shared/task_variables.py).

The worker that provisions an environment seals them into its record (`variables`, with
TASKENV_SECRETS_KEY: shared/sealing.py); any worker of the host opens them at the environment's
first command there and keeps them in memory until its teardown. They never travel in a job's
payload, so Redis holds them only sealed, and a command costs no extra round trip after its
environment's first.
"""

import json
from collections import OrderedDict

from redis.asyncio import Redis

from taskenv.shared import keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.sealing import Sealer, SealingError

# Environments whose variables one worker process keeps opened; past it the least recently used
# is opened again at its next command.
CAPACITY = 10_000
FIELD = "variables"


class CommandEnvironments:
    def __init__(self, records: Redis, sealer: Sealer | None, capacity: int = CAPACITY) -> None:
        self._records = records
        self._sealer = sealer
        self._capacity = capacity
        self._opened: OrderedDict[str, dict[str, str]] = OrderedDict()

    async def of(self, env_id: str) -> dict[str, str]:
        """The environment's variables ({} when it has none)."""
        variables = self._opened.get(env_id)
        if variables is None:
            sealed = await self._records.hget(keys.environment(env_id), FIELD)  # type: ignore[misc]
            variables = self.open(sealed or "")
            self.remember(env_id, variables)
        else:
            self._opened.move_to_end(env_id)
        return variables

    def open(self, sealed: str) -> dict[str, str]:
        if not sealed:
            return {}
        if self._sealer is None:
            raise TaskenvError(
                ErrorType.UNAVAILABLE,
                "This environment's variables are sealed and this worker has no TASKENV_SECRETS_KEY",
            )
        try:
            opened = json.loads(self._sealer.unseal(sealed))
        except (SealingError, ValueError):
            raise TaskenvError(
                ErrorType.APP,
                "This environment's variables do not open with this worker's TASKENV_SECRETS_KEY",
            ) from None
        return {str(name): str(value) for name, value in opened.items()}

    def seal(self, variables: dict[str, str]) -> str:
        """The record's `variables` field for these ("" for none)."""
        if not variables:
            return ""
        if self._sealer is None:
            raise TaskenvError(
                ErrorType.UNAVAILABLE,
                "This environment has secrets or variables to keep, and this worker has no"
                " TASKENV_SECRETS_KEY (set it, or start with `taskenv up`, which makes one)",
            )
        return self._sealer.seal(json.dumps(variables).encode())

    def remember(self, env_id: str, variables: dict[str, str]) -> None:
        self._opened[env_id] = variables
        self._opened.move_to_end(env_id)
        while len(self._opened) > self._capacity:
            self._opened.popitem(last=False)

    def forget(self, env_id: str) -> None:
        self._opened.pop(env_id, None)
