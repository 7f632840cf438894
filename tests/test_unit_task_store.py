"""The task registry's storage and push (fakeredis: pure logic): blobs counted against the org's
budget, versions immutable, deletion freeing what no version names, visibility, and task_ref
resolution as Dreadnode does it."""

import json

import fakeredis
import pytest
import yaml

from taskenv.shared import task_archive, task_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.scripts import BlobOutcome
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_oci import MEDIA_CONFIG, MEDIA_LAYER_TAR_GZ, MEDIA_OCI_MANIFEST
from taskenv.shared.task_push import config_blob, store_version
from taskenv.shared.task_refs import TaskRef, resolve

MAX = 1 << 20
BUDGET = 1 << 20


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=False)


def task_yaml(name: str = "web-lab", version: str = "1.0.0", **extra: object) -> dict:
    verification = {"method": "flag", "path": "/tmp/flag", "value": "FLAG{x}"}
    return {
        "name": name,
        "version": version,
        "instruction": "Solve it.",
        "verification": verification,
        **extra,
    }


async def upload(redis, org: str, raw: dict, files: dict[str, bytes] | None = None) -> bytes:
    """Upload a task's blobs as `dn task push` does; return its manifest."""
    layer = task_archive.pack(TaskFiles(files={"task.yaml": yaml.safe_dump(raw).encode(), **(files or {})}))
    config = config_blob(raw)
    for data in (config, layer):
        await task_store.put_blob(
            redis, org, task_archive.digest(data), data, budget_bytes=BUDGET, pending_ttl_sec=60
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": task_archive.digest(config), "size": len(config)},
        "layers": [
            {"mediaType": MEDIA_LAYER_TAR_GZ, "digest": task_archive.digest(layer), "size": len(layer)}
        ],
        "annotations": {
            "io.dreadnode.type": "environment",
            "io.dreadnode.name": raw["name"],
            "io.dreadnode.version": raw["version"],
        },
    }
    return json.dumps(manifest, indent=2).encode()


async def push(redis, org: str = "acme", name: str = "web-lab", version: str = "1.0.0", **extra: object):
    body = await upload(redis, org, task_yaml(name, version, **extra))
    return await store_version(redis, org=org, name=name, reference=version, body=body, max_task_bytes=MAX)


async def test_push_stores_an_immutable_version(redis):
    stored, created = await push(redis, description="A lab")
    assert created and stored.description == "A lab" and stored.verification_method == "flag"
    again, created_again = await push(redis, description="A lab")
    assert not created_again and again == stored, "the same push again is accepted, not stored twice"
    with pytest.raises(TaskenvError) as caught:
        await push(redis, description="Changed")
    assert caught.value.type is ErrorType.CONFLICT and "immutable" in caught.value.detail
    assert await task_store.versions(redis, "acme", "web-lab") == ["1.0.0"]


async def test_versions_are_newest_first_by_semver(redis):
    for version in ("1.9.0", "1.10.0", "0.1.0"):
        await push(redis, version=version)
    assert await task_store.versions(redis, "acme", "web-lab") == ["1.10.0", "1.9.0", "0.1.0"]
    latest = await task_store.latest(redis, "acme", "web-lab")
    assert latest is not None and latest.version == "1.10.0"


async def test_an_invalid_task_is_refused_and_nothing_is_stored(redis):
    body = await upload(redis, "acme", task_yaml(version="1.0"))
    with pytest.raises(TaskenvError) as caught:
        await store_version(
            redis, org="acme", name="web-lab", reference="1.0.0", body=body, max_task_bytes=MAX
        )
    assert caught.value.status == 400 and "version: '1.0' is not fixed semver" in caught.value.detail
    assert caught.value.errors == [
        {
            "loc": ["version"],
            "msg": "'1.0' is not fixed semver: use MAJOR.MINOR.PATCH, e.g. '0.1.0'",
            "type": "task_invalid",
        }
    ]
    assert await task_store.names(redis, "acme") == []


async def test_a_tag_other_than_the_version_is_refused(redis):
    body = await upload(redis, "acme", task_yaml())
    with pytest.raises(TaskenvError, match=r"the push tags 2\.0\.0"):
        await store_version(
            redis, org="acme", name="web-lab", reference="2.0.0", body=body, max_task_bytes=MAX
        )


async def test_a_manifest_naming_blobs_never_uploaded_is_refused(redis):
    body = await upload(redis, "acme", task_yaml())
    with pytest.raises(TaskenvError, match="was not uploaded"):
        await store_version(
            redis, org="other", name="web-lab", reference="1.0.0", body=body, max_task_bytes=MAX
        )


async def test_the_org_budget_counts_blobs_and_deletion_frees_them(redis):
    data = b"x" * (BUDGET // 2)
    assert (
        await task_store.put_blob(
            redis, "acme", task_archive.digest(data), data, budget_bytes=BUDGET, pending_ttl_sec=60
        )
        is BlobOutcome.STORED
    )
    bigger = b"y" * (BUDGET // 2 + 1)
    assert (
        await task_store.put_blob(
            redis, "acme", task_archive.digest(bigger), bigger, budget_bytes=BUDGET, pending_ttl_sec=60
        )
        is BlobOutcome.OVER_BUDGET
    )
    assert (
        await task_store.put_blob(
            redis, "acme", task_archive.digest(data), data, budget_bytes=BUDGET, pending_ttl_sec=60
        )
        is BlobOutcome.EXISTS
    )
    assert (
        await task_store.put_blob(
            redis, "other", task_archive.digest(bigger), bigger, budget_bytes=BUDGET, pending_ttl_sec=60
        )
        is BlobOutcome.STORED
    )


async def test_pending_blobs_are_freed_after_their_deadline(redis):
    data = b"z" * 100
    await task_store.put_blob(
        redis, "acme", task_archive.digest(data), data, budget_bytes=BUDGET, pending_ttl_sec=-1
    )
    assert int(await redis.get("taskenv:blobbytes:acme")) == 100
    other = b"w" * 10
    await task_store.put_blob(
        redis, "acme", task_archive.digest(other), other, budget_bytes=BUDGET, pending_ttl_sec=60
    )
    assert await task_store.get_blob(redis, "acme", task_archive.digest(data)) is None
    assert int(await redis.get("taskenv:blobbytes:acme")) == 10


async def test_deleting_the_last_version_frees_its_blobs_and_name(redis):
    first, _ = await push(redis, version="1.0.0")
    second, _ = await push(redis, version="1.0.1")
    assert await task_store.orgs(redis) == ["acme"]
    assert first.config_digest != second.config_digest
    await task_store.set_public(redis, "acme", "web-lab", True)
    assert await task_store.delete_version(redis, first)
    assert not await task_store.delete_version(redis, first), "deleting twice deletes once"
    assert await task_store.get_blob(redis, "acme", first.config_digest) is None
    assert await task_store.get_blob(redis, "acme", second.oci_digest) is not None
    assert await task_store.delete_version(redis, second)
    assert await task_store.names(redis, "acme") == [] and await task_store.public_names(redis) == []
    assert await task_store.orgs(redis) == []
    assert int(await redis.get("taskenv:blobbytes:acme")) == 0


async def test_shared_blobs_survive_until_no_version_names_them(redis):
    first, _ = await push(redis, name="a-lab")
    body = await upload(redis, "acme", task_yaml("a-lab"))  # the same bytes, under another name
    second, _ = await store_version(
        redis, org="acme", name="b-lab", reference="1.0.0", body=body, max_task_bytes=MAX
    )
    assert second.oci_digest == first.oci_digest
    await task_store.delete_version(redis, first)
    assert await task_store.get_blob(redis, "acme", first.oci_digest) is not None
    await task_store.delete_version(redis, second)
    assert await task_store.get_blob(redis, "acme", first.oci_digest) is None


async def test_visibility_and_reads_across_orgs(redis):
    stored, _ = await push(redis)
    assert not await task_store.blob_readable(redis, "acme", stored.oci_digest, "other")
    assert await task_store.blob_readable(redis, "acme", stored.oci_digest, "acme")
    assert await task_store.set_public(redis, "acme", "web-lab", True)
    assert await task_store.blob_readable(redis, "acme", stored.oci_digest, "other")
    assert not await task_store.set_public(redis, "acme", "no-such", True)
    assert await task_store.set_public(redis, "acme", "web-lab", False)
    assert not await task_store.blob_readable(redis, "acme", stored.oci_digest, "other")


async def test_task_refs_resolve_as_dreadnode_does(redis):
    await push(redis, "acme", version="1.0.0")
    await push(redis, "acme", version="1.1.0")
    await push(redis, "lab", name="shared-lab", version="2.0.0")
    resolved = await resolve(redis, "acme", TaskRef.parse("web-lab"))
    assert resolved is not None and resolved.version == "1.1.0"
    for ref, expected in [
        ("web-lab@1.0.0", "1.0.0"),
        ("acme/web-lab@latest", "1.1.0"),
        ("web-lab@LATEST", "1.1.0"),
    ]:
        found = await resolve(redis, "acme", TaskRef.parse(ref))
        assert found is not None and found.version == expected, ref
    assert await resolve(redis, "acme", TaskRef.parse("shared-lab")) is None, "private to its org"
    assert await resolve(redis, "acme", TaskRef.parse("lab/shared-lab")) is None
    await task_store.set_public(redis, "lab", "shared-lab", True)
    found = await resolve(redis, "acme", TaskRef.parse("shared-lab"))
    assert found is not None and found.org == "lab"
    assert await resolve(redis, "other", TaskRef.parse("acme/web-lab")) is None
    await push(redis, "third", name="shared-lab", version="1.0.0")
    await task_store.set_public(redis, "third", "shared-lab", True)
    with pytest.raises(TaskenvError, match="published by several organizations"):
        await resolve(redis, "acme", TaskRef.parse("shared-lab"))
    own, _ = await push(redis, "acme", name="shared-lab", version="0.0.1")
    assert await resolve(redis, "acme", TaskRef.parse("shared-lab")) == own, "the caller's own first"


async def test_upload_sessions_expire(redis):
    upload_id = await task_store.new_upload(redis, "acme", "web-lab")
    assert await task_store.upload_of(redis, upload_id) == ("acme", "web-lab")
    assert 0 < await redis.ttl(f"taskenv:upload:{upload_id}") <= task_store.UPLOAD_TTL_SEC
    await task_store.end_upload(redis, upload_id)
    assert await task_store.upload_of(redis, upload_id) is None
