"""Lifecycle, authentication and validation over HTTP against the real service."""

import asyncio
import json
import subprocess

import pytest

from tests.conftest import provision, wait_for_state
from tests.helpers import async_http

pytestmark = pytest.mark.integration


def container_exists(env_id: str) -> bool:
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^taskenv-{env_id}$"], capture_output=True, text=True
    )
    return bool(found.stdout.strip())


async def test_provision_answers_at_once_then_becomes_ready(client, service):
    response = await client.post(service.envs_url(), json={"task_ref": "default", "timeout_sec": 600})
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "provisioning" and body["execute_token"] and body["task_ref"] == "default"
    url = f"{service.envs_url()}/{body['id']}"
    assert (await wait_for_state(client, url, "ready"))["state"] == "ready"
    record = (await client.get(url)).json()
    assert set(record) >= {"id", "state", "task_ref", "created_at", "expires_at", "error", "instruction"}
    assert "execute_token" not in record and record["instruction"]
    assert record["service_urls"] == {}
    assert container_exists(body["id"])
    assert (await client.get(f"{url}/logs")).json() == {"logs": "taskenv sandbox ready\n"}
    assert (await client.delete(url)).status_code == 204


@pytest.mark.parametrize(("task_ref", "settled"), [("default", "ready"), ("broken", "failed")])
async def test_a_status_request_with_wait_sec_answers_when_the_provision_ends(
    client, service, task_ref, settled
):
    response = await client.post(service.envs_url(), json={"task_ref": task_ref})
    url = f"{service.envs_url()}/{response.json()['id']}"
    # One request, sent while the sandbox is still being made: its answer is the end state.
    waited = await client.get(f"{url}/status", params={"wait_sec": 30})
    assert waited.status_code == 200 and waited.json()["state"] == settled, waited.json()
    # On a settled environment it answers at once, as without it.
    assert (await client.get(f"{url}/status", params={"wait_sec": 30})).json()["state"] == settled
    for bad in ("-1", "31", "soon"):
        refused = await client.get(f"{url}/status", params={"wait_sec": bad})
        assert refused.status_code == 422 and refused.json()["type"] == "validation_error"
    await client.delete(url)


async def test_teardown_removes_the_container(client, service, env):
    assert container_exists(env.id)
    assert (await client.delete(env.url)).status_code == 204
    assert not container_exists(env.id)
    assert (await client.get(f"{env.url}/status")).json()["state"] == "torn_down"
    response = await client.post(f"{env.url}/execute", json={"command": "true"}, headers=env.headers())
    assert response.status_code == 409 and response.json()["type"] == "conflict_error"
    assert (await client.delete(env.url)).status_code == 204  # idempotent


async def test_expired_environment_is_reaped(client, service):
    env = await provision(client, service, timeout_sec=1)
    status = await wait_for_state(client, env.url, "torn_down", timeout=15)
    assert status["state"] == "torn_down" and "expired" in status["error"]
    for _ in range(50):
        if not container_exists(env.id):
            break
        await asyncio.sleep(0.1)
    assert not container_exists(env.id)


async def test_failed_provision_reports_why_and_refuses_execute(client, service):
    response = await client.post(service.envs_url(), json={"task_ref": "broken"})
    assert response.status_code == 201
    created = response.json()
    url = f"{service.envs_url()}/{created['id']}"
    status = await wait_for_state(client, url, "failed")
    assert status["state"] == "failed" and "taskenv/no-such-image" in status["error"]
    headers = {"X-Environment-Token": created["execute_token"]}
    response = await client.post(f"{url}/execute", json={"command": "true"}, headers=headers)
    assert response.status_code == 409
    assert not container_exists(created["id"])


async def test_unknown_task_is_404(client, service):
    response = await client.post(service.envs_url(), json={"task_ref": "nope@1"})
    assert response.status_code == 404
    assert response.json()["type"] == "not_found_error" and "nope@1" in response.json()["detail"]


async def test_list_paginates_and_filters_by_state(client, service):
    envs = [await provision(client, service) for _ in range(3)]
    await client.delete(envs[0].url)
    page = (await client.get(service.envs_url(), params={"limit": 2, "state": ["ready"]})).json()
    assert page["limit"] == 2 and page["page"] == 1 and page["has_next"] == (page["total"] > 2)
    assert all(e["state"] == "ready" for e in page["environments"])
    both = (await client.get(service.envs_url(), params=[("state", "ready"), ("state", "torn_down")])).json()
    ids = {e["id"] for e in both["environments"]} | {
        e["id"]
        for p in range(2, both["total_pages"] + 1)
        for e in (
            await client.get(service.envs_url(), params={"page": p, "state": ["ready", "torn_down"]})
        ).json()["environments"]
    }
    assert {e.id for e in envs} <= ids
    bad = await client.get(service.envs_url(), params={"limit": 500, "state": "sleeping"})
    assert bad.status_code == 422
    assert {tuple(e["loc"][:2]) for e in bad.json()["errors"]} == {("query", "limit"), ("query", "state")}
    for env in envs[1:]:
        await client.delete(env.url)


async def test_api_key_errors(service, env):
    async with async_http() as anonymous:
        missing = await anonymous.get(env.url)
        assert missing.status_code == 401
        assert missing.json() == {
            "code": 401,
            "detail": "Authentication failed",
            "type": "authentication_error",
            "errors": None,
        }
        unknown = await anonymous.get(env.url, headers={"X-API-Key": "tk_wrong"})
        assert unknown.status_code == 401
        bearer = await anonymous.get(env.url, headers={"Authorization": f"Bearer {service.key}"})
        assert bearer.status_code == 200
        other_ws = await anonymous.get(service.envs_url("other"), headers={"X-API-Key": service.key})
        assert other_ws.status_code == 403 and other_ws.json()["type"] == "permission_error"
        # A key of another org asking for this org's environment id through its own org: 404.
        other_org_url = f"{service.envs_url('other')}/{env.id}"
        hidden = await anonymous.get(other_org_url, headers={"X-API-Key": service.other_key})
        assert hidden.status_code == 404


async def test_execute_token_errors(client, service, env):
    other = await provision(client, service)
    url = f"{env.url}/execute"
    body = {"command": "echo hi"}
    async with async_http() as anonymous:
        assert (await anonymous.post(url, json=body)).status_code == 401
        bad = await anonymous.post(url, json=body, headers={"X-Environment-Token": "tet_forged"})
        assert bad.status_code == 401 and bad.json()["type"] == "authentication_error"
        foreign = await anonymous.post(url, json=body, headers=other.headers())
        assert foreign.status_code == 403 and foreign.json()["type"] == "permission_error"
        plain = await anonymous.post(url, json=body, headers={"X-Environment-Token": env.token})
        assert plain.status_code == 200 and plain.json()["output"] == "hi\n"
        nowhere = await anonymous.post(
            f"{service.envs_url()}/00000000-0000-0000-0000-000000000000/execute",
            json=body,
            headers=env.headers(),
        )
        assert nowhere.status_code == 404
    await client.delete(other.url)


async def test_body_errors_list_every_field(client, env):
    url = f"{env.url}/execute"
    response = await client.post(url, json={"command": "", "timeout_sec": 0}, headers=env.headers())
    assert response.status_code == 422
    body = response.json()
    assert body["type"] == "validation_error"
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "command"), ("body", "timeout_sec")}
    too_long = await client.post(url, json={"command": "true", "timeout_sec": 601}, headers=env.headers())
    assert too_long.status_code == 422
    missing = await client.post(url, json={}, headers=env.headers())
    assert missing.json()["errors"][0]["loc"] == ["body", "command"]
    malformed = await client.post(
        url, content=b'{"command": ', headers={**env.headers(), "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["type"] == "invalid_request_error"
    form = await client.post(url, data={"command": "true"}, headers=env.headers())
    assert form.status_code == 400
    huge = await client.post(url, json={"command": "x" * (1024 * 1024 + 1)}, headers=env.headers())
    assert huge.status_code == 413 and huge.json()["type"] == "payload_too_large_error"
    long_command = await client.post(url, json={"command": "x" * (256 * 1024 + 1)}, headers=env.headers())
    assert long_command.status_code == 422
    # Authentication comes before validation.
    unauthenticated = await client.post(url, json={"command": ""})
    assert unauthenticated.status_code == 401


async def test_unknown_routes_and_methods_use_the_envelope(client, service):
    response = await client.get(f"{service.base_url}/api/v1/nothing")
    assert response.status_code == 404 and response.json()["type"] == "not_found_error"
    response = await client.put(service.envs_url())
    assert response.status_code == 405 and response.json()["code"] == 405


async def test_sandboxes_start_hardened(service, env):
    found = subprocess.run(
        ["docker", "inspect", f"taskenv-{env.id}"], capture_output=True, text=True, check=True
    )
    (container,) = json.loads(found.stdout)
    host = container["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Init"] is True
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert host["PidsLimit"] == 256 and host["NanoCpus"] == 10**9
    labels = container["Config"]["Labels"]
    assert labels["taskenv.managed"] == "true" and labels["taskenv.env"] == env.id
    assert labels["taskenv.host"] == service.queue and labels["taskenv.org"] == "acme"


async def test_lifetime_is_capped_by_the_configured_maximum(client, service):
    from datetime import datetime

    response = await client.post(service.envs_url(), json={"task_ref": "default", "timeout_sec": 10**6})
    assert response.status_code == 201
    body = response.json()
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(body["created_at"])
    assert lifetime.total_seconds() == pytest.approx(3600)  # TASKENV_MAX_LIFETIME_SEC in the fixture
    assert (await client.delete(f"{service.envs_url()}/{body['id']}")).status_code == 204
