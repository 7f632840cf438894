"""Prometheus metrics, served at /metrics."""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from taskenv.api import cluster_metrics
from taskenv.api.state import app_state

EXECUTE_SECONDS = Histogram(
    "taskenv_execute_seconds",
    "Time to answer a successful execute, from request to response",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
)
ERRORS = Counter("taskenv_errors_total", "Error responses by type", ["type"])
WAITING = Gauge(
    "taskenv_requests_waiting", "Requests this API process waits on a worker for (executes among them)"
)


async def metrics(request: Request) -> Response:
    """This API process's metrics, then the deployment's (api/cluster_metrics.py)."""
    state = app_state(request)
    WAITING.set(state.listener.waiting)
    cluster = await cluster_metrics.exposition(state.records, state.settings)
    return Response(generate_latest() + cluster, media_type=CONTENT_TYPE_LATEST)
