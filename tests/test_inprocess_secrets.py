"""The secret routes through the real API app in process (tests/inprocess.py): the SDK's
UserSecret shapes, values in no answer, an org's own keys only, errors in the envelope, and a
deployment without TASKENV_SECRETS_KEY answering 503 only where a value is sealed."""

import uuid
from typing import Any

import httpx
import pytest

from taskenv.shared import keys
from taskenv.shared.sealing import new_key
from tests.inprocess import BASE_URL, InProcess, in_process

VALUE = "in-process-s3cr3t"


def secrets_url(org: str = "acme") -> str:
    return f"{BASE_URL}/api/v1/org/{org}/secrets"


@pytest.fixture
async def stack(monkeypatch):
    async with in_process(monkeypatch, secrets_key=new_key()) as running:
        yield running


@pytest.fixture
async def headers(stack: InProcess) -> dict[str, str]:
    return {"X-API-Key": await stack.key()}


def envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()
    assert body["code"] == status and body["type"] == error_type, body
    assert VALUE not in response.text
    return body


async def test_create_list_get_update_delete_never_answer_the_value(stack, headers):
    created = await stack.http.post(
        secrets_url(), json={"name": "API_TOKEN", "value": VALUE}, headers=headers
    )
    assert created.status_code == 201, created.text
    secret = created.json()
    assert set(secret) == {"id", "name", "provider", "masked_value", "created_at", "updated_at"}
    assert (secret["name"], secret["masked_value"], secret["provider"]) == ("API_TOKEN", "********", None)
    one = f"{secrets_url()}/{secret['id']}"
    answers = [
        created,
        listed := await stack.http.get(secrets_url(), headers=headers),
        await stack.http.get(one, headers=headers),
        updated := await stack.http.put(one, json={"value": VALUE + "2"}, headers=headers),
    ]
    assert listed.json() == {"secrets": [secret], "total": 1}
    assert updated.status_code == 200 and updated.json()["created_at"] == secret["created_at"]
    assert all(VALUE not in answer.text for answer in answers)
    assert VALUE not in repr(await stack.records.hgetall(keys.org_secrets("acme")))
    assert (await stack.http.delete(one, headers=headers)).status_code == 204
    envelope(await stack.http.get(one, headers=headers), 404, "not_found_error")
    envelope(await stack.http.delete(one, headers=headers), 404, "not_found_error")
    assert (await stack.http.get(secrets_url(), headers=headers)).json() == {"secrets": [], "total": 0}


async def test_only_an_api_key_of_the_org_reaches_its_secrets(stack, headers):
    created = await stack.http.post(secrets_url(), json={"name": "MINE", "value": VALUE}, headers=headers)
    one = f"{secrets_url()}/{created.json()['id']}"
    envelope(await stack.http.get(secrets_url()), 401, "authentication_error")
    other = {"X-API-Key": await stack.key("other")}
    envelope(await stack.http.get(secrets_url(), headers=other), 403, "permission_error")
    envelope(await stack.http.delete(one, headers=other), 403, "permission_error")
    # In its own org the id is unknown, like any other.
    elsewhere = f"{secrets_url('other')}/{created.json()['id']}"
    envelope(await stack.http.get(elsewhere, headers=other), 404, "not_found_error")
    # Another workspace's key of the same org is the org's.
    second = {"X-API-Key": await stack.key("acme", "second")}
    assert (await stack.http.get(one, headers=second)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "1BAD", "value": "v"}, "name"),
        ({"name": "A-B", "value": "v"}, "name"),
        ({"name": "OK"}, "value"),
        ({"name": "OK", "value": ""}, "value"),
        ({"name": "OK", "value": 3}, "value"),
        ({"name": "OK", "value": "a\u0000" + VALUE}, "value"),
        ({"name": "OK", "value": "x" * (64 * 1024 + 1)}, "value"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field_never_the_value(stack, headers, body, field):
    answer = envelope(
        await stack.http.post(secrets_url(), json=body, headers=headers), 422, "validation_error"
    )
    assert answer["errors"][0]["loc"][:2] == ["body", field]


async def test_a_taken_name_is_409_and_unknown_ids_404(stack, headers):
    first = await stack.http.post(secrets_url(), json={"name": "TOKEN", "value": "a"}, headers=headers)
    assert first.status_code == 201
    again = await stack.http.post(secrets_url(), json={"name": "TOKEN", "value": VALUE}, headers=headers)
    envelope(again, 409, "already_exists_error")
    missing = f"{secrets_url()}/{uuid.uuid4()}"
    envelope(await stack.http.put(missing, json={"value": VALUE}, headers=headers), 404, "not_found_error")
    pasted = envelope(
        await stack.http.get(f"{secrets_url()}/tk_pasted", headers=headers), 404, "not_found_error"
    )
    assert "tk_pasted" not in pasted["detail"]


async def test_without_a_secrets_key_storing_is_503_and_listing_works(monkeypatch):
    async with in_process(monkeypatch) as stack:
        headers = {"X-API-Key": await stack.key()}
        answer = await stack.http.post(secrets_url(), json={"name": "TOKEN", "value": VALUE}, headers=headers)
        body = envelope(answer, 503, "service_unavailable_error")
        assert "TASKENV_SECRETS_KEY" in body["detail"]
        assert (await stack.http.get(secrets_url(), headers=headers)).json() == {"secrets": [], "total": 0}
