"""Driving N requests at concurrency C: C runners pull the next request number as they free up,
so a slow request never idles the others and no more than C are ever in flight."""

import asyncio
from collections.abc import Awaitable, Callable

from taskenv.bench.stats import Sample

Call = Callable[[int], Awaitable[Sample]]


async def run_phase(
    call: Call,
    count: int,
    concurrency: int,
    out: list[Sample],
    advance: Callable[[], None],
    *,
    first: int = 0,
) -> None:
    """Append each finished request's sample to `out` as it comes, so a run stopped midway
    still has everything measured so far. Request i is `call(i)`, i in first..first+count-1."""
    numbers = iter(range(first, first + count))

    async def runner() -> None:
        for number in numbers:
            out.append(await call(number))
            advance()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(runner())


def round_robin(count: int) -> Callable[[int], int]:
    """Which of `count` environments request number i goes to."""
    if count < 1:
        raise ValueError("round robin needs at least one environment")
    return lambda number: number % count
