"""Execute for real: Redis, arq, the worker and the Docker engine, over HTTP."""

import asyncio
import time

import httpx
import pytest

from tests.conftest import Env
from tests.helpers import commands_in_flight, until
from tests.helpers import execute as run

pytestmark = pytest.mark.integration


async def processes(client: httpx.AsyncClient, env: Env) -> str:
    response = await run(client, env, "ps -o user,args")
    assert response.status_code == 200, response.text
    return str(response.json()["output"])


async def test_stdout_and_stderr_in_order_with_exit_code(client, env):
    response = await run(client, env, "echo out; echo err >&2; exit 3")
    assert response.status_code == 200
    assert response.json() == {"exit_code": 3, "output": "out\nerr\n"}


async def test_interleaved_writes_keep_their_order(client, env):
    command = "for i in 1 2 3 4 5; do echo o$i; echo e$i >&2; done"
    response = await run(client, env, command)
    assert response.json()["output"] == "".join(f"o{i}\ne{i}\n" for i in range(1, 6))


async def test_deadline_kills_the_whole_tree_and_answers_504(client, env):
    started = time.monotonic()
    response = await run(client, env, "echo started; sleep 30", timeout_sec=1)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    body = response.json()
    assert body["type"] == "timeout_error" and body["code"] == 504
    assert body["output"] == "started\n"  # the partial output comes back
    assert elapsed < 2.0, elapsed
    assert "sleep 30" not in await processes(client, env)


async def test_deadline_kills_escaped_and_detached_children(client, env):
    command = "sleep 301 & setsid sleep 302 & (sleep 303 &); sleep 304"
    response = await run(client, env, command, timeout_sec=1)
    assert response.status_code == 504
    left = await processes(client, env)
    assert not [n for n in ("301", "302", "303", "304") if f"sleep {n}" in left], left


async def test_background_child_holding_the_pipe_returns_promptly(client, env):
    started = time.monotonic()
    response = await run(client, env, "sleep 100 & echo hi", timeout_sec=30)
    assert response.status_code == 200
    assert response.json() == {"exit_code": 0, "output": "hi\n"}
    assert time.monotonic() - started < 2.0


async def test_flood_is_capped_with_a_marker(client, env):
    response = await run(client, env, "yes | head -c 3000000; echo done >&2", timeout_sec=30)
    assert response.status_code == 200
    output = response.json()["output"]
    head, _, marker = output.partition("\n[taskenv: output truncated at 1048576 bytes;")
    assert len(head.encode()) == 1048576 and set(head) <= {"y", "\n"}
    assert "more bytes were discarded" in marker


async def test_endless_flood_stops_at_the_deadline_with_capped_output(client, env):
    response = await run(client, env, "yes", timeout_sec=2)
    assert response.status_code == 504
    assert len(response.json()["output"]) < 1048576 + 200
    assert " yes" not in await processes(client, env)


async def test_exit_codes_survive_exec_traps_and_fd_9_reuse(client, env):
    cases = {
        "exec sh -c 'exit 7'": 7,  # replaces the reporting shell
        "trap 'echo mine' EXIT; exit 5": 5,  # replaces the reporting trap
        "exec 9>/tmp/lock; exit 4": 4,  # reuses the reporting fd
        "false": 1,
        "if then fi": 2,  # syntax error
        'echo "[$1][$#]"': 0,  # no positional parameters leak in
    }
    for command, code in cases.items():
        response = await run(client, env, command)
        assert response.json()["exit_code"] == code, (command, response.text)
    assert (await run(client, env, 'echo "[$1][$#]"')).json()["output"] == "[][0]\n"
    lock = await run(client, env, "wc -c < /tmp/lock")
    assert lock.json()["output"].strip() == "0"  # our status was not written into the file


async def test_output_without_final_newline_and_late_background_output(client, env):
    response = await run(client, env, "printf abc; (sleep 0.5; echo late) &")
    assert response.json() == {"exit_code": 0, "output": "abc"}
    response = await run(client, env, "printf '\\036not-a-report:1\\n'; exit 2")
    assert response.json() == {"exit_code": 2, "output": "\x1enot-a-report:1\n"}


async def test_invalid_utf8_is_replaced(client, env):
    response = await run(client, env, r"printf '\377\376ok'")
    assert response.status_code == 200
    assert response.json()["output"] == "\ufffd\ufffdok"


async def test_stdin_is_not_attached(client, env):
    response = await run(client, env, "cat; echo after", timeout_sec=5)
    assert response.json() == {"exit_code": 0, "output": "after\n"}


async def test_commands_run_unprivileged_without_network(client, env):
    output = (await run(client, env, "id -u; ls /sys/class/net")).json()["output"]
    assert output.split() == ["1000", "lo"]


async def test_concurrent_execs_in_one_environment(client, env):
    responses = await asyncio.gather(*(run(client, env, f"sleep 0.2; echo {i}") for i in range(8)))
    assert sorted(r.json()["output"] for r in responses) == sorted(f"{i}\n" for i in range(8))


async def test_container_gone_is_a_502(client, env, service):
    proc = await asyncio.create_subprocess_exec("docker", "rm", "-f", f"taskenv-{env.id}")
    await proc.wait()
    response = await run(client, env, "true")
    assert response.status_code == 502
    assert response.json()["type"] == "bad_gateway_error"
    assert response.json()["detail"] == "container_gone: container removed outside taskenv"
    # The environment is failed with that reason, answers the same from then on, and tears down.
    status = (await client.get(f"{env.url}/status")).json()
    assert status["state"] == "failed" and status["error"] == response.json()["detail"]
    again = await run(client, env, "true")
    assert again.status_code == 502 and again.json()["detail"] == response.json()["detail"]
    assert (await client.delete(env.url)).status_code == 204
    assert (await client.get(f"{env.url}/status")).json()["state"] == "torn_down"


async def test_lost_worker_still_answers_by_the_deadline(client, env, service):
    import redis.asyncio as aioredis

    from taskenv.shared import keys

    # Point the environment at a host no worker serves: the job is never picked up.
    redis = aioredis.Redis.from_url(service.redis_url, decode_responses=True)
    await redis.hset(keys.environment(env.id), "host", "nobody-serves-this")
    started = time.monotonic()
    response = await run(client, env, "echo never", timeout_sec=1)
    elapsed = time.monotonic() - started
    await redis.hset(keys.environment(env.id), "host", service.queue)
    await redis.aclose()
    assert response.status_code == 504
    assert response.json()["type"] == "timeout_error"
    assert elapsed < 3.0


async def test_result_survives_a_lost_subscription(client, env, service):
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(service.redis_url)
    started = time.monotonic()
    pending = asyncio.create_task(run(client, env, "sleep 1; echo done", timeout_sec=10))
    await until(lambda: commands_in_flight(service.redis_url, env.id) == 1, "the command admitted")
    # Cut every pub/sub connection: the API's result subscription among them.
    assert await redis.client_kill_filter(_type="pubsub") >= 1
    await redis.aclose()
    response = await pending
    assert response.status_code == 200
    assert response.json() == {"exit_code": 0, "output": "done\n"}
    # Delivered over the new subscription, not by the last-resort read at the 10 s deadline.
    assert time.monotonic() - started < 5


async def test_too_many_commands_in_one_environment_get_429(client, env):
    # TASKENV_MAX_EXECS_PER_ENV's default: 8.
    responses = await asyncio.gather(*(run(client, env, "sleep 1", timeout_sec=10) for _ in range(12)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 8 and codes.count(429) == 4, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["type"] == "rate_limit_error"
    assert refused.headers["Retry-After"] == "1"
    # Slots come back when commands end.
    assert (await run(client, env, "echo again")).json()["output"] == "again\n"


async def test_a_command_frees_its_slot_with_its_answer(client, env, service):
    import redis.asyncio as aioredis

    from taskenv.shared import keys

    redis = aioredis.Redis.from_url(service.redis_url)
    try:
        # More commands in a row than the environment has slots: each frees its own.
        for _ in range(10):
            response = await run(client, env, "true", timeout_sec=30)
            assert response.status_code == 200, response.text
        # The worker frees the slot in the same round trip as the answer: none is held, well
        # before any slot's own expiry at its command's deadline.
        assert await redis.zcard(keys.env_commands(env.id)) == 0
    finally:
        await redis.aclose()
