"""Commands are not idempotent: every job function of the worker runs at most once."""

from taskenv.shared import keys
from taskenv.shared.settings import Settings
from taskenv.worker.arq_worker import create_workers


def test_no_job_is_ever_retried():
    own, provisions = create_workers(Settings(redis_url="redis://127.0.0.1:1/0", host_id="h"))
    functions = {**own.functions, **provisions.functions}
    assert {name: f.max_tries for name, f in functions.items()} == {
        "execute": 1,
        "provision": 1,
        "teardown": 1,
        "logs": 1,
        "verify": 1,
        "cron:reap": 1,
    }
    for worker in (own, provisions):
        assert worker.retry_jobs is False and worker.max_tries == 1
        # Running jobs stay in arq's queue: a pass must see at least every job this worker may run.
        assert worker.queue_read_limit >= worker.max_jobs


def test_a_host_serves_its_own_queue_and_shares_the_provision_queue():
    own, provisions = create_workers(Settings(redis_url="redis://127.0.0.1:1/0", host_id="h"))
    assert own.queue_name == keys.arq_queue(keys.host_queue("h")) and own.wake_key == keys.wake("host:h")
    assert provisions.queue_name == keys.arq_queue(keys.PROVISION_QUEUE)
    assert set(provisions.functions) == {"provision"} and "provision" not in own.functions
    # Both run their jobs with the same Docker and Redis clients.
    assert own.ctx is provisions.ctx
