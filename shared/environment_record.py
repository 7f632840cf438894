"""One environment's record: the Redis hash `keys.environment(id)`, as a typed schema.

The API writes it (`store.create`), workers and scripts change it (shared/scripts.py: the
provision's claim, a host's or worker's loss, a teardown), everyone reads it. Every field any
code or script writes is declared here (tests/test_unit_store.py checks the scripts' fields
against this list). Redis holds strings; the schema parses them and `to_hash` writes them back.
"""

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from taskenv.shared.models import EnvironmentState

# A flag as Redis holds it: "1" set, "" (or absent) not.
Flag = Annotated[bool, BeforeValidator(lambda value: value is True or value == "1")]


class EnvironmentRecord(BaseModel):
    # A field some newer version added is kept in Redis, not read here.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    org: str
    workspace: str
    task_ref: str
    state: EnvironmentState
    # Epoch seconds, written as Python's repr of a float (exact both ways).
    created_at: float
    expires_at: float
    # Why it failed or was torn down; "" when nothing went wrong.
    error: str = ""
    instruction: str = ""
    # SHA-256 of its execute token (shared/secrets.py); the token itself is never stored.
    token_hash: str
    # The host whose worker claimed its provision; "" until one does (`scripts.CLAIM_PROVISION`).
    host: str = ""
    # Its task's TaskSpec, as JSON.
    spec: str
    # The worker process that claimed its provision: failed at once if that worker is lost.
    provisioner: str = ""
    # The host lost with its container (`scripts.SWEEP`): its executes answer 502 host_lost.
    lost_host: str = ""
    # Its container was removed or stopped outside taskenv: executes answer 502 container_gone.
    container_gone: Flag = False
    # Provisioning, waiting for its pushed task's images: shown `building` (worker/task_provision.py).
    building: Flag = False
    # Its task's build failed: the build log's tail, which GET /logs answers.
    build_log: str = ""
    # The create request's `inputs`, `secret_ids` and `model_overrides`, as JSON ("" when absent).
    inputs: str = ""
    secret_ids: str = ""
    model_overrides: str = ""
    # A task environment's `service_urls` once its services run, as JSON ("" before, or none).
    service_urls: str = ""
    # Its task's verification in the shape the SDK's `verify_env_state` reads, as JSON ("": none).
    task_verification: str = ""
    # Its task's teardown script was started (worker/environment_removal.py): it runs once.
    teardown_started: Flag = False
    # How its teardown script ended, as JSON `{"outcome": RunOutcome, "exit_code": int | null}`
    # (worker/sandbox_run.py); "" when none ran (no script, or the sandbox was gone).
    teardown_outcome: str = ""
    # What every command and script of the environment runs with (template variables, secrets,
    # models), as one JSON object sealed with TASKENV_SECRETS_KEY (shared/sealing.py); "" for none.
    variables: str = ""

    def to_hash(self) -> dict[str, str]:
        """The fields as Redis stores them."""
        return {name: _stored(value) for name, value in self.model_dump().items()}


def _stored(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


FIELDS = frozenset(EnvironmentRecord.model_fields)
