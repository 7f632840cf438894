"""What a create request brings beyond its task: checked before anything is made, kept in the
record for the worker that provisions it.

A task that declares egress is refused (this deployment gives environments no route out, and
running it offline would mislead its caller); `secret_ids` must be the org's own secrets (404
otherwise, without reading their values); `model_overrides` may only replace a task's
overridable model roles. `inputs` are kept as given: they fill the instruction's template and
reach commands as variables (shared/task_variables.py).
"""

import json
from typing import Any

from redis.asyncio import Redis

from taskenv.shared import secrets_store
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import ProvisionRequest
from taskenv.shared.task_variables import model_variables, render_instruction, template_variables
from taskenv.shared.tasks import TaskSpec
from taskenv.shared.verification import task_verification


async def task_fields(records: Redis, org: str, spec: TaskSpec, body: ProvisionRequest) -> dict[str, str]:
    """The record fields for the request's task parts; raises the request's error."""
    source = spec.source
    if source is not None and source.egress and source.egress.get("allow"):
        raise _egress_refused(spec, source.egress["allow"])
    fields: dict[str, str] = {}
    if body.secret_ids:
        await secrets_store.check_ids(records, org, body.secret_ids)
        fields["secret_ids"] = json.dumps(body.secret_ids)
    if body.model_overrides:
        model_variables(source.models if source else None, body.model_overrides)
        fields["model_overrides"] = json.dumps(body.model_overrides)
    if body.inputs:
        fields["inputs"] = json.dumps(body.inputs)
        # Shown rendered with the inputs at once; the provision renders it again with the rest.
        template = template_variables({}, None, body.inputs)
        fields["instruction"] = render_instruction(spec.instruction or "", template)
    shape = task_verification(source.verification) if source and source.verification else None
    if shape:
        fields["task_verification"] = json.dumps(shape)
    return fields


def _egress_refused(spec: TaskSpec, targets: list[Any]) -> TaskenvError:
    shown = ", ".join(str(target) for target in targets[:5]) + (", ..." if len(targets) > 5 else "")
    message = (
        f"task {spec.ref} declares egress ({shown}); this deployment gives task environments no"
        " network egress, so it cannot run here"
    )
    return TaskenvError(
        ErrorType.VALIDATION,
        f"Task refused: {message}",
        errors=[{"loc": ["body", "task_ref"], "msg": message, "type": "egress_unsupported"}],
    )
