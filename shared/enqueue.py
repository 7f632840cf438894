"""Putting a job in an arq queue: the only code that writes arq's job records (arq's own
`enqueue_job` is not used). Its keys and record format are arq's; tests/test_unit_arq_contract.py
fails if an arq upgrade changes them.

The record is written by `scripts.ENQUEUE` (or, for an execute, `scripts.ADMIT_AND_ENQUEUE`),
in one round trip where arq takes three; the job's id (with its record, when small: `Wake`) is
also pushed to the queue's wake list, for a worker blocked on it (worker/arq_worker.py).
"""

import re
import time
from typing import Any, NamedTuple

import msgpack
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from taskenv.shared import jobs, keys, scripts
from taskenv.shared.jobs import JOB_TIMEOUT_SEC
from taskenv.shared.scripts import AdmissionOutcome

# A job record up to this size rides its wake (`Wake`); a larger one (a long command) is read by
# the worker that pops it, which keeps the wake lists' memory bounded by their cap.
WAKE_CARRY_MAX_BYTES = 4096
# The job ids enqueuers make (uuid4 hex): ASCII, so never a whole msgpack entry.
_BARE_JOB_ID = re.compile(rb"[0-9a-f]{32}")


class Wake(NamedTuple):
    """An entry of a queue's wake list: the job's id and, for a small job, arq's record of it
    and when that record expires (ms since the epoch), so the worker that pops it runs it
    without reading it back. Written by the enqueuer (`arguments`), read by the worker
    (worker/arq_worker.py); Redis is trusted, yet an entry that is not one is refused whole."""

    job_id: str
    record: bytes | None = None
    expires_ms: int = 0

    def encode(self) -> bytes:
        fields = (self.job_id,) if self.record is None else tuple(self)
        return bytes(msgpack.packb(fields, use_bin_type=True))

    @classmethod
    def decode(cls, entry: bytes) -> "Wake":
        try:
            fields = msgpack.unpackb(entry, raw=False)
        except (ValueError, msgpack.UnpackException):
            fields = None
        match fields:
            case [str(job_id)]:
                return cls(job_id)
            case [str(job_id), bytes(record), int(expires_ms)]:
                return cls(job_id, record, expires_ms)
        if fields is None and _BARE_JOB_ID.fullmatch(entry):
            # An enqueuer from before this format pushed the bare id (workers upgrade first).
            return cls(entry.decode())
        raise ValueError(f"not a wake entry: {entry[:64]!r}")


def arguments(
    function: str,
    payload: Any,
    *,
    queue: str,
    job_id: str,
    expires_sec: float,
    queue_bound: int,
    reply_to: str | None = None,
    request_id: str = "",
    announce: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """The keys and arguments of `scripts.ENQUEUE` for one job. The job expires (never starts)
    past `expires_sec`; a queue holding `queue_bound` jobs (0: no bound) takes no more. An
    unannounced job gets no wake: a worker's periodic pass over the queue finds it."""
    enqueued_ms = int((time.time() if now is None else now) * 1000)
    record = serialize_job(
        function,
        (payload,),
        {"reply_to": reply_to, "request_id": request_id},
        None,
        enqueued_ms,
        serializer=jobs.serialize,
    )
    expires_ms = max(1, int(expires_sec * 1000))
    carried = len(record) <= WAKE_CARRY_MAX_BYTES
    wake = Wake(job_id, record, enqueued_ms + expires_ms) if carried else Wake(job_id)
    return {
        "job": job_key_prefix + job_id,
        "result": result_key_prefix + job_id,
        "queue": keys.arq_queue(queue),
        "wake": keys.wake(queue),
        "in_progress": in_progress_key_prefix + job_id,
        "expiry_ms": expires_ms,
        "serialized_job": record,
        "score": enqueued_ms,
        "job_id": job_id,
        "wake_cap": keys.WAKE_LIST_MAX if announce else 0,
        # The claim outlives any run the job can still start: a worker's pass must never take
        # a job that another worker is running.
        "claim_ms": expires_ms + int(JOB_TIMEOUT_SEC * 1000),
        "queue_bound": queue_bound,
        "wake_entry": wake.encode(),
    }


async def enqueue(redis: Redis, **job: Any) -> AdmissionOutcome:
    """Enqueue one job (`arguments`): QUEUED, or QUEUE_FULL."""
    outcome = await scripts.ENQUEUE.run(redis, **arguments(**job))
    kind = outcome[0]
    return AdmissionOutcome(kind.decode() if isinstance(kind, bytes) else str(kind))
