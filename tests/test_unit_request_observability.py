"""The API's per-request middleware (api/request_ids_and_metrics.py): every response carries the
request id; requests are counted as starlette-exporter counted them: by route template (a Mount's
prefix included), method and status, a wrong method under its route's template, an unmatched
path or a probe not at all, an escaping exception as a 500; none left in progress."""

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from taskenv.api import app as api_app
from taskenv.api import environments
from taskenv.api.request_ids_and_metrics import APP_NAME, RequestObservability, templates_by_endpoint

PREFIX = "/unit-observed/{org}"


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item"])


async def failing(request: Request) -> Response:
    raise RuntimeError("a bug")


async def probe(request: Request) -> Response:
    return PlainTextResponse("ok")


def _app() -> Starlette:
    routes = [
        Mount(PREFIX, routes=[Route("/items/{item}", item, methods=["GET"])]),
        Route("/unit-observed-fails", failing, methods=["GET"]),
        Route("/healthz", probe, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RequestObservability, routes=routes)])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def _count(method: str, path: str, status: int) -> float:
    labels = {"method": method, "path": path, "status_code": str(status), "app_name": APP_NAME}
    return REGISTRY.get_sample_value("taskenv_requests_total", labels) or 0.0


def _seconds_count(method: str, path: str, status: int) -> float:
    labels = {"method": method, "path": path, "status_code": str(status), "app_name": APP_NAME}
    return REGISTRY.get_sample_value("taskenv_request_duration_seconds_count", labels) or 0.0


async def test_requests_are_counted_by_template_method_and_status(http: httpx.AsyncClient) -> None:
    template = PREFIX + "/items/{item}"
    before = _count("GET", template, 200), _count("POST", template, 405), _seconds_count("GET", template, 200)
    for n in range(3):
        response = await http.get(f"/unit-observed/acme/items/{n}")
        assert response.status_code == 200 and len(response.headers["x-request-id"]) == 32
    assert (await http.post("/unit-observed/acme/items/1")).status_code == 405
    after = _count("GET", template, 200), _count("POST", template, 405), _seconds_count("GET", template, 200)
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 1, 3]
    assert (
        REGISTRY.get_sample_value("taskenv_requests_in_progress", {"method": "GET", "app_name": APP_NAME})
        == 0
    )


async def test_unmatched_paths_and_probes_are_not_counted(http: httpx.AsyncClient) -> None:
    def total() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "taskenv_requests" for s in m.samples
                   if s.name == "taskenv_requests_total")  # fmt: skip

    before = total()
    assert (await http.get("/unit-observed-nowhere")).status_code == 404
    probed = await http.get("/healthz", headers={"x-request-id": "probe-1"})
    assert probed.status_code == 200 and probed.headers["x-request-id"] == "probe-1"
    assert total() == before


async def test_an_escaping_exception_counts_as_a_500(http: httpx.AsyncClient) -> None:
    before = _count("GET", "/unit-observed-fails", 500)
    assert (await http.get("/unit-observed-fails")).status_code == 500
    assert _count("GET", "/unit-observed-fails", 500) == before + 1


def test_the_execute_endpoint_has_one_template_though_two_routes_serve_it() -> None:
    templates = templates_by_endpoint(api_app._routes())
    assert templates[environments.execute] == api_app.WORKSPACE_PREFIX + "/environments/{env_id}/execute"
