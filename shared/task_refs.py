"""What a `task_ref` (`[org/]name[@version]`) names, as Dreadnode resolves it.

Without an org: the caller's own task of that name, else a public one of another org. With an org:
that org's task, if it is the caller's or public. Without a version, or `@latest`: the newest.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from taskenv.shared import task_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.task_oci import LATEST
from taskenv.shared.task_store import TaskVersion


@dataclass(frozen=True)
class TaskRef:
    org: str | None
    name: str
    version: str | None  # None: the newest

    @classmethod
    def parse(cls, ref: str) -> "TaskRef":
        owner, _, rest = ref.rpartition("/")
        name, _, version = rest.partition("@")
        return cls(owner or None, name, None if not version or version.lower() == LATEST else version)


async def visible_version(
    redis: Redis, caller: str, org: str, name: str, version: str | None
) -> TaskVersion | None:
    """`org`'s version (the newest for None), if the caller may read it."""
    if org != caller and not await task_store.is_public(redis, org, name):
        return None
    if version is None:
        return await task_store.latest(redis, org, name)
    return await task_store.get_version(redis, org, name, version)


async def resolve(redis: Redis, caller: str, ref: TaskRef) -> TaskVersion | None:
    """The version `ref` names for `caller`, or None if no stored task matches."""
    if ref.org is not None:
        return await visible_version(redis, caller, ref.org, ref.name, ref.version)
    own = await visible_version(redis, caller, caller, ref.name, ref.version)
    if own is not None:
        return own
    owners = [org for org, name in await task_store.public_names(redis) if name == ref.name and org != caller]
    if len(owners) > 1:
        raise TaskenvError(
            ErrorType.CONFLICT,
            f"Task {ref.name!r} is published by several organizations ({', '.join(owners)}):"
            f" name one, e.g. {owners[0]}/{ref.name}",
        )
    return await visible_version(redis, caller, owners[0], ref.name, ref.version) if owners else None
