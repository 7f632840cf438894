"""A real taskenv for integration tests: a private redis-server, a worker and the API as child
processes (exactly as operators run them), against the machine's real Docker engine."""

import os
import subprocess
import sys
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest
from hypothesis import settings

from taskenv.worker.docker import connect, disconnect
from tests.harness import (
    CLEANUP_GRACE_SEC,
    SDK,
    create_key,
    dn_environment,
    docker_ready,
    free_port,
    remove_containers,
    settings_env,
    spawn,
    start_redis,
    stop,
    tasks_dir,
    wait_api,
)
from tests.helpers import Env, api_client, envs_url, provision, wait_for_state

# Names the test modules import from here.
__all__ = ["Env", "Service", "provision", "wait_for_state"]

# Hundreds of Python processes start in a run (APIs, workers, CLIs, the SDK's `dn`), and each
# compiles every module it imports whose bytecode is not cached: a fifth of a second of CPU for
# an API or worker, more for `dn`. Where PYTHONDONTWRITEBYTECODE asks for no bytecode beside
# the sources, the suite (and every process it starts) caches it in a folder of its own.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taskenv" / "pycache"
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(cache))
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = False

BROKEN_TASK = '[[task]]\nname = "broken"\nimage = "taskenv/no-such-image:0"\n'
# The default image run as root, with a small /tmp: per-task user and tmpfs size.
ROOT_TASK = '[[task]]\nname = "rooted"\nuser = "0:0"\n[task.resources]\ntmp_mb = 16\n'


# Hypothesis budgets. `fast`, the default, keeps the fast loop fast; `thorough`
# (TASKENV_HYPOTHESIS=thorough) draws twenty times as many examples, for a run that looks harder
# (before a release, after changing a parser). No deadline in either: the machine is shared, and
# a slow example is no bug. A test names its own budget only when it is a cost (a real service).
settings.register_profile("fast", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("TASKENV_HYPOTHESIS", "fast"))


@dataclass
class Service:
    base_url: str
    redis_url: str
    queue: str
    key: str
    other_key: str
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    env: dict[str, str]

    def envs_url(self, org: str = "acme", workspace: str = "main") -> str:
        return envs_url(self.base_url, org, workspace)


# A test module's name says its tier: these need real processes (Redis, taskenv's API and
# worker, the Docker engine), so every test in them is marked `integration`, and the fast loop
# (-m "not integration") does not even import them (their imports are a third of its time).
INTEGRATION_MODULES = ("test_integration_", "test_compat_", "test_fuzz_", "test_bench_integration")
FAST_LOOP = "not integration"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    fast_loop = config.getoption("markexpr").strip() == FAST_LOOP
    return True if fast_loop and collection_path.name.startswith(INTEGRATION_MODULES) else None


# pytest-xdist's loadscope keeps a module's tests on one worker, so that a module-scoped fixture
# (a stack, the fuzz target) starts once. In these modules every test starts its own stack or
# cluster and shares nothing with the others: each is a unit of its own, so that the long ones
# (minutes of faults and lost hosts together) spread over the workers instead of holding one.
# loadscope hands out the units with the most tests first, which would leave these, one test
# each but the longest, to the end: they go first.
STANDALONE_TESTS = (
    "test_integration_faults.py",
    "test_integration_hosts.py",
    "test_integration_ownership.py",
)


# Modules whose tests share one stack or fixture and take a minute or more together (a real
# compose build, the `dn` CLI's processes, the fuzz): they go first too, so that none of them is
# the last unit left running while the other workers are idle.
LONG_MODULES = (
    "test_integration_compose.py",
    "test_compat_tasks.py",
    "test_compat_sdk.py",
    "test_compat_task_environments.py",
    "test_compat_openapi.py",
    "test_fuzz_openapi.py",
)


def _standalone(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith(STANDALONE_TESTS)


class _StandaloneFirst(OrderedDict[str, Any]):
    def __setitem__(self, scope: str, tests: Any) -> None:
        super().__setitem__(scope, tests)
        if _standalone(scope) or scope.endswith(LONG_MODULES):
            self.move_to_end(scope, last=False)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.workqueue = _StandaloneFirst()

        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _standalone(nodeid) else super()._split_scope(nodeid)

    return Scheduling(config, log) if config.getoption("dist") == "loadscope" else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith(INTEGRATION_MODULES):
            item.add_marker(pytest.mark.integration)
    _unique_ids(items)


def _unique_ids(items: list[pytest.Item]) -> None:
    """schemathesis names each operation's test `test_x[GET /path]` but gives them all the node
    id `test_x`; pytest-xdist schedules by node id, so it ran one operation of the fuzz. Each
    gets its name in its id, as pytest 9 builds a child's id (Node has no public setter)."""
    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1 and item.parent is not None:
            item._id = item.parent.id.child(item.name)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service per session (per pytest-xdist worker) for the tests that share it."""
    docker_ready()
    home = tmp_path_factory.mktemp("taskenv")
    tasks = tasks_dir(home, broken=BROKEN_TASK, rooted=ROOT_TASK)
    redis_proc = start_redis(home, "--save", "")
    queue = f"test-{uuid.uuid4().hex[:8]}"  # this test service's own "host": its containers, its reaper
    port = free_port()
    env = settings_env(home / "redis.sock", port, tasks, queue, TASKENV_MAX_LIFETIME_SEC="3600")
    log = open(home / "service.log", "wb")  # noqa: SIM115
    worker = spawn("worker", env, log)
    api = spawn("api", env, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_api(base_url, api)
        keys = [create_key(env, org) for org in ("acme", "other")]
        yield Service(base_url, env["TASKENV_REDIS_URL"], queue, keys[0], keys[1], api, worker, env)
    finally:
        stop(api, worker, timeout=CLEANUP_GRACE_SEC)
        stop(redis_proc)
        log.close()
        remove_containers(f"taskenv.host={queue}")
        print(f"\nservice log: {home / 'service.log'}")


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(service.key) as http:
        yield http


@pytest.fixture
async def env(client: httpx.AsyncClient, service: Service) -> AsyncIterator[Env]:
    ready = await provision(client, service)
    yield ready
    await client.delete(ready.url)


# Several "hosts" (worker processes with their own host ids) for one test: tests/cluster.py.
from tests.cluster import cluster_api, cluster_factory  # noqa: E402, F401


# Dreadnode's `dn` CLI, for the tests that drive it (tests/test_compat_tasks.py and others).
@pytest.fixture(scope="session")
def dn_bin() -> Path:
    if not (SDK / "bin" / "dn").exists():
        pytest.fail("the dreadnode SDK is missing: run scripts/sdk-venv.sh (scripts/test.sh does)")
    return SDK / "bin"


@pytest.fixture
def dn_env(tmp_path: Path) -> dict[str, str]:
    """A HOME of its own and proxies that lead nowhere: nothing `dn` does leaves loopback."""
    home = tmp_path / "home"
    home.mkdir()
    return dn_environment(home)


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    """A client of the machine's Docker engine, as the worker makes it."""
    client = connect()
    yield client
    await disconnect(client)
