"""The task registry over HTTP against a live stack (real Redis, real worker, real Docker):
hostile archives and every refused compose key get their 4xx with nothing stored, and twenty
concurrent environments of an unbuilt task give one build, each showing `building` first."""

import asyncio
import contextlib
import gzip
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
import yaml

from taskenv.shared.task_archive import TaskFiles, digest, pack
from taskenv.shared.task_oci import MEDIA_CONFIG, MEDIA_LAYER_TAR_GZ, MEDIA_OCI_MANIFEST
from taskenv.shared.task_push import config_blob
from tests.harness import create_key
from tests.helpers import async_http

pytestmark = pytest.mark.integration

FLAG = {"method": "flag", "path": "/tmp/flag", "value": "FLAG{x}"}
# Environments created at once of a task not yet built: twice a worker's provision slots
# (TASKENV_WORKER_MAX_PROVISIONS, 4), so some wait for a slot while the one build runs.
SHARING_ONE_BUILD = 8


def task_yaml(name: str, **extra: object) -> dict:
    return {"name": name, "version": "1.0.0", "instruction": "Solve it.", "verification": FLAG, **extra}


def task_files(
    name: str, compose: dict | None = None, dockerfile: bytes = b"FROM taskenv/default:1\n"
) -> TaskFiles:
    raw = task_yaml(name)
    files = {"task.yaml": yaml.safe_dump(raw).encode(), "web/Dockerfile": dockerfile}
    files["docker-compose.yaml"] = yaml.safe_dump(
        compose or {"services": {"web": {"build": "./web"}}}
    ).encode()
    return TaskFiles(files=files)


class Registry:
    """Pushes as `dn task push` does: HEAD, POST an upload, PUT the blob, PUT the manifest."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, org: str, key: str) -> None:
        self.client, self.base, self.org = client, f"{base_url}/api/v1", org
        self.auth = httpx.BasicAuth("__token__", key)

    async def put_blob(self, name: str, data: bytes, blob_digest: str | None = None) -> httpx.Response:
        started = await self.client.post(f"{self.base}/{self.org}/{name}/blobs/uploads/", auth=self.auth)
        assert started.status_code == 202, started.text
        location = self.base.removesuffix("/api/v1") + started.headers["location"]
        return await self.client.put(
            location, params={"digest": blob_digest or digest(data)}, content=data, auth=self.auth
        )

    async def push(self, name: str, layer: bytes, raw: dict, reference: str = "1.0.0") -> httpx.Response:
        config = config_blob(raw)
        for data in (config, layer):
            uploaded = await self.put_blob(name, data)
            assert uploaded.status_code == 201, uploaded.text
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER_TAR_GZ, "digest": digest(layer), "size": len(layer)}],
            "annotations": {"io.dreadnode.type": "environment"},
        }
        return await self.client.put(
            f"{self.base}/{self.org}/{name}/manifests/{reference}",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": MEDIA_OCI_MANIFEST},
            auth=self.auth,
        )

    async def tasks(self) -> list[dict]:
        listed = await self.client.get(f"{self.base}/org/{self.org}/tasks", auth=self.auth)
        assert listed.status_code == 200, listed.text
        return listed.json()["tasks"]


@pytest.fixture
async def registry(service) -> AsyncIterator[Registry]:
    org = f"reg-{uuid.uuid4().hex[:8]}"
    async with async_http(timeout=httpx.Timeout(120, connect=5)) as client:
        yield Registry(client, service.base_url, org, create_key(service.env, org))


def hostile(*entries: tuple[str, int, str]) -> bytes:
    """A task archive with the valid task plus `(name, tar type, link target)` entries."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in task_files("bad-lab").files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
            if kind == tarfile.REGTYPE:
                info.size = 1
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (lambda: hostile(("/etc/cron.d/x", tarfile.REGTYPE, "")), "absolute path"),
        (lambda: hostile(("../../x", tarfile.REGTYPE, "")), "leaves the task directory"),
        (lambda: hostile(("web/link", tarfile.SYMTYPE, "../../../etc/shadow")), "link leaves"),
        (lambda: hostile(("web/hard", tarfile.LNKTYPE, "/etc/shadow")), "absolute path"),
        (lambda: hostile(("web/null", tarfile.CHRTYPE, "")), "device file"),
        (lambda: gzip.compress(b"\0" * (17 << 20)), "expands past"),
        (lambda: b"not gzip at all", "not valid gzip"),
    ],
)
async def test_hostile_archives_are_refused(registry, layer, expected):
    pushed = await registry.push("bad-lab", layer(), task_yaml("bad-lab"))
    assert pushed.status_code == 400, pushed.text
    body = pushed.json()
    assert body["type"] == "invalid_request_error" and expected in body["detail"], body
    assert await registry.tasks() == []


async def test_a_blob_over_the_limit_is_refused_unread(registry):
    uploaded = await registry.put_blob("big-lab", b"\0" * ((16 << 20) + 1))
    assert uploaded.status_code == 413, uploaded.text
    assert "TASKENV_MAX_TASK_BYTES" in uploaded.json()["detail"]


async def test_a_blob_whose_digest_lies_is_refused(registry):
    uploaded = await registry.put_blob("lab", b"data", digest(b"other"))
    assert uploaded.status_code == 400 and "do not have digest" in uploaded.json()["detail"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"privileged": True}, "'privileged'"),
        ({"cap_add": ["SYS_ADMIN"]}, "'cap_add: SYS_ADMIN'"),
        ({"devices": ["/dev/mem"]}, "'devices'"),
        ({"network_mode": "host"}, "'network_mode: host'"),
        ({"pid": "host"}, "'pid: host'"),
        ({"ipc": "host"}, "'ipc: host'"),
        ({"volumes": ["/:/host"]}, "a bind mount of a host path"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "the Docker socket"),
        ({"sysctls": ["kernel.shmmax=1"]}, "'sysctls'"),
        ({"security_opt": ["seccomp:unconfined"]}, "'security_opt: seccomp:unconfined'"),
    ],
)
async def test_refused_compose_keys_get_400_naming_them(registry, settings, named):
    files = task_files("bad-lab", {"services": {"web": {"build": "./web", **settings}}})
    pushed = await registry.push("bad-lab", pack(files), task_yaml("bad-lab"))
    assert pushed.status_code == 400, pushed.text
    assert "service 'web'" in pushed.json()["detail"] and named in pushed.json()["detail"]
    assert await registry.tasks() == []


async def test_pushing_elsewhere_needs_the_org(registry, service):
    other = Registry(registry.client, service.base_url, "someone-else", create_key(service.env, registry.org))
    started = await other.client.post(f"{other.base}/someone-else/lab/blobs/uploads/", auth=other.auth)
    assert started.status_code == 403
    anonymous = await registry.client.post(f"{registry.base}/{registry.org}/lab/blobs/uploads/")
    assert anonymous.status_code == 401


async def test_environments_of_an_unbuilt_task_share_one_build(registry, service):
    name = f"slow-{uuid.uuid4().hex[:6]}"
    files = task_files(name, dockerfile=b"FROM taskenv/default:1\nRUN sleep 2\nCOPY . /srv\n")
    files.files["task.yaml"] = yaml.safe_dump(task_yaml(name)).encode()
    pushed = await registry.push(name, pack(files), task_yaml(name))
    assert pushed.status_code == 201, pushed.text
    headers = {"X-API-Key": create_key(service.env, registry.org)}
    url = f"{service.base_url}/api/v1/org/{registry.org}/ws/main/environments"

    async def create() -> dict:
        created = await registry.client.post(url, json={"task_ref": name}, headers=headers)
        assert created.status_code == 201, created.text
        return created.json()

    created = await asyncio.gather(*(create() for _ in range(SHARING_ONE_BUILD)))
    assert {env["state"] for env in created} == {"building"}

    async def settle(env_id: str) -> list[str]:
        seen = ["building"]
        for _ in range(300):
            state = (await registry.client.get(f"{url}/{env_id}/status", headers=headers)).json()["state"]
            if state != seen[-1]:
                seen.append(state)
            if state in ("ready", "failed"):
                return seen
            await asyncio.sleep(0.2)
        return seen

    histories = await asyncio.gather(*(settle(env["id"]) for env in created))
    for history in histories:
        assert history[0] == "building" and history[-1] == "ready", history
    builds = redis.Redis.from_url(service.redis_url).get(
        f"taskenv:taskbuilds:{service.queue}:{digest(pack(files))}"
    )
    assert builds == b"1", f"{builds!r} builds"
    tags = subprocess.run(
        ["docker", "images", "--filter", "label=taskenv.image.task", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert any(tag.startswith(f"taskenv-task/{name}:web-") for tag in tags), tags
    for env in created:
        assert (await registry.client.delete(f"{url}/{env['id']}", headers=headers)).status_code == 204
    remove_images(f"taskenv.image.digest={digest(pack(files))}")


def remove_images(label: str) -> None:
    """The task images a test built: nothing else removes them (the budget is 10 GiB)."""
    ids = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label={label}"], capture_output=True, text=True, check=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rmi", "-f", *set(ids)], capture_output=True, check=True)


async def test_a_failed_build_fails_its_environments_with_the_log(registry, service):
    name = f"broken-{uuid.uuid4().hex[:6]}"
    files = task_files(name, dockerfile=b"FROM taskenv/default:1\nRUN echo compiling the lab && exit 3\n")
    assert (await registry.push(name, pack(files), task_yaml(name))).status_code == 201
    headers = {"X-API-Key": create_key(service.env, registry.org)}
    url = f"{service.base_url}/api/v1/org/{registry.org}/ws/main/environments"
    created = (await registry.client.post(url, json={"task_ref": name}, headers=headers)).json()
    assert created["state"] == "building"
    for _ in range(600):
        status = (await registry.client.get(f"{url}/{created['id']}/status", headers=headers)).json()
        if status["state"] != "building":
            break
        await asyncio.sleep(0.05)
    assert status["state"] == "failed", status
    assert (
        status["error"].startswith("task build failed: ") and "returned a non-zero code: 3" in status["error"]
    )
    logs = (await registry.client.get(f"{url}/{created['id']}/logs", headers=headers)).json()["logs"]
    assert "compiling the lab" in logs


async def _settled(registry, service, name: str) -> dict:
    """Create an environment of `name` and return its status once it has left `building`."""
    headers = {"X-API-Key": create_key(service.env, registry.org)}
    url = f"{service.base_url}/api/v1/org/{registry.org}/ws/main/environments"
    created = (await registry.client.post(url, json={"task_ref": name}, headers=headers)).json()
    for _ in range(600):
        status = (await registry.client.get(f"{url}/{created['id']}/status", headers=headers)).json()
        if status["state"] not in ("building", "provisioning"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} still {status['state']}")


async def test_an_image_the_host_lacks_is_never_pulled_and_fails_the_environment(registry, service):
    """An `image:`-only service: the host must have the image (TASKENV_PULL=never, the default);
    one it has serves at once."""
    missing = f"lacking-{uuid.uuid4().hex[:6]}"
    compose = {"services": {"web": {"image": f"taskenv/absent-{uuid.uuid4().hex[:8]}:1"}}}
    assert (
        await registry.push(missing, pack(task_files(missing, compose)), task_yaml(missing))
    ).status_code == 201
    status = await _settled(registry, service, missing)
    assert status["state"] == "failed", status
    assert status["error"].startswith("task build failed: service 'web': image 'taskenv/absent-")
    assert "TASKENV_PULL=never" in status["error"]
    present = f"present-{uuid.uuid4().hex[:6]}"
    compose = {"services": {"web": {"image": "taskenv/default:1"}}}
    assert (
        await registry.push(present, pack(task_files(present, compose)), task_yaml(present))
    ).status_code == 201
    assert (await _settled(registry, service, present))["state"] == "ready"


def run_cli(service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskenv", *args], env=service.env, capture_output=True, text=True, timeout=60
    )


def test_the_operator_cli_pushes_lists_shows_and_removes(service, tmp_path):
    org = f"cli-{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "ops-lab"
    for path, data in task_files("ops-lab").files.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(data)
    (directory / "__pycache__").mkdir()
    (directory / "__pycache__" / "x.pyc").write_bytes(b"left out, as dn leaves it out")
    pushed = run_cli(service, "task", "push", str(directory), "--org", org)
    assert pushed.returncode == 0 and pushed.stdout.startswith(f"pushed {org}/ops-lab@1.0.0"), pushed.stderr
    again = run_cli(service, "task", "push", str(directory), "--org", org)
    assert again.stdout.strip() == f"{org}/ops-lab@1.0.0 already up to date"
    listed = json.loads(run_cli(service, "task", "ls", "--org", org, "--json").stdout)
    assert [(t["name"], t["version"], t["versions"]) for t in listed] == [("ops-lab", "1.0.0", 1)]
    shown = json.loads(run_cli(service, "task", "info", "ops-lab", "--org", org, "--json").stdout)
    assert shown["oci_digest"] == digest(pack(TaskFiles(files=task_files("ops-lab").files)))
    (directory / "docker-compose.yaml").write_text(
        "services:\n  web:\n    build: ./web\n    privileged: true\n"
    )
    (directory / "task.yaml").write_text(yaml.safe_dump(task_yaml("ops-lab") | {"version": "1.0.1"}))
    refused = run_cli(service, "task", "push", str(directory), "--org", org)
    assert refused.returncode == 1 and "'privileged' is refused" in refused.stderr
    removed = run_cli(service, "task", "rm", "ops-lab@1.0.0", "--org", org)
    assert removed.returncode == 0 and removed.stdout.strip() == f"deleted {org}/ops-lab@1.0.0"
    assert run_cli(service, "task", "ls", "--org", org).stdout.strip() == "no task"
    assert run_cli(service, "task", "rm", "ops-lab", "--org", org).returncode == 1


async def test_task_images_over_the_budget_go_least_recently_used_first(service):
    from redis.asyncio import Redis

    from taskenv.shared.task_compose import ComposeBuild
    from taskenv.worker import task_build
    from taskenv.worker.docker import connect, disconnect

    deployment, host = f"lru-{uuid.uuid4().hex[:8]}", f"lru-host-{uuid.uuid4().hex[:6]}"
    labels = {
        task_build.LABEL_DEPLOYMENT: deployment,
        task_build.LABEL_HOST: host,
        task_build.LABEL_TASK: "lru",
    }
    tags = [f"taskenv-task/lru-test:{deployment}-{i}" for i in range(3)]
    docker, records = connect(), Redis.from_url(service.redis_url)
    container = None
    try:
        for i, tag in enumerate(tags):
            context = pack_context(f"FROM taskenv/default:1\nLABEL n={i}\n")
            await task_build.build_image(docker, context, "Dockerfile", ComposeBuild(), tag, labels)
        await records.zadd(f"taskenv:taskimages:{host}", {tags[0]: 1, tags[1]: 3, tags[2]: 2})
        container = await docker.containers.create(
            {"Image": tags[0], "Cmd": ["true"], "NetworkDisabled": True}
        )
        one = int((await docker.images.inspect(tags[0]))["Size"])
        removed = await task_build.prune(records, docker, host, deployment, budget_bytes=one)
        assert removed == [tags[2], tags[1]], "least recently used first; the one in use is kept"
        assert (await docker.images.inspect(tags[0]))["Id"]
        assert await records.zrange(f"taskenv:taskimages:{host}", 0, -1) == [tags[0].encode()]
    finally:
        if container is not None:
            await container.delete(force=True)
        for tag in tags:
            with contextlib.suppress(Exception):
                await docker.images.delete(tag)
        await records.aclose()
        await disconnect(docker)


def pack_context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    return buffer.getvalue()
