"""Commands are not idempotent: every job function of the worker runs at most once."""

from shared.settings import Settings
from worker.runner import create_worker


def test_no_job_is_ever_retried():
    worker = create_worker(Settings(redis_url="redis://127.0.0.1:1/0", queue="q"))
    assert worker.retry_jobs is False and worker.max_tries == 1
    assert {name: f.max_tries for name, f in worker.functions.items()} == {
        "execute": 1,
        "provision": 1,
        "teardown": 1,
        "logs": 1,
        "cron:reap": 1,
    }
    # Running jobs stay in arq's queue: a pass must see at least every job this worker may run.
    assert worker.queue_read_limit >= worker.max_jobs
