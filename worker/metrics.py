"""A worker process's own metrics. They travel in its heartbeat (shared/hosts.py) and every API
process serves them at /metrics with `host` and `worker` labels: one scrape target for the
whole deployment, however many hosts, and no port to open on the Docker hosts."""

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

JOB_SECONDS = Histogram(
    "taskenv_job_seconds",
    "Time a worker spent on a job, by function and outcome (ok or the error type)",
    ["function", "outcome"],
    buckets=(*_FAST, 120, 300, 600),
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "taskenv_job_queue_wait_seconds",
    "Time from a job's enqueue to its start on a worker",
    ["function"],
    buckets=_FAST,
    registry=REGISTRY,
)
DOCKER_SECONDS = Histogram(
    "taskenv_docker_seconds",
    "Docker engine calls: create (create and start a container), exec (a command's whole run),"
    " kill (a command's tree at its deadline), remove",
    ["call"],
    buckets=(*_FAST, 120, 300, 600),
    registry=REGISTRY,
)

# Written by the heartbeat's thread (prometheus_client's metrics are thread-safe).
_BEATS = (0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30)
HEARTBEAT_INTERVAL_SECONDS = Histogram(
    "taskenv_heartbeat_interval_seconds",
    "Time between a worker's consecutive heartbeats (TASKENV_HEARTBEAT_SEC when on time; its"
    " host is lost past TASKENV_HOST_DEAD_AFTER_SEC)",
    buckets=_BEATS,
    registry=REGISTRY,
)
HEARTBEAT_WORST_INTERVAL_SECONDS = Gauge(
    "taskenv_heartbeat_interval_worst_seconds",
    "The longest time between two consecutive heartbeats since the worker started",
    registry=REGISTRY,
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "taskenv_event_loop_lag_seconds",
    "How late the job loop ran a callback the heartbeat posted to it: how busy commands keep it",
    buckets=_FAST,
    registry=REGISTRY,
)


def exposition() -> str:
    return generate_latest(REGISTRY).decode()
