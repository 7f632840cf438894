"""Membership: which hosts and worker processes are alive, and what happens when one is lost.

Every worker process runs `beat` once per `TASKENV_HEARTBEAT_SEC`, and every worker and API
process runs `sweep` as often. A host is alive while any of its workers beats. `sweep` is one
atomic script, so however many processes run it, exactly one acts on each loss:
- a worker process silent for `TASKENV_HOST_DEAD_AFTER_SEC`: its running jobs are announced
  lost (`worker_lost`) to the API processes, whose waiting requests answer 502 at once (a
  DELETE's teardown is re-run instead: it is idempotent), and leave their queues' counts; the
  provisions it claimed and did not finish turn `failed` with an error naming it;
- a host silent as long: its environments turn `failed` with an error naming it, the jobs
  still queued for it are dropped (their callers are answered, so they must never run), and
  `host_lost` is announced so every request waiting on that host answers 502 at once.
A worker that stops cleanly leaves at once; if it was its host's last, the host is `stopped`,
not lost: its environments stay as they are for when a worker of that host comes back.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from taskenv.shared import keys, scripts
from taskenv.shared.scripts import LossKind


@dataclass
class Beat:
    """What one worker process reports."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    max_jobs: int
    running_jobs: list[str]
    metrics: str = ""
    drain: bool = False


@dataclass(frozen=True)
class HostView:
    """What a beat answers: the host's drain flag and its live environments."""

    draining: bool
    environments: int


@dataclass(frozen=True)
class Loss:
    workers: list[str]
    # Host id → how many of its environments were failed.
    hosts: dict[str, int]
    # Lost worker id → how many provisions it had claimed and not finished (now failed).
    provisions: dict[str, int] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def beat(redis: Redis, beat: Beat, *, dead_after_sec: float, cap: int) -> HostView:
    now = time.time()
    draining, live = await scripts.BEAT.run(
        redis,
        workers=keys.WORKERS,
        hosts=keys.HOSTS,
        worker=keys.worker(beat.worker_id),
        host=keys.host(beat.host),
        expiry_index=keys.expiry_index(beat.host),
        known_hosts=keys.KNOWN_HOSTS,
        now=repr(now),
        worker_id=beat.worker_id,
        host_id=beat.host,
        pid=str(beat.pid),
        started_at=repr(beat.started_at),
        max_jobs=str(beat.max_jobs),
        running=str(len(beat.running_jobs)),
        jobs=" ".join(beat.running_jobs),
        metrics=beat.metrics,
        worker_ttl_sec=str(max(60, int(dead_after_sec * 6))),
        env_prefix=keys.environment(""),
        drain="1" if beat.drain else "0",
        cap=str(cap),
    )
    return HostView(draining=_text(draining) == "1", environments=int(live))


async def sweep(redis: Redis, *, dead_after_sec: float) -> Loss:
    """Declare lost the workers and hosts silent for `dead_after_sec`; see the module doc."""
    workers, hosts = await scripts.SWEEP.run(
        redis,
        workers=keys.WORKERS,
        hosts=keys.HOSTS,
        events=keys.EVENTS,
        now=repr(time.time()),
        dead_after=f"{dead_after_sec:g}",
        env_prefix=keys.environment(""),
        expiry_prefix=keys.expiry_index(""),
        host_prefix=keys.host(""),
        worker_prefix=keys.worker(""),
        host_queue_prefix=keys.arq_queue(keys.host_queue("")),
        host_wake_prefix=keys.wake(keys.host_queue("")),
        provision_queue=keys.arq_queue(keys.PROVISION_QUEUE),
        provisioning=keys.PROVISIONING,
    )
    lost_hosts, lost_workers = _pairs(hosts), _pairs(workers)
    provisions = {worker: failed for worker, failed in lost_workers.items() if failed}
    return Loss(workers=list(lost_workers), hosts=lost_hosts, provisions=provisions)


def _pairs(flat: list[Any]) -> dict[str, int]:
    """A script's flat {name, count, name, count...} answer as a dict."""
    texts = [_text(x) for x in flat]
    return {texts[i]: int(texts[i + 1]) for i in range(0, len(texts), 2)}


async def leave(redis: Redis, worker_id: str, host: str, *, dead_after_sec: float) -> int:
    """A clean exit: drop the worker at once; returns how many of its host's workers remain."""
    alive = await scripts.LEAVE.run(
        redis,
        workers=keys.WORKERS,
        hosts=keys.HOSTS,
        worker=keys.worker(worker_id),
        host=keys.host(host),
        worker_id=worker_id,
        host_id=host,
        now=repr(time.time()),
        dead_after=repr(dead_after_sec),
        worker_prefix=keys.worker(""),
    )
    return int(alive)


async def set_draining(redis: Redis, host: str, draining: bool) -> None:
    if draining:
        await redis.hset(keys.host(host), "draining", "1")  # type: ignore[misc]
    else:
        await redis.hdel(keys.host(host), "draining")  # type: ignore[misc]


def parse_event(data: bytes | str) -> dict[str, Any] | None:
    """A loss announced on `keys.EVENTS`, or None if the message is not one."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("kind") not in tuple(LossKind):
        return None
    return event


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    pid: int
    beat_age_sec: float
    max_jobs: int
    running: int
    metrics: str = field(repr=False, default="")


@dataclass
class HostInfo:
    host: str
    state: str  # up, lost, stopped (or "silent": up but past its last beat, not swept yet)
    draining: bool
    cap: int
    ready: int
    provisioning: int
    beat_age_sec: float | None
    workers: list[WorkerInfo] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(w.running for w in self.workers)

    @property
    def capacity(self) -> int:
        return sum(w.max_jobs for w in self.workers)


async def list_workers(redis: Redis) -> list[WorkerInfo]:
    """Every worker process that has not been swept, with its last beat."""
    ids = [_text(w) for w in await redis.zrange(keys.WORKERS, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hmget(keys.worker(worker_id), ["host", "pid", "beat_at", "max_jobs", "running", "metrics"])
        rows = await pipe.execute()
    now = time.time()
    found = []
    for worker_id, row in zip(ids, rows, strict=True):
        host, pid, beat_at, max_jobs, running, metrics = (_text(v) if v is not None else "" for v in row)
        if host:
            found.append(
                WorkerInfo(
                    worker_id, host, int(pid or 0), now - float(beat_at or 0), int(max_jobs or 0),
                    int(running or 0), metrics,
                )
            )  # fmt: skip
    return found


async def list_hosts(redis: Redis, *, dead_after_sec: float) -> list[HostInfo]:
    """Every host that ever heartbeated, with its workers, environments and load."""
    names = sorted(_text(h) for h in await redis.smembers(keys.KNOWN_HOSTS))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.host(name), ["state", "draining", "cap", "ready", "provisioning", "beat_at"])
        rows = await pipe.execute()
    by_host: dict[str, list[WorkerInfo]] = {}
    for info in await list_workers(redis):
        by_host.setdefault(info.host, []).append(info)
    now = time.time()
    found = []
    for name, row in zip(names, rows, strict=True):
        state, draining, cap, ready, provisioning, beat_at = (_text(v) if v is not None else "" for v in row)
        age = now - float(beat_at) if beat_at else None
        if state == "up" and (age is None or age > dead_after_sec):
            state = "silent"
        found.append(
            HostInfo(
                name, state or "unknown", draining == "1", int(cap or 0), int(ready or 0),
                int(provisioning or 0), age, by_host.get(name, []),
            )
        )  # fmt: skip
    return found


async def live_hosts(redis: Redis, *, dead_after_sec: float) -> int:
    return int(await redis.zcount(keys.HOSTS, time.time() - dead_after_sec, "+inf"))


async def host_alive(redis: Redis, host: str, *, dead_after_sec: float) -> bool:
    """Some worker of `host` heartbeated within `dead_after_sec` (it is neither lost nor stopped)."""
    beat_at = await redis.zscore(keys.HOSTS, host)
    return beat_at is not None and beat_at >= time.time() - dead_after_sec
