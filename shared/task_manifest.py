"""task.yaml: the schema of a Dreadnode task manifest, with the rules of the public SDK's
validator (`dn task validate`), so that what `dn` accepts taskenv accepts and what it refuses
taskenv refuses with the same reasons.

Unknown top-level keys are accepted and ignored (as Dreadnode does); everything named here is
checked: kebab-case name, fixed semver, the verification method's rules and flag hash forms,
script configs, role-keyed `models`, the `egress` grammar.
"""

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")
VERSION_PATTERN = re.compile(r"\d+\.\d+\.\d+")
MAX_MODELS = 50
MAX_EGRESS_TARGETS = 50
HASH_HEX_CHARS = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32}
_MODEL_ROLE = re.compile(r"[a-z0-9][a-z0-9_]*")
_RESERVED_MODEL_ENV = frozenset({"MODEL", "DREADNODE_LLM_API_KEY", "DREADNODE_LLM_BASE"})
_HEX = re.compile(r"[0-9a-fA-F]+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


class IssueLevel(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Issue(BaseModel):
    """One finding of validation; only errors refuse a push."""

    model_config = ConfigDict(frozen=True)

    level: IssueLevel
    component: str
    message: str

    def __str__(self) -> str:
        return f"{self.component}: {self.message}"


def error(component: str, message: str) -> Issue:
    return Issue(level=IssueLevel.ERROR, component=component, message=message)


def parse_flag_hash(value: str) -> tuple[str, str]:
    """`alg:hex` or bare hex (always sha256), as `(algorithm, lowercase hex)`."""
    algorithm, colon, hex_digest = value.partition(":")
    if not colon:
        algorithm, hex_digest = "sha256", value
    algorithm = algorithm.lower()
    if algorithm not in HASH_HEX_CHARS:
        raise ValueError(
            f"unsupported hash algorithm {algorithm!r}: use one of {', '.join(sorted(HASH_HEX_CHARS))}"
        )
    if not _HEX.fullmatch(hex_digest):
        raise ValueError(f"{hex_digest!r} is not a hex digest")
    if len(hex_digest) != HASH_HEX_CHARS[algorithm]:
        hint = "" if colon else " (a bare hash is sha256: use 'algorithm:hex' for others)"
        raise ValueError(
            f"{algorithm} expects {HASH_HEX_CHARS[algorithm]} hex characters, got {len(hex_digest)}{hint}"
        )
    return algorithm, hex_digest.lower()


class VerificationMethod(StrEnum):
    SCRIPT = "script"
    FLAG = "flag"
    OUTCOME_JUDGE = "outcome_judge"
    SCRIPT_AND_JUDGE = "script_and_judge"
    FLAG_AND_JUDGE = "flag_and_judge"


_FLAG_METHODS = {VerificationMethod.FLAG, VerificationMethod.FLAG_AND_JUDGE}
_JUDGE_METHODS = {
    VerificationMethod.OUTCOME_JUDGE,
    VerificationMethod.SCRIPT_AND_JUDGE,
    VerificationMethod.FLAG_AND_JUDGE,
}


class Judge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["trajectory"] = "trajectory"
    model: str = Field(min_length=1)
    rubric: str | None = Field(None, min_length=1)
    max_steps: int = Field(50, ge=1, le=500)
    system_prompt: str | None = None
    model_params: dict[str, Any] = Field(default_factory=dict)
    task_context: dict[str, Any] = Field(default_factory=dict)


class Verification(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    method: VerificationMethod | None = None
    script: str | None = Field(None, min_length=1)
    timeout: int = 30
    hash: str | None = Field(None, validation_alias=AliasChoices("hash", "flag_hash"))
    value: str | None = None
    path: str | None = Field(None, validation_alias=AliasChoices("path", "submission_path"))
    where: Literal["agent", "environment"] = "environment"
    judge: Judge | None = None

    def effective_method(self) -> VerificationMethod:
        if self.method is not None:
            return self.method
        flagged = bool(self.path or self.hash or self.value)
        if self.judge is not None:
            if self.script:
                return VerificationMethod.SCRIPT_AND_JUDGE
            return VerificationMethod.FLAG_AND_JUDGE if flagged else VerificationMethod.OUTCOME_JUDGE
        if self.script:
            return VerificationMethod.SCRIPT
        raise ValueError(
            "must specify 'method': flag (compare a file's contents), script (run a verifier), "
            "outcome_judge (an LLM judge grades the trajectory), script_and_judge or flag_and_judge"
        )

    @model_validator(mode="after")
    def _method_rules(self) -> Self:
        method = self.effective_method()
        needs_judge = method in _JUDGE_METHODS
        if needs_judge and self.judge is None:
            raise ValueError(f"'judge' is required when method is {method.value!r}")
        if not needs_judge and self.judge is not None:
            raise ValueError(f"'judge' must not be set when method is {method.value!r}")
        if method is VerificationMethod.OUTCOME_JUDGE and self.judge and self.judge.rubric is None:
            raise ValueError("'judge.rubric' is required when method is 'outcome_judge'")
        needs_script = method in {VerificationMethod.SCRIPT, VerificationMethod.SCRIPT_AND_JUDGE}
        if needs_script and not self.script:
            raise ValueError(
                f"'script' is required when method is {method.value!r}. Example: script: verify.sh"
            )
        if not needs_script and self.script and method is not VerificationMethod.FLAG:
            raise ValueError(f"'script' must not be set when method is {method.value!r}")
        if method in _FLAG_METHODS:
            self._flag_rules(method)
        elif method in _JUDGE_METHODS:
            found = [name for name in ("hash", "value", "path") if getattr(self, name)]
            if found:
                raise ValueError(f"{found[0]!r} must not be set when method is {method.value!r}")
        return self

    def _flag_rules(self, method: VerificationMethod) -> None:
        if self.hash and self.value:
            raise ValueError("'hash' and 'value' are mutually exclusive: specify exactly one")
        if not self.hash and not self.value:
            raise ValueError(f"{method.value} verification requires either 'value' (plaintext) or 'hash'")
        if not self.path:
            raise ValueError(f"'path' is required when method is {method.value!r}: the file the agent writes")
        if self.hash:
            try:
                parse_flag_hash(self.hash)
            except ValueError as exc:
                raise ValueError(f"invalid hash: {exc}") from None


class ScriptStep(BaseModel):
    script: str = Field(min_length=1)
    timeout: int = 120


class Solution(BaseModel):
    script: str = Field(min_length=1)


def _author(value: Any) -> Any:
    if isinstance(value, dict):
        name = value.get("name")
        return None if name is None else str(name)
    return None if value is None else str(value)


def _as_str(value: Any) -> Any:
    return value if value is None or isinstance(value, (dict, list)) else str(value)


def _as_str_list(value: Any) -> Any:
    return [str(item) for item in value] if isinstance(value, list) else value


class TaskManifest(BaseModel):
    """The fields of task.yaml taskenv reads; other keys are kept out of the way (ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    version: str
    instruction: str = Field(min_length=1)
    verification: Verification
    description: str | None = None
    tags: Annotated[list[str] | None, BeforeValidator(_as_str_list)] = None
    difficulty: Annotated[str | None, BeforeValidator(_as_str)] = None
    source: str | None = None
    author: Annotated[str | None, BeforeValidator(_author)] = Field(
        None, validation_alias=AliasChoices("author", "author_name")
    )
    license: str | None = None
    repository: str | None = None
    max_agent_timeout_sec: int | None = None
    ports: dict[str, list[int]] | None = None
    provision: ScriptStep | None = None
    teardown: ScriptStep | None = None
    solution: Solution | None = None
    models: list[str] | dict[str, Any] | None = None
    egress: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _kebab_case(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not kebab-case: lowercase letters, digits and hyphens,"
                " e.g. 'sql-injection-lab-1'"
            )
        return value

    @field_validator("version")
    @classmethod
    def _fixed_semver(cls, value: str) -> str:
        if not VERSION_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not fixed semver: use MAJOR.MINOR.PATCH, e.g. '0.1.0'")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | dict[str, Any] | None) -> list[str] | dict[str, Any] | None:
        if isinstance(value, dict):
            return _model_roles(value) or None
        if isinstance(value, list):
            return _model_ids(value) or None
        return None

    @field_validator("egress")
    @classmethod
    def _egress(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        unknown = sorted(str(key) for key in value if key != "allow")
        if unknown:
            raise ValueError(f"egress has unknown key(s): {', '.join(unknown)} (only 'allow')")
        if "allow" not in value:
            raise ValueError("egress must declare an 'allow' list")
        return {"allow": _egress_targets(value["allow"])}


def _model_id(where: str, model_id: Any) -> str:
    if not isinstance(model_id, str) or not model_id.strip():
        raise ValueError(f"{where} must name a non-empty model id")
    if any(ch.isspace() for ch in model_id.strip()):
        raise ValueError(f"{where} id {model_id!r} must not contain whitespace")
    return model_id.strip()


def _model_roles(value: dict[Any, Any]) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for role, spec in value.items():
        if not isinstance(role, str) or not _MODEL_ROLE.fullmatch(role):
            raise ValueError(f"model role {role!r} must match [a-z0-9][a-z0-9_]*")
        if f"MODEL_{role.upper()}" in _RESERVED_MODEL_ENV:
            raise ValueError(f"model role {role!r} collides with a reserved env var")
        where = f"model role {role!r}"
        if isinstance(spec, dict):
            extra = sorted(set(spec) - {"model", "overridable"})
            if extra or "model" not in spec:
                raise ValueError(f"{where} must be {{model, overridable}} (got keys {sorted(spec)})")
            overridable = spec.get("overridable", True)
            if not isinstance(overridable, bool):
                raise ValueError(f"{where} 'overridable' must be a boolean")
            roles[role] = {"model": _model_id(where, spec["model"]), "overridable": overridable}
        else:
            roles[role] = {"model": _model_id(where, spec), "overridable": True}
    if len(roles) > MAX_MODELS:
        raise ValueError(f"models may declare at most {MAX_MODELS} roles")
    return roles


def _model_ids(value: list[Any]) -> list[str]:
    ids = list(dict.fromkeys(_model_id("models entry", entry) for entry in value))
    if len(ids) > MAX_MODELS:
        raise ValueError(f"models may declare at most {MAX_MODELS} identifiers")
    return ids


def _egress_targets(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("egress.allow must be a list of targets")
    targets = list(dict.fromkeys(_egress_target(entry) for entry in raw))
    if len(targets) > MAX_EGRESS_TARGETS:
        raise ValueError(f"egress.allow may declare at most {MAX_EGRESS_TARGETS} targets")
    return targets


def _egress_target(entry: Any) -> str:
    """An FQDN, a `*.suffix` wildcard, an IP address, a CIDR or `tcp://host:port`, canonical."""
    if not isinstance(entry, str) or not entry.strip() or any(ch.isspace() for ch in entry.strip()):
        raise ValueError(f"egress target {entry!r} must be a non-empty string without whitespace")
    target = entry.strip().lower()
    if target.startswith("tcp://"):
        host, colon, port = target.removeprefix("tcp://").rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"egress target {entry!r} must be tcp://<host>:<port> with port 1-65535")
        return f"tcp://{_egress_target(host.strip('[]'))}:{int(port)}"
    try:
        return (
            str(ipaddress.ip_network(target, strict=True))
            if "/" in target
            else str(ipaddress.ip_address(target))
        )
    except ValueError:
        pass
    if _DOMAIN.fullmatch(target.removeprefix("*.")):
        return target
    raise ValueError(
        f"egress target {entry!r} must be a dotted FQDN, a '*.suffix' wildcard, an IP address or a CIDR"
    )


_REQUIRED_EXAMPLES = {
    "name": "name: my-task",
    "version": "version: 0.1.0",
    "instruction": 'instruction: "Solve the challenge and write the flag to /tmp/result.txt"',
    "verification": "verification: {method: flag, path: /tmp/result.txt, value: FLAG{example}}",
}


def schema_issues(raw: dict[str, Any]) -> tuple[TaskManifest | None, list[Issue]]:
    """The manifest, or one issue per schema error (component = the top-level key)."""
    try:
        return TaskManifest.model_validate(raw), []
    except ValidationError as exc:
        return None, [_issue_of(err) for err in exc.errors()]


def _issue_of(err: Any) -> Issue:
    loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
    component = loc[0] if loc else "task.yaml"
    field = ".".join(part for part in loc[1:] if part not in {"function-after[_method_rules()]"})
    prefix = f"{field}: " if field else ""
    kind, msg = err["type"], str(err["msg"]).removeprefix("Value error, ")
    if kind == "missing" and len(loc) == 1 and component in _REQUIRED_EXAMPLES:
        return error(component, f"required. Example: {_REQUIRED_EXAMPLES[component]}")
    messages = {
        "missing": "required",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "string_too_short": "must not be empty",
        "extra_forbidden": "is not a recognized field",
    }
    return error(component, prefix + messages.get(kind, msg))
