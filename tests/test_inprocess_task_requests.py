"""A create request's task parts through the real API in process (api/task_requests.py): egress
refused, secret ids checked without opening them, model overrides checked against the task's
roles, inputs rendered into the instruction at once, task_verification in the SDK's shape."""

import hashlib
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from taskenv.shared import sealing, secrets_store, task_store
from taskenv.shared.scripts import CommitOutcome
from taskenv.shared.task_store import TaskVersion
from tests.inprocess import InProcess, in_process

KEY = sealing.new_key()


@pytest.fixture
async def stack(monkeypatch):
    async with in_process(monkeypatch, secrets_key=KEY) as running:
        yield running


@pytest.fixture
async def key(stack: InProcess) -> str:
    return await stack.key()


def blobs_of(stack: InProcess) -> Redis:
    """The task store's client: the API's binary one, on the same fake server."""
    return stack.http._transport.app.state.taskenv.arq  # type: ignore[attr-defined,no-any-return]


async def pushed(stack: InProcess, **fields: Any) -> str:
    """A task version stored as a push stores it (its blobs first), named `lab-<random>`."""
    blobs = blobs_of(stack)
    name = f"lab-{uuid.uuid4().hex[:6]}"
    digests = []
    for content in (b"config-" + name.encode(), b"layer-" + name.encode()):
        digest = f"sha256:{hashlib.sha256(content).hexdigest()}"
        await task_store.put_blob(blobs, "acme", digest, content, budget_bytes=1 << 20, pending_ttl_sec=60)
        digests.append(digest)
    version = TaskVersion(
        org="acme", name=name, version="1.0.0", created_at=time.time(), manifest="{}",
        manifest_digest="sha256:" + "0" * 64, config_digest=digests[0], oci_digest=digests[1], size=1,
        instruction="Reach {{web_url}} as {{who}}.", verification_method="flag",
        verification={"method": "flag", "path": "/tmp/flag", "value": "FLAG{x}"}, **fields,
    )  # fmt: skip
    outcome, _ = await task_store.commit(blobs, version)
    assert outcome is CommitOutcome.COMMITTED
    return name


async def create(stack: InProcess, key: str, **body: Any):
    return await stack.http.post(stack.envs_url(), json=body, headers={"X-API-Key": key})


async def test_a_task_that_declares_egress_is_refused_at_create(stack, key):
    name = await pushed(stack, egress={"allow": ["api.example.com"]})
    refused = await create(stack, key, task_ref=name)
    assert refused.status_code == 422, refused.text
    assert "egress" in refused.json()["detail"] and "api.example.com" in refused.json()["detail"]
    assert (await stack.http.get(stack.envs_url(), headers={"X-API-Key": key})).json()["total"] == 0


async def test_secret_ids_must_be_the_orgs_own(stack, key):
    sealer = sealing.optional(KEY)
    own = await secrets_store.create(stack.records, sealer, "acme", "API_TOKEN", "s3cret-of-acme")
    foreign = await secrets_store.create(stack.records, sealer, "other", "API_TOKEN", "s3cret-of-other")
    unknown = await create(stack, key, task_ref="default", secret_ids=[own.id, foreign.id])
    assert unknown.status_code == 404, unknown.text
    assert foreign.id in unknown.json()["detail"] and own.id not in unknown.json()["detail"]
    accepted = await create(stack, key, task_ref="default", secret_ids=[own.id])
    assert accepted.status_code == 201, accepted.text
    assert "s3cret" not in accepted.text and "s3cret" not in unknown.text


async def test_model_overrides_may_replace_only_overridable_roles(stack, key):
    models = {"red": {"model": "dn/a", "overridable": True}, "blue": {"model": "dn/b", "overridable": False}}
    name = await pushed(stack, models=models)
    for overrides in ({"blue": "dn/c"}, {"green": "dn/c"}):
        refused = await create(stack, key, task_ref=name, model_overrides=overrides)
        assert refused.status_code == 422, (overrides, refused.text)
    accepted = await create(stack, key, task_ref=name, model_overrides={"red": "dn/c"})
    assert accepted.status_code == 201, accepted.text


async def test_inputs_render_the_instruction_and_verification_has_the_sdks_shape(stack, key):
    name = await pushed(stack)
    created = await create(stack, key, task_ref=name, inputs={"who": "an agent"})
    assert created.status_code == 201, created.text
    body = created.json()
    # The service URL is not known before its services run: left for the SDK, verbatim.
    assert body["instruction"] == "Reach {{web_url}} as an agent."
    assert body["task_verification"]["method"] == "env_flag"
    assert body["task_verification"]["flag_path"] == "/tmp/flag"
