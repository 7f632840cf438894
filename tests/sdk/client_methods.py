"""Runs inside .venv-sdk: every environment method of Dreadnode's `ApiClient`, unmodified, against
a taskenv, plus the SDK's mapping of error statuses to exceptions. Prints one JSON object of what
the SDK saw, for tests/test_compat_sdk.py to check.

Usage: python client_methods.py BASE_URL API_KEY ORG WORKSPACE OTHER_ORG_KEY
(ORG/WORKSPACE must be a workspace of its own: listing totals are checked exactly.)
"""

import json
import sys
import time
import uuid
from typing import Any

from dreadnode.app.api.client import ApiClient, AuthenticationError, ConflictError, NotFoundError
from dreadnode.version import VERSION


def raised(call: Any, *args: Any, **kwargs: Any) -> dict[str, str] | None:
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return {
            "class": type(exc).__name__,
            "message": str(exc),
            "runtime_error": isinstance(exc, RuntimeError),
            "auth": isinstance(exc, AuthenticationError),
            "not_found": isinstance(exc, NotFoundError),
            "conflict": isinstance(exc, ConflictError),
        }
    return None


def wait_ready(api: ApiClient, org: str, ws: str, env_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status = api.get_environment_status(org, ws, env_id)
        if status["state"] != "provisioning" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def main(base_url: str, key: str, org: str, ws: str, other_key: str) -> dict[str, Any]:
    api = ApiClient(base_url, api_key=key)
    seen: dict[str, Any] = {"sdk_version": VERSION}

    first = api.create_environment(org, ws, {"task_ref": "default", "timeout_sec": 600})
    second = api.create_environment(org, ws, {"task_ref": "default"})
    seen["created"] = first
    seen["status_ready"] = wait_ready(api, org, ws, first["id"])
    wait_ready(api, org, ws, second["id"])
    seen["got"] = api.get_environment(org, ws, first["id"])

    token = first["execute_token"]
    seen["echo"] = api.execute_in_environment(org, ws, first["id"], command="echo hi", execute_token=token)
    seen["failing"] = api.execute_in_environment(
        org, ws, first["id"], command="echo no >&2; exit 3", timeout_sec=10, execute_token=token
    )
    seen["logs"] = api.get_environment_logs(org, ws, first["id"])

    seen["page1"] = api.list_environments(org, ws, state=["ready"], page=1, limit=1)
    seen["page2"] = api.list_environments(org, ws, state=["ready"], page=2, limit=1)
    seen["page3"] = api.list_environments(org, ws, state=["ready"], page=3, limit=1)

    seen["deleted"] = api.delete_environment(org, ws, second["id"])
    seen["deleted_again"] = api.delete_environment(org, ws, second["id"])
    seen["status_torn_down"] = api.get_environment_status(org, ws, second["id"])
    seen["ready_after_delete"] = api.list_environments(org, ws, state=["ready"])
    seen["torn_down_listed"] = api.list_environments(org, ws, state=["torn_down"])
    seen["both_states"] = api.list_environments(org, ws, state=["ready", "torn_down"], limit=200)
    seen["default_listing"] = api.list_environments(org, ws)

    # The SDK's error mapping, and the human message it shows (`<status>: <detail>`).
    nobody = ApiClient(base_url, api_key="not-a-key")
    missing = str(uuid.uuid4())
    second_token = second["execute_token"]
    seen["errors"] = {
        "401": raised(nobody.get_environment, org, ws, first["id"]),
        "401_list": raised(nobody.list_environments, org, ws),
        "401_execute": raised(
            api.execute_in_environment, org, ws, first["id"], command="true", execute_token="tet_wrong"
        ),
        "403": raised(ApiClient(base_url, api_key=other_key).get_environment, org, ws, first["id"]),
        "404": raised(api.get_environment, org, ws, missing),
        "404_status": raised(api.get_environment_status, org, ws, missing),
        "404_delete": raised(api.delete_environment, org, ws, missing),
        "404_task": raised(api.create_environment, org, ws, {"task_ref": "no-such-task"}),
        "409_execute": raised(
            api.execute_in_environment, org, ws, second["id"], command="true", execute_token=second_token
        ),
        "409_logs": raised(api.get_environment_logs, org, ws, second["id"]),
        "422": raised(
            api.execute_in_environment,
            org,
            ws,
            first["id"],
            command="true",
            timeout_sec=601,
            execute_token=token,
        ),
        "422_list": raised(api.list_environments, org, ws, limit=0),
    }
    api.delete_environment(org, ws, first["id"])
    seen["first_id"], seen["second_id"] = first["id"], second["id"]
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
