"""The task-environment routes, under /api/v1/org/{org}/ws/{workspace}/environments."""

import asyncio
import logging
import time
import uuid
from contextlib import suppress

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from taskenv.api.auth import Workspace, require_execute_token, require_workspace
from taskenv.api.body import parse_json, parse_query
from taskenv.api.dispatch import Admission, Idempotency, NotAdmitted, Refusal
from taskenv.api.metrics import EXECUTE_SECONDS
from taskenv.api.ratelimit import OrgRate
from taskenv.api.state import AppState, app_state
from taskenv.api.task_requests import task_fields
from taskenv.api.teardown import Teardown, remove_container
from taskenv.shared import commands, jobs, keys, quotas, store
from taskenv.shared.environment_record import EnvironmentRecord
from taskenv.shared.errors import (
    ErrorType,
    Reason,
    TaskenvError,
    because,
    environment_not_found,
    rate_limited,
)
from taskenv.shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from taskenv.shared.idempotency import MAX_KEY_CHARS as IDEMPOTENCY_KEY_MAX_CHARS
from taskenv.shared.idempotency import fingerprint
from taskenv.shared.jobs import ExecJob
from taskenv.shared.models import (
    EnvironmentState,
    ExecuteRequest,
    ExecuteResponse,
    LogsResponse,
    ProvisionedEnvironment,
    ProvisionRequest,
)
from taskenv.shared.quotas import Limits
from taskenv.shared.scripts import AdmissionOutcome
from taskenv.shared.secrets import hash_secret, new_execute_token
from taskenv.shared.task_specs import spec_for
from taskenv.shared.tasks import TaskSpec

log = logging.getLogger("taskenv.api")


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


# The longest a status request may wait for a provision to end (`?wait_sec=`), and how often it
# reads the record meanwhile, should a worker's announcement be lost.
MAX_STATUS_WAIT_SEC = 30.0
STATUS_RECHECK_SEC = 1.0


class StatusQuery(BaseModel):
    """`wait_sec`: answer once the environment is no longer provisioning (or building), or after
    this long, whichever comes first; 0 answers at once (a taskenv extension)."""

    wait_sec: float = Field(0.0, ge=0.0, le=MAX_STATUS_WAIT_SEC)


class ListQuery(BaseModel):
    page: int = Field(1, ge=1)
    limit: int = Field(50, ge=1, le=200)
    state: list[EnvironmentState] = Field(default_factory=list)


async def record_in(state: AppState, scope: Workspace, env_id: str) -> EnvironmentRecord:
    record = await store.load(state.records, env_id)
    if record is None or (record.org, record.workspace) != (scope.org, scope.workspace):
        raise environment_not_found(env_id)
    return record


def require_state(record: EnvironmentRecord, action: str, *allowed: EnvironmentState) -> None:
    if record.state not in allowed:
        raise TaskenvError(
            ErrorType.CONFLICT,
            f"Cannot {action} environment {record.id} in state {record.state.value!r}"
            + (f": {record.error}" if record.error else ""),
        )


async def create_environment(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    body = await parse_json(request, ProvisionRequest)
    spec, unbuilt = await spec_for(
        state.arq, state.registry, scope.org, body.task_ref, sandbox_image=state.settings.sandbox_image
    )
    task_parts = await task_fields(state.records, scope.org, spec, body)
    wanted = body.timeout_sec or spec.lifetime_sec or state.settings.default_lifetime_sec
    lifetime = min(wanted, state.settings.max_lifetime_sec)
    env_id = str(uuid.uuid4())
    token = new_execute_token()
    limits = Limits.of(state.settings)
    try:
        record = await store.create(
            state.records,
            env_id=env_id,
            org=scope.org,
            workspace=scope.workspace,
            task_ref=body.task_ref,
            spec=spec,
            token_hash=hash_secret(token),
            lifetime_sec=lifetime,
            provision_timeout_sec=state.settings.control_timeout_sec,
            limits=limits,
            task_fields=task_parts,
        )
    except store.OverQuota as over:
        limit = limits.of_quota(over.quota)
        retry_after = state.settings.busy_retry_after_sec
        raise quotas.exceeded(over.quota, limit, scope.org, scope.workspace, retry_after) from None
    if unbuilt:
        # No host holds the task's images yet: shown `building` from the start (the worker that
        # provisions it builds them, or waits for the build: worker/task_provision.py).
        await store.set_if_state(state.records, env_id, EnvironmentState.PROVISIONING, building="1")
        record["building"] = "1"
    try:
        await state.dispatcher.submit(
            jobs.PROVISION,
            jobs.EnvJob(env_id=env_id),
            queue=keys.PROVISION_QUEUE,
            job_id=uuid.uuid4().hex,
            expires_sec=state.settings.control_timeout_sec,
            reply=False,
        )
    except TaskenvError:
        await store.discard(state.records, record)  # a full queue: 429
        raise
    environment = store.to_environment(record)
    return json_response(
        ProvisionedEnvironment(**environment.model_dump(), execute_token=token), status_code=201
    )


async def list_environments(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    query = parse_query(request, ListQuery, lists=("state",))
    page = await store.list_page(
        state.records, scope.org, scope.workspace, states=set(query.state), page=query.page, limit=query.limit
    )
    return json_response(page)


async def get_environment(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    record = await record_in(state, scope, request.path_params["env_id"])
    return json_response(store.to_environment(record))


async def get_status(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    query = parse_query(request, StatusQuery)
    record = await record_in(state, scope, request.path_params["env_id"])
    if query.wait_sec > 0 and record.state == EnvironmentState.PROVISIONING:
        record = await _until_settled(state, record, query.wait_sec)
    return json_response(store.to_status(record))


async def _until_settled(state: AppState, record: EnvironmentRecord, wait_sec: float) -> EnvironmentRecord:
    """The record once the environment is no longer provisioning, or as it is after `wait_sec`:
    woken by the worker's announcement (registered before the record is read, so none is
    missed), and read again every `STATUS_RECHECK_SEC` should one be lost."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_sec
    with state.listener.settled(record.id) as settled:
        while (left := deadline - loop.time()) > 0:
            fresh = await store.load(state.records, record.id)
            if fresh is None:
                raise environment_not_found(record.id)
            record = fresh
            if record.state != EnvironmentState.PROVISIONING or settled.done():
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(settled), min(left, STATUS_RECHECK_SEC))
    return record


async def delete_environment(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    record = await record_in(state, scope, request.path_params["env_id"])
    if record.state != EnvironmentState.TORN_DOWN:
        await store.tear_down(state.records, record, retention_sec=state.settings.record_retention_sec)
        # A provision may have claimed a host since the read: ask again where the container is.
        record = await record_in(state, scope, record.id)
    if not record.host or record.lost_host:
        # No host took the provision (no container exists, and none will: it is torn down), or
        # its host is lost (if it comes back, its reaper removes the container).
        return Response(status_code=204)
    # Remove the container now, so that 204 means it is gone (this also retries a failed earlier
    # removal). When no worker of the host is alive to do it, the record is torn down already
    # and the host's reaper removes the container when a worker of it is back.
    outcome = await remove_container(state, record.id, record.host, _teardown_script_sec(record))
    if outcome != Teardown.REMOVED:
        log.warning(
            "teardown of %s not confirmed by host %s (%s); left to its reaper",
            record.id, record.host, outcome,
        )  # fmt: skip
    return Response(status_code=204)


def _teardown_script_sec(record: EnvironmentRecord) -> float:
    """How long its task's teardown script may run before its containers are removed (0: none)."""
    source = TaskSpec.model_validate_json(record.spec).source
    return float(source.teardown.timeout) if source is not None and source.teardown is not None else 0.0


async def get_logs(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    record = await record_in(state, scope, request.path_params["env_id"])
    if record.build_log:  # its task's build failed: there is no sandbox, only the build's log
        return json_response(LogsResponse(logs=record.build_log))
    require_state(record, "read logs of", EnvironmentState.READY)
    value = await state.dispatcher.call(
        jobs.LOGS,
        jobs.EnvJob(env_id=record.id),
        queue=keys.host_queue(record.host),
        wait_sec=state.settings.control_timeout_sec,
    )
    return json_response(LogsResponse(logs=value["logs"]))


async def execute(request: Request) -> Response:
    started = time.perf_counter()
    state = app_state(request)
    env_id = request.path_params["env_id"]
    # Authentication answers before body errors, yet costs no extra round trip: the body is
    # checked first, its error held back until the token has been checked.
    body: ExecuteRequest | None = None
    body_error: TaskenvError | None = None
    try:
        body = await parse_json(request, ExecuteRequest)
    except TaskenvError as exc:
        body_error = exc
    target = await state.targets.get(env_id)
    await require_execute_token(state.records, request, target)
    assert target is not None
    if body_error is not None or body is None:
        raise body_error or TaskenvError(ErrorType.INVALID_REQUEST, "Missing body")
    if not target.host:
        # No host has taken its provision yet, so it cannot be ready.
        raise await _refusal(state, env_id, EnvironmentState.PROVISIONING, state.settings.max_execs_per_env)
    once = _idempotency(request, body, env_id, state.settings.idempotency_ttl_sec)
    deadline_at = time.time() + body.timeout_sec
    wait_sec = body.timeout_sec + state.settings.result_grace_sec
    job_id = uuid.uuid4().hex
    payload = ExecJob(
        env_id=env_id,
        command=body.command,
        timeout_sec=body.timeout_sec,
        deadline_at=deadline_at,
        user=target.user,
        workdir=target.workdir,
        output_limit=state.settings.output_limit_bytes,
    )
    if once is not None:
        payload["idempotency"] = once.record
    per_env = state.settings.max_execs_per_env
    admission = Admission(
        env_id,
        per_env,
        command_until=time.time() + wait_sec,
        org=target.org,
        rate=OrgRate.of(state.settings),
        idempotency=once,
        workspace=target.workspace,
        limits=Limits.of(state.settings),
    )
    try:
        value = await state.dispatcher.call(
            jobs.EXECUTE,
            payload,
            queue=keys.host_queue(target.host),
            wait_sec=wait_sec,
            job_id=job_id,
            admission=admission,
        )
    except NotAdmitted as refused:
        raise await _refusal(state, env_id, refused.reason, per_env) from None
    except TaskenvError:
        # The worker removes the command with its answer; with no answer (timeout, lost worker)
        # it would count until its deadline: remove it now.
        state.after_response(commands.release(state.records, admission.commands, job_id))
        raise
    EXECUTE_SECONDS.observe(time.perf_counter() - started)
    return json_response(ExecuteResponse.model_validate(value))


def _idempotency(request: Request, body: ExecuteRequest, env_id: str, ttl_sec: int) -> Idempotency | None:
    """The request's Idempotency-Key, scoped to its environment (stored hashed)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS:
        message = f"must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} characters"
        raise TaskenvError(
            ErrorType.VALIDATION,
            f"Invalid request header: {IDEMPOTENCY_HEADER} {message}",
            errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": message, "type": "string_length"}],
        )
    return Idempotency(keys.idempotency(env_id, hash_secret(key)), fingerprint(body), ttl_sec)


async def _refusal(state: AppState, env_id: str, reason: Refusal, env_limit: int) -> TaskenvError:
    if reason == AdmissionOutcome.BUSY:
        return rate_limited(
            f"Environment {env_id} already runs {env_limit} commands at once; retry when one finishes",
            state.settings.busy_retry_after_sec,
        )
    if reason == AdmissionOutcome.MISMATCH:
        # A valid request that conflicts with what the service holds (the key's first request),
        # as a wrong state does: 409, not 422 (the IETF draft's choice), for the body is valid.
        return TaskenvError(
            ErrorType.CONFLICT,
            f"{IDEMPOTENCY_HEADER} was used with another command or timeout in this environment;"
            " use a new key",
        )
    record = await store.load(state.records, env_id)
    if record is None:
        state.targets.forget(env_id)
        return environment_not_found(env_id)
    if record.state == EnvironmentState.FAILED and record.container_gone:
        # Its container was removed or stopped outside taskenv: as answered when that was found.
        return TaskenvError(ErrorType.BAD_GATEWAY, record.error, reason=Reason.CONTAINER_GONE)
    if record.state == EnvironmentState.FAILED and record.lost_host:
        # Its host is gone with its container: a gateway failure, as for a waiting command.
        return because(Reason.HOST_LOST, record.error)
    try:
        require_state(record, "execute in", EnvironmentState.READY)
    except TaskenvError as exc:
        return exc
    return TaskenvError(ErrorType.CONFLICT, f"Environment {env_id} changed state; retry")
