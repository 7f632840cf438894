"""Who can reach what, as properties over the real service (hypothesis draws the caller, the
path and the target; the oracle says what must happen).

The world: three scopes (acme/main, other/main, acme/second), each with its API key, and four
environments: A and A2 in acme/main, B in other/main, C in acme/second. Every answer and the
service's log are scanned for the secrets made here. Requests come from their own loopback
addresses, so that their unknown credentials count against no other test's address.
"""

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskenv.api.auth import create_api_key
from tests.conftest import Service, wait_for_state
from tests.helpers import transport_from

pytestmark = pytest.mark.integration

SCOPES = ("acme/main", "other/main", "acme/second")
ENVS = {"A": "acme/main", "A2": "acme/main", "B": "other/main", "C": "acme/second"}
ODD_IDS = ("not-a-uuid", "%2e%2e", "x" * 300)
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class World:
    service: Service
    http: httpx.AsyncClient
    keys: dict[str, str]  # scope -> API key
    ids: dict[str, str]  # env name -> id
    tokens: dict[str, str]  # env name -> execute token
    answers: list[httpx.Response] = field(default_factory=list)

    def url(self, scope: str, env_id: str | None = None, tail: str = "") -> str:
        org, workspace = scope.split("/")
        base = self.service.envs_url(org, workspace)
        return base if env_id is None else f"{base}/{env_id}{tail}"

    async def send(
        self, method: str, url: str, *, via: httpx.AsyncClient | None = None, **kwargs
    ) -> httpx.Response:
        response = await (via or self.http).request(method, url, **kwargs)
        self.answers.append(response)
        return response

    def secrets(self) -> list[str]:
        return [*self.keys.values(), *self.tokens.values()]


def same_modulo_ids(first: httpx.Response, second: httpx.Response) -> bool:
    def norm(response: httpx.Response) -> tuple[int, str]:
        text = response.text
        for odd in ODD_IDS:
            text = text.replace(odd, "<id>")
        return response.status_code, UUID.sub("<id>", text)

    return norm(first) == norm(second)


@pytest.fixture(scope="module")
async def world(service: Service) -> AsyncIterator[World]:
    records = aioredis.Redis.from_url(service.redis_url, decode_responses=True)
    keys = {"acme/main": service.key, "other/main": service.other_key}
    keys["acme/second"] = await create_api_key(records, "acme", "second")
    await records.aclose()
    transport = transport_from("127.0.0.3")
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60, connect=5)) as http:
        world = World(service, http, keys, {}, {})
        for name, scope in ENVS.items():
            created = await http.post(
                world.url(scope), json={"task_ref": "default"}, headers={"X-API-Key": keys[scope]}
            )
            assert created.status_code == 201, created.text
            world.ids[name], world.tokens[name] = created.json()["id"], created.json()["execute_token"]
        for name, scope in ENVS.items():
            api = httpx.AsyncClient(transport=transport, headers={"X-API-Key": keys[scope]})
            async with api:
                status = await wait_for_state(api, world.url(scope, world.ids[name]), "ready", "failed")
            assert status["state"] == "ready", status
            marked = await http.post(
                world.url(scope, world.ids[name], "/execute"),
                json={"command": f"echo {name} > /tmp/who"},
                headers={"X-Environment-Token": world.tokens[name]},
            )
            assert marked.status_code == 200, marked.text
        yield world
        for name, scope in ENVS.items():
            await http.delete(world.url(scope, world.ids[name]), headers={"X-API-Key": keys[scope]})


targets = st.sampled_from([*ENVS, "never", *ODD_IDS])


def target_id(world: World, target: str) -> str:
    return world.ids.get(target) or (str(uuid.uuid4()) if target == "never" else target)


@PROPERTY
@given(
    caller=st.sampled_from([*SCOPES, "bogus"]),
    path=st.sampled_from(SCOPES),
    target=targets,
    operation=st.sampled_from(["get", "status", "logs", "delete", "list"]),
)
async def test_an_api_key_reaches_its_own_workspace_only(world, caller, path, target, operation):
    owns = caller == path and (operation == "list" or ENVS.get(target) == path)
    if operation == "delete" and owns:
        return  # the world's environments must stay: deleting one's own is tested elsewhere
    key = world.keys.get(caller, "tk_" + "0" * 43)
    headers = {"X-API-Key": key}

    async def call(env_id: str) -> httpx.Response:
        if operation == "list":
            return await world.send("GET", world.url(path), headers=headers, params={"limit": 200})
        tail = {"status": "/status", "logs": "/logs"}.get(operation, "")
        return await world.send(
            "DELETE" if operation == "delete" else "GET", world.url(path, env_id, tail), headers=headers
        )

    response = await call(target_id(world, target))
    expected = 200 if owns else 401 if caller == "bogus" else 403 if caller != path else 404
    assert response.status_code == expected, (response.status_code, response.text[:300])
    if operation == "list" and owns:
        listed = {e["id"] for e in response.json()["environments"]}
        foreign = {world.ids[name] for name, scope in ENVS.items() if scope != path}
        assert not listed & foreign
    elif owns and operation in ("get", "status"):
        assert response.json()["id"] == world.ids[target]
    if not owns and target in ENVS and ENVS[target] != caller:
        # Whether the id exists somewhere else is never told: same answer as an id never made.
        assert same_modulo_ids(response, await call(str(uuid.uuid4()))), response.text


@pytest.fixture(scope="module")
async def token_client() -> AsyncIterator[httpx.AsyncClient]:
    """Its own address: its bad tokens and the other property's bad keys stay under the limit."""
    transport = transport_from("127.0.0.6")
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60, connect=5)) as http:
        yield http


@PROPERTY
@given(token_of=st.sampled_from([*ENVS, "bogus"]), path=st.sampled_from(SCOPES), target=targets)
async def test_an_execute_token_runs_in_its_own_environment_only(world, token_client, token_of, path, target):
    owns = token_of == target and ENVS[target] == path
    headers = {"X-Environment-Token": f"Bearer {world.tokens.get(token_of, 'tet_' + '0' * 43)}"}
    body = {"command": "cat /tmp/who", "timeout_sec": 5}

    async def call(env_id: str) -> httpx.Response:
        url = world.url(path, env_id, "/execute")
        return await world.send("POST", url, json=body, headers=headers, via=token_client)

    response = await call(target_id(world, target))
    token_scope = ENVS.get(token_of)
    if owns:
        assert response.json() == {"exit_code": 0, "output": f"{target}\n"}
        return
    if token_scope is None:
        expected = 401
    elif token_scope != path:
        expected = 403  # a token of another workspace, whatever the id
    elif ENVS.get(target) == path:
        expected = 403  # another environment of the token's own workspace
    else:
        expected = 404
    assert response.status_code == expected, (token_of, path, target, response.text[:300])
    if target in ENVS and ENVS[target] != token_scope:
        assert same_modulo_ids(response, await call(str(uuid.uuid4()))), response.text


async def test_the_world_survived(world):
    """No foreign key deleted anything while the properties ran."""
    for name, scope in ENVS.items():
        status = await world.send(
            "GET", world.url(scope, world.ids[name], "/status"), headers={"X-API-Key": world.keys[scope]}
        )
        assert status.json()["state"] == "ready", (name, status.text)


async def test_secrets_never_appear_in_logs_or_error_bodies(world):
    # Credentials in the wrong places: a token as a key, a key as a token, either as an id.
    key, token = world.keys["acme/main"], world.tokens["A"]
    misplaced = [
        ("GET", world.url("acme/main", world.ids["A"]), {"X-API-Key": token}),
        ("POST", world.url("acme/main", world.ids["A"], "/execute"), {"X-Environment-Token": key}),
        ("GET", world.url("acme/main", token), {"X-API-Key": key}),
        ("GET", world.url("other/main", world.ids["A"]), {"X-API-Key": key}),
        ("GET", world.url("acme/main", world.ids["B"]), {"Authorization": f"Bearer {key}"}),
    ]
    for method, url, headers in misplaced:
        response = await world.send(method, url, headers=headers, json={"command": "true"})
        assert response.status_code in (401, 403, 404), response.text
    assert len(world.answers) > 100  # the properties ran
    for response in world.answers:
        for secret in world.secrets():
            assert secret not in response.text, (response.request.url, response.text[:200])
    log = Path(world.service.env["TASKENV_TASKS_PATH"]).parent / "service.log"
    text = log.read_text(errors="replace")
    leaked = [secret[:8] for secret in world.secrets() if secret in text or secret[4:] in text]
    assert not leaked, f"secrets in {log}: {leaked}"
    scanned = f"{len(world.answers)} answers and {len(text)} bytes of log"
    print(f"\nscanned {scanned} for {len(world.secrets())} secrets")
