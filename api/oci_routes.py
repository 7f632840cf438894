"""The OCI registry routes `dn task push|pull` use, under the server root as Dreadnode serves
them: `/api/v1/{org}/blobs/{digest}` and `/api/v1/{org}/{name}/{blobs/uploads,manifests,tags}`.

`dn` authenticates with HTTP Basic `__token__:<api key>`. An org writes only its own
repositories; it reads its own and other orgs' public ones. Answers that are not blobs or
manifests, errors included, are taskenv's JSON envelope, whose `detail` `dn` prints. Blobs are
binary, so the registry's storage goes through the API's bytes client of the same Redis
(`state.arq`).
"""

import hashlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskenv.api.auth import Workspace, authenticate
from taskenv.api.state import AppState, app_state
from taskenv.shared import task_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.scripts import BlobOutcome
from taskenv.shared.task_oci import LATEST, MANIFEST_MAX_BYTES, MEDIA_OCI_MANIFEST, SHA256_DIGEST
from taskenv.shared.task_push import check_name, store_version
from taskenv.shared.task_refs import visible_version

_BLOB_MEDIA = "application/octet-stream"


async def _writer(state: AppState, request: Request) -> Workspace:
    scope = await authenticate(state.records, request)
    if scope.org != request.path_params["org"]:
        raise TaskenvError(ErrorType.PERMISSION, "This API key may push only to its own organization")
    check_name(request.path_params["name"])
    return scope


def _digest_param(value: str) -> str:
    if not SHA256_DIGEST.fullmatch(value):
        raise TaskenvError(ErrorType.INVALID_REQUEST, "A digest is sha256:<64 lowercase hex characters>")
    return value


async def head_blob(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    org, digest = request.path_params["org"], _digest_param(request.path_params["digest"])
    if not await task_store.blob_readable(state.arq, org, digest, scope.org):
        return Response(status_code=404)
    return Response(status_code=200, headers={"Docker-Content-Digest": digest}, media_type=_BLOB_MEDIA)


async def get_blob(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    org, digest = request.path_params["org"], _digest_param(request.path_params["digest"])
    readable = await task_store.blob_readable(state.arq, org, digest, scope.org)
    data = await task_store.get_blob(state.arq, org, digest) if readable else None
    if data is None:
        raise TaskenvError(ErrorType.NOT_FOUND, f"Blob {digest} not found")
    return Response(data, media_type=_BLOB_MEDIA, headers={"Docker-Content-Digest": digest})


async def start_upload(request: Request) -> Response:
    state = app_state(request)
    scope = await _writer(state, request)
    name = request.path_params["name"]
    upload_id = await task_store.new_upload(state.arq, scope.org, name)
    location = f"/api/v1/{scope.org}/{name}/blobs/uploads/{upload_id}"
    return Response(status_code=202, headers={"Location": location, "Docker-Upload-UUID": upload_id})


async def _body(request: Request, max_bytes: int, what: str) -> bytes:
    too_large = TaskenvError(ErrorType.PAYLOAD_TOO_LARGE, f"{what} is at most {max_bytes} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def finish_upload(request: Request) -> Response:
    """A monolithic upload: the whole blob in one PUT, with its digest, which must match."""
    state = app_state(request)
    scope = await _writer(state, request)
    name, upload_id = request.path_params["name"], request.path_params["upload_id"]
    if await task_store.upload_of(state.arq, upload_id) != (scope.org, name):
        raise TaskenvError(ErrorType.NOT_FOUND, "Upload not found (or expired): start it again")
    digest = _digest_param(request.query_params.get("digest", ""))
    data = await _body(request, state.settings.max_task_bytes, "A task blob (TASKENV_MAX_TASK_BYTES)")
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
        raise TaskenvError(ErrorType.INVALID_REQUEST, f"The uploaded bytes do not have digest {digest}")
    outcome = await task_store.put_blob(
        state.arq,
        scope.org,
        digest,
        data,
        budget_bytes=state.settings.task_storage_bytes,
        pending_ttl_sec=task_store.UPLOAD_TTL_SEC,
    )
    await task_store.end_upload(state.arq, upload_id)
    if outcome is BlobOutcome.OVER_BUDGET:
        raise TaskenvError(
            ErrorType.PAYLOAD_TOO_LARGE,
            f"Organization {scope.org}'s task storage is full (TASKENV_TASK_STORAGE_BYTES):"
            " delete versions first",
        )
    headers = {"Location": f"/api/v1/{scope.org}/blobs/{digest}", "Docker-Content-Digest": digest}
    return Response(status_code=201, headers=headers)


async def put_manifest(request: Request) -> Response:
    state = app_state(request)
    scope = await _writer(state, request)
    name, reference = request.path_params["name"], request.path_params["reference"]
    body = await _body(request, MANIFEST_MAX_BYTES, "A manifest")
    version, _ = await store_version(
        state.arq,
        org=scope.org,
        name=name,
        reference=reference,
        body=body,
        max_task_bytes=state.settings.max_task_bytes,
    )
    headers = {
        "Location": f"/api/v1/{scope.org}/{name}/manifests/{version.manifest_digest}",
        "Docker-Content-Digest": version.manifest_digest,
    }
    return Response(status_code=201, headers=headers)


async def get_manifest(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    org, name, reference = (
        request.path_params["org"],
        request.path_params["name"],
        request.path_params["reference"],
    )
    version = await visible_version(
        state.arq, scope.org, org, name, None if reference == LATEST else reference
    )
    if version is None:
        raise TaskenvError(ErrorType.NOT_FOUND, f"Task {org}/{name}:{reference} not found")
    return Response(
        version.manifest,
        media_type=MEDIA_OCI_MANIFEST,
        headers={"Docker-Content-Digest": version.manifest_digest},
    )


async def list_tags(request: Request) -> Response:
    state = app_state(request)
    scope = await authenticate(state.records, request)
    org, name = request.path_params["org"], request.path_params["name"]
    latest = await visible_version(state.arq, scope.org, org, name, None)
    if latest is None:
        raise TaskenvError(ErrorType.NOT_FOUND, f"Task {org}/{name} not found")
    tags = await task_store.versions(state.arq, org, name)
    return JSONResponse({"name": f"{org}/{name}", "tags": [*tags, LATEST]})


def routes() -> list[Route]:
    """Outside the OpenAPI document, which describes the task-environment API."""
    repository = "/api/v1/{org}/{name}"
    return [
        Route("/api/v1/{org}/blobs/{digest}", head_blob, methods=["HEAD"], include_in_schema=False),
        Route("/api/v1/{org}/blobs/{digest}", get_blob, methods=["GET"], include_in_schema=False),
        Route(repository + "/blobs/uploads", start_upload, methods=["POST"], include_in_schema=False),
        Route(
            repository + "/blobs/uploads/{upload_id}", finish_upload, methods=["PUT"], include_in_schema=False
        ),
        Route(repository + "/manifests/{reference}", put_manifest, methods=["PUT"], include_in_schema=False),
        Route(repository + "/manifests/{reference}", get_manifest, methods=["GET"], include_in_schema=False),
        Route(repository + "/tags/list", list_tags, methods=["GET"], include_in_schema=False),
    ]
