"""The compose policy: every key that would give a task's service more than a sandbox has is
refused with the service and the key named; honoured and ignored keys pass."""

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_compose import (
    ComposeBuild,
    DependencyCycle,
    container_ports,
    dependency_batches,
    policy_issues,
    port_clash_issues,
    service_plan,
    services_of,
)
from taskenv.shared.task_validation import TaskInvalid, validate

FILES = TaskFiles(files={"web/Dockerfile": b"FROM scratch\n"})


def refused(service: dict, **top: object) -> list[str]:
    return [str(issue) for issue in policy_issues({"services": {"web": service}, **top}, FILES)]


@pytest.mark.parametrize(
    ("service", "named"),
    [
        ({"privileged": True}, "'privileged'"),
        ({"privileged": "true"}, "'privileged'"),
        ({"cap_add": ["SYS_ADMIN"]}, "'cap_add: SYS_ADMIN'"),
        ({"cap_add": ["CAP_NET_ADMIN"]}, "'cap_add: NET_ADMIN'"),
        ({"cap_add": ["ALL"]}, "'cap_add: ALL'"),
        ({"devices": ["/dev/kvm:/dev/kvm"]}, "'devices'"),
        ({"device_cgroup_rules": ["c 1:3 mr"]}, "'device_cgroup_rules'"),
        ({"gpus": "all"}, "'gpus'"),
        ({"network_mode": "host"}, "'network_mode: host'"),
        ({"network_mode": "container:abc"}, "'network_mode: container:abc'"),
        ({"pid": "host"}, "'pid: host'"),
        ({"ipc": "host"}, "'ipc: host'"),
        ({"userns_mode": "host"}, "'userns_mode: host'"),
        ({"uts": "host"}, "'uts: host'"),
        ({"cgroup": "host"}, "'cgroup: host'"),
        ({"cgroup_parent": "/x"}, "'cgroup_parent'"),
        ({"sysctls": {"net.ipv4.ip_forward": 1}}, "'sysctls'"),
        ({"security_opt": ["seccomp=unconfined"]}, "'security_opt: seccomp=unconfined'"),
        ({"security_opt": ["apparmor:unconfined"]}, "'security_opt: apparmor:unconfined'"),
        ({"security_opt": ["label=disable"]}, "'security_opt: label=disable'"),
        ({"security_opt": ["no-new-privileges=false"]}, "'security_opt: no-new-privileges=false'"),
        ({"security_opt": ["systempaths=unconfined"]}, "'security_opt: systempaths=unconfined'"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "the Docker socket"),
        ({"volumes": ["./run/docker.sock:/x"]}, "the Docker socket"),
        ({"volumes": ["/etc:/host-etc:ro"]}, "'volumes: /etc:/host-etc:ro'"),
        ({"volumes": ["../outside:/data"]}, "outside the task directory"),
        ({"volumes": ["~/.ssh:/root/.ssh"]}, "outside the task directory"),
        ({"volumes": ["${HOME}:/h"]}, "outside the task directory"),
        ({"volumes": [{"type": "bind", "source": "/", "target": "/host"}]}, "outside the task directory"),
        ({"volumes": [{"type": "npipe", "source": "x", "target": "y"}]}, "a host named pipe"),
        ({"volumes_from": ["other"]}, "'volumes_from'"),
        ({"runtime": "runc"}, "'runtime'"),
        ({"oom_kill_disable": True}, "'oom_kill_disable'"),
        ({"env_file": "/etc/environment"}, "'env_file: /etc/environment'"),
        ({"extends": {"file": "../base.yaml", "service": "x"}}, "'extends'"),
        ({"build": {"context": "web", "network": "host"}}, "'build.network: host'"),
        ({"build": {"context": "web", "privileged": True}}, "'build.privileged'"),
        ({"build": {"context": "web", "ssh": ["default"]}}, "'build.ssh'"),
        ({"build": {"context": "web", "secrets": ["s"]}}, "'build.secrets'"),
    ],
)
def test_refused_keys_are_named(service, named):
    found = refused(service)
    assert len(found) == 1 and "service 'web'" in found[0] and named in found[0], found


@pytest.mark.parametrize(
    "top",
    [
        {"volumes": {"data": {"driver_opts": {"type": "none", "o": "bind", "device": "/"}}}},
        {"volumes": {"data": {"external": True}}},
        {"secrets": {"s": {"file": "/etc/shadow"}}},
        {"secrets": {"s": {"environment": "AWS_SECRET_ACCESS_KEY"}}},
        {"configs": {"c": {"file": "../x"}}},
        {"include": ["../other.yaml"]},
    ],
)
def test_refused_top_level_keys(top):
    assert len(refused({"image": "x"}, **top)) == 1


def test_honoured_and_ignored_keys_pass():
    service = {
        "build": {"context": "web", "dockerfile": "Dockerfile", "args": ["A=1", "B=two"], "target": "final"},
        "image": "lab/web:1",
        "ports": ["127.0.0.1:8080:8080/tcp", {"target": 9000, "published": 9000}, 7000, "3000-3005"],
        "cap_add": ["NET_BIND_SERVICE", "cap_chown"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "volumes": ["data:/data", "./web:/srv:ro", "/anonymous", {"type": "tmpfs", "target": "/run"}],
        "env_file": "web/.env",
        "network_mode": "none",
        "networks": ["default"],
        "restart": "always",
        "healthcheck": {"test": ["CMD", "true"]},
        "deploy": {"resources": {"limits": {"memory": "1g"}}},
    }
    assert refused(service, volumes={"data": {}}, secrets={"s": {"file": "./secret.txt"}}) == []
    plan = service_plan("web", service)
    assert plan.build == ComposeBuild(
        context="web", dockerfile="Dockerfile", args={"A": "1", "B": "two"}, target="final"
    )
    assert plan.ports == [7000, 8080, 9000]
    assert container_ports(service)[1] == ["3000-3005"]


def test_a_service_that_is_not_a_mapping_is_refused():
    assert "must be a mapping" in str(policy_issues({"services": {"web": ["x"]}}, FILES)[0])


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["build", "image", "ports", "volumes", "cap_add", "security_opt", "privileged", "network_mode",
     "env_file", "pid", "devices", "context", "dockerfile", "args", "target", "services", "x"]
)  # fmt: skip
_services = st.dictionaries(_keys, _values, max_size=6)


@given(st.dictionaries(st.text(max_size=8), _services | _values, max_size=3), _values)
def test_any_compose_and_manifest_give_issues_never_an_exception(services, ports):
    compose = {"services": services, "volumes": services, "secrets": services}
    raw = {
        "name": "x",
        "version": "1.0.0",
        "instruction": "i",
        "verification": {"script": "v"},
        "ports": ports,
    }
    files = TaskFiles(
        files={
            "task.yaml": yaml.safe_dump(raw).encode(),
            "docker-compose.yaml": yaml.safe_dump(compose).encode(),
        }
    )
    try:
        validate(files)
    except TaskInvalid as invalid:
        assert all(isinstance(issue.message, str) for issue in invalid.issues)
    for name, service in services_of(compose).items():
        if isinstance(service, dict):
            service_plan(str(name), service)


@pytest.mark.parametrize(
    ("ports_a", "ports_b", "clash"),
    [
        (["8080"], ["8080"], "8080/tcp"),
        (["8080:8080"], ["127.0.0.1:8080:8080"], "8080/tcp"),
        ([8080], ["127.0.0.1::8080"], "8080/tcp"),
        (["80"], [{"target": 80}], "80/tcp"),
        (["9000:9000"], [{"target": 9000, "published": "9000"}], "9000/tcp"),
        (["8000-8002:8000-8002"], ["8001"], "8001/tcp"),
        (["53/udp"], ["53:53/udp"], "53/udp"),
    ],
)
def test_two_services_publishing_one_port_are_refused_naming_both(ports_a, ports_b, clash):
    compose = {"services": {"a": {"image": "x", "ports": ports_a}, "b": {"image": "x", "ports": ports_b}}}
    found = [str(issue) for issue in policy_issues(compose, FILES)]
    assert len(found) == 1 and "'a' and 'b'" in found[0] and f"port {clash}" in found[0], found


@pytest.mark.parametrize(
    ("ports_a", "ports_b"),
    [(["8080:8080"], ["8081:8081"]), (["53/udp"], ["53/tcp"]), (["80"], ["81"]), (["x"], ["x"])],
)
def test_distinct_published_ports_pass(ports_a, ports_b):
    compose = {"services": {"a": {"image": "x", "ports": ports_a}, "b": {"image": "x", "ports": ports_b}}}
    assert port_clash_issues(compose) == []


@pytest.mark.parametrize(
    "entry", ["8080:80", "127.0.0.1:8080:80/tcp", {"target": 80, "published": 8080}, "8000-8001:9000-9001"]
)
def test_a_port_published_under_another_number_is_refused(entry):
    """Nothing maps ports on a shared loopback: `localhost:8080` would reach nothing."""
    compose = {"services": {"web": {"image": "x", "ports": [entry]}}}
    found = [str(issue) for issue in policy_issues(compose, FILES)]
    assert len(found) == 1 and "service 'web' publishes port" in found[0], found
    assert "must listen on the port it publishes" in found[0]


def test_depends_on_an_unknown_service_is_refused():
    compose = {"services": {"web": {"image": "x", "depends_on": ["db"]}}}
    found = [str(issue) for issue in policy_issues(compose, FILES)]
    assert found == ["compose: service 'web': depends_on names an unknown service 'db'"]


@pytest.mark.parametrize(
    "services",
    [
        {"a": {"depends_on": ["a"]}},
        {"a": {"depends_on": ["b"]}, "b": {"depends_on": {"a": {"condition": "service_started"}}}},
    ],
)
def test_depends_on_cycles_are_refused(services):
    found = [str(issue) for issue in policy_issues({"services": services}, FILES)]
    assert len(found) == 1 and "depends_on has a cycle" in found[0] and "'a'" in found[0], found


def test_dependency_batches_start_dependencies_first():
    graph = {"web": ["db", "cache"], "db": [], "cache": [], "seed": ["db"], "proxy": ["web"]}
    assert dependency_batches(graph) == [["cache", "db"], ["seed", "web"], ["proxy"]]
    with pytest.raises(DependencyCycle) as caught:
        dependency_batches({"a": ["b"], "b": ["a"], "c": []})
    assert caught.value.members == ["a", "b"]
