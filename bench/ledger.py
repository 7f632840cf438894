"""Everything the run created, and taking it all down again whatever ended the run.

A creation whose request has left is finished even if the run is cancelled meanwhile
(`guarded`): otherwise an environment the server made would have no id on this side, and no
DELETE. Cleanup itself is completed through cancellation (`complete`) and bounded in time.
"""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

CLEANUP_CONCURRENCY = 16
PENDING_WAIT_SEC = 60.0
CLEANUP_TIMEOUT_SEC = 300.0


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
    pending_wait_sec: float = PENDING_WAIT_SEC,
    timeout_sec: float = CLEANUP_TIMEOUT_SEC,
) -> CleanupResult:
    """Delete every live environment and remove every raw container, after letting creations
    in flight finish so that what they made is known."""
    result = CleanupResult()
    if ledger.pending:
        _, still = await asyncio.wait(set(ledger.pending), timeout=pending_wait_sec)
        for task in still:
            task.cancel()
        if still:
            result.failures.append(f"{len(still)} creations did not finish; what they made may remain")
    envs, raw = sorted(ledger.envs), sorted(ledger.raw)
    try:
        async with asyncio.timeout(timeout_sec):
            failures = await asyncio.gather(
                release("environment", envs, delete_env, ledger.envs),
                release("container", raw, remove_raw, ledger.raw),
            )
    except TimeoutError:
        result.failures.append(f"cleanup did not finish within {timeout_sec:g} s")
    else:
        result.failures += [line for lines in failures for line in lines]
    result.deleted_envs = len(envs) - len(ledger.envs)
    result.removed_raw = len(raw) - len(ledger.raw)
    return result
