"""The deployment's metrics, read from Redis at scrape time and served by every API process
with its own: hosts and their environments, queues, and each worker process's metrics as it
sent them in its last heartbeat (worker/metrics.py), labelled with its host and worker id."""

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from taskenv.shared import hosts, keys
from taskenv.shared.settings import Settings


class _Snapshot:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


async def exposition(redis: Redis, settings: Settings) -> bytes:
    found = await hosts.list_hosts(redis, dead_after_sec=settings.host_dead_after_sec)
    queues = [keys.PROVISION_QUEUE, *(keys.host_queue(h.host) for h in found)]
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zcard(keys.arq_queue(queue))
        pipe.zcard(keys.PROVISIONING)
        *depths, unplaced = await pipe.execute()

    up = _gauge("taskenv_host_up", "1 while any worker of the host heartbeats", ["host", "state"])
    draining = _gauge("taskenv_host_draining", "1 while the host takes no provisions", ["host"])
    cap = _gauge("taskenv_host_max_environments", "Environments the host may hold", ["host"])
    envs = _gauge(
        "taskenv_environments",
        "Environments by host and state (at the host's last heartbeat)",
        ["host", "state"],
    )
    age = _gauge(
        "taskenv_worker_heartbeat_age_seconds", "Time since a worker's last heartbeat", ["host", "worker"]
    )
    running = _gauge("taskenv_worker_running_jobs", "Jobs a worker process is running", ["host", "worker"])
    capacity = _gauge("taskenv_worker_max_jobs", "Jobs a worker process may run at once", ["host", "worker"])
    merged: dict[str, Metric] = {}
    for host in found:
        up.add_metric([host.host, host.state], 1.0 if host.state == "up" else 0.0)
        draining.add_metric([host.host], float(host.draining))
        cap.add_metric([host.host], float(host.cap))
        envs.add_metric([host.host, "ready"], float(host.ready))
        envs.add_metric([host.host, "provisioning"], float(host.provisioning))
        for worker in host.workers:
            labels = [host.host, worker.worker_id]
            age.add_metric(labels, worker.beat_age_sec)
            running.add_metric(labels, float(worker.running))
            capacity.add_metric(labels, float(worker.max_jobs))
            _merge(merged, worker.metrics, {"host": host.host, "worker": worker.worker_id})
    depth = _gauge("taskenv_queue_depth", "Jobs in a queue, waiting or running", ["queue"])
    for queue, count in zip(queues, depths, strict=True):
        depth.add_metric([queue], float(count))
    waiting = _gauge("taskenv_provisions_unplaced", "Provisions no host has taken yet", [])
    waiting.add_metric([], float(unplaced))
    scraped = _gauge("taskenv_cluster_scrape_timestamp_seconds", "When this snapshot was read", [])
    scraped.add_metric([], time.time())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([up, draining, cap, envs, age, running, capacity, depth, waiting, scraped,
                                 *merged.values()]))  # fmt: skip
    return generate_latest(registry)


def _merge(merged: dict[str, Metric], text: str, labels: dict[str, str]) -> None:
    """Add one worker's families to the deployment's, its samples labelled by host and worker."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return  # a malformed heartbeat costs that worker's metrics, not the scrape
    for family in families:
        target = merged.get(family.name)
        if target is None:
            target = merged[family.name] = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            target.add_sample(sample.name, {**sample.labels, **labels}, sample.value)
