"""Each route's documented responses against what it returns: every status code the OpenAPI
document lists for a route is provoked on a live taskenv (its own Redis, worker and API, real
Docker), and each answer is checked by schemathesis against the document (status code, schema,
content type, headers). A status that is documented but never provoked, or provoked but not
documented, fails the test. (tests/test_fuzz_openapi.py does the same with generated requests.)
"""

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from taskenv.api.app import create_app
from taskenv.api.openapi import build_document
from taskenv.shared.settings import Settings
from taskenv.shared.task_archive import TaskFiles, pack
from tests.helpers import async_http, commands_in_flight, eventually, sync_http
from tests.stack import Stack
from tests.test_integration_tasks import Registry
from tests.test_integration_verify import BY_HASH, FLAG, task

pytestmark = [pytest.mark.integration, pytest.mark.compat]

DOCUMENT = build_document(create_app(Settings()).routes)
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
OPERATIONS = {
    op["operationId"]: (path, method.upper())
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
}
DOCUMENTED = {
    (op["operationId"], int(status))
    for item in DOCUMENT["paths"].values()
    for op in item.values()
    for status in op["responses"]
}
# Documented, and not provoked here: 500 is a bug (the fuzz and every test check there is none);
# a teardown's 502 needs the Docker engine to refuse a removal (a removed container is not one).
NOT_PROVOKED = {(op, 500) for op in OPERATIONS} | {("delete_environment", 502)}
# Pushed tasks of the org `acme`, each for a status of POST …/verify the default task (which
# declares no verification: 409) cannot give: a flag checked for real (200), a script whose
# 1 s timeout bounds how long the worker must be stopped for the API to give up (504), and a
# judge method this deployment refuses (422).
VERIFIED_TASKS = {
    "flag-lab": BY_HASH,
    "slow-lab": {"method": "script", "script": "verify.sh", "timeout": 1},
    "judged-lab": {"method": "outcome_judge", "judge": {"model": "openai/gpt-4o", "rubric": "rce"}},
}
AUTH_FAIL_LIMIT = 5
BODY_TIMEOUT_SEC = 1
BIG = "x" * (1024 * 1024 + 1)
# A provision takes a second or two on a quiet machine; a loaded one (the whole suite on two
# cores) has been seen past a minute.
READY_WITHIN_SEC = 180
# The longest interval there is: the reaper's passes (a cron at the seconds 0 and 59) would find
# the containers the test removes and fail their environments before the probes below ask.
REAP_INTERVAL_SEC = 59


class Prober:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.seen: set[tuple[str, int]] = set()
        self.http = sync_http(base_url=stack.base_url, timeout=30)

    def __call__(
        self,
        operation: str,
        expected: int,
        where: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **request: Any,
    ) -> httpx.Response:
        """`where`: the path's parameters; `request`: httpx's (json, content, params)."""
        path, method = OPERATIONS[operation]
        where = where or {}
        response = self.http.request(method, path.format(**where), headers=headers, **request)
        assert response.status_code == expected, (operation, response.status_code, response.text[:300])
        response.request.read()  # a streamed body (_Stalled) is read again for the checks
        case = SCHEMA[path][method].Case(path_parameters=where, headers=headers, query=request.get("params"))
        case.validate_response(response, checks=CHECKS)
        self.seen.add((operation, expected))
        return response


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {
        "TASKENV_MIN_CLIENT_VERSIONS": "dreadnode-sdk=2.0.52",
        "TASKENV_MAX_EXECS_PER_ENV": "1",
        "TASKENV_AUTH_FAIL_LIMIT": str(AUTH_FAIL_LIMIT),
        "TASKENV_CONTROL_TIMEOUT_SEC": "2",
        "TASKENV_BODY_TIMEOUT_SEC": str(BODY_TIMEOUT_SEC),
        # The reaper passes at seconds 0 and 59 of each minute only (see _between_reaper_passes).
        "TASKENV_REAP_INTERVAL_SEC": str(REAP_INTERVAL_SEC),
    }
    running = Stack(tmp_path_factory.mktemp("conformance"), settings).start()
    try:
        yield running
    finally:
        running.close()


def _push(stack: Stack, key: str, name: str, verification: dict[str, Any]) -> None:
    """A task of the org `acme`, pushed as `dn task push` does."""

    async def push() -> httpx.Response:
        async with async_http(timeout=httpx.Timeout(60, connect=5)) as client:
            _, raw = task(name, verification)
            # A script verification's script must be in the archive (checked at push).
            files = {"task.yaml": yaml.safe_dump(raw).encode(), "verify.sh": b"exit 0\n"}
            layer = pack(TaskFiles(files=files))
            return await Registry(client, stack.base_url, "acme", key).push(name, layer, raw)

    answer = asyncio.run(push())
    assert answer.status_code == 201, answer.text


def _ready(probe: Prober, key: str, scope: dict[str, str], *task_refs: str) -> list[tuple[str, str]]:
    """An environment of each task, ready: (id, execute token) each. All are asked for first, so
    that they provision side by side; each is then waited for (failed fails the test at once)."""
    mine = {"X-API-Key": key}
    made = [probe("create_environment", 201, scope, mine, json={"task_ref": ref}).json() for ref in task_refs]
    for created in made:
        status = {"state": None}
        deadline = time.monotonic() + READY_WITHIN_SEC
        while status["state"] != "ready" and time.monotonic() < deadline:
            status = probe("get_status", 200, {**scope, "env_id": created["id"]}, mine).json()
            assert status["state"] != "failed", status
            time.sleep(0.05)
        assert status["state"] == "ready", f"not ready within {READY_WITHIN_SEC} s: {status}"
    return [(created["id"], created["execute_token"]) for created in made]


def _between_reaper_passes(margin_sec: int = 15) -> None:
    """Until the wall clock is at least `margin_sec` before the reaper's next pass (and past the
    last one): a failed environment's logs and verification are 409, not the 502 probed, so its
    container must be found missing by the route, not by a pass. At most about 20 s."""
    while not 2 <= datetime.now().second < REAP_INTERVAL_SEC - margin_sec:
        time.sleep(0.2)


def _remove_container(env_id: str) -> None:
    subprocess.run(["docker", "rm", "-f", f"taskenv-{env_id}"], capture_output=True, check=False)
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=taskenv.env={env_id}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)


def _verified_labs(probe: Prober, stack: Stack, key: str, ws: dict[str, str]) -> dict[str, tuple[str, str]]:
    """A ready environment of each of VERIFIED_TASKS: task name -> (id, execute token)."""
    for name, verification in VERIFIED_TASKS.items():
        _push(stack, key, name, verification)
    return dict(zip(VERIFIED_TASKS, _ready(probe, key, ws, *VERIFIED_TASKS), strict=True))


def _probe_secrets(probe: Prober, mine: dict[str, str], theirs: dict[str, str]) -> str:
    """Each status of the org's secret routes but those every route answers (426, 429, 503);
    returns the id of a secret left in place. No answer ever carries a value."""
    org, nobody = {"org": "acme"}, {}
    json_body = {**mine, "Content-Type": "application/json"}
    made = probe("create_secret", 201, org, mine, json={"name": "API_TOKEN", "value": "s3cret"})
    kept = {**org, "secret_id": made.json()["id"]}
    probe("create_secret", 400, org, json_body, content=b'{"name": ')
    probe("create_secret", 401, org, nobody, json={"name": "OTHER", "value": "v"})
    probe("create_secret", 403, org, theirs, json={"name": "OTHER", "value": "v"})
    probe("create_secret", 408, org, json_body, content=_Stalled(b'{"name": "OTHER", "value": "v"'))
    probe("create_secret", 409, org, mine, json={"name": "API_TOKEN", "value": "another"})
    probe("create_secret", 413, org, mine, json={"name": "OTHER", "value": BIG})
    probe("create_secret", 422, org, mine, json={"name": "not-an-env-name", "value": "v"})
    shown = [
        probe("list_secrets", 200, org, mine),
        probe("get_secret", 200, kept, mine),
        probe("update_secret", 200, kept, mine, json={"value": "s3cret2"}),
    ]
    assert all("s3cret" not in answer.text for answer in [made, *shown])
    assert shown[0].json()["total"] == 1
    probe("list_secrets", 401, org, nobody)
    probe("list_secrets", 403, org, theirs)
    missing = {**org, "secret_id": str(uuid.uuid4())}
    for operation in ("get_secret", "update_secret", "delete_secret"):
        body = {"json": {"value": "v"}} if operation == "update_secret" else {}
        probe(operation, 401, kept, nobody, **body)
        probe(operation, 403, kept, theirs, **body)
        probe(operation, 404, missing, mine, **body)
    probe("update_secret", 400, kept, json_body, content=b"{nope")
    probe("update_secret", 408, kept, json_body, content=_Stalled(b'{"value": "v"'))
    probe("update_secret", 413, kept, mine, json={"value": BIG})
    probe("update_secret", 422, kept, mine, json={"value": ""})
    doomed = probe("create_secret", 201, org, mine, json={"name": "DOOMED", "value": "v"}).json()["id"]
    probe("delete_secret", 204, {**org, "secret_id": doomed}, mine)
    probe("delete_secret", 404, {**org, "secret_id": doomed}, mine)
    return kept["secret_id"]


class _Stalled:
    """A body that stops after its first bytes for longer than TASKENV_BODY_TIMEOUT_SEC, the first
    time it is sent (schemathesis reads the request's body again to check the answer)."""

    def __init__(self, first: bytes) -> None:
        self.first, self.stalled = first, False

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        if not self.stalled:
            self.stalled = True
            time.sleep(BODY_TIMEOUT_SEC + 1)
        yield b"}"


def _valid_request(
    operation: str,
    ws: dict[str, str],
    env_id: str,
    secret_id: str,
    key: dict[str, str],
    token: dict[str, str],
) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """A request that would succeed: the path's parameters, the credential, the body."""
    path = OPERATIONS[operation][0]
    params = {**ws, "env_id": env_id, "secret_id": secret_id}
    where = {name: value for name, value in params.items() if "{" + name + "}" in path}
    bodies = {
        "execute": {"command": "true"},
        "create_environment": {"task_ref": "default"},
        "create_secret": {"name": "ANOTHER_TOKEN", "value": "v"},
        "update_secret": {"value": "v"},
    }
    request = {"json": bodies[operation]} if operation in bodies else {}
    return where, token if operation == "execute" else key, request


def test_every_documented_response_is_what_the_route_returns(stack: Stack) -> None:
    probe = Prober(stack)
    key, other = stack.key("acme", "main"), stack.key("other", "main")
    mine, theirs = {"X-API-Key": key}, {"X-API-Key": other}
    ws = {"org": "acme", "workspace": "main"}
    (a, token_a), (b, token_b), (d, _), (gone, token_gone) = _ready(probe, key, ws, *["default"] * 4)
    probe("delete_environment", 204, {**ws, "env_id": gone}, mine)
    probe("delete_environment", 204, {**ws, "env_id": gone}, mine)  # idempotent
    env = lambda env_id: {**ws, "env_id": env_id}  # noqa: E731
    token = lambda t: {"X-Environment-Token": f"Bearer {t}"}  # noqa: E731
    nobody: dict[str, str] = {}
    json_body = {"Content-Type": "application/json"}

    probe("health", 200)
    probe("metrics", 200)
    probe("get_user", 200, {}, mine)
    probe("get_user", 401, {}, nobody)
    for operation in ("get_organization", "list_workspaces"):
        probe(operation, 200, {"org": "acme"}, mine)
        probe(operation, 401, {"org": "acme"}, nobody)
        probe(operation, 403, {"org": "acme"}, theirs)
    probe("get_workspace", 200, ws, mine)
    probe("get_workspace", 401, ws, nobody)
    probe("get_workspace", 403, {"org": "acme", "workspace": "elsewhere"}, mine)

    probe("create_environment", 400, ws, {**mine, **json_body}, content=b'{"task_ref": ')
    probe("create_environment", 401, ws, nobody, json={"task_ref": "default"})
    probe("create_environment", 403, ws, theirs, json={"task_ref": "default"})
    probe("create_environment", 404, ws, mine, json={"task_ref": "no-such-task"})
    probe("create_environment", 413, ws, mine, json={"task_ref": BIG})
    probe("create_environment", 422, ws, mine, json={"task_ref": ""})
    probe("create_environment", 408, ws, {**mine, **json_body}, content=_Stalled(b'{"task_ref": "default"'))

    probe("list_environments", 200, ws, mine, params={"state": ["ready", "torn_down"], "limit": 2, "page": 2})
    probe("list_environments", 401, ws, nobody)
    probe("list_environments", 403, ws, theirs)
    probe("list_environments", 422, ws, mine, params={"limit": 0})

    missing = str(uuid.uuid4())
    for operation in ("get_environment", "get_status"):
        probe(operation, 200, env(a), mine)
        probe(operation, 401, env(a), nobody)
        probe(operation, 403, env(a), theirs)
        probe(operation, 404, env(missing), mine)
    probe("get_status", 200, env(a), mine, params={"wait_sec": 1})
    probe("get_status", 422, env(a), mine, params={"wait_sec": 31})
    probe("delete_environment", 401, env(a), nobody)
    probe("delete_environment", 403, env(a), theirs)
    probe("delete_environment", 404, env(missing), mine)

    probe("get_logs", 200, env(a), mine)
    probe("get_logs", 401, env(a), nobody)
    probe("get_logs", 403, env(a), theirs)
    probe("get_logs", 404, env(missing), mine)
    probe("get_logs", 409, env(gone), mine)

    secret = _probe_secrets(probe, mine, theirs)

    labs = _verified_labs(probe, stack, key, ws)
    flagged, flag_token = labs["flag-lab"]
    unread = probe("verify_environment", 200, env(flagged), mine).json()
    assert unread["passed"] is False and unread["detail"].startswith("flag_unreadable: "), unread
    written = f"echo '{FLAG}' > /tmp/flag"
    probe("execute", 200, env(flagged), token(flag_token), json={"command": written})
    assert probe("verify_environment", 200, env(flagged), mine).json()["passed"] is True
    probe("verify_environment", 401, env(flagged), nobody)
    probe("verify_environment", 401, env(flagged), token(flag_token))  # grading is not the agent's
    probe("verify_environment", 403, env(flagged), theirs)
    probe("verify_environment", 404, env(missing), mine)
    probe("verify_environment", 409, env(a), mine)  # the default task declares no verification
    probe("verify_environment", 409, env(gone), mine)
    judged = probe("verify_environment", 422, env(labs["judged-lab"][0]), mine)
    assert judged.json()["detail"].startswith("unsupported: "), judged.text

    ran = probe("execute", 200, env(a), token(token_a), json={"command": "echo hi", "timeout_sec": 5})
    assert ran.json() == {"exit_code": 0, "output": "hi\n"}
    probe("execute", 400, env(a), {**token(token_a), **json_body}, content=b"{nope")
    probe("execute", 401, env(a), nobody, json={"command": "true"})
    probe("execute", 403, env(a), token(token_b), json={"command": "true"})
    probe("execute", 404, env(missing), token(token_a), json={"command": "true"})
    probe("execute", 409, env(gone), token(token_gone), json={"command": "true"})
    probe("execute", 413, env(a), token(token_a), json={"command": BIG})
    probe("execute", 422, env(a), token(token_a), json={"command": "true", "timeout_sec": 601})
    probe("execute", 408, env(a), {**token(token_a), **json_body}, content=_Stalled(b'{"command": "true"'))
    late = probe(
        "execute", 504, env(a), token(token_a), json={"command": "echo partial; sleep 5", "timeout_sec": 1}
    )
    assert late.json()["output"] == "partial\n"

    # 429: a second command while the only slot (TASKENV_MAX_EXECS_PER_ENV=1) is taken.
    holder = threading.Thread(
        target=httpx.post,
        args=(f"{stack.base_url}{OPERATIONS['execute'][0].format(**env(b))}",),
        kwargs={"headers": token(token_b), "json": {"command": "sleep 3", "timeout_sec": 10}, "timeout": 30},
    )
    holder.start()
    eventually(
        lambda: commands_in_flight(stack.env["TASKENV_REDIS_URL"], env(b)["env_id"]) == 1, "the slot taken"
    )
    busy = probe("execute", 429, env(b), token(token_b), json={"command": "true"})
    assert int(busy.headers["Retry-After"]) >= 1
    holder.join()

    # 502: the container was removed behind taskenv's back.
    _between_reaper_passes()
    _remove_container(b)
    probe("execute", 502, env(b), token(token_b), json={"command": "true"})
    _remove_container(d)
    probe("get_logs", 502, env(d), mine)
    _remove_container(flagged)
    vanished = probe("verify_environment", 502, env(flagged), mine).json()
    assert "container" in vanished["detail"], vanished

    # 504 for logs and a verification: the environment's worker does not answer (stopped for a
    # moment: the control timeout, the script's timeout and the API's grace).
    assert stack.worker is not None
    os.kill(stack.worker.pid, signal.SIGSTOP)
    try:
        probe("get_logs", 504, env(a), mine)
        late_check = probe("verify_environment", 504, env(labs["slow-lab"][0]), mine).json()
        assert late_check["detail"].startswith("No answer from a worker"), late_check
    finally:
        os.kill(stack.worker.pid, signal.SIGCONT)

    # 426 on every route for a client older than TASKENV_MIN_CLIENT_VERSIONS.
    old = {"User-Agent": "dreadnode-sdk/2.0.1"}
    for operation in OPERATIONS:
        where, headers, request = _valid_request(operation, ws, a, secret, mine, token(token_a))
        probe(operation, 426, where, {**headers, **old}, **request)

    # 503 on every authenticated route while Redis is down (after the clients' own retries).
    authenticated = [op for op in OPERATIONS if op not in ("health", "metrics")]

    # Side by side: each answer comes after the API's own retries (about 2 s of backoff).
    def unavailable(operation: str) -> None:
        where, headers, request = _valid_request(operation, ws, a, secret, mine, token(token_a))
        down = probe(operation, 503, where, headers, **request)
        assert int(down.headers["Retry-After"]) >= 1

    stack.stop(stack.redis)
    try:
        with ThreadPoolExecutor(len(authenticated)) as threads:
            list(threads.map(unavailable, authenticated))
    finally:
        stack.start_redis()
    probe("get_user", 200, {}, mine)  # the API reconnected by itself

    # 429 on every authenticated route once this address sent too many unknown credentials.
    for _ in range(AUTH_FAIL_LIMIT):
        probe("get_user", 401, {}, {"X-API-Key": "tk_unknown"})
    probe("get_user", 429, {}, {"X-API-Key": "tk_unknown"})
    for operation in authenticated:
        where, headers, request = _valid_request(operation, ws, a, secret, mine, token(token_a))
        limited = probe(operation, 429, where, headers, **request)
        assert int(limited.headers["Retry-After"]) >= 1

    assert probe.seen == DOCUMENTED - NOT_PROVOKED, (
        f"documented, never provoked: {sorted(DOCUMENTED - NOT_PROVOKED - probe.seen)}; "
        f"provoked, not documented: {sorted(probe.seen - DOCUMENTED)}"
    )
