"""docker-compose.yaml of a task: what taskenv honours, and what it refuses at push.

A task's services run as sandboxes do (no network but a shared loopback, capabilities dropped,
no host paths). A compose key that would give a service more than that is refused, naming the
service and the key; keys taskenv does not act on are accepted and ignored. Values are never
interpolated (`${VAR}` stays literal): a path made of a variable is refused, since it could name
anything on a host.
"""

import posixpath
from typing import Any

from pydantic import BaseModel, Field

from taskenv.shared.task_archive import TaskFiles, normalise
from taskenv.shared.task_manifest import Issue, error

# What Docker grants a container by default: `cap_add` of these adds nothing.
DOCKER_DEFAULT_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
        "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
# Service keys taskenv acts on (part of a sandbox's definition); every other key is ignored
# unless REFUSED_SERVICE_KEYS or a value rule below refuses it.
HONOURED_SERVICE_KEYS = (
    "image", "build", "command", "entrypoint", "environment", "working_dir", "user", "ports", "expose",
    "healthcheck", "depends_on", "volumes", "tmpfs", "read_only", "cap_drop", "init", "stop_signal",
    "stop_grace_period", "labels",
)  # fmt: skip
# Keys that only ever widen what a container may do on its host: refused whatever their value.
REFUSED_SERVICE_KEYS = {
    "devices": "host devices",
    "device_cgroup_rules": "host device access",
    "gpus": "host GPUs",
    "sysctls": "kernel parameters",
    "cgroup_parent": "a host cgroup",
    "volumes_from": "another container's volumes",
    "runtime": "another container runtime",
    "oom_kill_disable": "a container the kernel cannot stop",
    "extends": "another file's services (put them in docker-compose.yaml)",
}
# Namespace keys: the host's (or another container's) namespace is refused; anything else is
# ignored, since all of a task's services share one network namespace of their own.
NAMESPACE_KEYS = ("network_mode", "pid", "ipc", "userns_mode", "uts", "cgroup")
_SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
_DOCKER_SOCKET = "docker.sock"


class ComposeBuild(BaseModel):
    """A service's `build:`: the context directory inside the task, the Dockerfile in it."""

    context: str = "."
    dockerfile: str = "Dockerfile"
    dockerfile_inline: str | None = None
    args: dict[str, str] = Field(default_factory=dict)
    target: str | None = None


class ComposeService(BaseModel):
    name: str
    image: str | None = None
    build: ComposeBuild | None = None
    ports: list[int] = Field(default_factory=list)


def services_of(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose.get("services")
    return services if isinstance(services, dict) else {}


def policy_issues(compose: dict[str, Any], files: TaskFiles) -> list[Issue]:
    """Every refused key and value of the file, each naming its service and key."""
    issues: list[Issue] = []
    for name, service in services_of(compose).items():
        if isinstance(service, dict):
            issues += _service_issues(str(name), service, files)
        else:
            issues.append(error("compose", f"service {name!r} must be a mapping"))
    issues += _top_level_issues(compose, files)
    issues += port_clash_issues(compose)
    issues += dependency_issues(compose)
    return issues


def _refused(service: str, key: str, why: str) -> Issue:
    return error("compose", f"service {service!r}: '{key}' is refused ({why})")


def _service_issues(name: str, service: dict[str, Any], files: TaskFiles) -> list[Issue]:
    issues = [_refused(name, key, why) for key, why in REFUSED_SERVICE_KEYS.items() if key in service]
    if service.get("privileged") not in (None, False):
        issues.append(_refused(name, "privileged", "a privileged container owns its host"))
    issues += [
        _refused(name, f"cap_add: {cap}", "beyond Docker's default capabilities")
        for cap in _extra_caps(service)
    ]
    for key in NAMESPACE_KEYS:
        value = str(service.get(key, "")).strip().lower()
        if value == "host" or value.startswith("container:"):
            issues.append(_refused(name, f"{key}: {value}", "a namespace outside the task"))
    issues += [
        _refused(name, f"security_opt: {opt}", "it loosens the sandbox's confinement")
        for opt in _list(service.get("security_opt"))
        if str(opt).strip().lower() not in _SAFE_SECURITY_OPTS
    ]
    issues += [
        _refused(name, f"volumes: {v}", why) for v, why in _volume_problems(service.get("volumes"), files)
    ]
    issues += _build_issues(name, service.get("build"))
    issues += [
        _refused(name, f"env_file: {path}", "a file outside the task directory")
        for path in _env_files(service.get("env_file"))
        if not inside_task(path)
    ]
    return issues


def _env_files(value: Any) -> list[str]:
    return [str(entry.get("path", "")) if isinstance(entry, dict) else str(entry) for entry in _list(value)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else ([] if value is None else [value])


def _extra_caps(service: dict[str, Any]) -> list[str]:
    caps = [str(cap).strip().upper().removeprefix("CAP_") for cap in _list(service.get("cap_add"))]
    return [cap for cap in caps if cap not in DOCKER_DEFAULT_CAPABILITIES]


def _volume_problems(volumes: Any, files: TaskFiles) -> list[tuple[str, str]]:
    problems = []
    for volume in _list(volumes):
        kind, source, target = _volume_parts(volume)
        shown = str(volume)[:200]
        if _DOCKER_SOCKET in source or _DOCKER_SOCKET in target:
            problems.append((shown, "the Docker socket owns the host"))
        elif kind == "npipe":
            problems.append((shown, "a host named pipe"))
        elif kind == "bind" and not inside_task(source):
            problems.append((shown, "a bind mount of a host path outside the task directory"))
    return problems


def _volume_parts(volume: Any) -> tuple[str, str, str]:
    """(type, source, target) of a short (`src:dst[:mode]`) or long (mapping) volume entry."""
    if isinstance(volume, dict):
        kind = str(volume.get("type", "volume"))
        return kind, str(volume.get("source") or ""), str(volume.get("target") or "")
    text = str(volume)
    source, colon, rest = text.partition(":")
    if not colon:
        return "volume", "", text  # an anonymous volume
    target = rest.partition(":")[0]
    is_path = source.startswith((".", "/", "~", "$")) or "/" in source
    return ("bind" if is_path else "volume"), source, target


def inside_task(path: str) -> bool:
    """A relative path that stays inside the task directory (no variable, `~` or `..` out)."""
    if not path or path.startswith(("/", "~", "\\")) or "$" in path or (len(path) > 1 and path[1] == ":"):
        return False
    resolved = posixpath.normpath(path.replace("\\", "/"))
    return resolved != ".." and not resolved.startswith("../")


def _build_issues(name: str, build: Any) -> list[Issue]:
    if not isinstance(build, dict):
        return []
    issues = []
    if str(build.get("network", "")).strip().lower() == "host":
        issues.append(_refused(name, "build.network: host", "the host's network during the build"))
    if build.get("privileged") not in (None, False):
        issues.append(_refused(name, "build.privileged", "a privileged build owns its host"))
    for key in ("entitlements", "ssh", "secrets", "additional_contexts"):
        if key in build:
            issues.append(
                _refused(name, f"build.{key}", "the host's credentials, files or privileges in the build")
            )
    return issues


def _top_level_issues(compose: dict[str, Any], files: TaskFiles) -> list[Issue]:
    issues = []
    if "include" in compose:
        issues.append(
            error("compose", "'include' is refused (other files: put the services in docker-compose.yaml)")
        )
    volumes = compose.get("volumes")
    for name, volume in volumes.items() if isinstance(volumes, dict) else []:
        if isinstance(volume, dict) and (
            "driver_opts" in volume or volume.get("external") or volume.get("driver")
        ):
            issues.append(
                error(
                    "compose", f"volume {name!r}: driver, driver_opts and external are refused (host storage)"
                )
            )
    for section in ("secrets", "configs"):
        entries = compose.get(section)
        for name, entry in entries.items() if isinstance(entries, dict) else []:
            if not isinstance(entry, dict):
                continue
            if "environment" in entry or entry.get("external"):
                issues.append(
                    error("compose", f"{section} {name!r}: the host's environment or store is refused")
                )
            elif "file" in entry and not inside_task(str(entry["file"])):
                issues.append(
                    error("compose", f"{section} {name!r}: a file outside the task directory is refused")
                )
    return issues


def service_plan(name: str, service: dict[str, Any]) -> ComposeService:
    """The typed part of a service that taskenv builds and runs (after `policy_issues` passed)."""
    return ComposeService(
        name=name,
        image=_str_or_none(service.get("image")),
        build=build_of(service),
        ports=sorted(container_ports(service)[0]),
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def build_of(service: dict[str, Any]) -> ComposeBuild | None:
    build = service.get("build")
    if isinstance(build, str):
        return ComposeBuild(context=build)
    if not isinstance(build, dict):
        return None
    args = build.get("args")
    if isinstance(args, list):  # ["KEY=value", ...]
        args = dict(str(item).partition("=")[::2] for item in args)
    return ComposeBuild(
        context=str(build.get("context", ".")),
        dockerfile=str(build.get("dockerfile", "Dockerfile")),
        dockerfile_inline=_str_or_none(build.get("dockerfile_inline")),
        args={str(k): str(v) for k, v in (args or {}).items()} if isinstance(args, dict) else {},
        target=_str_or_none(build.get("target")),
    )


def container_ports(service: dict[str, Any]) -> tuple[set[int], list[str]]:
    """The container ports a service publishes (`ports:`), and entries that could not be read."""
    ports: set[int] = set()
    unreadable: list[str] = []
    for entry in _list(service.get("ports")):
        port = _container_port(entry)
        if port is None:
            unreadable.append(str(entry)[:100])
        else:
            ports.add(port)
    return ports, unreadable


def _container_port(entry: Any) -> int | None:
    if isinstance(entry, bool):
        return None
    if isinstance(entry, int):
        return entry if 0 < entry < 65536 else None
    if isinstance(entry, dict):
        return _container_port(entry.get("target"))
    if not isinstance(entry, str):
        return None
    port = entry.rpartition(":")[2].partition("/")[0]
    return int(port) if port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536 else None


def dockerfile_path(build: ComposeBuild) -> str:
    return normalise(posixpath.join(build.context, build.dockerfile))


# Ports a service's `ports:` may name at most (a range "8000-8999" counts each port).
MAX_PORTS_PER_SERVICE = 1024


def published_ports(service: dict[str, Any]) -> set[str]:
    """The ports a service publishes, as "port/protocol": the published port when given
    ("8080:80" publishes 8080), else the container port. Unreadable entries are left out."""
    found: set[str] = set()
    for entry in _list(service.get("ports")):
        published, protocol = _published(entry)
        found |= {f"{port}/{protocol}" for port in published}
        if len(found) > MAX_PORTS_PER_SERVICE:
            break
    return found


def _published(entry: Any) -> tuple[range, str]:
    if isinstance(entry, dict):
        published = entry.get("published")
        text = str(published if published not in (None, "") else entry.get("target", ""))
        return _port_range(text), str(entry.get("protocol") or "tcp").lower()
    if isinstance(entry, bool) or not isinstance(entry, int | str):
        return range(0), "tcp"
    text, _, protocol = str(entry).partition("/")
    parts = text.split(":")
    # "port", "published:port" or "ip:published:port" (an IPv6 ip holds colons: the published
    # part is then the one before the last).
    published = parts[-2] if len(parts) >= 2 and parts[-2] else parts[-1]
    return _port_range(published), (protocol or "tcp").lower()


def _port_range(text: str) -> range:
    first, dash, last = text.strip().partition("-")
    if not (first.isdigit() and len(first) <= 5 and (not dash or (last.isdigit() and len(last) <= 5))):
        return range(0)
    low, high = int(first), int(last) if dash else int(first)
    if not 0 < low <= high < 65536:
        return range(0)
    return range(low, min(high, low + MAX_PORTS_PER_SERVICE - 1) + 1)


def _remapped(entry: Any) -> tuple[str, str] | None:
    """(published, container port) of an entry that publishes another port than it listens on."""
    if isinstance(entry, dict):
        published, target = entry.get("published"), entry.get("target")
    elif isinstance(entry, str):
        parts = entry.partition("/")[0].split(":")
        published, target = (parts[-2], parts[-1]) if len(parts) >= 2 else (None, None)
    else:
        return None
    if published in (None, "") or target in (None, ""):
        return None
    return (str(published), str(target)) if _port_range(str(published)) != _port_range(str(target)) else None


def port_clash_issues(compose: dict[str, Any]) -> list[Issue]:
    """Every service of a task shares one network namespace, where nothing maps ports: two
    services publishing one port cannot both listen on it, and a service reached at
    `localhost:<published>` must listen on that very port."""
    owners: dict[str, str] = {}
    issues = []
    for name, service in services_of(compose).items():
        if not isinstance(service, dict):
            continue
        for published, target in filter(None, map(_remapped, _list(service.get("ports")))):
            issues.append(
                error(
                    "compose",
                    f"service {name!r} publishes port {published} for container port {target}: a task's"
                    " services share one loopback where no port is mapped, so it must listen on the port"
                    f" it publishes (write '{published}:{published}')",
                )
            )
        for port in sorted(published_ports(service)):
            first = owners.setdefault(port, str(name))
            if first != str(name):
                issues.append(
                    error(
                        "compose",
                        f"services {first!r} and {name!r} both publish port {port}: a task's services"
                        " share one network, so one port serves one service",
                    )
                )
    return issues


def depends_on_names(service: dict[str, Any]) -> list[str]:
    """The services a service's `depends_on` names (list or mapping form), in order."""
    depends = service.get("depends_on")
    if isinstance(depends, dict):
        return [str(name) for name in depends]
    return [str(name) for name in depends if isinstance(name, str)] if isinstance(depends, list) else []


class DependencyCycle(ValueError):
    def __init__(self, members: list[str]) -> None:
        self.members = members
        super().__init__(f"depends_on has a cycle: {', '.join(repr(m) for m in members)} can never start")


def dependency_batches(graph: dict[str, list[str]]) -> list[list[str]]:
    """Services in start order: each batch depends only on earlier batches (names sorted in a
    batch). `graph` maps each service to those it depends on (all of them keys of `graph`);
    `DependencyCycle` names the services left in a cycle."""
    remaining = {name: set(deps) for name, deps in graph.items()}
    batches: list[list[str]] = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps)
        if not ready:
            raise DependencyCycle(sorted(remaining))
        batches.append(ready)
        for name in ready:
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return batches


def dependency_issues(compose: dict[str, Any]) -> list[Issue]:
    services = {str(name): s for name, s in services_of(compose).items() if isinstance(s, dict)}
    issues = []
    graph: dict[str, list[str]] = {}
    for name, service in services.items():
        graph[name] = []
        for dependency in depends_on_names(service):
            if dependency in services:
                graph[name].append(dependency)
            else:
                issues.append(
                    error("compose", f"service {name!r}: depends_on names an unknown service {dependency!r}")
                )
    try:
        dependency_batches(graph)
    except DependencyCycle as exc:
        issues.append(error("compose", str(exc)))
    return issues
