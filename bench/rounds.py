"""The sides interleaved in rounds, so drift on a noisy machine (other load, a warming page
cache, a growing Redis) falls on all alike instead of on whichever side ran last.

Each round runs a block of each side in turn; the order rotates from round to round (taskenv,
raw / raw, taskenv / ... for two sides; taskenv, raw, runner / raw, runner, taskenv / ... for
three), so no side always runs right after another.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from taskenv.bench.load import Call, run_phase
from taskenv.bench.stats import Blocks, Sample


@dataclass(frozen=True)
class Side:
    """One side's requests, where its blocks go, and what to undo after each block."""

    call: Call
    blocks: Blocks
    advance: Callable[[], None]
    after_block: Callable[[], Awaitable[None]] | None = None


def block_sizes(count: int, rounds: int) -> list[int]:
    """`count` requests over `rounds` rounds, as evenly as can be (ceil(count / rounds) at most,
    so every block runs at the same load); fewer rounds when there are fewer requests."""
    if rounds < 1:
        raise ValueError("at least one round is needed")
    base, extra = divmod(count, rounds)
    return [base + 1 if index < extra else base for index in range(min(rounds, count))]


def order(round_index: int, sides: int = 2) -> tuple[int, ...]:
    """In which order the sides (0 taskenv, 1 raw, 2 the runner floor) run in this round."""
    first = round_index % sides
    return tuple((first + offset) % sides for offset in range(sides))


async def interleave(sides: Sequence[Side], count: int, rounds: int, concurrency: int) -> None:
    """`count` requests per side in rounds at `concurrency`; request numbers run on across a
    side's blocks, so its blocks together go through 0..count-1 like one long series would."""
    first = 0
    for index, size in enumerate(block_sizes(count, rounds)):
        for side in (sides[i] for i in order(index, len(sides))):
            block: list[Sample] = []
            side.blocks.append(block)
            await run_phase(side.call, size, concurrency, block, side.advance, first=first)
            if side.after_block is not None:
                await side.after_block()
        first += size
