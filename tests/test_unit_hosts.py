"""Membership scripts (shared/hosts.py) on fakeredis: beats, losses and clean exits."""

import json

import fakeredis
import pytest

from taskenv.shared import hosts, keys, store
from taskenv.shared.environment_record import FIELDS, EnvironmentRecord
from taskenv.shared.models import EnvironmentState
from taskenv.shared.scripts import LossKind
from taskenv.shared.tasks import TaskSpec
from taskenv.worker.job_functions import fail_gone


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(hosts.time, "time", clock.time)
    return clock


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def _beat(redis, worker_id: str, host: str, jobs: list[str] | None = None, drain: bool = False):
    beat = hosts.Beat(worker_id, host, 1, 0.0, 10, jobs or [], drain=drain)
    return await hosts.beat(redis, beat, dead_after_sec=10, cap=5)


async def _env_on(redis, env_id: str, host: str) -> None:
    await store.create(
        redis, env_id=env_id, org="o", workspace="w", task_ref="t", spec=TaskSpec(name="t"),
        token_hash="h" + env_id, lifetime_sec=3600, provision_timeout_sec=60,
    )  # fmt: skip
    assert (await store.claim_provision(redis, env_id, host, cap=5))[0] == "claimed"
    await store.set_if_state(redis, env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.READY)


async def test_a_silent_host_is_lost_once_its_environments_fail_and_the_loss_is_published(redis, clock):
    await _env_on(redis, "e-a", "a")
    await _env_on(redis, "e-b", "b")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.EVENTS)
    assert (await _beat(redis, "wa", "a")).environments == 1
    await _beat(redis, "wb", "b", jobs=["job1", "job2"])
    clock.now += 6
    await _beat(redis, "wa", "a")
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss([], {})
    clock.now += 5  # b silent for 11 s, a for 5 s
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss(["wb"], {"b": 1})
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss([], {})  # only one sweeper acts
    lost = await store.get(redis, "e-b")
    assert lost is not None and lost["state"] == "failed" and lost["lost_host"] == "b"
    assert "host b lost" in lost["error"]
    kept = await store.get(redis, "e-a")
    assert kept is not None and kept["state"] == "ready"
    events = []
    for _ in range(5):  # the subscription's confirmation, then the two events
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            events.append(hosts.parse_event(message["data"]))
    assert [e["kind"] for e in events] == ["host_lost", "worker_lost"]
    assert events[1]["jobs"] == "job1 job2" and events[1]["host"] == "b"
    listed = {h.host: h for h in await hosts.list_hosts(redis, dead_after_sec=10)}
    assert listed["b"].state == "lost" and listed["a"].state == "up" and listed["a"].ready == 1


async def test_a_host_lives_while_any_of_its_workers_beats(redis, clock):
    await _beat(redis, "w1", "a", jobs=["j1"])
    await _beat(redis, "w2", "a")
    clock.now += 6
    await _beat(redis, "w2", "a")
    clock.now += 5
    # w1 is lost (its running job announced), the host is not.
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss(["w1"], {})
    assert await hosts.live_hosts(redis, dead_after_sec=10) == 1


async def test_a_clean_exit_of_the_last_worker_stops_the_host_without_losing_it(redis, clock):
    await _env_on(redis, "e1", "a")
    await _beat(redis, "w1", "a")
    assert await hosts.leave(redis, "w1", "a", dead_after_sec=10) == 0
    clock.now += 60
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss([], {})
    env = await store.get(redis, "e1")
    assert env is not None and env["state"] == "ready"
    assert (await hosts.list_hosts(redis, dead_after_sec=10))[0].state == "stopped"


async def test_drain_is_a_host_flag_that_every_beat_reports(redis, clock):
    assert (await _beat(redis, "w1", "a", drain=True)).draining  # SIGUSR1 on one worker
    assert (await _beat(redis, "w2", "a")).draining  # the host's other workers see it
    await hosts.set_draining(redis, "a", False)
    assert not (await _beat(redis, "w1", "a")).draining


def test_only_loss_events_are_taken():
    assert hosts.parse_event(json.dumps({"kind": "host_lost", "host": "h"})) == {
        "kind": "host_lost",
        "host": "h",
    }
    assert hosts.parse_event(b"not json") is None
    assert hosts.parse_event(json.dumps({"kind": "other"})) is None
    assert hosts.parse_event(json.dumps([1])) is None


async def test_the_api_answers_the_requests_waiting_on_a_lost_host_or_worker():
    from taskenv.api.results import ResultListener
    from taskenv.shared.jobs import unwrap

    listener = ResultListener(None)  # type: ignore[arg-type]
    with (
        listener.expect("on-b", keys.host_queue("b")) as on_b,
        listener.expect("on-a", keys.host_queue("a")) as on_a,
        listener.expect("run-a", keys.host_queue("a")) as run_a,
    ):
        listener._loss(json.dumps({"kind": "host_lost", "host": "b", "error": "host b lost: …"}).encode())
        assert on_b.done() and not on_a.done()
        with pytest.raises(Exception, match="host_lost: host b lost") as lost:
            unwrap(on_b.result())
        assert lost.value.status == 502
        listener._loss(
            json.dumps({"kind": "worker_lost", "host": "a", "worker": "w", "jobs": "run-a x"}).encode()
        )
        assert run_a.done() and not on_a.done()
        with pytest.raises(Exception, match="worker_lost"):
            unwrap(run_a.result())
    assert listener.waiting == 0 and listener._by_queue == {}


async def test_a_lost_workers_provisions_fail_and_its_jobs_leave_their_queues(redis, clock):
    """Not a minute later: at the sweep that notices the loss, naming the worker."""
    for env_id in ("by-w1", "by-w2"):
        await store.create(
            redis, env_id=env_id, org="o", workspace="w", task_ref="t", spec=TaskSpec(name="t"),
            token_hash="h" + env_id, lifetime_sec=3600, provision_timeout_sec=60,
        )  # fmt: skip
    assert (await store.claim_provision(redis, "by-w1", "a", cap=5, worker="w1"))[0] == "claimed"
    assert (await store.claim_provision(redis, "by-w2", "a", cap=5, worker="w2"))[0] == "claimed"
    host_queue, provisions = keys.arq_queue(keys.host_queue("a")), keys.arq_queue(keys.PROVISION_QUEUE)
    await redis.zadd(host_queue, {"exec-1": 1, "other": 1})
    await redis.zadd(provisions, {"prov-1": 1, "prov-2": 1})
    await _beat(redis, "w1", "a", jobs=["exec-1", "prov-1"])
    await _beat(redis, "w2", "a", jobs=["prov-2"])
    clock.now += 6
    await _beat(redis, "w2", "a")
    clock.now += 5  # w1 silent for 11 s; its host lives on through w2
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss(["w1"], {}, {"w1": 1})
    failed = await store.get(redis, "by-w1")
    assert failed is not None and failed["state"] == "failed"
    assert failed["error"] == "worker w1 lost while provisioning it: no heartbeat for 10 s"
    kept = await store.get(redis, "by-w2")
    assert kept is not None and kept["state"] == "provisioning"
    assert await redis.zrange(keys.PROVISIONING, 0, -1) == ["by-w2"]
    assert await redis.zrange(host_queue, 0, -1) == ["other"]
    assert await redis.zrange(provisions, 0, -1) == ["prov-2"]


async def test_a_worker_lost_with_no_job_listed_is_announced_too(redis, clock):
    """A job it took after its last beat is lost with it: a waiting DELETE must hear of it."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.EVENTS)
    await _beat(redis, "w1", "a")
    await _beat(redis, "w2", "a")
    clock.now += 6
    await _beat(redis, "w2", "a")
    clock.now += 5
    assert (await hosts.sweep(redis, dead_after_sec=10)).workers == ["w1"]
    message = None
    for _ in range(5):
        message = message or await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
    assert message is not None
    assert hosts.parse_event(message["data"]) == {
        "kind": "worker_lost",
        "host": "a",
        "worker": "w1",
        "jobs": "",
    }
    assert await hosts.host_alive(redis, "a", dead_after_sec=10)
    assert not await hosts.host_alive(redis, "b", dead_after_sec=10)


async def test_a_request_watching_a_host_hears_each_loss_on_it():
    from taskenv.api.results import ResultListener

    listener = ResultListener(None)  # type: ignore[arg-type]
    with listener.losses("a") as on_a, listener.losses("b") as on_b:
        listener._loss(json.dumps({"kind": "worker_lost", "host": "a", "worker": "w", "jobs": ""}).encode())
        assert on_a.done() and on_a.result() == LossKind.WORKER_LOST and not on_b.done()
        listener._loss(json.dumps({"kind": "host_lost", "host": "b", "error": "…"}).encode())
        assert on_b.result() == LossKind.HOST_LOST
    assert listener._watching == {}


async def test_every_field_scripts_and_workers_write_is_on_the_record_schema(redis, clock):
    await _env_on(redis, "lost-with-host", "b")
    await store.create(
        redis, env_id="claimed", org="o", workspace="w", task_ref="t", spec=TaskSpec(name="t"),
        token_hash="h-claimed", lifetime_sec=3600, provision_timeout_sec=60,
    )  # fmt: skip
    await store.claim_provision(redis, "claimed", "a", cap=5, worker="w1")
    await _env_on(redis, "gone", "a")
    await fail_gone(redis, "gone", "container removed")
    await _env_on(redis, "ended", "a")
    ended = await store.get(redis, "ended")
    assert ended is not None
    await store.tear_down(redis, ended, error="expired", retention_sec=60)
    await _beat(redis, "w1", "a", jobs=["j1"])
    await _beat(redis, "w2", "a")
    await _beat(redis, "wb", "b")
    clock.now += 6
    await _beat(redis, "w2", "a")
    clock.now += 5
    assert await hosts.sweep(redis, dead_after_sec=10) == hosts.Loss(["w1", "wb"], {"b": 1}, {"w1": 1})
    for env_id in ("lost-with-host", "claimed", "gone", "ended"):
        written = await redis.hgetall(keys.environment(env_id))
        assert set(written) <= FIELDS, f"{env_id}: not on the schema: {set(written) - FIELDS}"
        record = EnvironmentRecord.model_validate(written)
        assert record.to_hash() == {name: written.get(name, "") for name in FIELDS} | {
            "created_at": written["created_at"], "expires_at": written["expires_at"],
        }  # fmt: skip
    typed = {e: await store.load(redis, e) for e in ("lost-with-host", "claimed", "gone", "ended")}
    assert typed["lost-with-host"] is not None and typed["lost-with-host"].lost_host == "b"
    assert typed["claimed"] is not None and typed["claimed"].provisioner == "w1"
    assert typed["claimed"].state == EnvironmentState.FAILED and "worker w1 lost" in typed["claimed"].error
    assert typed["gone"] is not None and typed["gone"].container_gone
    assert typed["ended"] is not None and typed["ended"].state == EnvironmentState.TORN_DOWN
    assert await store.load(redis, "never") is None
