"""Org secrets through the real service (Redis, worker, API processes) and the `taskenv secrets`
commands: created, listed and deleted, their value in no answer, no Redis value and no log line
of the API or the worker."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from taskenv.shared import keys
from tests.conftest import Service
from tests.harness import create_key
from tests.helpers import sync_http

pytestmark = pytest.mark.integration


def secrets_url(service: Service, org: str = "acme") -> str:
    return f"{service.base_url}/api/v1/org/{org}/secrets"


def taskenv(service: Service, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskenv", *args],
        env=service.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def home_of(service: Service) -> Path:
    return Path(service.redis_url.removeprefix("unix://")).parent


def stored(service: Service, org: str) -> str:
    client = redis.Redis(unix_socket_path=service.redis_url.removeprefix("unix://"), decode_responses=True)
    try:
        return repr(client.hgetall(keys.org_secrets(org)))
    finally:
        client.close()


def test_a_secret_is_stored_listed_and_deleted_and_its_value_appears_nowhere(service):
    org = f"sec-{uuid.uuid4().hex[:8]}"
    api_value, cli_value = f"api-{uuid.uuid4().hex}", f"cli-{uuid.uuid4().hex}"
    headers = {"X-API-Key": create_key(service.env, org)}
    url = secrets_url(service, org)
    with sync_http(timeout=30) as http:
        created = http.post(url, json={"name": "API_TOKEN", "value": api_value}, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["masked_value"] == "********"
        made = taskenv(service, "secrets", "create", "CLI_TOKEN", "--org", org, stdin=cli_value + "\n")
        assert made.returncode == 0, made.stderr
        cli_id = made.stdout.strip()
        assert str(uuid.UUID(cli_id)) == cli_id

        listed = http.get(url, headers=headers)
        assert sorted(s["name"] for s in listed.json()["secrets"]) == ["API_TOKEN", "CLI_TOKEN"]
        shown = taskenv(service, "secrets", "ls", "--org", org, "--json")
        assert shown.returncode == 0, shown.stderr
        assert {s["id"] for s in json.loads(shown.stdout)["secrets"]} == {created.json()["id"], cli_id}
        table = taskenv(service, "secrets", "ls", "--org", org)
        answers = [created.text, made.stdout, listed.text, shown.stdout, table.stdout]
        answers.append(http.get(f"{url}/{cli_id}", headers=headers).text)
        assert not [a for a in answers if api_value in a or cli_value in a]
        assert api_value not in stored(service, org) and cli_value not in stored(service, org)

        assert http.delete(f"{url}/{created.json()['id']}", headers=headers).status_code == 204
        removed = taskenv(service, "secrets", "rm", cli_id, "--org", org)
        assert removed.returncode == 0 and "CLI_TOKEN" in removed.stdout, removed.stderr
        assert http.get(url, headers=headers).json() == {"secrets": [], "total": 0}
        again = taskenv(service, "secrets", "rm", cli_id, "--org", org)
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr

    logs = (home_of(service) / "service.log").read_text(errors="replace")
    assert logs and api_value not in logs and cli_value not in logs


def test_cli_errors_are_one_line(service):
    bad = taskenv(service, "secrets", "create", "1BAD", "--org", "acme", stdin="value")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.startswith("taskenv: validation_error") and len(bad.stderr.strip().splitlines()) == 1
    both = taskenv(service, "secrets", "create", "OK", "--org", "acme", "--value", "v", "--from-stdin")
    assert both.returncode == 2
