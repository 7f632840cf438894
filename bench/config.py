"""What one bench run does: counts, concurrency, targets. Every count is bounded, so every
run ends by itself."""

from dataclasses import dataclass, field

from taskenv.bench.workloads import BUILT_IN, Workload, WorkloadName
from taskenv.shared.settings import Settings

# The service's TASKENV_MAX_EXECS_PER_ENV default: more execs at once in one env answer 429.
SERVICE_MAX_EXECS_PER_ENV: int = Settings.model_fields["max_execs_per_env"].default
# Execs the Docker engine starts per second on a small host (shared/notes: 14-15 exec/s on 2
# vCPUs): held execs start no faster than this, so the last of N starts ~N / rate s late.
ENGINE_EXECS_PER_SEC = 15


@dataclass(frozen=True)
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    api_key: str = field(default="", repr=False)
    org: str = "local"
    workspace: str = "main"
    task_ref: str = "default"
    envs: int = 4
    execs: int = 200
    concurrency: int = 8
    warmup: int = 20
    workload: Workload = BUILT_IN[WorkloadName.TRUE]
    timeout_sec: int = 30
    provisions: int = 10
    provision_concurrency: int = 10
    # Execs and provisions are measured in this many rounds, the sides alternating (bench.rounds).
    rounds: int = 4
    poll_sec: float = 0.010
    hold: int = 0
    hold_sleep_sec: float = 5.0
    hold_timeout_sec: int = 60
    hold_ramp_sec: float = 2.0
    api_pid: int | None = None
    max_seconds: float = 600.0

    @property
    def connections(self) -> int:
        """Requests the run can have in flight at once (cleanup runs 16 at a time)."""
        return max(self.concurrency, self.provision_concurrency, self.hold, 16) + 8

    @property
    def read_timeout_sec(self) -> float:
        """Above any command's own timeout, so the service, not the client, ends a slow exec."""
        return max(self.timeout_sec, self.hold_timeout_sec) + 30.0

    @property
    def lifetime_sec(self) -> int:
        """Environments ask for a lifetime just past the run's: a SIGKILLed bench leaves nothing
        behind for long."""
        return int(self.max_seconds) + 600

    def problems(self) -> list[str]:
        """Why this configuration cannot run; empty when it can."""
        found = []
        if not self.api_key:
            found.append("an API key is needed: --api-key or TASKENV_KEY")
        if min(self.execs, self.warmup, self.provisions, self.hold) < 0:
            found.append("counts cannot be negative")
        if min(self.envs, self.concurrency, self.provision_concurrency, self.rounds) < 1:
            found.append("--envs, --concurrency, --provision-concurrency and --rounds must be at least 1")
        if self.max_seconds <= 0 or self.poll_sec <= 0 or self.hold_sleep_sec <= 0:
            found.append("--max-seconds, --poll-ms and --hold-sleep must be positive")
        if self.hold and self.hold_timeout_sec <= self.hold_sleep_sec:
            found.append("--hold-timeout must exceed --hold-sleep")
        return found

    def warnings(self) -> list[str]:
        found = []
        for what, count in (("--concurrency", self.concurrency if self.execs else 0), ("--hold", self.hold)):
            per_env = -(-count // self.envs)
            if per_env > SERVICE_MAX_EXECS_PER_ENV:
                found.append(
                    f"{what} {count} over {self.envs} environments is {per_env} execs at once per"
                    " environment: past the service's default TASKENV_MAX_EXECS_PER_ENV"
                    f" ({SERVICE_MAX_EXECS_PER_ENV}) they answer 429; raise --envs or that setting"
                )
        if self.hold:
            start_sec = self.hold / ENGINE_EXECS_PER_SEC
            if start_sec + self.hold_sleep_sec > self.hold_timeout_sec:
                found.append(
                    f"the engine starts roughly {ENGINE_EXECS_PER_SEC} execs/s, so the last of {self.hold}"
                    f" held execs may start ~{start_sec:.0f} s late and end past --hold-timeout"
                    f" {self.hold_timeout_sec}: expect timeouts, or raise --hold-timeout (max 600)"
                )
        return found
