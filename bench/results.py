"""What a run measured so far: filled in as requests finish, so a run cut short still reports."""

from dataclasses import dataclass, field

from taskenv.bench.ledger import CleanupResult, Ledger
from taskenv.bench.rss import RssRecord
from taskenv.bench.stats import Blocks, Sample


@dataclass
class Results:
    # Execs and provisions per side, block by block (one block per round).
    exec_taskenv: Blocks = field(default_factory=list)
    exec_raw: Blocks = field(default_factory=list)
    # The environments' runners driven straight from the bench (bench/runner_side.py), and why
    # that side was left out when it was (environments without a runner).
    exec_runner: Blocks = field(default_factory=list)
    runner_skipped: str | None = None
    provision_taskenv: Blocks = field(default_factory=list)
    provision_raw: Blocks = field(default_factory=list)
    hold: list[Sample] = field(default_factory=list)
    rss: RssRecord | None = None
    ledger: Ledger = field(default_factory=Ledger)
    cleanup: CleanupResult | None = None
    # Why the run ended before its end: max-seconds, an interrupt, a failure.
    stopped: str | None = None
