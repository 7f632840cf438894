"""The API's front door against real processes (real Redis, worker, API and Docker): Redis refusing
writes, the command size that really runs, Host headers and slow clients, strict numbers and
task refs, and one org's quotas beside another's (issue 10, cases 4, 5, 9, 10 and 11)."""

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from taskenv.shared import keys
from taskenv.shared.models import COMMAND_MAX_BYTES
from tests.conftest import Env, wait_for_state
from tests.helpers import async_http, until
from tests.helpers import execute as run
from tests.stack import Stack

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(30, connect=5)
HEADER_TIMEOUT_SEC = 1
BODY_TIMEOUT_SEC = 2
# Past httpx's own 5 s, as the default is (65 s): the client closes an idle connection first.
KEEP_ALIVE_SEC = 7


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body["code"] == status and body["type"] == error_type and "detail" in body, body
    return body  # type: ignore[no-any-return]


# One private taskenv with short read timeouts and small quotas, for cases 4, 9 and 11.


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("front"),
        {
            "TASKENV_HEADER_TIMEOUT_SEC": str(HEADER_TIMEOUT_SEC),
            "TASKENV_BODY_TIMEOUT_SEC": str(BODY_TIMEOUT_SEC),
            "TASKENV_KEEP_ALIVE_SEC": str(KEEP_ALIVE_SEC),
            "TASKENV_HOST_MAX_ENVIRONMENTS": "3",
            "TASKENV_ORG_MAX_ENVIRONMENTS": "2",
            "TASKENV_WORKSPACE_MAX_ENVIRONMENTS": "1",
            "TASKENV_ORG_MAX_RUNNING_COMMANDS": "1",
        },
    )
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # One connection: a request that answers with the next on the same socket kept it alive.
    async with async_http(timeout=TIMEOUT, limits=httpx.Limits(max_connections=1)) as client:
        yield client


async def create(
    http: httpx.AsyncClient, stack: Stack, key: str, org: str, ws: str = "main"
) -> httpx.Response:
    return await http.post(stack.envs_url(org, ws), json={"task_ref": "default"}, headers={"X-API-Key": key})


async def ready(http: httpx.AsyncClient, stack: Stack, key: str, org: str, ws: str = "main") -> Env:
    response = await create(http, stack, key, org, ws)
    assert response.status_code == 201, response.text
    created = response.json()
    env = Env(created["id"], created["execute_token"], f"{stack.envs_url(org, ws)}/{created['id']}")
    http.headers["X-API-Key"] = key
    try:
        status = await wait_for_state(http, env.url, "ready", "failed")
    finally:
        del http.headers["X-API-Key"]
    assert status["state"] == "ready", status
    return env


def local_port(response: httpx.Response) -> int:
    """The client side's port of the connection that carried `response`."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


# Case 4: Redis refusing writes.


async def test_redis_out_of_memory_is_503_with_retry_after_and_the_connection_kept(front, http):
    key = front.key("oom")
    env = await ready(http, front, key, "oom")
    headers = {"X-API-Key": key}
    first = await http.get(front.envs_url("oom"), headers=headers)
    assert first.status_code == 200
    port = local_port(first)
    redis = front.client()
    redis.config_set("maxmemory", "1")  # far below what is used, with the default noeviction
    try:
        refused = [
            await http.get(front.envs_url("oom"), headers=headers),
            await http.get(f"{env.url}/status", headers=headers),
            await http.post(front.envs_url("oom"), json={"task_ref": "default"}, headers=headers),
            await run(http, env, "echo never"),
        ]
        for answer in refused:
            body = assert_envelope(answer, 503, "service_unavailable_error")
            assert "refuses writes" in body["detail"], body
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.headers.get("connection") != "close"
            assert local_port(answer) == port  # the same connection answered every one
        not_ready = await http.get(f"{front.base_url}/readyz")
        assert not_ready.status_code == 503 and "OutOfMemoryError" in not_ready.json()["redis"]
        assert (await http.get(f"{front.base_url}/healthz")).status_code == 200
    finally:
        redis.config_set("maxmemory", "0")
    again = await http.get(front.envs_url("oom"), headers=headers)
    assert again.status_code == 200 and local_port(again) == port
    assert (await run(http, env, "echo back")).json() == {"exit_code": 0, "output": "back\n"}
    assert (await http.get(f"{front.base_url}/readyz")).status_code == 200
    # The refused create left nothing behind.
    assert again.json()["total"] == 1
    assert (await http.delete(env.url, headers=headers)).status_code == 204


# Case 5: the command limit is what the kernel passes (MAX_ARG_STRLEN, in bytes).


def echo_of(filler: str, size: int) -> tuple[str, str]:
    """`echo <filler…>` of exactly `size` UTF-8 bytes, and the output it must give."""
    room = size - len(b"echo ")
    unit = len(filler.encode())
    text = filler * (room // unit) + "a" * (room % unit)
    command = "echo " + text
    assert len(command.encode()) == size
    return command, text + "\n"


@pytest.mark.parametrize("filler", ["a", "é", "✓", "😀"], ids=["ascii", "2-byte", "3-byte", "4-byte"])
async def test_the_largest_allowed_command_runs_and_one_byte_more_is_422(client, env, filler):
    command, output = echo_of(filler, COMMAND_MAX_BYTES)
    ran = await client.post(
        f"{env.url}/execute", json={"command": command, "timeout_sec": 30}, headers=env.headers()
    )
    assert ran.status_code == 200, ran.text[:300]
    assert ran.json()["exit_code"] == 0 and ran.json()["output"] == output
    longer, _ = echo_of(filler, COMMAND_MAX_BYTES + 1)
    refused = await client.post(f"{env.url}/execute", json={"command": longer}, headers=env.headers())
    body = assert_envelope(refused, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "command"], body
    assert f"at most {COMMAND_MAX_BYTES} bytes" in body["errors"][0]["msg"], body


async def test_a_command_within_256k_characters_but_over_the_byte_limit_is_422_not_exit_1(client, env):
    # 100,000 characters, 200,005 bytes: accepted before, then "argument list too long", exit 1.
    refused = await client.post(
        f"{env.url}/execute", json={"command": "echo " + "é" * 100_000}, headers=env.headers()
    )
    body = assert_envelope(refused, 422, "validation_error")
    assert "200005" in body["errors"][0]["msg"] and str(COMMAND_MAX_BYTES) in body["detail"] + str(body)


# Case 9: no redirect built from the Host header; no connection held open by a slow client.


async def test_a_trailing_slash_is_served_and_never_redirected_to_the_host_the_client_sent(client, service):
    evil = {"Host": "evil.example"}
    listed = await client.get(service.envs_url() + "/", headers=evil)
    assert listed.status_code == 200 and "location" not in listed.headers, listed.headers
    assert "environments" in listed.json()
    workspace = await client.get(f"{service.base_url}/api/v1/org/acme/ws/main/", headers=evil)
    assert workspace.status_code == 200 and workspace.json()["key"] == "main"
    assert (await client.get(f"{service.base_url}/api/v1/health/", headers=evil)).status_code == 200
    # A mount's prefix without its slash: Starlette redirected this one too.
    static = await client.get(f"{service.base_url}/api/v1/docs/static", headers=evil)
    assert_envelope(static, 404, "not_found_error")
    assert "location" not in static.headers
    unknown = await client.get(f"{service.base_url}/api/v1/nowhere/", headers=evil)
    assert_envelope(unknown, 404, "not_found_error")


async def _exchange(
    stack: Stack, sent: list[tuple[float, bytes]], limit_sec: float = 10
) -> tuple[bytes, float]:
    """Send each chunk after its delay, while reading until the server closes; returns what was
    read and when the connection ended (s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    started = time.monotonic()

    async def send() -> None:
        for delay, chunk in sent:
            await asyncio.sleep(delay)
            if writer.is_closing():
                return
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                return

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(limit_sec):
            received = await reader.read()
        return received, time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()


def _parse(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_connections_that_send_no_complete_head_in_time_get_408_and_are_closed(front):
    head = b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n"
    cases = {
        "nothing": [],
        "half a head": [(0, head)],
        "a head one byte at a time": [(0.2, bytes([b])) for b in head * 3],
    }
    for what, sent in cases.items():
        received, ended = await _exchange(front, sent)
        status, body = _parse(received)
        assert status == 408 and body["type"] == "request_timeout_error", (what, received)
        # asyncio may fire a timer up to its clock resolution early: a few ms of slack below.
        assert HEADER_TIMEOUT_SEC - 0.05 <= ended < HEADER_TIMEOUT_SEC + 2, (what, ended)


async def test_an_idle_keep_alive_connection_is_closed_after_the_operators_bound(front):
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        await asyncio.wait_for(reader.read(), KEEP_ALIVE_SEC + 10)  # the body, then the server's close
        idle = time.monotonic() - answered
        assert KEEP_ALIVE_SEC - 0.5 <= idle < KEEP_ALIVE_SEC + 5, idle  # a loaded loop fires late
    finally:
        writer.close()


async def test_a_client_still_sending_after_its_408_reads_the_whole_answer(front):
    # Bytes that arrive after the answer are read and dropped: a socket closed with them unread
    # would send a reset, and asyncio's reader would lose the rest of the 408 it had received.
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nX-Pad: ")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_SEC + 5)
        for _ in range(3):  # well within the 2 s the server reads and drops for
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.02)
        status, body = _parse(head + await asyncio.wait_for(reader.read(), 5))
        assert status == 408 and body["type"] == "request_timeout_error", body
    finally:
        writer.close()


async def test_a_client_still_sending_a_body_answered_before_it_came_is_closed_gracefully(front):
    # An unknown path is answered 404 before its body comes; the body's timer then ends the
    # connection, and bytes still arriving must not turn that end into a reset.
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    try:
        writer.write(b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n{")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 404"), head
        length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])  # type: ignore[index]
        await reader.readexactly(length)
        # The end of the stream comes at the body's timeout; then the client sends more.
        async with asyncio.timeout(BODY_TIMEOUT_SEC + 5):
            while not reader.at_eof():
                await asyncio.sleep(0.02)
        for _ in range(3):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_408_and_slow_answers_are_not_cut(front, http):
    path = (
        front.envs_url("slow").removeprefix(front.base_url) + "/00000000-0000-0000-0000-000000000000/execute"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    ).encode()
    for what, sent in {
        "stalled": [(0, head + b'{"command"')],
        "dripped": [(0, head)] + [(0.3, b" ")] * 30,
    }.items():
        received, ended = await _exchange(front, sent)
        status, body = _parse(received)
        assert status == 408 and body["type"] == "request_timeout_error", (what, received)
        assert "body" in body["detail"], (what, body)
        assert BODY_TIMEOUT_SEC - 0.05 <= ended < BODY_TIMEOUT_SEC + 2, (what, ended)
    # A command that runs past both timeouts is answered in full: they bound reading, not answering.
    key = front.key("slow")
    env = await ready(http, front, key, "slow")
    started = time.monotonic()
    long = await run(http, env, f"sleep {BODY_TIMEOUT_SEC + 1}; echo done")
    assert (
        long.json() == {"exit_code": 0, "output": "done\n"} and time.monotonic() - started > BODY_TIMEOUT_SEC
    )
    assert (await http.delete(env.url, headers={"X-API-Key": key})).status_code == 204


# Case 10: strict numbers and task refs.


@pytest.mark.parametrize("timeout", ["5_0", " 5 ", "+5", "5.0", "\u0665", "0x5", "", "5 "])
async def test_timeouts_that_are_not_plain_digits_are_422(client, env, service, timeout):
    executed = await client.post(
        f"{env.url}/execute", json={"command": "echo ran", "timeout_sec": timeout}, headers=env.headers()
    )
    body = assert_envelope(executed, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "timeout_sec"]], body
    created = await client.post(service.envs_url(), json={"task_ref": "default", "timeout_sec": timeout})
    assert assert_envelope(created, 422, "validation_error")["errors"][0]["loc"] == ["body", "timeout_sec"]


async def test_task_refs_with_an_empty_part_are_422_and_latest_is_the_newest(client, service):
    for ref in ("default@", "@1", "/x", "a//b", "acme/", "default@1@2", "acme/default/x", " default"):
        created = await client.post(service.envs_url(), json={"task_ref": ref})
        body = assert_envelope(created, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "task_ref"], (ref, body)
    for ref in ("default@latest", "acme/default@1", "default@LATEST"):
        created = await client.post(service.envs_url(), json={"task_ref": ref, "timeout_sec": "60"})
        assert created.status_code == 201, (ref, created.text)
        assert created.json()["task_ref"] == ref
        assert (await client.delete(f"{service.envs_url()}/{created.json()['id']}")).status_code == 204


# Case 11: one greedy org cannot take a host from the others.


async def test_a_greedy_org_meets_its_quotas_while_another_org_provisions_and_runs(front, http):
    greedy = {ws: front.key("greedy", ws) for ws in ("main", "second", "third")}
    first = await ready(http, front, greedy["main"], "greedy", "main")
    # The workspace holds its limit of 1 live environment.
    refused = await create(http, front, greedy["main"], "greedy", "main")
    body = assert_envelope(refused, 429, "rate_limit_error")
    assert (
        "TASKENV_WORKSPACE_MAX_ENVIRONMENTS=1" in body["detail"] and int(refused.headers["Retry-After"]) >= 1
    )
    second = await ready(http, front, greedy["second"], "greedy", "second")
    # The org holds its limit of 2, whichever workspace asks.
    refused = await create(http, front, greedy["third"], "greedy", "third")
    body = assert_envelope(refused, 429, "rate_limit_error")
    assert "TASKENV_ORG_MAX_ENVIRONMENTS=2" in body["detail"] and "'greedy'" in body["detail"]
    # Refusals leave no record and take no place.
    third_list = await http.get(front.envs_url("greedy", "third"), headers={"X-API-Key": greedy["third"]})
    assert third_list.json()["total"] == 0
    assert front.client().zcard(keys.org_environments("greedy")) == 2

    # Another org on the same host (cap 3) still provisions, and runs commands.
    victim_key = front.key("victim")
    victim = await ready(http, front, victim_key, "victim")
    assert (await run(http, victim, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}

    # One command at once for the greedy org (TASKENV_ORG_MAX_RUNNING_COMMANDS=1), in any of its
    # environments; the victim's commands run meanwhile.
    async with async_http(timeout=TIMEOUT) as other:
        holding = asyncio.create_task(run(other, first, "sleep 2; echo held"))
        greedy_commands = front.client().zcard
        await until(lambda: greedy_commands(keys.org_commands("greedy")) == 1, "the org's command admitted")
        busy = await run(http, second, "echo never")
        body = assert_envelope(busy, 429, "rate_limit_error")
        assert "TASKENV_ORG_MAX_RUNNING_COMMANDS=1" in body["detail"], body
        assert (await run(http, victim, "echo ok")).json()["output"] == "ok\n"
        assert (await holding).json() == {"exit_code": 0, "output": "held\n"}
    # The worker freed the org's slot with its answer.
    assert (await run(http, second, "echo free")).json()["output"] == "free\n"
    assert front.client().zcard(keys.org_commands("greedy")) == 0

    # A deleted environment gives its place back.
    assert (await http.delete(first.url, headers={"X-API-Key": greedy["main"]})).status_code == 204
    again = await ready(http, front, greedy["main"], "greedy", "main")
    for env, key in ((again, greedy["main"]), (second, greedy["second"]), (victim, victim_key)):
        assert (await http.delete(env.url, headers={"X-API-Key": key})).status_code == 204
