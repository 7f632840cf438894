"""Runs inside .venv-sdk (Dreadnode's public SDK, unmodified) against a taskenv; prints JSON.

A rollout graded both ways: the SDK's `verify_env_state` with the task's verification in the
shape taskenv gives (`task_verification`), and taskenv's POST …/verify, before and after the
agent writes the flag.

Usage: python verify_rollout.py BASE_URL API_KEY ORG WORKSPACE TASK_REF VERIFICATION_JSON FLAG
"""

import asyncio
import json
import shlex
import sys

import httpx
from dreadnode.app.api.client import ApiClient
from dreadnode.core.environment import TaskEnvironment
from dreadnode.training.env_rollouts import verify_env_state


async def main(
    base_url: str, api_key: str, org: str, workspace: str, task_ref: str, shape: str, flag: str
) -> dict:
    verification = json.loads(shape)
    api = ApiClient(base_url, api_key=api_key)
    env = TaskEnvironment(api, org=org, workspace=workspace, task_ref=task_ref, timeout_sec=120)
    context = await env.setup()
    url = f"{base_url}/api/v1/org/{org}/ws/{workspace}/environments/{context['id']}/verify"

    async def grade() -> dict:
        sdk = await verify_env_state(env, None, verification)
        async with httpx.AsyncClient(timeout=60) as http:
            ours = await http.post(url, headers={"X-API-Key": api_key})
        return {
            "sdk": sdk.passed,
            "sdk_metrics": sdk.metrics,
            "status": ours.status_code,
            "ours": ours.json(),
        }

    try:
        before = await grade()
        written = await env.execute(f"printf '%s\\n' {shlex.quote(flag)} > /tmp/flag")
        after = await grade()
    finally:
        await env.teardown()
    return {"id": context["id"], "before": before, "written": list(written), "after": after}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:8]))))
