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
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from taskenv.shared import keys

_BEAT = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('SADD', KEYS[6], ARGV[3])
redis.call('HSET', KEYS[3], 'host', ARGV[3], 'pid', ARGV[4], 'started_at', ARGV[5], 'beat_at', ARGV[1],
  'max_jobs', ARGV[6], 'running', ARGV[7], 'jobs', ARGV[8], 'metrics', ARGV[9])
redis.call('EXPIRE', KEYS[3], ARGV[10])
local counts = {ready = 0, provisioning = 0, failed = 0}
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  local s = redis.call('HGET', ARGV[11] .. id, 'state')
  if s and counts[s] then counts[s] = counts[s] + 1 end
end
if ARGV[12] == '1' then redis.call('HSET', KEYS[4], 'draining', '1') end
redis.call('HSET', KEYS[4], 'state', 'up', 'beat_at', ARGV[1], 'cap', ARGV[13],
  'ready', counts.ready, 'provisioning', counts.provisioning, 'failed', counts.failed)
return {redis.call('HGET', KEYS[4], 'draining') or '', counts.ready + counts.provisioning}
"""

# KEYS: live workers, live hosts, the loss events channel. ARGV: now, dead-after seconds, and
# key prefixes: environment, host's expiry index, host, worker, host's arq queue, host's wake
# list; then the provision queue and the provisions-not-run set.
_SWEEP = """
local now, dead_after = tonumber(ARGV[1]), tonumber(ARGV[2])
local lost_workers, lost_hosts = {}, {}
-- Hosts first: a whole host's waiting requests hear `host_lost`, the more telling reason.
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - dead_after)) do
  redis.call('ZREM', KEYS[2], h)
  local error = 'host ' .. h .. ' lost: no heartbeat from its workers for ' .. ARGV[2] .. ' s'
  local failed = 0
  for _, id in ipairs(redis.call('ZRANGE', ARGV[4] .. h, 0, -1)) do
    local s = redis.call('HGET', ARGV[3] .. id, 'state')
    if s == 'ready' or s == 'provisioning' then
      redis.call('HSET', ARGV[3] .. id, 'state', 'failed', 'error', error, 'lost_host', h)
      failed = failed + 1
    end
  end
  redis.call('HSET', ARGV[5] .. h, 'state', 'lost', 'lost_at', ARGV[1], 'ready', 0, 'provisioning', 0)
  redis.call('DEL', ARGV[7] .. h, ARGV[8] .. h)
  redis.call('PUBLISH', KEYS[3], cjson.encode({kind = 'host_lost', host = h, error = error}))
  table.insert(lost_hosts, h)
  table.insert(lost_hosts, failed)
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after)) do
  redis.call('ZREM', KEYS[1], w)
  local info = redis.call('HMGET', ARGV[6] .. w, 'host', 'jobs')
  redis.call('DEL', ARGV[6] .. w)
  local host, jobs = info[1] or '', info[2] or ''
  -- Its running jobs will never end: out of their queues' counts now, not at arq's timeout.
  for id in string.gmatch(jobs, '%S+') do
    redis.call('ZREM', ARGV[7] .. host, id)
    redis.call('ZREM', ARGV[9], id)
  end
  -- The provisions it claimed and left unfinished: failed now, not at their deadline.
  local failed = 0
  if host ~= '' then
    local error = 'worker ' .. w .. ' lost while provisioning it: no heartbeat for ' .. ARGV[2] .. ' s'
    for _, id in ipairs(redis.call('ZRANGE', ARGV[4] .. host, 0, -1)) do
      local env = redis.call('HMGET', ARGV[3] .. id, 'state', 'provisioner')
      if env[1] == 'provisioning' and env[2] == w then
        redis.call('HSET', ARGV[3] .. id, 'state', 'failed', 'error', error)
        redis.call('ZREM', ARGV[10], id)
        failed = failed + 1
      end
    end
  end
  -- Announced even with no job listed: one it took after its last beat is lost too, and a
  -- waiting DELETE re-runs its teardown on hearing of any loss on its host.
  local event = {kind = 'worker_lost', host = host, worker = w, jobs = jobs}
  redis.call('PUBLISH', KEYS[3], cjson.encode(event))
  table.insert(lost_workers, w)
  table.insert(lost_workers, failed)
end
return {lost_workers, lost_hosts}
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
local alive = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(ARGV[3]) - tonumber(ARGV[4]), '+inf')) do
  if redis.call('HGET', ARGV[5] .. w, 'host') == ARGV[2] then alive = alive + 1 end
end
if alive == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[4], 'state', 'stopped')
end
return alive
"""


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


class LossKind(StrEnum):
    """What a loss event on `keys.EVENTS` announces."""

    HOST = "host_lost"
    WORKER = "worker_lost"


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
    draining, live = await redis.eval(  # type: ignore[misc]
        _BEAT,
        6,
        keys.WORKERS,
        keys.HOSTS,
        keys.worker(beat.worker_id),
        keys.host(beat.host),
        keys.expiry_index(beat.host),
        keys.KNOWN_HOSTS,
        repr(now),
        beat.worker_id,
        beat.host,
        str(beat.pid),
        repr(beat.started_at),
        str(beat.max_jobs),
        str(len(beat.running_jobs)),
        " ".join(beat.running_jobs),
        beat.metrics,
        str(max(60, int(dead_after_sec * 6))),
        keys.environment(""),
        "1" if beat.drain else "0",
        str(cap),
    )
    return HostView(draining=_text(draining) == "1", environments=int(live))


async def sweep(redis: Redis, *, dead_after_sec: float) -> Loss:
    """Declare lost the workers and hosts silent for `dead_after_sec`; see the module doc."""
    workers, hosts = await redis.eval(  # type: ignore[misc]
        _SWEEP,
        3,
        keys.WORKERS,
        keys.HOSTS,
        keys.EVENTS,
        repr(time.time()),
        f"{dead_after_sec:g}",
        keys.environment(""),
        keys.expiry_index(""),
        keys.host(""),
        keys.worker(""),
        keys.arq_queue(keys.host_queue("")),
        keys.wake(keys.host_queue("")),
        keys.arq_queue(keys.PROVISION_QUEUE),
        keys.PROVISIONING,
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
    alive = await redis.eval(  # type: ignore[misc]
        _LEAVE,
        4,
        keys.WORKERS,
        keys.HOSTS,
        keys.worker(worker_id),
        keys.host(host),
        worker_id,
        host,
        repr(time.time()),
        repr(dead_after_sec),
        keys.worker(""),
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


async def workers(redis: Redis) -> list[WorkerInfo]:
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


async def hosts(redis: Redis, *, dead_after_sec: float) -> list[HostInfo]:
    """Every host that ever heartbeated, with its workers, environments and load."""
    names = sorted(_text(h) for h in await redis.smembers(keys.KNOWN_HOSTS))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.host(name), ["state", "draining", "cap", "ready", "provisioning", "beat_at"])
        rows = await pipe.execute()
    by_host: dict[str, list[WorkerInfo]] = {}
    for info in await workers(redis):
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
