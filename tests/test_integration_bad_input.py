"""Hand-written bad input against the real service: every answer is the canonical envelope
with a 4xx status, never a 500 and never a hang.

Requests whose credentials are meant to fail come from their own loopback addresses
(127.0.0.x), so that the failed-authentication limit they run into never blocks the other
tests' address.
"""

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import Env, Service
from tests.helpers import async_http, transport_from

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
TIMEOUT = httpx.Timeout(30, connect=5)


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= {"code", "detail", "type", "errors"} and body["code"] == status, body
    assert body["type"] == error_type, body
    return body  # type: ignore[no-any-return]


def from_address(address: str, **kwargs: Any) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any 127.0.0.0/8 address is loopback)."""
    return async_http(transport=transport_from(address), timeout=TIMEOUT, **kwargs)


async def raw_request(
    service: Service, head: bytes, body: bytes = b"", source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """Bytes on the wire as given (httpx refuses to send control characters in headers)."""
    host, port = service.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        writer.write(head + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        async with asyncio.timeout(10):
            response = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def post_raw(
    client: httpx.AsyncClient, env: Env, content: bytes, content_type: str = "application/json"
):
    return await client.post(
        f"{env.url}/execute", content=content, headers={**env.headers(), "Content-Type": content_type}
    )


async def test_huge_bodies_are_refused_413_before_being_read_whole(client, env, service):
    body = json.dumps({"command": "x" * (4 * MIB)}).encode()
    assert_envelope(await post_raw(client, env, body), 413, "payload_too_large_error")

    async def chunks():  # no Content-Length: refused while streaming
        yield b'{"command": "'
        for _ in range(64):
            yield b"x" * (64 * 1024)
        yield b'"}'

    streamed = await client.post(f"{env.url}/execute", content=chunks(), headers=env.headers())
    assert_envelope(streamed, 413, "payload_too_large_error")
    create = await client.post(service.envs_url(), content=body, headers={"Content-Type": "application/json"})
    assert_envelope(create, 413, "payload_too_large_error")


async def test_deep_json_and_endless_numbers_are_400(client, env, service):
    for content in (
        b"[" * 100_000,
        b'{"command": "true", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"command": "true", "timeout_sec": 1' + b"0" * 5000 + b"}",
    ):
        body = assert_envelope(await post_raw(client, env, content), 400, "invalid_request_error")
        assert body["detail"].startswith("Malformed JSON body"), body
        create = await client.post(
            service.envs_url(), content=content, headers={"Content-Type": "application/json"}
        )
        assert_envelope(create, 400, "invalid_request_error")
    # Deep but parseable, in a field taskenv ignores: accepted.
    nested = b'{"command": "echo deep", "x": ' + b"[" * 500 + b"]" * 500 + b"}"
    assert (await post_raw(client, env, nested)).json() == {"exit_code": 0, "output": "deep\n"}


async def test_content_types_other_than_json_are_400(client, env):
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        response = await post_raw(client, env, b'{"command": "true"}', content_type)
        body = assert_envelope(response, 400, "invalid_request_error")
        assert "send application/json" in body["detail"]
    for content_type in ("application/json; charset=utf-8", "application/vnd.taskenv+json"):
        response = await post_raw(client, env, b'{"command": "echo fine"}', content_type)
        assert response.json() == {"exit_code": 0, "output": "fine\n"}, content_type
    assert_envelope(await post_raw(client, env, b"[]"), 400, "invalid_request_error")
    assert_envelope(await post_raw(client, env, b""), 400, "invalid_request_error")


async def test_nul_bytes_and_invalid_utf8_in_the_command(client, env):
    # Raw bytes that are not JSON text: a NUL byte inside a string, bytes that are not UTF-8.
    for content in (b'{"command": "echo a\x00b"}', b'{"command": "echo \xff\xfe"}'):
        assert_envelope(await post_raw(client, env, content), 400, "invalid_request_error")
    # Escapes that are JSON but cannot become a process argument: 422, naming the field.
    nul = assert_envelope(
        await post_raw(client, env, b'{"command": "echo a\\u0000b"}'), 422, "validation_error"
    )
    assert nul["errors"][0]["loc"] == ["body", "command"] and "NUL" in nul["errors"][0]["msg"], nul
    surrogate = await post_raw(client, env, b'{"command": "echo \\ud800"}')
    assert assert_envelope(surrogate, 422, "validation_error")["errors"][0]["loc"] == ["body", "command"]
    # Real non-ASCII text goes through untouched.
    fine = await post_raw(client, env, json.dumps({"command": "echo héllo ✓ 日本"}).encode())
    assert fine.json() == {"exit_code": 0, "output": "héllo ✓ 日本\n"}


@pytest.mark.parametrize(
    ("timeout", "accepted"),
    [(0, False), (601, False), (1e9, False), (None, False), (True, False), (30.5, False), (-1, False),
     ("30", True), (30.0, True), (600, True), (1, True)],
)  # fmt: skip
async def test_timeout_values(client, env, timeout, accepted):
    response = await client.post(
        f"{env.url}/execute", json={"command": "echo ran", "timeout_sec": timeout}, headers=env.headers()
    )
    if accepted:
        assert response.json() == {"exit_code": 0, "output": "ran\n"}, response.text
    else:
        body = assert_envelope(response, 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["body", "timeout_sec"]], body


async def test_unknown_fields_are_ignored(client, env, service):
    extra = {"command": "echo hi", "shell": "/bin/bash", "env": {"A": "1"}, "timeout": 1, "x": [None]}
    response = await client.post(f"{env.url}/execute", json=extra, headers=env.headers())
    assert response.json() == {"exit_code": 0, "output": "hi\n"}
    created = await client.post(service.envs_url(), json={"task_ref": "default", "flavour": "large", "n": 3})
    assert created.status_code == 201, created.text
    assert (await client.delete(f"{service.envs_url()}/{created.json()['id']}")).status_code == 204


async def test_path_ids_that_are_not_uuids_are_404_like_any_unknown_id(client, env, service):
    never = str(uuid.uuid4())
    odd_ids = [
        "not-a-uuid",
        "%00",
        "%2e%2e",
        "x" * 2000,
        "'%20OR%201=1",
        env.id.upper(),
        "%F0%9F%92%A5",
        never,
    ]
    for odd in odd_ids:
        base = f"{service.envs_url()}/{odd}"
        for method, url in (
            ("GET", base),
            ("GET", f"{base}/status"),
            ("GET", f"{base}/logs"),
            ("DELETE", base),
        ):
            response = await client.request(method, url)
            body = assert_envelope(response, 404, "not_found_error")
            assert body["detail"].startswith("Environment ") and body["detail"].endswith(" not found"), body
        executed = await client.post(f"{base}/execute", json={"command": "true"}, headers=env.headers())
        assert_envelope(executed, 404, "not_found_error")
    # The environment those ids resembled is untouched.
    assert (await client.get(f"{env.url}/status")).json()["state"] == "ready"


ODD_TOKENS: list[bytes] = [
    "tk_é".encode(),  # non-ASCII, UTF-8
    b"tk_\xff\xfe\x80",  # not UTF-8 at all
    b"\t tk_padded \t",  # whitespace around
    b"Bearer",  # a scheme with no token
    b"Bearer Bearer Bearer",
    b"tk_" + b"A" * 8000,  # long
    b"' OR 1=1 --",
]
# Not valid in an HTTP header value: the HTTP parser refuses the request before taskenv reads it,
# and answers 400 with the envelope all the same.
CONTROL_TOKENS: list[bytes] = [b"tk_\x7f", b"tk_\x01\x02", b"tk_\x1b[31m", b"tk_\x00", b"tk_\r"]


async def test_tokens_with_odd_bytes_are_401(service, env):
    path = env.url.removeprefix(service.base_url).encode()
    get = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
    execute = b"POST " + path + b"/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    command = b'{"command": "echo never"}'
    outcomes: dict[str, set[int]] = {}
    for token in [*ODD_TOKENS, *CONTROL_TOKENS, b"tk_" + b"A" * (256 * 1024)]:
        answers = [
            await raw_request(service, get + b"X-API-Key: " + token, source="127.0.0.4"),
            await raw_request(service, get + b"Authorization: Bearer " + token, source="127.0.0.4"),
            await raw_request(
                service, execute + b"X-Environment-Token: " + token, command, source="127.0.0.4"
            ),
        ]
        outcomes[f"{token[:8]!r}…({len(token)} bytes)"] = {status for status, _ in answers}
        status, error_type = (
            (400, "invalid_request_error") if token in CONTROL_TOKENS else (401, "authentication_error")
        )
        for answer in answers:
            assert answer[0] == status, (token[:40], answer)
            body = json.loads(answer[1])
            assert body["code"] == status and body["type"] == error_type and body["errors"] is None, body
            assert token.decode("latin-1") not in body["detail"]
    print(f"\nodd tokens -> statuses: {outcomes}")


# Five times the default limit of failures per address (TASKENV_AUTH_FAIL_LIMIT, 100).
BAD_ATTEMPTS = 500


async def test_hundreds_of_bad_tokens_are_rate_limited(service, env):
    from taskenv.shared.settings import Settings

    limit = Settings().auth_fail_limit  # the fixture keeps the default
    url = f"{env.url}/execute"
    gate = asyncio.Semaphore(50)

    async def attempt(http: httpx.AsyncClient, n: int) -> httpx.Response:
        async with gate:
            if n % 2:
                return await http.post(
                    url, json={"command": "true"}, headers={"X-Environment-Token": f"tet_{n}"}
                )
            return await http.get(env.url, headers={"X-API-Key": f"tk_{n}"})

    started = time.monotonic()
    async with from_address("127.0.0.2") as attacker:
        answers = await asyncio.gather(*(attempt(attacker, n) for n in range(BAD_ATTEMPTS)))
        elapsed = time.monotonic() - started
        statuses = [r.status_code for r in answers]
        counts = f"{statuses.count(401)} x 401, {statuses.count(429)} x 429"
        print(f"\n{BAD_ATTEMPTS} bad credentials in {elapsed:.2f} s: {counts}")
        assert statuses.count(401) == limit and statuses.count(429) == BAD_ATTEMPTS - limit
        refused = next(r for r in answers if r.status_code == 429)
        assert_envelope(refused, 429, "rate_limit_error")
        assert 1 <= int(refused.headers["Retry-After"]) <= Settings().auth_fail_window_sec
        # The address is blocked, even with the right token, until the window ends.
        blocked = await attacker.post(url, json={"command": "true"}, headers=env.headers())
        assert_envelope(blocked, 429, "rate_limit_error")
    async with from_address("127.0.0.5") as bystander:
        # Others are not: a bad key is an ordinary 401, the right token runs.
        assert_envelope(
            await bystander.get(env.url, headers={"X-API-Key": "tk_x"}), 401, "authentication_error"
        )
        ran = await bystander.post(url, json={"command": "echo ok"}, headers=env.headers())
        assert ran.json() == {"exit_code": 0, "output": "ok\n"}
