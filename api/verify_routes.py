"""POST /api/v1/org/{org}/ws/{workspace}/environments/{env_id}/verify: a taskenv extension that
checks a ready environment against its task's verification (shared/verification.py) on its host
(worker/verify.py) and answers `{passed, method, detail, output}`.

Authenticated by the org's API key, as reading the environment is: grading belongs to whoever
runs the evaluation, not to the agent holding the execute token. What cannot be checked here (no
verification: 409; a judge method: 422) is refused before any job is sent.
"""

import time

from starlette.requests import Request
from starlette.responses import Response

from taskenv.api.auth import require_workspace
from taskenv.api.environments import json_response, record_in, require_state
from taskenv.api.state import app_state
from taskenv.shared import jobs, keys, verification
from taskenv.shared.models import EnvironmentState, VerifyResponse
from taskenv.shared.tasks import TaskSpec


async def verify_environment(request: Request) -> Response:
    state = app_state(request)
    scope = await require_workspace(state.records, request)
    record = await record_in(state, scope, request.path_params["env_id"])
    require_state(record, "verify", EnvironmentState.READY)
    spec = TaskSpec.model_validate_json(record.spec)
    stored = spec.source.verification if spec.source else None
    planned = verification.parse(stored, repr(spec.ref))
    assert stored is not None  # parse refuses a task without one
    payload = jobs.VerifyJob(
        env_id=record.id,
        verification=stored,
        deadline_at=time.time() + planned.timeout_sec,
        user=spec.user,
        workdir=spec.workdir,
    )
    value = await state.dispatcher.call(
        jobs.VERIFY,
        payload,
        queue=keys.host_queue(record.host),
        wait_sec=planned.timeout_sec + state.settings.result_grace_sec,
    )
    return json_response(VerifyResponse.model_validate(value))
