"""The operator's view on a two-host deployment: request ids from the client to the owning
host's worker log line, Prometheus metrics of the API and of every worker from one scrape,
and the `taskenv hosts`, `env ls` and `worker --drain` commands."""

import asyncio
import contextlib
import json
import subprocess
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import PYTHON, Cluster
from tests.harness import running_in
from tests.helpers import until, until_true

pytestmark = pytest.mark.integration


@pytest.fixture
async def two_hosts(cluster_factory, cluster_api):
    """Hosts a and b with one environment each (a cap of one places them)."""
    cluster = await cluster_factory(hosts=("a", "b"), TASKENV_HOST_MAX_ENVIRONMENTS="1")
    api = await cluster_api(cluster)
    env_ids = [await api.create() for _ in range(2)]
    placed = dict(zip(await asyncio.gather(*(api.ready(e) for e in env_ids)), env_ids, strict=True))
    return cluster, api, {name: placed[cluster.host_id(name)] for name in "ab"}


def _log_lines(cluster: Cluster, name: str) -> list[dict]:
    lines = []
    for line in cluster.log(name).splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


async def _until(check, timeout: float = 10):
    for _ in range(int(timeout / 0.1)):
        if result := check():
            return result
        await asyncio.sleep(0.1)
    return check()


async def test_a_request_id_reaches_the_owning_hosts_worker_only(two_hosts):
    cluster, api, env_of = two_hosts
    request_id = f"trace-{uuid.uuid4().hex}"
    response = await api.run(env_of["a"], "echo traced", **{"X-Request-Id": request_id})
    assert response.json()["output"] == "traced\n"
    assert response.headers["x-request-id"] == request_id
    mine = await _until(lambda: [x for x in _log_lines(cluster, "a") if x.get("request_id") == request_id])
    assert mine and mine[0]["function"] == "execute" and mine[0]["env_id"] == env_of["a"]
    assert mine[0]["host"] == cluster.host_id("a") and mine[0]["outcome"] == "ok"
    assert "traced" not in json.dumps(mine)  # the command and its output are not logged
    assert not [x for x in _log_lines(cluster, "b") if x.get("request_id") == request_id]
    # Without a usable id of the client's, the API makes one.
    for header in ({}, {"X-Request-Id": "not a sane id!"}):
        made = (await api.run(env_of["b"], "true", **header)).headers["x-request-id"]
        assert len(made) == 32 and int(made, 16) >= 0


async def test_one_scrape_shows_the_api_the_hosts_and_every_worker(two_hosts):
    cluster, api, env_of = two_hosts
    for name in "ab":
        assert (await api.run(env_of[name], "true")).status_code == 200

    async def scrape() -> list:
        text = (await api.http.get(f"{cluster.base_url}/metrics")).text
        return [s for f in text_string_to_metric_families(text) for s in f.samples]  # it parses

    async def heartbeats_carry_the_executes() -> bool:
        waits = [s for s in await scrape() if s.name == "taskenv_job_queue_wait_seconds_count"]
        hosts = {
            s.labels.get("host") for s in waits if s.labels.get("function") == "execute" and s.value >= 1
        }
        return hosts >= {cluster.host_id(name) for name in "ab"}

    # The workers' metrics reach the API with their next heartbeat.
    await until_true(heartbeats_carry_the_executes, "both hosts' executes in a scrape", timeout=10)
    every = await scrape()

    def samples(name: str, **labels: str) -> list:
        return [s for s in every if s.name == name and labels.items() <= s.labels.items()]

    execute_route = "/api/v1/org/{org}/ws/{workspace}/environments/{env_id}/execute"
    executes = samples("taskenv_requests_total", path=execute_route, status_code="200", method="POST")
    assert executes[0].value >= 2
    assert samples("taskenv_execute_seconds_count")[0].value >= 2
    for name in "ab":
        host = cluster.host_id(name)
        assert samples("taskenv_host_up", host=host)[0].value == 1
        assert samples("taskenv_environments", host=host, state="ready")[0].value == 1
        assert samples("taskenv_worker_heartbeat_age_seconds", host=host)[0].value < 3
        assert samples("taskenv_docker_seconds_count", host=host, call="create")[0].value == 1
        assert samples("taskenv_job_queue_wait_seconds_count", host=host, function="execute")[0].value >= 1
        assert samples("taskenv_queue_depth", queue=f"host:{host}")
    assert samples("taskenv_queue_depth", queue="provision")
    assert samples("taskenv_requests_waiting")[0].value == 0


def _cli(cluster: Cluster, *args: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, **({"TASKENV_HOST_ID": host} if host else {})}
    return subprocess.run([*PYTHON, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_operator_commands_list_hosts_and_environments_and_drain(two_hosts):
    cluster, api, env_of = two_hosts

    async def hosts_listed() -> dict:
        return {
            h["host"]: h
            for h in json.loads((await asyncio.to_thread(_cli, cluster, "hosts", "--json")).stdout)
        }

    async def counted() -> bool:  # the hosts' counts are those of their last heartbeat
        by_host = await hosts_listed()
        return all(by_host.get(cluster.host_id(name), {}).get("ready") == 1 for name in "ab")

    await until_true(counted, "each host's ready environment counted", timeout=10)
    by_host = await hosts_listed()
    for name in "ab":
        host = by_host[cluster.host_id(name)]
        assert host["state"] == "up" and host["ready"] == 1 and len(host["workers"]) == 1
    table = (await asyncio.to_thread(_cli, cluster, "hosts")).stdout
    assert cluster.host_id("a") in table and "READY/PROVISIONING" in table
    only_a = await asyncio.to_thread(_cli, cluster, "env", "ls", "--json", "--host", cluster.host_id("a"))
    assert [e["id"] for e in json.loads(only_a.stdout)] == [env_of["a"]]

    running = asyncio.create_task(api.run(env_of["a"], "sleep 2; echo finished", timeout_sec=20))
    await until(lambda: running_in(f"taskenv-{env_of['a']}", "sleep 2"), "the command runs")
    drained = await asyncio.to_thread(_cli, cluster, "worker", "--drain", host=cluster.host_id("a"))
    assert drained.returncode == 0, drained.stderr
    assert "drained" in drained.stdout
    assert running.done() and (await running).json()["output"] == "finished\n"
    draining = {h["host"]: h["draining"] for h in json.loads(_cli(cluster, "hosts", "--json").stdout)}
    assert draining == {cluster.host_id("a"): True, cluster.host_id("b"): False}
    undrained = await asyncio.to_thread(_cli, cluster, "worker", "--undrain", host=cluster.host_id("a"))
    assert undrained.returncode == 0
    draining = {h["host"]: h["draining"] for h in json.loads(_cli(cluster, "hosts", "--json").stdout)}
    assert draining[cluster.host_id("a")] is False
