"""Runs inside .venv-sdk (Dreadnode's public SDK, unmodified) against a taskenv; prints JSON.

`TaskEnvironment` as an agent uses it: set up (POST, then poll /status until ready), execute,
logs, teardown.

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
        echo = await env.execute("echo hi")
        failing = await env.execute("echo out; echo err >&2; exit 3", timeout_sec=10)
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
        "id": context["id"],
        "state_after_setup": context["state"],
        "context_keys": sorted(context),
        "echo": list(echo),
        "failing": list(failing),
        "timeout_error": timeout_error,
        "logs": logs,
        "listed": context["id"] in {e["id"] for e in listed["environments"]},
        "state_after_teardown": status["state"],
        "id_after_teardown": env.id,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
