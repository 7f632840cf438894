"""Route behaviour through the real API app in process (tests/inprocess.py): authentication,
validation, the error envelope, the states' 404/403/409, Idempotency-Key, and a failing job's
answer, against fakeredis and a fake worker. The same through real processes and sandboxes:
tests/test_integration_*.py."""

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from taskenv.api import environments as api_environments
from taskenv.shared import store
from taskenv.shared.models import EnvironmentState
from tests.helpers import Env, until_true
from tests.inprocess import InProcess, in_process, provisioned


@pytest.fixture
async def stack(monkeypatch):
    async with in_process(monkeypatch) as running:
        yield running


@pytest.fixture
async def key(stack: InProcess) -> str:
    return await stack.key()


@pytest.fixture
async def env(stack: InProcess, key: str) -> Env:
    return await provisioned(stack, key)


def envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()
    assert set(body) >= {"code", "detail", "type", "errors"} and body["code"] == status, body
    assert body["type"] == error_type, body
    return body


async def execute(stack: InProcess, env: Env, body: Any, **headers: str) -> httpx.Response:
    return await stack.http.post(f"{env.url}/execute", json=body, headers={**env.headers(), **headers})


async def test_provision_execute_and_delete(stack, key, env):
    response = await execute(stack, env, {"command": "echo hi", "timeout_sec": 5})
    assert response.status_code == 200, response.text
    assert response.json() == {"exit_code": 0, "output": "ran: echo hi\n"}
    assert (await stack.http.delete(env.url, headers={"X-API-Key": key})).status_code == 204
    status = await stack.http.get(f"{env.url}/status", headers={"X-API-Key": key})
    assert status.json()["state"] == "torn_down"
    assert stack.worker.ran[:2] == ["provision", "execute"]


async def test_api_keys_reach_their_own_workspace_only(stack, key, env):
    envs = stack.envs_url()
    envelope(await stack.http.get(envs), 401, "authentication_error")
    envelope(await stack.http.get(envs, headers={"X-API-Key": "tk_" + "0" * 43}), 401, "authentication_error")
    other_org = await stack.key("other")
    envelope(await stack.http.get(envs, headers={"X-API-Key": other_org}), 403, "permission_error")
    # Another workspace of the same org: its own path, where this id is unknown like any other.
    second = await stack.key("acme", "second")
    elsewhere = f"{stack.envs_url('acme', 'second')}/{env.id}"
    never = f"{stack.envs_url('acme', 'second')}/{uuid.uuid4()}"
    seen = envelope(await stack.http.get(elsewhere, headers={"X-API-Key": second}), 404, "not_found_error")
    unseen = envelope(await stack.http.get(never, headers={"X-API-Key": second}), 404, "not_found_error")
    assert seen["detail"].replace(env.id, "ID") == unseen["detail"].replace(never.rsplit("/", 1)[1], "ID")


async def test_execute_tokens_run_in_their_own_environment_only(stack, key, env):
    other = await provisioned(stack, key)
    for token, status, error_type in (
        ("", 401, "authentication_error"),
        ("tet_nope", 401, "authentication_error"),
        (other.token, 403, "permission_error"),  # a real token, of another environment
    ):
        answer = await stack.http.post(
            f"{env.url}/execute", json={"command": "true"}, headers={"X-Environment-Token": f"Bearer {token}"}
        )
        envelope(answer, status, error_type)
    assert stack.worker.ran.count("execute") == 0


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({}, 422, "validation_error"),
        ({"command": "true", "timeout_sec": 0}, 422, "validation_error"),
        ({"command": "true", "timeout_sec": "soon"}, 422, "validation_error"),
        ([1, 2], 400, "invalid_request_error"),
    ],
)
async def test_bad_bodies_answer_the_envelope_and_run_nothing(stack, env, body, status, error_type):
    answer = envelope(await execute(stack, env, body), status, error_type)
    assert bool(answer["errors"]) == (status == 422), answer  # validation errors name each field
    assert stack.worker.ran.count("execute") == 0


async def test_a_body_that_is_not_json_is_400(stack, env):
    answer = await stack.http.post(
        f"{env.url}/execute",
        content=b"{not json",
        headers={**env.headers(), "Content-Type": "application/json"},
    )
    envelope(answer, 400, "invalid_request_error")


async def test_unknown_fields_are_ignored(stack, env):
    answer = await execute(stack, env, {"command": "echo x", "flavour": "large"})
    assert answer.json() == {"exit_code": 0, "output": "ran: echo x\n"}


async def test_a_torn_down_environment_is_409_for_commands_and_logs(stack, key, env):
    assert (await stack.http.delete(env.url, headers={"X-API-Key": key})).status_code == 204
    envelope(await execute(stack, env, {"command": "true"}), 409, "conflict_error")
    envelope(await stack.http.get(f"{env.url}/logs", headers={"X-API-Key": key}), 409, "conflict_error")
    # A second DELETE is answered as the first.
    assert (await stack.http.delete(env.url, headers={"X-API-Key": key})).status_code == 204


async def test_unknown_routes_and_methods_answer_the_envelope(stack, key, env):
    envelope(await stack.http.get("/api/v1/nowhere", headers={"X-API-Key": key}), 404, "not_found_error")
    answer = await stack.http.put(env.url, headers={"X-API-Key": key})
    envelope(answer, 405, "method_not_allowed_error")


async def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(stack, env):
    first = await execute(stack, env, {"command": "echo once"}, **{"Idempotency-Key": "k"})
    again = await execute(stack, env, {"command": "echo once"}, **{"Idempotency-Key": "k"})
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert stack.worker.ran.count("execute") == 1
    other = await execute(stack, env, {"command": "echo two"}, **{"Idempotency-Key": "k"})
    assert "Idempotency-Key was used with another command" in envelope(other, 409, "conflict_error")["detail"]
    for bad in ("", "k" * 256):
        refused = envelope(
            await execute(stack, env, {"command": "true"}, **{"Idempotency-Key": bad}),
            422,
            "validation_error",
        )
        assert refused["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert stack.worker.ran.count("execute") == 1


async def test_a_job_that_fails_in_the_worker_is_an_envelope_not_a_hang(stack, env):
    async def broken(command: str) -> tuple[int, str]:
        raise RuntimeError("a bug in the sandbox's driver")

    stack.worker.command = broken
    answer = envelope(await execute(stack, env, {"command": "true", "timeout_sec": 5}), 500, "app_error")
    assert "bug" not in answer["detail"]  # the worker's internals are not told to the client


async def _waited_status(stack: InProcess, key: str, env_id: str, wait_sec: float) -> dict[str, Any]:
    url = f"{stack.envs_url()}/{env_id}/status"
    answer = await stack.http.get(url, params={"wait_sec": wait_sec}, headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _created(stack: InProcess, key: str) -> str:
    answer = await stack.http.post(stack.envs_url(), json={"task_ref": "default"}, headers={"X-API-Key": key})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _async(check: Any) -> Any:
    async def checked() -> bool:
        return bool(check())

    return checked


async def test_a_status_wait_answers_when_the_worker_announces_the_provision_ended(
    stack, key, loads, monkeypatch
):
    """The announcement alone ends the wait: the record's re-reads are set an hour apart."""
    monkeypatch.setattr(api_environments, "STATUS_RECHECK_SEC", 3600.0)
    stack.worker.paused = True
    env_id = await _created(stack, key)
    waiting = asyncio.create_task(_waited_status(stack, key, env_id, 20))
    # The route's read, then the wait's first (after it registered for the announcement).
    await until_true(_async(lambda: loads[env_id] >= 2), "the status request waiting")
    stack.worker.paused = False
    async with asyncio.timeout(10):
        assert (await waiting)["state"] == "ready"


async def test_a_status_wait_sees_a_provision_end_whose_announcement_was_lost(stack, key, loads, monkeypatch):
    monkeypatch.setattr(api_environments, "STATUS_RECHECK_SEC", 0.05)
    stack.worker.paused = True
    env_id = await _created(stack, key)
    waiting = asyncio.create_task(_waited_status(stack, key, env_id, 20))
    # The route's read, then the wait's first (after it registered for the announcement).
    await until_true(_async(lambda: loads[env_id] >= 2), "the status request waiting")
    # Ready without the worker's announcement: only the request's own re-read can see it.
    assert await store.set_if_state(
        stack.records, env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )
    async with asyncio.timeout(10):
        assert (await waiting)["state"] == "ready"


async def test_a_status_wait_answers_the_current_state_at_its_end(stack, key):
    stack.worker.paused = True
    env_id = await _created(stack, key)
    assert (await _waited_status(stack, key, env_id, 0.2))["state"] == "provisioning"


@pytest.fixture
def loads(monkeypatch) -> Counter[str]:
    """Reads of each environment's record (the route's, then its wait's)."""
    counted: Counter[str] = Counter()
    load = store.load

    async def counting(redis: Any, env_id: str) -> Any:
        counted[env_id] += 1
        return await load(redis, env_id)

    monkeypatch.setattr(store, "load", counting)
    return counted
