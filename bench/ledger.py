"""Everything the run created, and taking it all down again whatever ended the run.

A creation whose request has left is finished even if the run is cancelled meanwhile
(`guarded`): otherwise an environment the server made would have no id on this side, and no
DELETE. Cleanup itself is completed through cancellation (`complete`). It has no overall
deadline: every request it waits for or sends is bounded by the HTTP client's own timeouts, and
giving up early is exactly how a run leaves environments behind. What fails is tried again, a
few passes apart.
"""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

CLEANUP_CONCURRENCY = 16
CLEANUP_PASSES = 3
RETRY_PAUSE_SEC = 1.0


@dataclass
class Ledger:
    """Live environment ids and raw container names; `created_*` keep the whole history."""

    envs: set[str] = field(default_factory=set)
    raw: set[str] = field(default_factory=set)
    created_envs: list[str] = field(default_factory=list)
    created_raw: list[str] = field(default_factory=list)
    pending: set[asyncio.Future[Any]] = field(default_factory=set)

    def add_env(self, env_id: str) -> None:
        self.envs.add(env_id)
        self.created_envs.append(env_id)

    def add_raw(self, name: str) -> None:
        self.raw.add(name)
        self.created_raw.append(name)


@dataclass
class CleanupResult:
    deleted_envs: int = 0
    removed_raw: int = 0
    failures: list[str] = field(default_factory=list)


async def guarded(ledger: Ledger, creation: Coroutine[Any, Any, T]) -> T:
    """Run a creation to its end even if the caller is cancelled; cleanup waits for it."""
    task = asyncio.ensure_future(creation)
    ledger.pending.add(task)
    task.add_done_callback(ledger.pending.discard)
    return await asyncio.shield(task)


async def complete(work: Coroutine[Any, Any, T]) -> T:
    """Finish `work` although this task is cancelled (Ctrl-C) while it runs, then pass the
    cancellation on."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def release(
    kind: str,
    names: list[str],
    undo: Callable[[str], Awaitable[None]],
    live: set[str],
    *,
    concurrency: int = CLEANUP_CONCURRENCY,
) -> list[str]:
    """Undo each of `names` (at most `concurrency` at once), dropping it from `live` once done;
    failures come back as lines, never raised, so one failure never leaves the rest behind."""
    limit = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(name: str) -> None:
        async with limit:
            try:
                await undo(name)
            except Exception as exc:
                failures.append(f"{kind} {name}: {type(exc).__name__}: {exc}")
                return
        live.discard(name)

    await asyncio.gather(*(one(name) for name in names))
    return failures


async def cleanup(
    ledger: Ledger,
    delete_env: Callable[[str], Awaitable[None]],
    remove_raw: Callable[[str], Awaitable[None]],
    *,
    passes: int = CLEANUP_PASSES,
    retry_pause_sec: float = RETRY_PAUSE_SEC,
) -> CleanupResult:
    """Delete every live environment and remove every raw container, after letting creations
    in flight finish so that what they made is known."""
    result = CleanupResult()
    if ledger.pending:
        await asyncio.wait(set(ledger.pending))
    envs, raw = sorted(ledger.envs), sorted(ledger.raw)
    failures: list[str] = []
    for attempt in range(passes):
        if not (ledger.envs or ledger.raw):
            break
        if attempt:
            await asyncio.sleep(retry_pause_sec)
        found = await asyncio.gather(
            release("environment", sorted(ledger.envs), delete_env, ledger.envs),
            release("container", sorted(ledger.raw), remove_raw, ledger.raw),
        )
        failures = [line for lines in found for line in lines]
    result.failures += failures
    result.deleted_envs = len(envs) - len(ledger.envs)
    result.removed_raw = len(raw) - len(ledger.raw)
    return result
