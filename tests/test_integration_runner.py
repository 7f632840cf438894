"""The in-sandbox runner against sandboxes that attack it, end to end over HTTP on a stack of
its own with TASKENV_EXEC_BACKEND=runner (runner/PROTOCOL.md), once per transport: frames over a
unix socket (as `taskenv up` runs) and over a `docker exec`'s stdio.

An unprivileged sandbox cannot touch its runner at all (it runs as root there). A sandbox whose
task runs as root can kill, stop, or write into its runner: each attack gets a clear answer by
its deadline (502 `runner_lost`, a 504, or the status it forged for its own caller), the
worker and the host are untouched, and the next command, and the next environment, work.
"""

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import ROOT_TASK, Env
from tests.helpers import api_client, provision
from tests.helpers import execute as run
from tests.stack import Stack, running

pytestmark = pytest.mark.integration

# The API's wait past a deadline (TASKENV_RESULT_GRACE_SEC) plus this machine's own slowness.
LATE_SEC = 1.5


@pytest.fixture(scope="module", params=["socket", "exec"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("runner")
    settings = {"TASKENV_EXEC_BACKEND": "runner", "TASKENV_RUNNER_TRANSPORT": request.param}
    with running(home, settings, rooted=ROOT_TASK) as started:
        yield started


def needs_stdio(stack: Stack) -> None:
    """Attacks that write into the runner's stdout: over the socket transport it has none to
    write into (tests/test_integration_runner_socket.py shows /proc cannot open its socket)."""
    if stack.env["TASKENV_RUNNER_TRANSPORT"] == "socket":
        pytest.skip("the runner's stream is a socket here")


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack.key()) as client:
        yield client


async def assert_fine(http: httpx.AsyncClient, stack: Stack, env: Env) -> None:
    """The environment answers again, the worker lives, and a new environment works."""
    assert (await run(http, env, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}
    assert stack.worker is not None and stack.worker.poll() is None
    fresh = await provision(http, stack)
    assert (await run(http, fresh, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}
    await http.delete(fresh.url)


@pytest.fixture
async def env(http: httpx.AsyncClient, stack: Stack) -> AsyncIterator[Env]:
    ready = await provision(http, stack)
    yield ready
    await http.delete(ready.url)


@pytest.fixture
async def rooted(http: httpx.AsyncClient, stack: Stack) -> AsyncIterator[Env]:
    ready = await provision(http, stack, task_ref="rooted")
    yield ready
    await http.delete(ready.url)


async def test_commands_run_through_the_runner_over_its_transport(http, stack, env):
    answer = (await run(http, env, "ps -o user,args")).json()
    connected = "/.taskenv/taskenv-runner --connect /.taskenv-link/s-" in answer["output"]
    assert "/.taskenv/taskenv-runner" in answer["output"], answer
    assert connected == (stack.env["TASKENV_RUNNER_TRANSPORT"] == "socket"), answer


async def test_an_unprivileged_sandbox_cannot_touch_its_runner(http, stack, env):
    for attack in (
        "kill -9 $PPID",
        "kill -STOP $PPID",
        "printf x > /proc/$PPID/fd/1",
        "cat /proc/$PPID/environ",
        "ln -sf /var/run/docker.sock /.taskenv/taskenv-runner",
    ):
        answer = (await run(http, env, f"{attack} 2>/dev/null; echo rc=$?")).json()
        assert answer["exit_code"] == 0 and answer["output"] != "rc=0\n", (attack, answer)
    # Its own processes it can still sweep: the runner stays.
    assert (await run(http, env, "sleep 99 & kill -9 -1; echo swept")).json()["output"] == "swept\n"
    await assert_fine(http, stack, env)


async def test_a_root_sandbox_that_kills_its_runner_gets_a_prompt_502(http, stack, rooted):
    started = time.monotonic()
    response = await run(http, rooted, "echo before; sleep 0.2; kill -9 $PPID; sleep 30", timeout_sec=20)
    assert response.status_code == 502, response.text
    assert response.json()["detail"].startswith("runner_lost: "), response.text
    assert time.monotonic() - started < 5
    await assert_fine(http, stack, rooted)


async def test_a_root_sandbox_can_forge_only_its_own_callers_answer(http, stack):
    needs_stdio(stack)
    rooted = await provision(http, stack, task_ref="rooted")  # fresh: its first command is id 1
    exit_42 = r"\000\000\000\017\203\000\000\000\001\000\052\000\000\000\000\000\000\000\000"
    started = time.monotonic()
    response = await run(http, rooted, f"printf '{exit_42}' > /proc/$PPID/fd/1; sleep 3")
    assert response.json() == {"exit_code": 42, "output": ""}, response.text
    assert time.monotonic() - started < 2.5
    await assert_fine(http, stack, rooted)
    await http.delete(rooted.url)


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("echo garbage > /proc/$PPID/fd/1", "out of bounds"),
        # Valid output frames for its own command, past its 1 MiB limit.
        (
            r"i=0; while [ $i -lt 64 ]; do printf '\000\000\200\005\202\000\000\000\001';"
            r" head -c 32768 /dev/zero; i=$((i+1)); done > /proc/$PPID/fd/1",
            "more output than the limit",
        ),
        # Frames for commands that never were.
        (r"printf '\000\000\000\006\202\000\001\000\000x' > /proc/$PPID/fd/1", "never started"),
    ],
)
async def test_a_root_sandbox_writing_into_its_runners_stream_gets_a_prompt_502(http, stack, attack, reason):
    needs_stdio(stack)
    rooted = await provision(http, stack, task_ref="rooted")
    started = time.monotonic()
    response = await run(http, rooted, f"{attack}; sleep 30", timeout_sec=20)
    assert response.status_code == 502 and reason in response.json()["detail"], response.text
    assert time.monotonic() - started < 5
    await assert_fine(http, stack, rooted)
    await http.delete(rooted.url)


async def test_a_stopped_runner_still_answers_504_by_the_deadline(http, stack, rooted):
    started = time.monotonic()
    response = await run(http, rooted, "kill -STOP $PPID; sleep 30", timeout_sec=2)
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 2 + LATE_SEC
    await assert_fine(http, stack, rooted)


async def test_the_runner_volume_is_read_only_even_for_root(http, rooted):
    answer = (
        await run(http, rooted, "touch /.taskenv/x; cp /bin/busybox /.taskenv/taskenv-runner; echo rc=$?")
    ).json()
    assert answer["output"].count("Read-only file system") == 2 and answer["output"].endswith("rc=1\n"), (
        answer
    )
