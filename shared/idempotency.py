"""`Idempotency-Key` on execute: a retry gets the first request's answer, never a second run.

One Redis hash per key and environment (`keys.idempotency`), written in the same script that
admits and enqueues the first command (`api/dispatch.py`), so two requests with the same key
arriving together cannot both run it:
- `fingerprint`: what the first request asked (command and timeout); the same key with another
  body is refused;
- `job`, `until`: the first command's job id and the instant its caller stops waiting;
- `result`: its answer, written by the worker when the command ends (`scripts.STORE_AND_PUBLISH`);
- `reply:<channel>`: the API processes whose retries wait for that answer.
The hash expires `TASKENV_IDEMPOTENCY_TTL_SEC` after the first request, never before its
command's deadline.
"""

import hashlib
import json

from taskenv.shared.models import ExecuteRequest

MAX_KEY_CHARS = 255
HEADER = "Idempotency-Key"


def fingerprint(body: ExecuteRequest) -> str:
    """What makes two requests the same: the command and its timeout, as parsed."""
    return hashlib.sha256(json.dumps([body.command, body.timeout_sec]).encode()).hexdigest()
