"""Storing a pushed version: the manifest's blobs are read back, the archive validated whole, and
the version committed only if everything passed. The OCI route and `taskenv task push` share it."""

import asyncio
import hashlib
import json
import time
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from taskenv.shared import task_archive, task_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.scripts import CommitOutcome
from taskenv.shared.task_compose import ComposeService, service_plan, services_of
from taskenv.shared.task_manifest import NAME_PATTERN, VERSION_PATTERN, Issue, error
from taskenv.shared.task_oci import MANIFEST_MAX_BYTES, Manifest
from taskenv.shared.task_store import TaskVersion
from taskenv.shared.task_validation import TaskInvalid, ValidatedTask, validate


def refused(problems: list[str], *, component: str = "archive") -> TaskenvError:
    return invalid([error(component, problem) for problem in problems])


def invalid(issues: list[Issue]) -> TaskenvError:
    """400 naming every problem: in `detail` (what `dn` prints) and one by one in `errors`."""
    detail = "Task refused: " + "; ".join(str(issue) for issue in issues)
    errors = [{"loc": [issue.component], "msg": issue.message, "type": "task_invalid"} for issue in issues]
    return TaskenvError(ErrorType.INVALID_REQUEST, detail, errors=errors)


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise TaskenvError(ErrorType.VALIDATION, f"Task name {name!r} is not kebab-case ([a-z0-9][a-z0-9-]*)")


def parse_manifest(body: bytes) -> Manifest:
    if len(body) > MANIFEST_MAX_BYTES:
        raise TaskenvError(ErrorType.PAYLOAD_TOO_LARGE, f"A manifest is at most {MANIFEST_MAX_BYTES} bytes")
    try:
        manifest = Manifest.model_validate_json(body)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(part) for part in err["loc"]) or "manifest" for err in exc.errors())
        raise refused([f"not a task manifest: {fields}"], component="manifest") from None
    if problems := manifest.problems():
        raise refused(problems, component="manifest")
    return manifest


def _validated(layer: bytes, max_bytes: int) -> ValidatedTask:
    """CPU-bound (decompress, untar, parse): run in a thread by the caller."""
    try:
        return validate(task_archive.read(layer, max_bytes))
    except task_archive.ArchiveError as exc:
        raise refused([str(exc)]) from None
    except TaskInvalid as exc:
        raise invalid(exc.issues) from None


async def store_version(
    redis: Redis, *, org: str, name: str, reference: str, body: bytes, max_task_bytes: int
) -> tuple[TaskVersion, bool]:
    """The version the manifest `body` describes, validated and committed; `False` when this very
    manifest was already stored (a repeated push). A version is never replaced."""
    check_name(name)
    manifest = parse_manifest(body)
    if not VERSION_PATTERN.fullmatch(reference):
        raise refused(
            [f"the tag {reference!r} must be the task's version (MAJOR.MINOR.PATCH)"], component="manifest"
        )
    layer = await task_store.get_blob(redis, org, manifest.layer.digest)
    if layer is None or not await task_store.blob_stored(redis, org, manifest.config.digest):
        raise refused(
            [f"blob {manifest.layer.digest} or {manifest.config.digest} was not uploaded"],
            component="manifest",
        )
    validated = await asyncio.to_thread(_validated, layer, max_task_bytes)
    if validated.manifest.version != reference:
        problem = f"task.yaml says version {validated.manifest.version} but the push tags {reference}"
        raise refused([problem], component="version")
    version = _record(org, name, manifest, body, validated, len(layer))
    outcome, detail = await task_store.commit(redis, version)
    if outcome is CommitOutcome.COMMITTED:
        return version, True
    if outcome is CommitOutcome.EXISTS and isinstance(detail, TaskVersion):
        if detail.manifest_digest == version.manifest_digest:
            return detail, False
        raise TaskenvError(
            ErrorType.CONFLICT,
            f"Task {org}/{name}@{reference} exists with other content: versions are immutable,"
            " push a new version",
        )
    raise refused([f"blob {detail} is no longer stored: push again"], component="manifest")


def _record(
    org: str, name: str, manifest: Manifest, body: bytes, task: ValidatedTask, size: int
) -> TaskVersion:
    fields: dict[str, Any] = task.manifest.model_dump(
        include={"description", "tags", "difficulty", "source", "author", "license", "repository",
                 "max_agent_timeout_sec", "egress", "models"}
    )  # fmt: skip
    return TaskVersion(
        org=org,
        name=name,
        version=task.manifest.version,
        created_at=time.time(),
        manifest=body.decode(),
        manifest_digest=f"sha256:{hashlib.sha256(body).hexdigest()}",
        config_digest=manifest.config.digest,
        oci_digest=manifest.layer.digest,
        size=size,
        instruction=task.manifest.instruction,
        verification_method=task.manifest.verification.effective_method().value,
        ports=task.manifest.ports or {},
        readme=task.readme,
        build_services=[plan.name for plan in _plans(task) if plan.build is not None],
        service_images=sorted({plan.image for plan in _plans(task) if plan.build is None and plan.image}),
        services=[plan.name for plan in _plans(task)],
        verification=task.manifest.verification.model_dump(mode="json", exclude_none=True),
        provision=task.manifest.provision.model_dump() if task.manifest.provision else None,
        teardown=task.manifest.teardown.model_dump() if task.manifest.teardown else None,
        **{key: value for key, value in fields.items() if value is not None},
    )


def _plans(task: ValidatedTask) -> list[ComposeService]:
    compose = task.compose or {}
    return [
        service_plan(str(name), spec) for name, spec in services_of(compose).items() if isinstance(spec, dict)
    ]


def config_blob(task_yaml: dict[str, Any]) -> bytes:
    """The config blob as `dn task push` makes it: task.yaml as sorted, indented JSON."""
    return json.dumps(task_yaml, indent=2, sort_keys=True).encode()
