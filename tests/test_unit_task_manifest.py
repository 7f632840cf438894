"""task.yaml and the whole-task rules, with the public SDK validator's error rules: each case
below is refused (or accepted) by `dn task validate` the same way."""

import hashlib

import pytest
import yaml

from taskenv.shared import task_yaml
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_manifest import IssueLevel, parse_flag_hash, schema_issues
from taskenv.shared.task_validation import TaskInvalid, validate

FLAG = {"method": "flag", "path": "/tmp/result.txt", "value": "FLAG{x}"}
SHA = hashlib.sha256(b"FLAG{x}").hexdigest()


def manifest(**overrides: object) -> dict:
    return {
        "name": "web-lab",
        "version": "1.0.0",
        "instruction": "Solve it.",
        "verification": FLAG,
        **overrides,
    }


def messages(raw: dict) -> list[str]:
    _, issues = schema_issues(raw)
    assert all(issue.level is IssueLevel.ERROR for issue in issues)
    return [str(issue) for issue in issues]


def test_a_minimal_manifest_is_valid():
    parsed, issues = schema_issues(manifest(unknown_key="ignored", author={"name": "Ann"}, tags=[1, "a"]))
    assert issues == [] and parsed is not None
    assert parsed.author == "Ann" and parsed.tags == ["1", "a"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {},
            [
                "name: required. Example: name: my-task",
                "version: required",
                "instruction: required",
                "verification: required",
            ],
        ),
        (manifest(name="Web_Lab"), ["name: 'Web_Lab' is not kebab-case"]),
        (manifest(version="1.0"), ["version: '1.0' is not fixed semver"]),
        (manifest(version="v1.0.0"), ["version: 'v1.0.0' is not fixed semver"]),
        (manifest(instruction=""), ["instruction: must not be empty"]),
        (manifest(verification={"path": "/tmp/x", "value": "v"}), ["verification: must specify 'method'"]),
        (
            manifest(verification={"method": "flag", "path": "/tmp/x"}),
            ["verification: flag verification requires either 'value'"],
        ),
        (manifest(verification={}), ["verification: must specify 'method'"]),
        (
            manifest(verification={**FLAG, "hash": "sha256:" + SHA}),
            ["verification: 'hash' and 'value' are mutually exclusive"],
        ),
        (manifest(verification={"method": "flag", "value": "x"}), ["verification: 'path' is required"]),
        (manifest(verification={"method": "script"}), ["verification: 'script' is required"]),
        (
            manifest(verification={"method": "outcome_judge", "judge": {"model": "m"}}),
            ["verification: 'judge.rubric' is required"],
        ),
        (
            manifest(
                verification={
                    "method": "outcome_judge",
                    "judge": {"model": "m", "rubric": "r"},
                    "script": "v.sh",
                }
            ),
            ["verification: 'script' must not be set"],
        ),
        (
            manifest(
                verification={"method": "flag_and_judge", "judge": {"model": "m"}, "script": "v.sh", **FLAG}
                | {"method": "flag_and_judge"}
            ),
            ["verification: 'script' must not be set"],
        ),
        (
            manifest(verification={"method": "script", "script": "v.sh", "judge": {"model": "m"}}),
            ["verification: 'judge' must not be set"],
        ),
        (manifest(verification={"method": "nope"}), ["verification: method"]),
        (
            manifest(verification={"method": "flag", "path": "/tmp/x", "hash": "abc"}),
            ["verification: invalid hash: sha256 expects 64"],
        ),
        (
            manifest(verification={"method": "flag", "path": "/tmp/x", "hash": "crc32:abcd"}),
            ["verification: invalid hash: unsupported hash algorithm 'crc32'"],
        ),
        (manifest(models={"Bad-Role": "m"}), ["models: model role 'Bad-Role' must match"]),
        (manifest(models={"": "m"}), ["models: model role '' must match"]),
        (manifest(models=["a b"]), ["models: models entry id 'a b' must not contain whitespace"]),
        (manifest(egress={"deny": []}), ["egress: egress has unknown key(s): deny"]),
        (manifest(egress={"allow": ["http://x.com/"]}), ["egress: egress target 'http://x.com/'"]),
        (manifest(ports={"web": ["eighty"]}), ["ports: web: must be an integer"]),
        (manifest(provision={"timeout": 3}), ["provision: script: required"]),
    ],
)
def test_schema_errors_name_the_field(raw, expected):
    found = messages(raw)
    for start in expected:
        assert any(message.startswith(start) for message in found), (start, found)


@pytest.mark.parametrize(
    "verification",
    [
        {"method": "flag", "path": "/tmp/x", "hash": f"sha256:{SHA}"},
        {"method": "flag", "path": "/tmp/x", "hash": SHA},
        {"method": "flag", "path": "/tmp/x", "hash": "md5:" + "a" * 32},
        {"method": "flag", "submission_path": "/tmp/x", "flag_hash": "SHA512:" + "F" * 128},
        {"script": "verify.sh", "where": "agent"},
        {"method": "script", "script": "verify.sh", "path": "/tmp/ignored"},
        {"method": "outcome_judge", "judge": {"model": "m", "rubric": "grade it"}},
        {"method": "script_and_judge", "script": "verify.sh", "judge": {"model": "m"}},
        {"judge": {"model": "m"}, "path": "/tmp/x", "value": "v"},
    ],
)
def test_accepted_verifications(verification):
    assert messages(manifest(verification=verification)) == []


def test_flag_hash_forms():
    assert parse_flag_hash("SHA256:" + SHA.upper()) == ("sha256", SHA)
    assert parse_flag_hash(SHA) == ("sha256", SHA)
    with pytest.raises(ValueError, match="bare hash is sha256"):
        parse_flag_hash("a" * 32)


def test_models_and_egress_are_normalised():
    parsed, _ = schema_issues(
        manifest(
            models={"judge": " gpt ", "red": {"model": "x", "overridable": False}},
            egress={
                "allow": ["API.Example.com", "127.0.0.0/8", "*.example.org", "tcp://db.example.com:5432"]
            },
        )
    )
    assert parsed is not None
    assert parsed.models == {
        "judge": {"model": "gpt", "overridable": True},
        "red": {"model": "x", "overridable": False},
    }
    assert parsed.egress == {
        "allow": ["api.example.com", "127.0.0.0/8", "*.example.org", "tcp://db.example.com:5432"]
    }


COMPOSE = {"services": {"web": {"build": "./web", "ports": ["8080:8080"]}}}


def task(raw: dict | None = None, compose: dict | None = COMPOSE, **extra: bytes) -> TaskFiles:
    files = {
        "task.yaml": yaml.safe_dump(raw or manifest(ports={"web": [8080]})).encode(),
        "web/Dockerfile": b"FROM scratch\n",
        **extra,
    }
    if compose is not None:
        files["docker-compose.yaml"] = yaml.safe_dump(compose).encode()
    return TaskFiles(files=files)


def refusals(files: TaskFiles) -> list[str]:
    with pytest.raises(TaskInvalid) as caught:
        validate(files)
    return [str(issue) for issue in caught.value.issues]


def test_a_whole_task_validates():
    validated = validate(task())
    assert validated.manifest.name == "web-lab" and validated.readme is None
    assert validate(task(**{"README.md": b"# Web lab"})).readme == "# Web lab"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (TaskFiles(files={}), "task.yaml: file not found"),
        (TaskFiles(files={"task.yaml": b"[1, 2]"}), "task.yaml: task.yaml must hold a YAML mapping"),
        (TaskFiles(files={"task.yaml": b"a: [unclosed"}), "task.yaml: could not parse YAML"),
        (task(compose=None), "compose: docker-compose.yaml is required when task.yaml declares 'ports'"),
        (
            task(compose={"version": "3"}),
            "compose: docker-compose.yaml is missing the required 'services:' block",
        ),
        (task(manifest(ports={"api": [80]})), "ports: service 'api' is declared in task.yaml but not found"),
        (
            task(manifest(ports={"web": [9090]})),
            "ports: port 9090 is declared for service 'web' but the service only publishes [8080]",
        ),
        (
            task(compose={"services": {"web": {"build": "../outside"}}}),
            "dockerfile: service 'web' build context escapes",
        ),
        (
            task(compose={"services": {"web": {"build": {"context": "web", "dockerfile": "Nope"}}}}),
            "dockerfile: service 'web' references 'Nope'",
        ),
        (
            task(manifest(ports={"web": [8080]}, instruction="Go to http://web:8080/login")),
            "instruction: instruction hardcodes 'http://web'",
        ),
        (
            task(manifest(ports={"web": [8080]}, instruction="Go to http://localhost:8080/")),
            "use '{{challenge_url}}'",
        ),
        (
            task(manifest(ports={"web": [8080]}, verification={"script": "verify.sh"})),
            "verification: script 'verify.sh' was not found",
        ),
        (
            task(manifest(ports={"web": [8080]}, provision={"script": "../p.sh"})),
            "provision: script '../p.sh' was not found",
        ),
        (
            task(manifest(ports={"web": [8080]}, solution={"script": "s.sh"}, teardown={"script": "t.sh"})),
            "solution: script 's.sh' was not found",
        ),
    ],
)
def test_task_rules(files, expected):
    found = refusals(files)
    assert any(expected in message for message in found), found


def test_every_problem_is_reported_in_one_pass():
    found = refusals(
        task(
            manifest(name="BAD", ports={"api": [1]}, verification={"script": "v.sh"}),
            compose={"services": {"web": {"build": "../x", "privileged": True}}},
        )
    )
    assert len(found) >= 5, found


def test_template_urls_and_external_urls_pass():
    raw = manifest(ports={"web": [8080]}, instruction="Open {{web_url}}/login, docs at https://example.com/x")
    assert validate(task(raw)).manifest.instruction.startswith("Open")


def test_yaml_alias_bombs_are_refused_and_merge_keys_work():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(task_yaml.YamlError, match="expands to more than"):
        task_yaml.load("\n".join(lines))
    with pytest.raises(task_yaml.YamlError, match="refers to itself"):
        task_yaml.load("a: &a [*a]")
    assert task_yaml.load("x: &c {k: v}\ny: {<<: *c, z: 1}") == {"x": {"k": "v"}, "y": {"k": "v", "z": 1}}
    found = refusals(TaskFiles(files={"task.yaml": "\n".join(lines).encode()}))
    assert "expands to more than" in found[0]
