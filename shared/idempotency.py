"""`Idempotency-Key` on execute: a retry gets the first request's answer, never a second run.

One Redis hash per key and environment (`keys.idempotency`), written in the same script that
admits and enqueues the first command (`api/dispatch.py`), so two requests with the same key
arriving together cannot both run it:
- `fingerprint`: what the first request asked (command and timeout); the same key with another
  body is refused;
- `job`, `until`: the first command's job id and the instant its caller stops waiting;
- `result`: its answer, written by the worker when the command ends (`STORE_AND_PUBLISH`);
- `reply:<channel>`: the API processes whose retries wait for that answer.
The hash expires `TASKENV_IDEMPOTENCY_TTL_SEC` after the first request, never before its
command's deadline.
"""

import hashlib
import json

from taskenv.shared.models import ExecuteRequest

MAX_KEY_CHARS = 255
HEADER = "Idempotency-Key"

# Run by the worker when an execute ends, instead of a plain PUBLISH: keep the answer for
# retries and send it to the first caller and to every retry waiting for it.
# KEYS: the idempotency record. ARGV: the first caller's reply channel ('' for none), result.
STORE_AND_PUBLISH = """
local sent = {}
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  sent[ARGV[1]] = true
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[2])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 6) == 'reply:' then
    local channel = string.sub(field, 7)
    if not sent[channel] then
      redis.call('PUBLISH', channel, ARGV[2])
      sent[channel] = true
    end
    redis.call('HDEL', KEYS[1], field)
  end
end
return 1
"""


def fingerprint(body: ExecuteRequest) -> str:
    """What makes two requests the same: the command and its timeout, as parsed."""
    return hashlib.sha256(json.dumps([body.command, body.timeout_sec]).encode()).hexdigest()
