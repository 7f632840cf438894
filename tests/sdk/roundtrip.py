"""Runs inside .venv-sdk (Dreadnode's public SDK, unmodified) against a taskenv; prints JSON.

Usage: python roundtrip.py BASE_URL API_KEY ORG WORKSPACE
"""

import asyncio
import json
import sys

from dreadnode.app.api.client import ApiClient
from dreadnode.core.environment import TaskEnvironment


async def main(base_url: str, api_key: str, org: str, workspace: str) -> dict:
    api = ApiClient(base_url, api_key=api_key)
    env = TaskEnvironment(api, org=org, workspace=workspace, task_ref="default", timeout_sec=120)
    context = await env.setup()
    try:
        exit_code, output = await env.execute("echo out; echo err >&2; exit 3", timeout_sec=10)
        try:
            await env.execute("sleep 30", timeout_sec=1)
            timeout_error = None
        except RuntimeError as exc:
            timeout_error = str(exc)
        logs = await env.logs()
        listed = api.list_environments(org, workspace, state=["ready"], limit=200)
    finally:
        await env.teardown()
    status = api.get_environment_status(org, workspace, context["id"])
    return {
        "state_after_setup": context["state"],
        "exit_code": exit_code,
        "output": output,
        "timeout_error": timeout_error,
        "logs": logs,
        "listed": context["id"] in {e["id"] for e in listed["environments"]},
        "state_after_teardown": status["state"],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
