"""A task's compose services read into what a worker runs: one typed `ServicePlan` each.

Pure (no I/O): the compose mapping, the task's files and the settings in, plans out. The file
passed the push policy (shared/task_compose.py), yet is read here as hostile again: every value
of the wrong type or out of bounds gives a `ServiceError` naming the service and the key, never
another exception. Values are never interpolated (`${VAR}` stays literal).

Contracts:
- `plans(compose, files, *, images, settings) -> list[ServicePlan]`: one plan per service, in the
  file's order. `images` maps a `build:` service to its built tag (worker/task_build.py
  `image_tag`); an `image:` service runs its image. Resource limits default to, and are capped by,
  TASKENV_SERVICE_MEMORY_MB / _CPUS / _PIDS.
- `start_order(plans) -> list[list[str]]`: batches of service names; a service's dependencies are
  all in earlier batches, so a batch may start at once.
- `parse_duration_ns(text) -> int`: a compose duration ("1m30s", "500ms") in nanoseconds, as
  Docker's healthcheck wants it; `ValueError` when unreadable.
"""

import posixpath
import re
import shlex
from collections.abc import Mapping
from enum import StrEnum
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskenv.shared.settings import Settings
from taskenv.shared.task_archive import TaskFiles, normalise
from taskenv.shared.task_compose import (
    DOCKER_DEFAULT_CAPABILITIES,
    DependencyCycle,
    dependency_batches,
    inside_task,
    services_of,
)

MAX_SERVICES = 64
MAX_LIST_ITEMS = 1024
MAX_VALUE_CHARS = 64 * 1024
MAX_ENV_FILE_BYTES = 256 * 1024
# Docker's bounds: a healthcheck duration is 0 or at least 1 ms; less than 6 MB of memory is refused.
_MIN_DURATION_NS = 1_000_000
_MAX_DURATION_NS = 24 * 3600 * 10**9
_MIN_MEMORY_BYTES = 6 * 1024 * 1024
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNIT_NS["h"] = 3600 * 10**9
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_MEMORY_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TMPFS_OPTIONS = re.compile(
    r"rw|ro|exec|noexec|size=\d+[kmg]?|mode=[0-7]{3,4}|uid=\d+|gid=\d+|nr_inodes=\d+[kmg]?"
)
_UNSET: Any = object()
_BIND_MODES = frozenset({"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"})


class ServiceError(ValueError):
    """A compose value taskenv cannot run; the message names the service and the key."""

    def __init__(self, service: str, key: str, problem: str) -> None:
        self.service, self.key = service, key
        super().__init__(f"service {service!r}: {key}: {problem}")


class DependsCondition(StrEnum):
    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Healthcheck(_Frozen):
    """Docker's form: `test` is ["NONE"] (disabled), ["CMD", arg...], ["CMD-SHELL", line], or
    empty (the image's own test, with these timings); durations in nanoseconds, 0 = Docker's
    default."""

    test: list[str] = Field(default_factory=list)
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0

    @property
    def disabled(self) -> bool:
        return self.test == ["NONE"]

    def docker(self) -> dict[str, Any]:
        return {
            "Test": self.test,
            "Interval": self.interval_ns,
            "Timeout": self.timeout_ns,
            "StartPeriod": self.start_period_ns,
            "Retries": self.retries,
        }


class VolumeMount(_Frozen):
    """A named volume of the compose file (one per environment), or an anonymous one
    (`volume` then names it after the service and the mount's place)."""

    volume: str
    target: str
    read_only: bool = False


class TaskMount(_Frozen):
    """A bind mount of a path inside the task: its files (paths relative to `source`; one file
    at "" when `source` is a file) are copied into a volume of the environment."""

    source: str
    target: str
    read_only: bool = False
    is_file: bool = False
    files: dict[str, bytes] = Field(default_factory=dict)
    modes: dict[str, int] = Field(default_factory=dict)


class Limits(_Frozen):
    memory_bytes: int
    nano_cpus: int
    pids: int


class ServicePlan(_Frozen):
    name: str
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    healthcheck: Healthcheck | None = None
    depends_on: dict[str, DependsCondition] = Field(default_factory=dict)
    tmpfs: dict[str, str] = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list)
    binds: list[TaskMount] = Field(default_factory=list)
    read_only: bool = False
    cap_add: list[str] = Field(default_factory=list)
    limits: Limits


def plans(
    compose: dict[str, Any], files: TaskFiles, *, images: Mapping[str, str], settings: Settings
) -> list[ServicePlan]:
    services = services_of(compose)
    if len(services) > MAX_SERVICES:
        raise ServiceError("*", "services", f"more than {MAX_SERVICES} services")
    result = []
    for name, service in services.items():
        if not isinstance(service, dict):
            raise ServiceError(str(name), "service", "must be a mapping")
        if not _SERVICE_NAME.fullmatch(str(name)):
            raise ServiceError(str(name)[:100], "service", "a name is letters, digits, '.', '_' and '-'")
        result.append(_Reader(str(name), service, files).plan(images, settings, set(map(str, services))))
    start_order(result)
    return result


def start_order(plans: list[ServicePlan]) -> list[list[str]]:
    graph = {plan.name: list(plan.depends_on) for plan in plans}
    try:
        return dependency_batches(graph)
    except DependencyCycle as exc:
        raise ServiceError(exc.members[0], "depends_on", str(exc)) from None


def parse_duration_ns(value: Any) -> int:
    """A Go duration ("1m30s", "1.5s", "500ms", "0"): its nanoseconds (rounded down)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("a duration like '30s', '1m30s' or '500ms'")
    text = value.strip()
    if text == "0":
        return 0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration like '30s', '1m30s' or '500ms'")
    total = sum(Fraction(number) * _UNIT_NS[unit] for number, unit in _DURATION_PART.findall(text))
    return int(total)


class _Reader:
    """One service's keys read with its name at hand for every error."""

    def __init__(self, name: str, service: dict[str, Any], files: TaskFiles) -> None:
        self.name, self.service, self.files = name, service, files

    def fail(self, key: str, problem: str) -> ServiceError:
        return ServiceError(self.name, key, problem)

    def plan(self, images: Mapping[str, str], settings: Settings, known: set[str]) -> ServicePlan:
        volumes, binds, tmpfs = self.mounts()
        return ServicePlan(
            name=self.name,
            image=self.image(images),
            command=self.argv("command"),
            entrypoint=self.argv("entrypoint"),
            environment=self.environment(),
            working_dir=self.working_dir(),
            user=self.text("user", numbers=True),
            healthcheck=self.healthcheck(),
            depends_on=self.depends_on(known),
            tmpfs={**self.tmpfs(), **tmpfs},
            volumes=volumes,
            binds=binds,
            read_only=self.flag("read_only"),
            cap_add=self.cap_add(),
            limits=self.limits(settings),
        )

    # --- scalars

    def text(self, key: str, value: Any = _UNSET, *, numbers: bool = False) -> str | None:
        value = self.service.get(key) if value is _UNSET else value
        if value is None:
            return None
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        if len(value) > MAX_VALUE_CHARS or "\0" in value:
            raise self.fail(key, f"must be at most {MAX_VALUE_CHARS} characters, without NUL")
        return value

    def flag(self, key: str, value: Any = _UNSET) -> bool:
        value = self.service.get(key) if value is _UNSET else value
        if value is None or isinstance(value, bool):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(key, "must be true or false")

    def items(self, key: str, value: Any = _UNSET) -> list[Any]:
        value = self.service.get(key) if value is _UNSET else value
        if value is None:
            return []
        found = value if isinstance(value, list) else [value]
        if len(found) > MAX_LIST_ITEMS:
            raise self.fail(key, f"more than {MAX_LIST_ITEMS} entries")
        return found

    def working_dir(self) -> str | None:
        path = self.text("working_dir")
        return None if path is None else self.container_path("working_dir", path)

    def cap_add(self) -> list[str]:
        caps = [
            (self.text("cap_add", c) or "").strip().upper().removeprefix("CAP_")
            for c in self.items("cap_add")
        ]
        for cap in caps:
            if cap not in DOCKER_DEFAULT_CAPABILITIES:
                raise self.fail("cap_add", f"{cap[:50]!r} is beyond Docker's default capabilities")
        return sorted(set(caps))

    def image(self, images: Mapping[str, str]) -> str:
        if "build" in self.service and self.service["build"] is not None:
            if self.name not in images:
                raise self.fail("build", "the service's image was not built")
            return images[self.name]
        image = self.text("image")
        if not image:
            raise self.fail("image", "a service needs 'image' or 'build'")
        return image

    def argv(self, key: str) -> list[str] | None:
        value = self.service.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return shlex.split(self.text(key) or "")
            except ValueError as exc:
                raise self.fail(key, f"cannot be split into words: {exc}") from None
        if isinstance(value, list) and len(value) <= MAX_LIST_ITEMS:
            return [self.scalar(key, item) for item in value]
        raise self.fail(key, "must be a string or a list of strings")

    def scalar(self, key: str, value: Any) -> str:
        """A string, number or boolean as compose writes it into a string."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return self.text(key, value) or ""

    # --- environment

    def environment(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for path, required in self.env_files():
            result.update(self.env_file(path, required))
        result.update(self.variables("environment", self.service.get("environment")))
        return result

    def variables(self, key: str, value: Any) -> dict[str, str]:
        """Mapping or `["KEY=value"]` form; a key without a value would come from the host's
        environment, which no task sees: it is left out."""
        if value is None:
            return {}
        if isinstance(value, dict):
            pairs = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            pairs = [self.pair(key, item) for item in self.items(key, value)]
        else:
            raise self.fail(key, "must be a mapping or a list of KEY=value")
        if len(pairs) > MAX_LIST_ITEMS:
            raise self.fail(key, f"more than {MAX_LIST_ITEMS} variables")
        return {self.variable_name(key, k): self.scalar(key, v) for k, v in pairs if v is not None}

    def pair(self, key: str, item: Any) -> tuple[str, Any]:
        text = self.scalar(key, item)
        name, equals, value = text.partition("=")
        return name, value if equals else None

    def variable_name(self, key: str, name: str) -> str:
        if not name or "=" in name or "\0" in name or len(name) > 1024:
            raise self.fail(key, f"{name[:100]!r} is not a variable name")
        return name

    def env_files(self) -> list[tuple[str, bool]]:
        found = []
        for entry in self.items("env_file"):
            if isinstance(entry, dict):
                found.append(
                    (
                        self.text("env_file", entry.get("path")) or "",
                        self.flag("env_file", entry.get("required", True)),
                    )
                )
            else:
                found.append((self.text("env_file", entry) or "", True))
        return found

    def env_file(self, path: str, required: bool) -> dict[str, str]:
        key = f"env_file: {path[:200]}"
        if not inside_task(path):
            raise self.fail(key, "a file outside the task directory")
        data = self.files.files.get(normalise(path))
        if data is None:
            if required:
                raise self.fail(key, "no such file in the task")
            return {}
        if len(data) > MAX_ENV_FILE_BYTES:
            raise self.fail(key, f"over {MAX_ENV_FILE_BYTES} bytes")
        pairs = [_dotenv_line(line) for line in data.decode("utf-8", errors="replace").splitlines()]
        return self.variables(key, {name: value for name, value in pairs if name})

    # --- healthcheck and dependencies

    def healthcheck(self) -> Healthcheck | None:
        value = self.service.get("healthcheck")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail("healthcheck", "must be a mapping")
        if self.flag("healthcheck.disable", value.get("disable")):
            return Healthcheck(test=["NONE"])
        return Healthcheck(
            test=self.health_test(value.get("test")),
            interval_ns=self.duration("healthcheck.interval", value.get("interval")),
            timeout_ns=self.duration("healthcheck.timeout", value.get("timeout")),
            start_period_ns=self.duration("healthcheck.start_period", value.get("start_period")),
            retries=self.count("healthcheck.retries", value.get("retries"), 0, 1000),
        )

    def health_test(self, test: Any) -> list[str]:
        key = "healthcheck.test"
        if test is None:
            return []
        if isinstance(test, str):
            return ["CMD-SHELL", self.text(key, test) or ""]
        if not isinstance(test, list) or not test or len(test) > MAX_LIST_ITEMS:
            raise self.fail(key, "must be a string or a list starting with CMD, CMD-SHELL or NONE")
        words = [self.scalar(key, word) for word in test]
        if words[0] == "NONE" or (words[0] == "CMD-SHELL" and len(words) == 2):
            return words[:1] if words[0] == "NONE" else words
        if words[0] == "CMD" and len(words) >= 2:
            return words
        raise self.fail(key, "must be a string or a list starting with CMD, CMD-SHELL (one line) or NONE")

    def duration(self, key: str, value: Any) -> int:
        if value is None:
            return 0
        try:
            nanoseconds = parse_duration_ns(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if nanoseconds and not _MIN_DURATION_NS <= nanoseconds <= _MAX_DURATION_NS:
            raise self.fail(key, "must be 0, or from 1ms to 24h")
        return nanoseconds

    def count(self, key: str, value: Any, low: int, high: int) -> int:
        if value is None:
            return 0
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 12:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be a whole number from {low} to {high}")
        return value

    def depends_on(self, known: set[str]) -> dict[str, DependsCondition]:
        value = self.service.get("depends_on")
        if value is None:
            return {}
        if isinstance(value, list):
            entries: dict[str, Any] = {
                self.text("depends_on", name) or "": None for name in self.items("depends_on", value)
            }
        elif isinstance(value, dict):
            entries = {str(name): entry for name, entry in value.items()}
        else:
            raise self.fail("depends_on", "must be a list of services or a mapping")
        for name in entries:
            if name not in known:
                raise self.fail("depends_on", f"names an unknown service {name[:100]!r}")
        return {name: self.condition(name, entry) for name, entry in entries.items()}

    def condition(self, dependency: str, entry: Any) -> DependsCondition:
        key = f"depends_on.{dependency}.condition"
        if entry is None:
            return DependsCondition.STARTED
        if not isinstance(entry, dict):
            raise self.fail(f"depends_on.{dependency}", "must be a mapping with 'condition'")
        condition = entry.get("condition", DependsCondition.STARTED.value)
        try:
            return DependsCondition(condition)
        except ValueError:
            choices = ", ".join(c.value for c in DependsCondition)
            raise self.fail(key, f"must be one of {choices}") from None

    # --- mounts

    def tmpfs(self) -> dict[str, str]:
        result = {}
        for entry in self.items("tmpfs"):
            path, _, options = (self.text("tmpfs", entry) or "").partition(":")
            result[self.container_path("tmpfs", path)] = self.tmpfs_options("tmpfs", options)
        return result

    def tmpfs_options(self, key: str, options: str) -> str:
        words = [word.strip() for word in options.split(",") if word.strip()]
        for word in words:
            if not _TMPFS_OPTIONS.fullmatch(word):
                raise self.fail(key, f"tmpfs option {word[:100]!r} is not supported")
        # A tmpfs never holds set-uid programs or devices, whatever the file asks.
        return ",".join([*words, "nosuid", "nodev"])

    def container_path(self, key: str, path: str) -> str:
        if not path.startswith("/") or "\0" in path or len(path) > 4096:
            raise self.fail(key, f"{path[:200]!r} is not an absolute path in the container")
        return posixpath.normpath(path)

    def mounts(self) -> tuple[list[VolumeMount], list[TaskMount], dict[str, str]]:
        volumes: list[VolumeMount] = []
        binds: list[TaskMount] = []
        tmpfs: dict[str, str] = {}
        for index, entry in enumerate(self.items("volumes")):
            kind, source, target, read_only, options = self.volume_entry(entry)
            key = f"volumes: {str(entry)[:200]}"
            target = self.container_path(key, target)
            if kind == "tmpfs":
                tmpfs[target] = self.tmpfs_options(key, options)
            elif kind == "bind":
                binds.append(self.task_mount(key, source, target, read_only))
            elif kind == "volume":
                volume = source or f"{self.name}.{index}"
                if not _NAME.fullmatch(volume):
                    raise self.fail(key, "a volume name is letters, digits, '_', '.' and '-'")
                volumes.append(VolumeMount(volume=volume, target=target, read_only=read_only))
            else:
                raise self.fail(key, f"volume type {kind[:50]!r} is not supported")
        return volumes, binds, tmpfs

    def volume_entry(self, entry: Any) -> tuple[str, str, str, bool, str]:
        """(type, source, target, read only, tmpfs options) of a short or long volume entry."""
        key = f"volumes: {str(entry)[:200]}"
        if isinstance(entry, dict):
            raw = entry.get("tmpfs")
            tmpfs: dict[str, Any] = raw if isinstance(raw, dict) else {}
            options = ",".join(f"{k}={tmpfs[k]}" for k in ("size", "mode") if k in tmpfs)
            return (
                self.text(key, entry.get("type", "volume")) or "volume",
                self.text(key, entry.get("source", "")) or "",
                self.text(key, entry.get("target", "")) or "",
                self.flag(key, entry.get("read_only")),
                options,
            )
        parts = (self.text(key, entry) or "").split(":")
        if len(parts) == 1:
            return "volume", "", parts[0], False, ""
        modes = parts[2].split(",") if len(parts) == 3 else []
        if len(parts) > 3 or not set(modes) <= _BIND_MODES:
            raise self.fail(key, "must be 'source:target' or 'source:target:mode'")
        source = parts[0]
        is_path = source.startswith((".", "/", "~", "$")) or "/" in source
        read_only = "ro" in modes
        return ("bind" if is_path else "volume"), source, parts[1], read_only, ""

    def task_mount(self, key: str, source: str, target: str, read_only: bool) -> TaskMount:
        if not inside_task(source):
            raise self.fail(key, "a bind mount of a path outside the task directory")
        path = normalise(source)
        path = "" if path == "." else path
        if path in self.files.links:
            raise self.fail(key, "a bind mount of a symbolic link is not supported")
        if path in self.files.files:
            return TaskMount(
                source=path, target=target, read_only=read_only, is_file=True,
                files={"": self.files.files[path]}, modes={"": self.files.modes.get(path, 0o644)},
            )  # fmt: skip
        prefix = f"{path}/" if path else ""
        below = {p.removeprefix(prefix): d for p, d in self.files.files.items() if p.startswith(prefix)}
        modes = {p: self.files.modes.get(prefix + p, 0o644) for p in below}
        return TaskMount(source=path, target=target, read_only=read_only, files=below, modes=modes)

    # --- resources

    def limits(self, settings: Settings) -> Limits:
        limits = self.deploy_limits()
        memory = [self.memory("mem_limit", self.service.get("mem_limit"))]
        memory.append(self.memory("deploy.resources.limits.memory", limits.get("memory")))
        cpus = [self.cpus("cpus", self.service.get("cpus"))]
        cpus.append(self.cpus("deploy.resources.limits.cpus", limits.get("cpus")))
        pids = [self.pids("pids_limit", self.service.get("pids_limit"))]
        pids.append(self.pids("deploy.resources.limits.pids", limits.get("pids")))
        return Limits(
            memory_bytes=min([settings.service_memory_mb * 1024 * 1024, *(m for m in memory if m)]),
            nano_cpus=min([int(settings.service_cpus * 1e9), *(c for c in cpus if c)]),
            pids=min([settings.service_pids, *(p for p in pids if p)]),
        )

    def deploy_limits(self) -> dict[str, Any]:
        limits: Any = self.service.get("deploy")
        for key in ("resources", "limits"):
            limits = limits.get(key) if isinstance(limits, dict) else None
        return limits if isinstance(limits, dict) else {}

    def memory(self, key: str, value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            amount = value
        else:
            match = (
                _MEMORY.fullmatch(str(value).strip()) if isinstance(value, str) and len(value) < 32 else None
            )
            if match is None:
                raise self.fail(key, "must be bytes or a size like '512m' or '1g'")
            amount = int(Fraction(match.group(1)) * _MEMORY_UNIT[match.group(2).lower()])
        if amount < _MIN_MEMORY_BYTES:
            raise self.fail(key, "must be at least 6m")
        return amount

    def cpus(self, key: str, value: Any) -> int:
        if value is None:
            return 0
        try:
            amount = Fraction(str(value).strip()) if isinstance(value, int | float | str) else None
        except (ValueError, ZeroDivisionError):
            amount = None
        if isinstance(value, bool) or amount is None or not 0 < amount <= 1024:
            raise self.fail(key, "must be a number of CPUs above 0, like 0.5")
        return max(int(amount * 10**9), 10**7)

    def pids(self, key: str, value: Any) -> int:
        if value in (None, -1, 0):
            return 0  # unlimited: the default applies
        return self.count(key, value, 1, 2**31 - 1)


def _dotenv_line(line: str) -> tuple[str, str | None]:
    """`KEY=value` of an env file (`export `, comments, blank lines and quotes as Docker reads
    them); ("", None) for a line that sets nothing."""
    text = line.strip()
    if not text or text.startswith("#"):
        return "", None
    name, equals, value = text.removeprefix("export ").partition("=")
    if not equals:
        return "", None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return name.strip(), value
