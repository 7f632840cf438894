"""Sending work to a host's workers through arq, and waiting for the answer."""

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from taskenv.api.ratelimit import RATE_BUCKET, OrgRate, org_over_rate
from taskenv.api.results import ResultListener
from taskenv.shared import jobs, keys, quotas
from taskenv.shared.errors import ErrorType, TaskenvError, rate_limited
from taskenv.shared.jobs import JOB_TIMEOUT_SEC, JobResult
from taskenv.shared.logs import REQUEST_ID
from taskenv.shared.quotas import FULL, Limits, Quota

# What arq's `enqueue_job` does (the job key expires with the job, so a job that waited past its
# deadline never starts), plus handing the id to the queue's workers: the job is claimed here
# (arq's in-progress key) for whichever worker pops its wake, so that worker runs it without a
# claim round trip and no other worker's pass over the queue takes it. Past the wake list's cap
# the job is left unclaimed, for the workers' periodic pass to find. A queue holding its bound
# of jobs (waiting and running) takes no more. A job that exists already can only be this very
# call's, retried after a lost reply (ids are fresh uuids): it is queued.
# KEYS: job, result, queue, wake, in-progress. ARGV: expiry ms, serialized job, score, job id,
# wake cap, claim ms, queue bound.
_ENQUEUE_FUNCTION = """
local function enqueue()
  if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 'queued' end
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return 'queue_full' end
  redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  if redis.call('LLEN', KEYS[4]) < tonumber(ARGV[5]) then
    redis.call('PSETEX', KEYS[5], ARGV[6], '1')
    redis.call('RPUSH', KEYS[4], ARGV[4])
    redis.call('EXPIRE', KEYS[4], 86400)
  end
  return 'queued'
end
"""
_ENQUEUE = _ENQUEUE_FUNCTION + "return {enqueue()}"

# An execute, in the same round trip: counted against its org's rate; with an Idempotency-Key
# already used in this environment, the first command's answer (or where to wait for it) instead
# of a second run (shared/idempotency.py); else enqueued only if the environment is ready and
# has a free command slot and its org and workspace are within their quotas of running commands
# (shared/quotas.py). The command's slots carry its deadline, so a crashed API process cannot
# leak them; they are only ever extended, never shortened, by a later command.
# KEYS (after enqueue's): environment, in-flight set, org's bucket, idempotency record, org's
# running commands, workspace's running commands.
# ARGV (after enqueue's): now, slot expiry, slots per environment, org rate, org burst, body
# fingerprint ('' without a key), key TTL ms, this API process's reply channel, org's and
# workspace's limits of running commands (0: none).
_ADMIT_AND_ENQUEUE = (
    RATE_BUCKET
    + FULL
    + _ENQUEUE_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return {'queued'} end
local now = tonumber(ARGV[8])
local wait = take_token(KEYS[8], now, tonumber(ARGV[11]), tonumber(ARGV[12]))
if wait > 0 then return {'rate', wait} end
if ARGV[13] ~= '' then
  local seen = redis.call('HMGET', KEYS[9], 'fingerprint', 'job', 'until', 'result')
  if seen[1] then
    if seen[1] ~= ARGV[13] then return {'mismatch'} end
    if not seen[4] then redis.call('HSET', KEYS[9], 'reply:' .. ARGV[15], '1') end
    return {'replay', seen[2], seen[3], seen[4]}
  end
end
local state = redis.call('HGET', KEYS[6], 'state')
if not state then return {'missing'} end
if state ~= 'ready' then return {state} end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
if redis.call('ZCARD', KEYS[7]) >= tonumber(ARGV[10]) then return {'busy'} end
if full(KEYS[10], now, tonumber(ARGV[16]), '') then return {'org_commands'} end
if full(KEYS[11], now, tonumber(ARGV[17]), '') then return {'workspace_commands'} end
local queued = enqueue()
if queued ~= 'queued' then return {queued} end
local slot_ms = math.ceil((tonumber(ARGV[9]) - now) * 1000)
for _, slot in ipairs({KEYS[7], KEYS[10], KEYS[11]}) do
  redis.call('ZADD', slot, ARGV[9], ARGV[4])
  if redis.call('PTTL', slot) < slot_ms + 60000 then redis.call('PEXPIRE', slot, slot_ms + 60000) end
end
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[9], 'fingerprint', ARGV[13], 'job', ARGV[4], 'until', ARGV[9])
  redis.call('PEXPIRE', KEYS[9], math.max(tonumber(ARGV[14]), slot_ms))
end
return {'queued'}
"""
)


@dataclass(frozen=True)
class Idempotency:
    """An execute's Idempotency-Key: its record and what the request asks."""

    record: str
    fingerprint: str
    ttl_sec: int


@dataclass(frozen=True)
class Admission:
    """Enqueue an execute only if its org is within its rate, `env_id` is ready and runs fewer
    than `slots` commands, and its org and workspace run fewer than their `limits`; with an
    idempotency key already used, answer as the first time."""

    env_id: str
    slots: int
    slot_until: float
    org: str
    rate: OrgRate
    idempotency: Idempotency | None = None
    workspace: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def command_slots(self) -> list[str]:
        """The slots the command takes when admitted, and its job carries to be freed."""
        return quotas.command_slots(self.env_id, self.org, self.workspace)


@dataclass(frozen=True)
class Replay:
    """A retry of an execute whose Idempotency-Key was used: its first command's job, the
    instant its caller stops waiting, and its answer if stored already."""

    job_id: str
    until: float
    result: bytes | None


class NotAdmitted(Exception):
    """The environment was gone, not ready (`reason` is its state), `busy`, or the request
    reuses an Idempotency-Key with another body (`mismatch`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Dispatcher:
    def __init__(
        self, redis: ArqRedis, listener: ResultListener, *, max_queue_depth: int, retry_after_sec: int
    ) -> None:
        self.redis = redis
        self.listener = listener
        self.max_queue_depth = max_queue_depth
        self.retry_after_sec = retry_after_sec
        self._enqueue = redis.register_script(_ENQUEUE)
        self._admit_and_enqueue = redis.register_script(_ADMIT_AND_ENQUEUE)

    async def submit(
        self,
        function: str,
        payload: Any,
        *,
        queue: str,
        job_id: str,
        expires_sec: float,
        reply: bool,
        admission: Admission | None = None,
    ) -> Replay | None:
        """Enqueue an arq job and hand its id to the queue's workers, in one round trip (arq's
        `enqueue_job` takes three); with an admission, in that same round trip, which answers
        a `Replay` instead for a used Idempotency-Key. `max_tries=1` on the worker makes a job
        never run twice. 429 for a full queue or an org over its rate."""
        now = time.time()
        enqueued_ms = int(now * 1000)
        reply_to = self.listener.channel if reply else None
        if admission is not None:
            # The worker frees exactly the slots the script takes (shared/quotas.py).
            payload = {**payload, "slots": admission.command_slots}
        job = serialize_job(
            function,
            (payload,),
            {"reply_to": reply_to, "request_id": REQUEST_ID.get()},
            None,
            enqueued_ms,
            serializer=jobs.serialize,
        )
        script_keys = [
            job_key_prefix + job_id,
            result_key_prefix + job_id,
            keys.arq_queue(queue),
            keys.wake(queue),
            in_progress_key_prefix + job_id,
        ]
        expires_ms = max(1, int(expires_sec * 1000))
        # The claim outlives any run the job can still start: a worker's pass must never take
        # a job that another worker is running.
        claim_ms = expires_ms + int(JOB_TIMEOUT_SEC * 1000)
        args: list[Any] = [
            expires_ms, job, enqueued_ms, job_id, keys.WAKE_LIST_MAX, claim_ms, self.max_queue_depth
        ]  # fmt: skip
        if admission is None:
            outcome = await self._enqueue(keys=script_keys, args=args)
        else:
            idempotency = admission.idempotency
            in_env, in_org, in_workspace = admission.command_slots
            script_keys += [
                keys.environment(admission.env_id),
                in_env,
                keys.org_rate(admission.org),
                idempotency.record if idempotency else keys.idempotency(admission.env_id, ""),
                in_org,
                in_workspace,
            ]
            args += [
                now, admission.slot_until, admission.slots, *admission.rate.args(),
                idempotency.fingerprint if idempotency else "",
                idempotency.ttl_sec * 1000 if idempotency else 0,
                self.listener.channel,
                admission.limits.org_commands, admission.limits.workspace_commands,
            ]  # fmt: skip
            outcome = await self._admit_and_enqueue(keys=script_keys, args=args)
        kind = _text(outcome[0])
        if kind == "queued":
            return None
        if kind == "replay":
            return Replay(_text(outcome[1]), float(_text(outcome[2])), outcome[3])
        if kind == "queue_full":
            raise rate_limited(
                f"Queue {queue!r} holds its limit of {self.max_queue_depth} jobs; retry later",
                self.retry_after_sec,
            )
        if kind == "rate" and admission is not None:
            raise org_over_rate(admission.org, int(outcome[1]))
        if kind in (Quota.ORG_COMMANDS, Quota.WORKSPACE_COMMANDS) and admission is not None:
            quota = Quota(kind)
            limit = admission.limits.of_quota(quota)
            raise quotas.exceeded(quota, limit, admission.org, admission.workspace, self.retry_after_sec)
        raise NotAdmitted(kind)

    async def call(
        self,
        function: str,
        payload: Any,
        *,
        queue: str,
        wait_sec: float,
        job_id: str | None = None,
        admission: Admission | None = None,
    ) -> dict[str, Any]:
        """Run a job and return its answer, or raise its error; never waits past `wait_sec`
        (a replay: past its first request's wait)."""
        job_id = job_id or uuid.uuid4().hex
        with self.listener.expect(job_id, queue) as future:
            replay = await self.submit(
                function,
                payload,
                queue=queue,
                job_id=job_id,
                expires_sec=wait_sec,
                reply=True,
                admission=admission,
            )
            if replay is None:
                return await self._answer(function, queue, job_id, future, wait_sec)
        assert admission is not None and admission.idempotency is not None
        return await self._replay(function, queue, replay, admission.idempotency.record)

    async def _answer(
        self, function: str, queue: str, job_id: str, future: "asyncio.Future[JobResult]", wait_sec: float
    ) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(asyncio.shield(future), max(wait_sec, 0.0))
        except TimeoutError:
            stored = await self.listener.stored_result(job_id)
            if stored is None:
                raise TaskenvError(
                    ErrorType.TIMEOUT,
                    f"No answer from a worker within {wait_sec:.1f} s (is a worker running"
                    f" for queue {queue!r}?)",
                    extra={"output": ""} if function == jobs.EXECUTE else None,
                ) from None
            result = stored
        return jobs.unwrap(result)

    async def _replay(self, function: str, queue: str, replay: Replay, record: str) -> dict[str, Any]:
        """The first request's answer: at once when stored, else as soon as its worker sends it."""
        if replay.result is not None:
            return jobs.unwrap(jobs.deserialize(replay.result))
        with self.listener.expect(replay.job_id, queue) as future:
            # An answer stored between the script and this registration was sent to no waiter.
            stored = await self.redis.hget(record, "result")  # type: ignore[misc]
            if stored is not None:
                return jobs.unwrap(jobs.deserialize(stored))
            return await self._answer(function, queue, replay.job_id, future, replay.until - time.time())
