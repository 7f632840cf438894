"""What taskenv relies on in arq beyond its public API: worker/arq_worker.py overrides private
methods and reads private attributes, and shared/enqueue.py writes arq's job records itself.
pyproject.toml pins arq below the next minor: an upgrade must pass this file, which fails
loudly, naming what changed, instead of workers that misbehave quietly."""

import inspect
from typing import Any

import arq
import pytest
from arq import constants
from arq.jobs import deserialize_job, serialize_job
from arq.worker import Worker

from taskenv.shared import jobs
from taskenv.shared.settings import Settings
from taskenv.worker import arq_worker

# Methods of arq's Worker that WakeableWorker overrides or calls, with the parameters it passes.
_METHODS = {
    "main": ["self"],
    "_poll_iteration": ["self"],
    "start_jobs": ["self", "job_ids"],
    "run_job": ["self", "job_id", "score"],
    "_release_sem_dec_counter_on_complete": ["self"],
    "finish_job": [
        "self",
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ],
}
# Attributes of a Worker instance that WakeableWorker reads or sets.
_ATTRIBUTES = (
    "pool", "ctx", "on_startup", "queue_name", "functions", "allow_pick_jobs", "job_counter", "max_jobs",
    "sem", "tasks", "loop", "in_progress_timeout_s", "queue_read_limit",
)  # fmt: skip


def test_version_is_the_pinned_one() -> None:
    assert arq.VERSION.startswith("0.28."), f"arq {arq.VERSION}: re-check this file, then move the pin"


@pytest.mark.parametrize("name", list(_METHODS))
def test_overridden_and_called_methods_exist(name: str) -> None:
    method = getattr(Worker, name, None)
    assert method is not None, f"arq's Worker has no {name} any more"
    assert list(inspect.signature(method).parameters) == _METHODS[name]


def test_poll_iteration_still_takes_jobs_through_start_jobs() -> None:
    # WakeableWorker.main runs arq's pass over the queue and replaces the claim in start_jobs.
    source = inspect.getsource(Worker._poll_iteration)
    assert "self.start_jobs(" in source and "self.queue_read_limit" in source
    assert "_release_sem_dec_counter_on_complete" in inspect.getsource(Worker.start_jobs)


def test_finish_job_sends_what_the_answer_round_trip_sends_for_it() -> None:
    # WakeableWorker.finish_job sends arq's finish ops itself (arq_worker._finish_ops), after
    # arq's on_job_end has handed it the answer.
    source = inspect.getsource(Worker.finish_job)
    for op in (
        "tr.pexpire(",
        "tr.set(",
        "tr.zrem(abort_jobs_ss",
        "tr.zrem(self.queue_name",
        "tr.zincrby(",
        "tr.delete(",
    ):
        assert op in source, f"arq's finish_job no longer does {op}"
    run_job = inspect.getsource(Worker.run_job)
    assert run_job.index("self.on_job_end(ctx)") < run_job.index("self.finish_job(")


def test_keyword_arguments_used_are_accepted() -> None:
    accepted = inspect.signature(Worker.__init__).parameters
    for name in (
        "functions", "queue_name", "redis_pool", "ctx", "on_job_end", "max_jobs", "queue_read_limit",
        "job_timeout", "keep_result", "max_tries", "retry_jobs", "job_serializer", "job_deserializer",
        "log_results", "handle_signals", "cron_jobs",
    ):  # fmt: skip
        assert name in accepted, f"arq's Worker no longer takes {name}="


async def test_workers_have_the_attributes_read() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", host_id="contract")
    own, provisions = arq_worker.create_workers(settings)
    for worker in (own, provisions):
        for name in _ATTRIBUTES:
            assert hasattr(worker, name), f"arq's Worker has no attribute {name}"
        await worker.pool.aclose()


def test_key_prefixes() -> None:
    assert constants.job_key_prefix == "arq:job:"
    assert constants.result_key_prefix == "arq:result:"
    assert constants.in_progress_key_prefix == "arq:in-progress:"


def test_serialize_job_signature_and_record() -> None:
    parameters = inspect.signature(serialize_job).parameters
    assert list(parameters)[:5] == ["function_name", "args", "kwargs", "job_try", "enqueue_time_ms"]
    assert "serializer" in parameters
    payload: dict[str, Any] = {"env_id": "e1"}
    record = serialize_job(
        jobs.EXECUTE, (payload,), {"reply_to": "r", "request_id": ""}, None, 1234, serializer=jobs.serialize
    )
    job = deserialize_job(record, deserializer=jobs.deserialize)
    # msgpack carries the args tuple as a list: arq calls the function with them either way.
    assert (job.function, list(job.args), job.kwargs, job.enqueue_time.timestamp()) == (
        jobs.EXECUTE, [payload], {"reply_to": "r", "request_id": ""}, 1.234,
    )  # fmt: skip


def test_run_job_reads_a_job_as_the_carried_read_answers_it() -> None:
    # worker/arq_worker.py `_CarriedRead` answers exactly this first transaction of run_job for a
    # job whose record rode its wake; anything else it sends to Redis (a silent slow path).
    source = inspect.getsource(Worker.run_job)
    read = (
        "async with self.pool.pipeline(transaction=True) as pipe:",
        "pipe.get(job_key_prefix + job_id)",
        "pipe.incr(retry_key_prefix + job_id)",
        f"pipe.expire(retry_key_prefix + job_id, {arq_worker.ARQ_TRY_COUNT_TTL_SEC})",
        "v, job_try, _ = await pipe.execute()",
    )
    at = [source.index(line) for line in read]
    assert at == sorted(at) and source.count("self.pool.pipeline(") == 1, "run_job's transactions changed"
