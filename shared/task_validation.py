"""A pushed task, validated whole before anything is stored: the manifest's schema, the compose
file's policy, and the rules that tie them together (ports, build contexts, scripts, service URLs
in the instruction). Every problem is reported in one pass, as `dn task validate` does."""

import re
from dataclasses import dataclass
from typing import Any

from taskenv.shared import task_yaml
from taskenv.shared.task_archive import TaskFiles, normalise
from taskenv.shared.task_compose import (
    build_of,
    container_ports,
    dockerfile_path,
    inside_task,
    policy_issues,
    services_of,
)
from taskenv.shared.task_manifest import Issue, IssueLevel, TaskManifest, error, schema_issues

TASK_YAML = "task.yaml"
COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.yml")
README_FILES = ("README.md", "readme.md", "README")
README_MAX_CHARS = 256 * 1024
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "host.docker.internal"})
# A URL's host, unless the URL comes out of a template (`{{challenge_url}}`).
_URL_HOST = re.compile(r"(?<!\{)\bhttps?://([^\s/:]+)")
_SCRIPT_STEPS = ("verification", "solution", "provision", "teardown")


@dataclass(frozen=True)
class ValidatedTask:
    manifest: TaskManifest
    compose: dict[str, Any] | None
    readme: str | None


class TaskInvalid(ValueError):
    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


def validate(files: TaskFiles) -> ValidatedTask:
    """The task, or `TaskInvalid` with every error found."""
    raw, issues = _load_mapping(files, TASK_YAML, required=True)
    if raw is None:
        raise TaskInvalid(issues)
    manifest, issues = schema_issues(raw)
    compose_name = next((name for name in COMPOSE_FILES if name in files.files), None)
    compose, compose_issues = _load_mapping(files, compose_name, required=False)
    issues += compose_issues
    ports = _declared_ports(raw)
    if compose_name is None and ports:
        issues.append(error("compose", "docker-compose.yaml is required when task.yaml declares 'ports'"))
    if compose is not None:
        issues += _services_issues(compose)
        issues += policy_issues(compose, files)
        issues += _port_issues(ports, services_of(compose))
        issues += _build_context_issues(services_of(compose), files)
    issues += _url_issues(raw, ports)
    issues += _script_issues(raw, files)
    errors = [issue for issue in issues if issue.level is IssueLevel.ERROR]
    if errors or manifest is None:
        raise TaskInvalid(errors)
    return ValidatedTask(manifest=manifest, compose=compose, readme=_readme(files))


def _load_mapping(
    files: TaskFiles, name: str | None, *, required: bool
) -> tuple[dict[str, Any] | None, list[Issue]]:
    component = TASK_YAML if name == TASK_YAML else "compose"
    text = files.text(name) if name else None
    if text is None:
        return None, [error(component, "file not found")] if required else []
    try:
        data = task_yaml.load(text)
    except task_yaml.YamlError as exc:
        return None, [error(component, str(exc))]
    if not isinstance(data, dict):
        return None, [error(component, f"{name} must hold a YAML mapping at the top level")]
    return data, []


def _services_issues(compose: dict[str, Any]) -> list[Issue]:
    if "services" not in compose:
        return [error("compose", "docker-compose.yaml is missing the required 'services:' block")]
    if not isinstance(compose["services"], dict):
        return [error("compose", "'services' must be a mapping of service names")]
    return []


def _declared_ports(raw: dict[str, Any]) -> dict[str, list[int]]:
    ports = raw.get("ports")
    if not isinstance(ports, dict):
        return {}
    declared = {
        str(service): [port for port in entries if isinstance(port, int) and not isinstance(port, bool)]
        for service, entries in ports.items()
        if isinstance(entries, list)
    }
    return {service: entries for service, entries in declared.items() if entries}


def _port_issues(declared: dict[str, list[int]], services: dict[str, Any]) -> list[Issue]:
    issues = []
    for name, ports in declared.items():
        service = services.get(name)
        if not isinstance(service, dict):
            issues.append(
                error(
                    "ports", f"service {name!r} is declared in task.yaml but not found in docker-compose.yaml"
                )
            )
            continue
        published = container_ports(service)[0]
        issues += [
            error(
                "ports",
                f"port {port} is declared for service {name!r} but the service only publishes"
                f" {sorted(published)}",
            )
            for port in ports
            if published and port not in published
        ]
    return issues


def _build_context_issues(services: dict[str, Any], files: TaskFiles) -> list[Issue]:
    issues = []
    for name, service in services.items():
        build = build_of(service) if isinstance(service, dict) else None
        if build is None or build.dockerfile_inline is not None:
            continue
        path = dockerfile_path(build)
        if not inside_task(build.context) or not inside_task(path):
            issues.append(error("dockerfile", f"service {name!r} build context escapes the task directory"))
        elif path not in files.files:
            issues.append(
                error(
                    "dockerfile",
                    f"service {name!r} references {build.dockerfile!r} but {path} is not in the task",
                )
            )
    return issues


def _url_issues(raw: dict[str, Any], ports: dict[str, list[int]]) -> list[Issue]:
    instruction = raw.get("instruction")
    if not ports or not isinstance(instruction, str):
        return []
    issues = []
    for match in _URL_HOST.finditer(instruction):
        host = match.group(1)
        if host in ports or host in _LOOPBACK_HOSTS:
            variable = host if host in ports else "challenge"
            issues.append(
                error(
                    "instruction",
                    f"instruction hardcodes {match.group(0)!r}: use '{{{{{variable}_url}}}}',"
                    " which is substituted per environment",
                )
            )
    return issues


def _script_issues(raw: dict[str, Any], files: TaskFiles) -> list[Issue]:
    issues = []
    for step in _SCRIPT_STEPS:
        config = raw.get(step)
        script = config.get("script") if isinstance(config, dict) else None
        if (
            isinstance(script, str)
            and script
            and not (inside_task(script) and normalise(script) in files.files)
        ):
            issues.append(error(step, f"script {script!r} was not found in the task directory"))
    return issues


def _readme(files: TaskFiles) -> str | None:
    text = next((files.text(name) for name in README_FILES if name in files.files), None)
    return None if text is None else text[:README_MAX_CHARS]
