"""A task environment's variables, pure: its `service_urls`, the template variables its
instruction is rendered with, and the environment its commands and scripts run with.

Template variables are built as the SDK's `core/templating.py` builds its context, so rendering
here and rendering there agree: `{svc}_url_{p}`, `{svc}_host_{p}`, `{svc}_port_{p}` for each
published port, then `{svc}_url`, `{svc}_host`, `{svc}_port` of the primary one; then the keys of
provision.sh's JSON object; then the request's `inputs` (later wins). A command's environment
has each of them upper-cased (`web_url` -> `WEB_URL`), then `MODEL_<ROLE>` of the task's model
roles, then the secrets the request named, by their own names.

Inputs and provision output are the caller's and the sandbox's: every function here is total
on them (values coerced, nothing raised but a `TaskenvError` naming the variable, never its value).
"""

import re
from collections.abc import Mapping
from typing import Any

from taskenv.shared.errors import ErrorType, TaskenvError

HOST = "localhost"
# `{{ name }}` as the SDK matches it (`\w`: Unicode word characters). Linear: one `{{` anchors at
# most one scan of the word after it.
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_NOT_IN_ENV_NAME = re.compile(r"[^A-Za-z0-9_]")
# One `NAME=value` string the kernel passes to a process at most (MAX_ARG_STRLEN), and the whole
# environment, leaving room under ARG_MAX (2 MiB by default) for the command itself.
ENV_ENTRY_MAX_BYTES = 128 * 1024
ENV_MAX_BYTES = 1024 * 1024
MODEL_ID_MAX_CHARS = 256
# Names repeated in an error at most (and each cut to this many characters).
SHOWN_NAMES = 5
SHOWN_NAME_CHARS = 64


def service_urls(ports: Mapping[str, list[int]]) -> dict[str, dict[str, Any]]:
    """`{svc: {url, host, port, urls: {"<port>": url}}}` from task.yaml `ports` (the first port of
    a service is its primary one), as the SDK's templating and `TaskEnvironment` read it."""
    found: dict[str, dict[str, Any]] = {}
    for service, published in ports.items():
        if not published:
            continue
        urls = {str(port): f"http://{HOST}:{port}" for port in published}
        primary = published[0]
        found[service] = {"url": urls[str(primary)], "host": HOST, "port": primary, "urls": urls}
    return found


def _host_of(url: str) -> str:
    # The SDK's `{svc}_host_{port}`: what follows the scheme ("localhost:8080").
    return url.split("://", 1)[1] if "://" in url else url


def _port_of(meta: Mapping[str, Any], urls: Any) -> int | None:
    port = meta.get("port")
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for key in urls if isinstance(urls, dict) else ():
        if str(key).isdigit():
            return int(str(key))
    return None


def _service_context(service: str, meta: Mapping[str, Any]) -> dict[str, str]:
    context: dict[str, str] = {}
    urls = meta.get("urls")
    for key, url in urls.items() if isinstance(urls, dict) else ():
        if str(key).isdigit() and isinstance(url, str):
            port = int(str(key))
            context[f"{service}_url_{port}"] = url
            context[f"{service}_host_{port}"] = _host_of(url)
            context[f"{service}_port_{port}"] = str(port)
    primary = _port_of(meta, urls)
    if isinstance(meta.get("url"), str):
        context[f"{service}_url"] = meta["url"]
    if isinstance(meta.get("host"), str):
        context[f"{service}_host"] = meta["host"]
    if primary is not None:
        context[f"{service}_port"] = str(primary)
    return context


def coerce(value: Any) -> str | None:
    """A value as the SDK puts it into the template: booleans `true`/`false`, None absent (its
    placeholder stays), anything else its `str`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except (ValueError, RecursionError):  # an integer past Python's digit limit; nesting too deep
        return None


def _coerced(values: Mapping[Any, Any] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in (values or {}).items():
        text = coerce(value)
        if isinstance(key, str) and text is not None:
            found[key] = text
    return found


def template_variables(
    urls: Mapping[str, Any], provision_vars: Mapping[Any, Any] | None, inputs: Mapping[Any, Any] | None
) -> dict[str, str]:
    """Every template variable, later sources winning: service URLs, provision's, inputs."""
    variables: dict[str, str] = {}
    for service, meta in urls.items():
        if isinstance(service, str) and isinstance(meta, Mapping):
            variables.update(_service_context(service, meta))
    variables.update(_coerced(provision_vars))
    variables.update(_coerced(inputs))
    return variables


def render_instruction(template: str, variables: Mapping[str, str]) -> str:
    """`{{ name }}` replaced where `name` is known; unknown placeholders stay as written."""
    if not template:
        return template

    def replaced(match: re.Match[str]) -> str:
        value = variables.get(match.group(1))
        return match.group(0) if value is None else value

    return PLACEHOLDER.sub(replaced, template)


def env_name(variable: str) -> str:
    """A variable's name in a command's environment: upper-cased, each character that is not
    `[A-Za-z0-9_]` made `_`, `_` put before a leading digit ("" stays "": no name)."""
    name = _NOT_IN_ENV_NAME.sub("_", variable.upper())
    return "_" + name if name[:1].isdigit() else name


def _shown(names: list[str]) -> str:
    cut = [name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "…" for name in names]
    more = len(cut) - SHOWN_NAMES
    return ", ".join(cut[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


def _unpassable(name: str, value: str) -> str | None:
    """Why `name=value` cannot be one entry of a process's environment, or None."""
    if "\0" in value:
        return "contains a NUL character"
    try:
        size = len(name) + 1 + len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if size > ENV_ENTRY_MAX_BYTES:
        return f"is over {ENV_ENTRY_MAX_BYTES} bytes"
    return None


def command_env(
    variables: Mapping[str, str], secrets: Mapping[str, str], model_vars: Mapping[str, str]
) -> dict[str, str]:
    """The environment of an environment's commands and scripts: the template variables
    upper-cased, then the models', then the secrets (by their own names; later wins). Raises a
    422 naming each variable that no process can be given (never its value)."""
    env: dict[str, str] = {}
    for name, value in variables.items():
        if env_name(name):
            env[env_name(name)] = value
    env.update(model_vars)
    env.update(secrets)
    bad = sorted(name for name, value in env.items() if _unpassable(name, value))
    if bad:
        raise TaskenvError(
            ErrorType.VALIDATION,
            f"These variables cannot be passed to a process (a NUL character, not UTF-8, or over"
            f" {ENV_ENTRY_MAX_BYTES} bytes): {_shown(bad)}",
        )
    total = sum(len(name) + len(value.encode("utf-8")) + 2 for name, value in env.items())
    if total > ENV_MAX_BYTES:
        raise TaskenvError(
            ErrorType.VALIDATION,
            f"The environment's variables take {total} bytes, over the {ENV_MAX_BYTES} one process may get",
        )
    return env


def _roles(models: list[str] | dict[str, Any] | None) -> dict[str, tuple[str, bool]]:
    """role -> (model id, overridable) of a role-keyed `models`; a flat list names no role (it
    only scopes the task's inference access, as Dreadnode reads it). Malformed roles are skipped."""
    if not isinstance(models, dict):
        return {}
    roles: dict[str, tuple[str, bool]] = {}
    for role, spec in models.items():
        model, overridable = (spec, True) if isinstance(spec, str) else (None, True)
        if isinstance(spec, dict):
            model, overridable = spec.get("model"), spec.get("overridable", True)
        if isinstance(role, str) and env_name(role) and isinstance(model, str) and model.strip():
            roles[role] = (model.strip(), overridable is not False)
    return roles


def _model_id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty model id"
    if any(ch.isspace() for ch in value.strip()):
        return "must not contain whitespace"
    if len(value.strip()) > MODEL_ID_MAX_CHARS:
        return f"must be at most {MODEL_ID_MAX_CHARS} characters"
    return None


def _override_problems(
    roles: dict[str, tuple[str, bool]], overrides: Mapping[Any, Any]
) -> list[dict[str, Any]]:
    problems = []
    for role, value in overrides.items():
        role_text = str(role)[:SHOWN_NAME_CHARS]
        if role not in roles:
            known = _shown(sorted(roles)) if roles else "none"
            msg, kind = f"the task has no model role {role_text!r} (its roles: {known})", "unknown_role"
        elif not roles[role][1]:
            msg, kind = f"the task's model role {role_text!r} is not overridable", "not_overridable"
        elif (problem := _model_id_problem(value)) is not None:
            msg, kind = problem, "invalid_model"
        else:
            continue
        problems.append({"loc": ["body", "model_overrides", role_text], "msg": msg, "type": kind})
    return problems


def model_variables(
    models: list[str] | dict[str, Any] | None, overrides: Mapping[Any, Any] | None
) -> dict[str, str]:
    """`MODEL_<ROLE>` -> model id for each of the task's model roles, with the request's
    overrides; 422 for an override of a role the task lacks or does not let be overridden."""
    roles = _roles(models)
    problems = _override_problems(roles, overrides or {})
    if problems:
        shown = "; ".join(problem["msg"] for problem in problems[:SHOWN_NAMES])
        raise TaskenvError(ErrorType.VALIDATION, f"Invalid model_overrides: {shown}", errors=problems)
    chosen = {role: model for role, (model, _) in roles.items()}
    chosen.update({role: str(value).strip() for role, value in (overrides or {}).items()})
    return {f"MODEL_{env_name(role)}": model for role, model in chosen.items()}
