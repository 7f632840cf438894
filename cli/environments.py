"""`taskenv env`: environments across hosts, orgs and workspaces, as the operator sees them.

Read from Redis; `rm`, `exec` and `logs` go to the environment's host as jobs on the API's own
path (cli/jobs.py). JSON is the API's shape (ISO 8601 times, null for what is absent) plus the
operator's fields: org, workspace, host.
"""

import json
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from taskenv.api.dispatch import Admission, NotAdmitted
from taskenv.api.ratelimit import OrgRate
from taskenv.cli.failures import Refused
from taskenv.cli.jobs import dispatcher
from taskenv.cli.table import table
from taskenv.shared import commands, jobs, keys, store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import EnvironmentState, ExecuteRequest, ExecuteResponse
from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings
from taskenv.shared.tasks import TaskSpec

_FIELDS = (
    "id", "org", "workspace", "state", "host", "task_ref", "created_at", "expires_at", "error", "instruction",
    "service_urls", "task_verification",
)  # fmt: skip
# The operator's commands are not the tenant's traffic: not counted against its org's rate.
_UNMETERED = OrgRate(per_sec=0, burst=0)


def to_json(record: store.Record) -> dict[str, Any]:
    """The API's view of an environment plus where it is and whose it is."""
    return {
        **store.to_environment(record).model_dump(mode="json"),
        "org": record["org"],
        "workspace": record["workspace"],
        "host": record.get("host") or None,
    }


async def records(redis: Redis) -> list[store.Record]:
    """Every environment record, oldest first (a SCAN: an operator's tool, not a request path)."""
    ids = [
        key.removeprefix(keys.environment(""))
        async for key in redis.scan_iter(keys.environment("*"), count=1000)
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for env_id in ids:
            pipe.hmget(keys.environment(env_id), list(_FIELDS))
        rows = await pipe.execute()
    found = [
        {k: v for k, v in zip(_FIELDS, row, strict=True) if v is not None}
        for row in rows
        if row[0] is not None and row[3] is not None and row[6] is not None
    ]
    return sorted(found, key=lambda r: float(r["created_at"]))


async def list_environments(
    settings: Settings,
    *,
    host: str | None,
    state: EnvironmentState | None,
    org: str | None,
    as_json: bool,
) -> str:
    redis = records_client(settings)
    try:
        found = await records(redis)
    finally:
        await redis.aclose()
    found = [
        r
        for r in found
        if (host is None or r.get("host") == host)
        and (state is None or r["state"] == state)
        and (org is None or r["org"] == org)
    ]
    if as_json:
        return json.dumps([to_json(r) for r in found], indent=2)
    now = time.time()
    rows = [
        [
            r["id"],
            r["state"],
            r.get("host") or "-",
            f"{r['org']}/{r['workspace']}",
            r.get("task_ref", ""),
            f"{(now - float(r['created_at'])) / 60:.0f} min",
            r.get("error", "")[:60],
        ]
        for r in found
    ]
    return table(rows, ["ID", "STATE", "HOST", "ORG/WORKSPACE", "TASK", "AGE", "ERROR"]) if rows else "none"


async def _record(redis: Redis, env_id: str) -> store.Record:
    record = await store.get(redis, env_id)
    if record is None or "state" not in record or "created_at" not in record:
        raise Refused(f"no environment {env_id}")
    return record


async def get_environment(settings: Settings, env_id: str, *, as_json: bool) -> str:
    redis = records_client(settings)
    try:
        record = await _record(redis, env_id)
    finally:
        await redis.aclose()
    shown = {**to_json(record), "container": store.container_name(env_id)}
    if as_json:
        return json.dumps(shown, indent=2)
    return "\n".join(f"{name}: {'-' if value is None else value}" for name, value in shown.items())


async def remove(settings: Settings, env_id: str) -> str:
    """As the API's DELETE: the record is torn down at once, then its host removes the container;
    a host that does not answer in time leaves that to its reaper."""
    redis = records_client(settings)
    try:
        record = await _record(redis, env_id)
        if record["state"] != EnvironmentState.TORN_DOWN:
            await store.tear_down(redis, record, retention_sec=settings.record_retention_sec)
            record = await _record(redis, env_id)
    finally:
        await redis.aclose()
    if not record.get("host") or record.get("lost_host"):
        return f"{env_id} torn down (no container on a live host)"
    async with dispatcher(settings) as jobs_path:
        try:
            await jobs_path.call(
                jobs.TEARDOWN,
                jobs.EnvJob(env_id=env_id),
                queue=keys.host_queue(record["host"]),
                wait_sec=settings.teardown_wait_sec,
            )
        except TaskenvError as exc:
            if exc.type not in (ErrorType.TIMEOUT, ErrorType.RATE_LIMIT, ErrorType.BAD_GATEWAY):
                raise
            return (
                f"{env_id} torn down; host {record['host']} did not confirm ({exc.detail}):"
                " its reaper removes the container"
            )
    return f"{env_id} removed (container gone from host {record['host']})"


async def execute(settings: Settings, env_id: str, command: str, timeout_sec: int) -> ExecuteResponse:
    """One command, run exactly as the API runs a client's (same admission, slots, deadline,
    output cap), on whichever host holds the environment."""
    ExecuteRequest(command=command, timeout_sec=timeout_sec)  # the API's limits
    redis = records_client(settings)
    try:
        record = await _record(redis, env_id)
    finally:
        await redis.aclose()
    if record["state"] != EnvironmentState.READY or not record.get("host"):
        raise Refused(f"environment {env_id} is {record['state']}, not ready" + _error_of(record))
    spec = TaskSpec.model_validate_json(record["spec"])
    wait_sec = timeout_sec + settings.result_grace_sec
    payload = jobs.ExecJob(
        env_id=env_id,
        command=command,
        timeout_sec=timeout_sec,
        deadline_at=time.time() + timeout_sec,
        user=spec.user,
        workdir=spec.workdir,
        output_limit=settings.output_limit_bytes,
    )
    admission = Admission(
        env_id, settings.max_execs_per_env, time.time() + wait_sec, org=record["org"], rate=_UNMETERED
    )
    job_id = uuid.uuid4().hex
    async with dispatcher(settings) as jobs_path:
        try:
            value = await jobs_path.call(
                jobs.EXECUTE,
                payload,
                queue=keys.host_queue(record["host"]),
                wait_sec=wait_sec,
                job_id=job_id,
                admission=admission,
            )
        except NotAdmitted as refused:
            if refused.reason == "busy":
                slots = settings.max_execs_per_env
                raise Refused(f"environment {env_id} already runs {slots} commands at once") from None
            raise Refused(f"environment {env_id} is {refused.reason}, not ready") from None
        except TaskenvError:
            await commands.release(jobs_path.redis, admission.commands, job_id)
            raise
    return ExecuteResponse.model_validate(value)


def _error_of(record: store.Record) -> str:
    return f": {record['error']}" if record.get("error") else ""


async def logs(settings: Settings, env_id: str) -> str:
    """The container's log tail, whatever the environment's state, as long as its container is
    still there (a failed one's is, until it is torn down or expires)."""
    redis = records_client(settings)
    try:
        record = await _record(redis, env_id)
    finally:
        await redis.aclose()
    if not record.get("host"):
        raise Refused(
            f"environment {env_id} ({record['state']}) never reached a host: no container, no logs"
            + _error_of(record)
        )
    if record.get("lost_host"):
        raise Refused(f"environment {env_id}: its host {record['host']} is lost, with its container")
    async with dispatcher(settings) as jobs_path:
        try:
            value = await jobs_path.call(
                jobs.LOGS,
                jobs.EnvJob(env_id=env_id),
                queue=keys.host_queue(record["host"]),
                wait_sec=settings.control_timeout_sec,
            )
        except TaskenvError as exc:
            if exc.type == ErrorType.BAD_GATEWAY:
                raise Refused(
                    f"environment {env_id} ({record['state']}): its container is gone from host"
                    f" {record['host']} ({exc.detail})"
                ) from None
            raise
    return str(value.get("logs", ""))
