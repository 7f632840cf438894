"""Several hosts on one machine (tests/cluster.py): provisions spread up to each host's cap,
commands reach the owning host only, a lost host fails fast while the others serve, a killed
worker's waiting command is answered at once and never re-run, draining stops provisions."""

import asyncio
import signal
import time
from collections import Counter

import pytest

from taskenv.shared import keys
from tests.cluster import timed
from tests.conftest import wait_for_state
from tests.harness import running_in
from tests.helpers import commands_in_flight, until, until_true

pytestmark = pytest.mark.integration


async def test_provisions_spread_over_hosts_up_to_each_cap(cluster_factory, cluster_api):
    cluster = await cluster_factory(hosts=("a", "b", "c"), TASKENV_HOST_MAX_ENVIRONMENTS="2")
    api = await cluster_api(cluster)
    env_ids = [await api.create() for _ in range(6)]
    placed = await asyncio.gather(*(api.ready(env_id) for env_id in env_ids))
    assert Counter(placed) == {cluster.host_id(n): 2 for n in "abc"}
    # Every host is full: a seventh waits, unprovisioned...
    extra = await api.create()
    await asyncio.sleep(2)  # nothing to poll for: that it stays unprovisioned while time passes
    assert (await api.state(extra))["state"] == "provisioning"
    # ...until a host has room again.
    freed = env_ids[placed.index(cluster.host_id("b"))]
    assert (await api.http.delete(api.url(freed))).status_code == 204
    assert await api.ready(extra) == cluster.host_id("b")


@pytest.mark.parametrize(("dead_after", "heartbeat"), [(3, 0.5), (10, 1.0)], ids=["fast", "defaults"])
async def test_a_lost_host_fails_fast_while_the_others_serve(
    cluster_factory, cluster_api, dead_after, heartbeat
):
    cluster = await cluster_factory(
        hosts=("a", "b"),
        TASKENV_HOST_MAX_ENVIRONMENTS="2",
        TASKENV_HOST_DEAD_AFTER_SEC=str(dead_after),
        TASKENV_HEARTBEAT_SEC=str(heartbeat),
    )
    api = await cluster_api(cluster)
    env_ids = [await api.create() for _ in range(4)]
    placed = dict(zip(env_ids, await asyncio.gather(*(api.ready(e) for e in env_ids)), strict=True))
    on_a = [e for e, h in placed.items() if h == cluster.host_id("a")]
    on_b = [e for e, h in placed.items() if h == cluster.host_id("b")]
    waiting = [asyncio.create_task(api.run(on_b[0], "sleep 60", timeout_sec=120)) for _ in range(2)]

    def both_run() -> bool:
        admitted = commands_in_flight(cluster.redis_url, on_b[0]) == 2
        return admitted and running_in(f"taskenv-{on_b[0]}", "sleep 60")

    await until(both_run, "the commands run")

    lost_at = time.monotonic()
    cluster.kill("b")
    # A DELETE whose teardown waits on the host as it is lost: answered 204 by the loss too.
    deleting = asyncio.create_task(api.http.delete(api.url(on_b[1])))
    answers = await asyncio.wait_for(asyncio.gather(*waiting), dead_after + 20)
    answered = timed(lost_at)
    failed_states = [await wait_for_state(api.http, api.url(on_b[0]), "failed")]
    failed = timed(lost_at)
    assert (await deleting).status_code == 204
    deleted = timed(lost_at)
    for response in answers:
        assert response.status_code == 502, response.text
        assert response.json()["type"] == "bad_gateway_error"
        assert "host_lost" in response.json()["detail"] and cluster.host_id("b") in response.json()["detail"]
    for status in failed_states:
        assert status["state"] == "failed" and cluster.host_id("b") in status["error"]
    # New commands for its environments are refused at once with the same error.
    started = time.monotonic()
    refused = await api.run(on_b[0], "echo hi")
    assert refused.status_code == 502 and refused.json()["type"] == "bad_gateway_error"
    refused_in = timed(started)
    # Deleting them does not wait for the lost host's teardown.
    started = time.monotonic()
    assert (await api.http.delete(api.url(on_b[0]))).status_code == 204
    assert timed(started) < 2
    # The other host keeps serving, and takes the new provisions.
    for env_id in on_a:
        assert (await api.run(env_id, "echo alive")).json() == {"exit_code": 0, "output": "alive\n"}
    await api.http.delete(api.url(on_a[0]))
    assert await api.ready(await api.create()) == cluster.host_id("a")
    print(
        f"\nhost loss (dead after {dead_after} s, heartbeat {heartbeat} s): waiting requests answered in"
        f" {answered} s, environments failed within {failed} s, a new execute refused in {refused_in} s"
    )
    assert answered < dead_after + 3  # not the commands' 120 s deadline
    assert deleted < dead_after + 3


async def test_a_worker_killed_mid_execute_answers_502_and_never_reruns(cluster_factory, cluster_api):
    cluster = await cluster_factory(hosts=("a",))
    api = await cluster_api(cluster)
    env_id = await api.create()
    await api.ready(env_id)
    # Long enough to be still running after a second worker has started on a loaded machine.
    command = "echo run >> /tmp/runs; sleep 30; echo done"
    waiting = asyncio.create_task(api.run(env_id, command, timeout_sec=60))
    (first,) = cluster.workers["a"]
    # Taken and running by the first worker before a second one could take it.
    await until(lambda: running_in(f"taskenv-{env_id}", "sleep 30"), "the command running")
    # Another worker of the host, heartbeating before the kill: the host lives on however slowly
    # a process starts on a loaded machine, so only the worker is lost.
    cluster.start_worker("a")
    await until(lambda: len(cluster.worker_ids("a")) == 2, "a second worker of host a")

    killed_at = time.monotonic()
    first.kill()
    response = await asyncio.wait_for(waiting, 30)
    answered = timed(killed_at)
    assert response.status_code == 502, response.text
    assert response.json()["type"] == "bad_gateway_error" and "worker_lost" in response.json()["detail"]
    print(f"\nworker SIGKILLed mid-execute: the waiting client got 502 worker_lost in {answered} s")
    assert answered < 3 + 3  # the dead-after window, not the command's 60 s deadline

    # The environment was not failed: its host lived on. The command is not run again.
    assert (await api.state(env_id))["state"] == "ready"
    await asyncio.sleep(6)  # the point: time passes for a re-run to show, and there is none
    again = await api.run(env_id, "cat /tmp/runs")
    assert again.status_code == 200 and again.json()["output"] == "run\n"


async def test_a_cleanly_stopped_host_keeps_its_environments(cluster_factory, cluster_api):
    cluster = await cluster_factory(hosts=("a",))
    api = await cluster_api(cluster)
    env_id = await api.create()
    await api.ready(env_id)
    cluster.signal("a", signal.SIGTERM)
    for proc in cluster.workers.pop("a"):
        proc.wait(timeout=30)
    await asyncio.sleep(3 + 1.5)  # the point: past the dead-after window, it is still not lost
    assert (await api.state(env_id))["state"] == "ready"
    assert await api.redis.hget(keys.host(cluster.host_id("a")), "state") == "stopped"
    cluster.start_worker("a")
    await cluster.wait_live("a")
    assert (await api.run(env_id, "echo back")).json()["output"] == "back\n"


async def test_draining_stops_provisions_and_lets_running_commands_finish(cluster_factory, cluster_api):
    cluster = await cluster_factory(hosts=("a",))
    api = await cluster_api(cluster)
    on_a = await api.create()
    assert await api.ready(on_a) == cluster.host_id("a")
    cluster.start_worker("b")
    await cluster.wait_live("b")
    running = asyncio.create_task(api.run(on_a, "sleep 2; echo finished", timeout_sec=20))
    await until(lambda: running_in(f"taskenv-{on_a}", "sleep 2"), "the command runs")
    cluster.signal("a", signal.SIGUSR1)

    async def draining() -> bool:  # told by a heartbeat of host a's worker
        return await api.redis.hget(keys.host(cluster.host_id("a")), "draining") == "1"

    await until_true(draining, "host a draining", timeout=5)
    new = [await api.create() for _ in range(3)]
    assert set(await asyncio.gather(*(api.ready(e) for e in new))) == {cluster.host_id("b")}
    assert (await running).json() == {"exit_code": 0, "output": "finished\n"}
    # Draining takes no provisions; the host's environments are still served.
    assert (await api.run(on_a, "echo still")).json()["output"] == "still\n"


async def test_readiness_follows_the_live_hosts(cluster_factory, cluster_api):
    cluster = await cluster_factory(hosts=("a",))
    api = await cluster_api(cluster)
    assert (await api.http.get(f"{cluster.base_url}/readyz")).json() == {
        "status": "ready",
        "redis": "ok",
        "live_hosts": 1,
    }
    cluster.kill("a")
    lost_at = time.monotonic()

    async def not_ready() -> bool:
        return (await api.http.get(f"{cluster.base_url}/readyz")).status_code == 503

    await until_true(not_ready, "not ready once the only host is lost", timeout=3 + 5)
    assert timed(lost_at) >= 2  # not before its dead-after window (3 s) ended, less a heartbeat
    answer = await api.http.get(f"{cluster.base_url}/readyz")
    assert answer.status_code == 503 and answer.json()["live_hosts"] == 0
    # Alive all the same: a balancer must not restart the API for want of workers.
    assert (await api.http.get(f"{cluster.base_url}/healthz")).status_code == 200
