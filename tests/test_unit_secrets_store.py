"""Org secrets in Redis (shared/secrets_store.py), on fakeredis with Lua: values only sealed at
rest and never in what lists or describes them; names unique per org; ids of another org
unknown; no key refused only where a value is sealed or opened."""

import uuid

import fakeredis
import pytest

from taskenv.shared import keys, secrets_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.sealing import Sealer, new_key

VALUE = "s3cr3t-value-\u00e9"


@pytest.fixture
async def redis():
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(new_key())


def refused(exc: pytest.ExceptionInfo[TaskenvError], error_type: ErrorType) -> str:
    assert exc.value.type is error_type, exc.value.detail
    return exc.value.detail


async def test_a_value_is_sealed_at_rest_and_opened_only_by_values(redis, sealer):
    info = await secrets_store.create(redis, sealer, "acme", "API_TOKEN", VALUE)
    stored = await redis.hgetall(keys.org_secrets("acme"))
    assert VALUE not in repr(stored) and "s3cr3t" not in repr(stored)
    assert stored["name:API_TOKEN"] == info.id
    assert [i.model_dump() for i in await secrets_store.listed(redis, "acme")] == [info.model_dump()]
    assert await secrets_store.get(redis, "acme", info.id) == info
    assert "s3cr3t" not in info.model_dump_json()
    assert await secrets_store.values(redis, sealer, "acme", [info.id]) == {"API_TOKEN": VALUE}


async def test_update_changes_the_value_and_its_time_only(redis, sealer):
    info = await secrets_store.create(redis, sealer, "acme", "TOKEN", VALUE)
    updated = await secrets_store.update(redis, sealer, "acme", info.id, "new")
    assert (updated.id, updated.name, updated.created_at) == (info.id, info.name, info.created_at)
    assert updated.updated_at >= info.updated_at
    assert await secrets_store.values(redis, sealer, "acme", [info.id]) == {"TOKEN": "new"}
    with pytest.raises(TaskenvError) as missing:
        await secrets_store.update(redis, sealer, "acme", str(uuid.uuid4()), "x")
    refused(missing, ErrorType.NOT_FOUND)


async def test_a_name_is_unique_in_its_org_until_deleted(redis, sealer):
    first = await secrets_store.create(redis, sealer, "acme", "TOKEN", "a")
    with pytest.raises(TaskenvError) as taken:
        await secrets_store.create(redis, sealer, "acme", "TOKEN", "b")
    assert "TOKEN" in refused(taken, ErrorType.ALREADY_EXISTS)
    await secrets_store.create(redis, sealer, "other", "TOKEN", "c")  # another org's namespace
    assert await secrets_store.delete(redis, "acme", first.id)
    assert not await secrets_store.delete(redis, "acme", first.id)
    again = await secrets_store.create(redis, sealer, "acme", "TOKEN", "d")
    assert await secrets_store.values(redis, sealer, "acme", [again.id]) == {"TOKEN": "d"}
    assert [i.name for i in await secrets_store.listed(redis, "acme")] == ["TOKEN"]


async def test_unknown_and_foreign_ids_are_404_naming_them(redis, sealer):
    mine = await secrets_store.create(redis, sealer, "acme", "MINE", "a")
    theirs = await secrets_store.create(redis, sealer, "other", "THEIRS", "b")
    unknown = str(uuid.uuid4())
    for call in (
        secrets_store.check_ids(redis, "acme", [mine.id, theirs.id, unknown]),
        secrets_store.values(redis, sealer, "acme", [mine.id, theirs.id, unknown]),
    ):
        with pytest.raises(TaskenvError) as missing:
            await call
        detail = refused(missing, ErrorType.NOT_FOUND)
        assert theirs.id in detail and unknown in detail and mine.id not in detail
    with pytest.raises(TaskenvError) as pasted:
        await secrets_store.check_ids(redis, "acme", ["tk_a-pasted-api-key"])
    assert "tk_" not in refused(pasted, ErrorType.NOT_FOUND)
    await secrets_store.check_ids(redis, "acme", [mine.id, mine.id])
    assert await secrets_store.values(redis, sealer, "acme", []) == {}


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "É", "A" * 129, "TOKEN\n"])
async def test_a_name_must_be_an_environment_variable_name(redis, sealer, name):
    with pytest.raises(TaskenvError) as invalid:
        await secrets_store.create(redis, sealer, "acme", name, "v")
    refused(invalid, ErrorType.VALIDATION)
    assert invalid.value.errors and invalid.value.errors[0]["loc"] == ["body", "name"]


@pytest.mark.parametrize("value", ["", "a\0b", "\ud800", "x" * (64 * 1024 + 1), "é" * (32 * 1024 + 1)])
async def test_a_value_must_be_something_an_environment_variable_holds(redis, sealer, value):
    with pytest.raises(TaskenvError) as invalid:
        await secrets_store.create(redis, sealer, "acme", "TOKEN", value)
    refused(invalid, ErrorType.VALIDATION)
    assert await redis.exists(keys.org_secrets("acme")) == 0


async def test_the_largest_value_fits(redis, sealer):
    info = await secrets_store.create(redis, sealer, "acme", "BIG", "x" * 64 * 1024)
    assert len((await secrets_store.values(redis, sealer, "acme", [info.id]))["BIG"]) == 64 * 1024


async def test_an_org_holds_a_bounded_number(redis, sealer, monkeypatch):
    monkeypatch.setattr(secrets_store, "MAX_PER_ORG", 2)
    for name in ("A", "B"):
        await secrets_store.create(redis, sealer, "acme", name, "v")
    with pytest.raises(TaskenvError) as full:
        await secrets_store.create(redis, sealer, "acme", "C", "v")
    refused(full, ErrorType.CONFLICT)


async def test_without_a_key_nothing_is_sealed_or_opened_but_the_rest_works(redis, sealer):
    info = await secrets_store.create(redis, sealer, "acme", "TOKEN", "v")
    for call in (
        secrets_store.create(redis, None, "acme", "OTHER", "v"),
        secrets_store.update(redis, None, "acme", info.id, "v"),
        secrets_store.values(redis, None, "acme", [info.id]),
    ):
        with pytest.raises(TaskenvError) as unavailable:
            await call
        assert "TASKENV_SECRETS_KEY" in refused(unavailable, ErrorType.UNAVAILABLE)
    await secrets_store.check_ids(redis, "acme", [info.id])
    assert [i.id for i in await secrets_store.listed(redis, "acme")] == [info.id]
    assert await secrets_store.delete(redis, "acme", info.id)


async def test_a_changed_key_is_a_clear_error_not_a_crash(redis, sealer):
    info = await secrets_store.create(redis, sealer, "acme", "TOKEN", VALUE)
    with pytest.raises(TaskenvError) as unopened:
        await secrets_store.values(redis, Sealer(new_key()), "acme", [info.id])
    detail = refused(unopened, ErrorType.APP)
    assert info.id in detail and "TASKENV_SECRETS_KEY" in detail and "s3cr3t" not in detail


async def test_too_many_ids_at_once_are_refused(redis):
    with pytest.raises(TaskenvError) as invalid:
        await secrets_store.check_ids(redis, "acme", [str(i) for i in range(secrets_store.MAX_IDS + 1)])
    refused(invalid, ErrorType.VALIDATION)
