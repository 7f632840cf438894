"""The raw side of a pushed task's provision (bench/task_side.py) against a fake engine: the
sandbox first with the task directory mounted read-only, the named volumes, then the services
in dependency order in the sandbox's namespace, each waited for; everything labelled as the
bench's (never as taskenv's), and removed whole by that label."""

from typing import Any

import pytest

from taskenv.bench import provision_phase, task_side
from taskenv.shared import task_services
from taskenv.shared.settings import Settings
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.tasks import TaskSpec

COMPOSE = {
    "services": {
        "web": {
            "image": "taskenv/default:1",
            "healthcheck": {"test": ["CMD", "true"], "interval": "1s"},
            "volumes": ["data:/data"],
        },
        "api": {"image": "taskenv/default:1", "depends_on": {"web": {"condition": "service_healthy"}}},
    },
    "volumes": {"data": {}},
}


class Container:
    def __init__(self, engine: "Engine", name: str) -> None:
        self.engine, self.name, self.id = engine, name, f"id-{name}"

    async def start(self) -> None:
        self.engine.log.append(("start", self.name))

    async def show(self) -> dict[str, Any]:
        self.engine.log.append(("show", self.name))
        health = {"Status": "healthy"} if self.name.endswith("-svc-web") else None
        return {"State": {"Running": True, "Health": health}}


class Containers:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    async def create(self, config: dict[str, Any], *, name: str) -> Container:
        self.engine.log.append(("create", name))
        self.engine.configs[name] = config
        return Container(self.engine, name)

    def container(self, name: str) -> Container:
        return Container(self.engine, name)


class Volumes:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    async def create(self, config: dict[str, Any]) -> None:
        self.engine.log.append(("volume", config["Name"]))
        self.engine.volume_labels.append(config["Labels"])


class Engine:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.configs: dict[str, dict[str, Any]] = {}
        self.volume_labels: list[dict[str, str]] = []
        self.containers = Containers(self)
        self.volumes = Volumes(self)


def pod() -> task_side.TaskPod:
    plans = task_services.plans(COMPOSE, TaskFiles(), images={}, settings=Settings())
    return task_side.TaskPod(
        TaskSpec(name="bench"), "taskenv-task-0123456789abcdef", "taskenv-runner-x", plans
    )


async def test_the_sandbox_then_the_volumes_then_the_services_in_order():
    engine = Engine()
    name = task_side.new_name()
    await task_side.make(engine, pod(), name, poll_sec=0.001)  # type: ignore[arg-type]
    made = [what for kind, what in engine.log if kind in ("create", "volume")]
    web, api = (f"taskenv-{name}-svc-{service}" for service in ("web", "api"))
    assert made == [name, f"taskenv-{name}-vol-data", web, api]
    # api waited for web to be healthy before it was created.
    assert engine.log.index(("show", web)) < engine.log.index(("create", api))

    sandbox = engine.configs[name]["HostConfig"]
    task_mount = next(m for m in sandbox["Mounts"] if m["Target"] == "/home/user/task")
    assert task_mount["Source"] == "taskenv-task-0123456789abcdef" and task_mount["ReadOnly"]
    assert any(m["Source"] == "taskenv-runner-x" for m in sandbox["Mounts"])
    assert sandbox["NetworkMode"] == "none"
    for service in (web, api):
        assert engine.configs[service]["HostConfig"]["NetworkMode"] == f"container:id-{name}"
    for labels in [c["Labels"] for c in engine.configs.values()] + engine.volume_labels:
        assert labels["taskenv.bench-pod"] == name and "taskenv.managed" not in labels


def test_only_a_task_named_with_its_org_is_measured_as_a_pod():
    assert task_side.is_pushed("acme/web-lab") and task_side.is_pushed("acme/web-lab@1.0.0")
    assert not task_side.is_pushed("default") and not task_side.is_pushed("web-lab")


@pytest.mark.parametrize(
    ("name", "whole"), [("taskenv-bench-pod-ab12", True), ("taskenv-bench-raw-ab12", False)]
)
async def test_a_pod_is_removed_whole_and_a_raw_container_alone(monkeypatch, name, whole):
    removed: list[tuple[str, str]] = []

    async def pod_removed(docker: object, what: str) -> None:
        removed.append(("pod", what))

    async def container_removed(docker: object, what: str) -> None:
        removed.append(("container", what))

    monkeypatch.setattr(task_side, "remove", pod_removed)
    monkeypatch.setattr(provision_phase.raw_side, "remove_container", container_removed)
    await provision_phase.remove_raw(object(), name)  # type: ignore[arg-type]
    assert removed == [("pod" if whole else "container", name)]
