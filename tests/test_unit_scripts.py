"""Every Redis script: declared names, Lua that compiles (lupa, as Redis's Lua 5.1 would), and
one run each against fakeredis; the interface refuses a call that leaves a name out."""

import fakeredis
import pytest
from arq.constants import in_progress_key_prefix
from lupa import lua51

from taskenv.shared import keys, scripts
from taskenv.shared.enqueue import Wake, enqueue
from taskenv.shared.models import EnvironmentState
from taskenv.shared.redis_script import Script

_NAMES = [script.name for script in scripts.ALL]


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


def test_names_are_unique() -> None:
    assert len(set(_NAMES)) == len(_NAMES)


@pytest.mark.parametrize("script", scripts.ALL, ids=_NAMES)
def test_compiles(script: Script) -> None:
    # Compiled as a function body, as Redis does: a syntax error raises here.
    lua51.LuaRuntime().execute(f"local compiled = function() {script.source} end")


@pytest.mark.parametrize("script", scripts.ALL, ids=_NAMES)
def test_binds_every_name_once_from_its_declaration(script: Script) -> None:
    head = script.source.splitlines()
    for i, name in enumerate(script.keys, 1):
        assert f"local {name} = KEYS[{i}]" in head
    for i, name in enumerate(script.args, 1):
        assert f"local {name} = ARGV[{i}]" in head
    # Nothing below the generated bindings reads KEYS or ARGV by position.
    assert "KEYS[" not in script.body and "ARGV[" not in script.body


@pytest.mark.parametrize("script", scripts.ALL, ids=_NAMES)
def test_states_come_from_the_enum(script: Script) -> None:
    lua = "\n".join([*script.library, script.body])
    for state in EnvironmentState:
        assert f"'{state.value}'" not in lua, f"{script.name} spells {state.value!r} by hand"
    if script in scripts.ENVIRONMENT_SCRIPTS:
        assert f"local READY = '{EnvironmentState.READY.value}'" in script.source


@pytest.mark.parametrize("script", scripts.ALL, ids=_NAMES)
async def test_runs(redis: fakeredis.FakeAsyncRedis, script: Script) -> None:
    named = {name: f"test:{name}" for name in script.keys} | {name: "1" for name in script.args}
    rest = ("state", EnvironmentState.READY) if script.rest else ()
    await script.run(redis, rest=rest, **named)  # raises on a Lua error


async def test_a_missing_or_unknown_name_is_refused(redis: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(TypeError, match="missing \\['proposed'\\]"):
        await scripts.JOIN_DEPLOYMENT.run(redis, deployment="d")
    with pytest.raises(TypeError, match="unknown \\['extra'\\]"):
        await scripts.JOIN_DEPLOYMENT.run(redis, deployment="d", proposed="x", extra="y")


def test_a_name_bound_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="bound twice"):
        Script("clash", ("environment",), ("environment",), "return 1")
    with pytest.raises(ValueError, match="bound twice"):
        Script("clash", (), ("READY",), "return 1", enums=(EnvironmentState,))


async def test_registered_once_per_client(redis: fakeredis.FakeAsyncRedis) -> None:
    script = scripts.JOIN_DEPLOYMENT
    assert await script.run(redis, deployment="d", proposed="one") == "one"
    first = script._registered[redis]
    assert await script.run(redis, deployment="d", proposed="two") == "one"
    assert script._registered[redis] is first
    # A server that lost its scripts (restarted, flushed) gets the script again.
    await redis.script_flush()
    assert await script.run(redis, deployment="d", proposed="three") == "one"


async def test_in_a_pipeline(redis: fakeredis.FakeAsyncRedis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        await scripts.JOIN_DEPLOYMENT.run(redis, pipeline=pipe, deployment="d", proposed="p")
        pipe.get("d")
        assert await pipe.execute() == ["p", "p"]


async def test_an_unannounced_job_is_left_for_the_workers_pass(redis: fakeredis.FakeAsyncRedis) -> None:
    job = {"function": "provision", "payload": {"env_id": "e"}, "queue": "provision", "expires_sec": 5}
    for n in range(3):  # no bound: past any depth
        outcome = await enqueue(redis, **job, job_id=f"j{n}", queue_bound=0, announce=False)
        assert outcome == scripts.AdmissionOutcome.QUEUED
    assert await redis.zcard(keys.arq_queue("provision")) == 3
    assert await redis.llen(keys.wake("provision")) == 0  # no wake: no worker claimed it
    assert not await redis.exists(in_progress_key_prefix + "j0")
    # Announced, it is claimed for the worker that pops its wake; a bound refuses past it.
    assert await enqueue(redis, **job, job_id="j3", queue_bound=5) == scripts.AdmissionOutcome.QUEUED
    (entry,) = await redis.execute_command("LRANGE", keys.wake("provision"), 0, -1, NEVER_DECODE=True)
    assert Wake.decode(entry).job_id == "j3"
    assert await redis.exists(in_progress_key_prefix + "j3")
    assert await enqueue(redis, **job, job_id="j4", queue_bound=4) == scripts.AdmissionOutcome.QUEUE_FULL
