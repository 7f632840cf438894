"""Sending work to a host's workers through arq, and waiting for the answer."""

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from taskenv.api.ratelimit import OrgRate, org_over_rate
from taskenv.api.results import ResultListener
from taskenv.shared import commands, jobs, keys, quotas, scripts
from taskenv.shared.enqueue import arguments
from taskenv.shared.errors import ErrorType, TaskenvError, rate_limited
from taskenv.shared.jobs import JobResult
from taskenv.shared.logs import REQUEST_ID
from taskenv.shared.models import EnvironmentState
from taskenv.shared.quotas import Limits, Quota
from taskenv.shared.scripts import AdmissionOutcome


@dataclass(frozen=True)
class Idempotency:
    """An execute's Idempotency-Key: its record and what the request asks."""

    record: str
    fingerprint: str
    ttl_sec: int


@dataclass(frozen=True)
class Admission:
    """Enqueue an execute only if its org is within its rate, `env_id` is ready and runs fewer
    than `env_limit` commands, and its org and workspace run fewer than their `limits`; with an
    idempotency key already used, answer as the first time. The command stays counted until
    `command_until` at the latest (shared/commands.py)."""

    env_id: str
    env_limit: int
    command_until: float
    org: str
    rate: OrgRate
    idempotency: Idempotency | None = None
    workspace: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def commands(self) -> list[str]:
        """The sets of running commands the command joins when admitted, which its job lists
        for its worker to remove it from."""
        return commands.sets_of(self.env_id, self.org, self.workspace)


@dataclass(frozen=True)
class Replay:
    """A retry of an execute whose Idempotency-Key was used: its first command's job, the
    instant its caller stops waiting, and its answer if stored already."""

    job_id: str
    until: float
    result: bytes | None


Refusal = AdmissionOutcome | EnvironmentState


def _refusal(kind: str) -> Refusal:
    """An admission's refusal: an outcome of the script, or the state of an environment that
    is not ready."""
    return AdmissionOutcome(kind) if kind in tuple(AdmissionOutcome) else EnvironmentState(kind)


class NotAdmitted(Exception):
    """The environment was gone (`missing`), not ready (`reason` is its state), `busy`, or the
    request reuses an Idempotency-Key with another body (`mismatch`)."""

    def __init__(self, reason: Refusal) -> None:
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
        if admission is not None:
            # The worker removes the command from exactly the sets the script adds it to.
            payload = {**payload, "slots": admission.commands}
        enqueue = arguments(
            function,
            payload,
            queue=queue,
            job_id=job_id,
            expires_sec=expires_sec,
            queue_bound=self.max_queue_depth,
            reply_to=self.listener.channel if reply else None,
            request_id=REQUEST_ID.get(),
            now=now,
        )
        if admission is None:
            outcome = await scripts.ENQUEUE.run(self.redis, **enqueue)
        else:
            outcome = await scripts.ADMIT_AND_ENQUEUE.run(
                self.redis, **enqueue, **self._admission_arguments(admission, now)
            )
        kind = _text(outcome[0])
        if kind == AdmissionOutcome.QUEUED:
            return None
        if kind == AdmissionOutcome.REPLAY:
            return Replay(_text(outcome[1]), float(_text(outcome[2])), outcome[3])
        if kind == AdmissionOutcome.QUEUE_FULL:
            raise rate_limited(
                f"Queue {queue!r} holds its limit of {self.max_queue_depth} jobs; retry later",
                self.retry_after_sec,
            )
        if kind == AdmissionOutcome.RATE and admission is not None:
            raise org_over_rate(admission.org, int(outcome[1]))
        if kind in (Quota.ORG_COMMANDS, Quota.WORKSPACE_COMMANDS) and admission is not None:
            quota = Quota(kind)
            limit = admission.limits.of_quota(quota)
            raise quotas.exceeded(quota, limit, admission.org, admission.workspace, self.retry_after_sec)
        raise NotAdmitted(_refusal(kind))

    def _admission_arguments(self, admission: Admission, now: float) -> dict[str, Any]:
        idempotency = admission.idempotency
        in_env, in_org, in_workspace = admission.commands
        return {
            "environment": keys.environment(admission.env_id),
            "env_commands": in_env,
            "org_bucket": keys.org_rate(admission.org),
            "idempotency": idempotency.record if idempotency else keys.idempotency(admission.env_id, ""),
            "org_commands": in_org,
            "workspace_commands": in_workspace,
            "now": now,
            "command_until": admission.command_until,
            "env_limit": admission.env_limit,
            "org_rate": admission.rate.per_sec,
            "org_burst": admission.rate.burst,
            "fingerprint": idempotency.fingerprint if idempotency else "",
            "idempotency_ttl_ms": idempotency.ttl_sec * 1000 if idempotency else 0,
            "reply_channel": self.listener.channel,
            "org_limit": admission.limits.org_commands,
            "workspace_limit": admission.limits.workspace_commands,
        }

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
