"""Every Redis script taskenv runs, each declared with the names of its keys and arguments
(`shared/redis_script.py`). Environment states and each script's outcomes are enums whose
members are Lua constants of the same names: the Lua never spells a state by hand.

taskenv needs one Redis, not a cluster: some scripts build key names from a prefix argument
(an environment's record from its id), which a cluster could not route.
"""

from enum import StrEnum

from taskenv.shared.models import EnvironmentState
from taskenv.shared.quotas import Quota
from taskenv.shared.redis_script import Script


class CreateOutcome(StrEnum):
    """`CREATE_ENVIRONMENT` answers this, or the `Quota` that refused it."""

    CREATED = "created"


class ClaimOutcome(StrEnum):
    """`CLAIM_PROVISION` answers this, or the environment's state when it is not provisioning."""

    CLAIMED = "claimed"
    FULL = "full"
    TAKEN = "taken"
    MISSING = "missing"


class AdmissionOutcome(StrEnum):
    """`ENQUEUE` and `ADMIT_AND_ENQUEUE` answer this, a `Quota`, or the environment's state
    when it is not ready."""

    QUEUED = "queued"
    QUEUE_FULL = "queue_full"
    RATE = "rate"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    MISSING = "missing"
    BUSY = "busy"


class LossKind(StrEnum):
    """What a loss event on `keys.EVENTS` announces (`SWEEP`)."""

    HOST_LOST = "host_lost"
    WORKER_LOST = "worker_lost"


def _script(
    name: str,
    keys: tuple[str, ...],
    args: tuple[str, ...],
    body: str,
    *,
    rest: str = "",
    enums: tuple[type[StrEnum], ...] = (),
    library: tuple[str, ...] = (),
) -> Script:
    return Script(name, keys, args, body, rest, (EnvironmentState, *enums), library)


# full(set, now, limit, environment key prefix or ''): drops the entries past their score
# (expiry or deadline) and, with an environment key prefix, the environments no longer
# provisioning or ready; true when `limit` > 0 and the entries left reach it. With no limit
# nothing is walked.
_FULL = """
local function full(key, now, limit, env_prefix)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if limit <= 0 then return false end
  if env_prefix == '' then return redis.call('ZCARD', key) >= limit end
  local live = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local state = redis.call('HGET', env_prefix .. id, 'state')
    if state == READY or state == PROVISIONING then
      live = live + 1
    else
      redis.call('ZREM', key, id)
    end
  end
  return live >= limit
end
"""

# take_token(bucket key, now s, rate/s, burst): 0 when a token was taken, else the ms until one
# is there. A refusal writes nothing: the bucket refills from its last count either way.
_RATE_BUCKET = """
local function take_token(key, now, rate, burst)
  if rate <= 0 then return 0 end
  local bucket = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(bucket[1]) or burst
  local at = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then return math.ceil((1 - tokens) / rate * 1000) end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return 0
end
"""

# What arq's `enqueue_job` does (the job key expires with the job, so a job that waited past its
# deadline never starts), plus handing the id to the queue's workers: the job is claimed here
# (arq's in-progress key) for whichever worker pops its wake, so that worker runs it without a
# claim round trip and no other worker's pass over the queue takes it; a small job's record
# rides its wake (`wake_entry`: shared/enqueue.py `Wake`), so that worker needs no read either.
# Past the wake list's cap the job is left unclaimed, for the workers' periodic pass to find. A
# queue holding its bound of jobs (waiting and running; 0: no bound) takes no more. A job that
# exists already can only be this very call's, retried after a lost reply (ids are fresh uuids):
# it is queued.
_ENQUEUE_KEYS = ("job", "result", "queue", "wake", "in_progress")
_ENQUEUE_ARGS = (
    "expiry_ms", "serialized_job", "score", "job_id", "wake_cap", "claim_ms", "queue_bound", "wake_entry",
)  # fmt: skip
_ENQUEUE_FUNCTION = """
local function enqueue()
  if redis.call('EXISTS', job, result) > 0 then return QUEUED end
  local bound = tonumber(queue_bound)
  if bound > 0 and redis.call('ZCARD', queue) >= bound then return QUEUE_FULL end
  redis.call('PSETEX', job, expiry_ms, serialized_job)
  redis.call('ZADD', queue, score, job_id)
  if redis.call('LLEN', wake) < tonumber(wake_cap) then
    redis.call('PSETEX', in_progress, claim_ms, '1')
    redis.call('RPUSH', wake, wake_entry)
    redis.call('EXPIRE', wake, 86400)
  end
  return QUEUED
end
"""

ENQUEUE = _script(
    "enqueue",
    _ENQUEUE_KEYS,
    _ENQUEUE_ARGS,
    "return {enqueue()}",
    enums=(AdmissionOutcome,),
    library=(_ENQUEUE_FUNCTION,),
)

# An execute, in the same round trip as its enqueue: counted against its org's rate; with an
# Idempotency-Key already used in this environment, the first command's answer (or where to wait
# for it) instead of a second run (shared/idempotency.py); else enqueued only if the environment
# is ready and runs fewer than its limit of commands and its org and workspace are within their
# quotas of running commands (shared/commands.py). The running command is recorded under its
# deadline, so a crashed API process cannot leak it; the sets' expiries are only ever extended.
ADMIT_AND_ENQUEUE = _script(
    "admit_and_enqueue",
    (*_ENQUEUE_KEYS, "environment", "env_commands", "org_bucket", "idempotency", "org_commands",
     "workspace_commands"),
    (*_ENQUEUE_ARGS, "now", "command_until", "env_limit", "org_rate", "org_burst", "fingerprint",
     "idempotency_ttl_ms", "reply_channel", "org_limit", "workspace_limit"),
    """
if redis.call('EXISTS', job, result) > 0 then return {QUEUED} end
local clock = tonumber(now)
local wait = take_token(org_bucket, clock, tonumber(org_rate), tonumber(org_burst))
if wait > 0 then return {RATE, wait} end
if fingerprint ~= '' then
  local seen = redis.call('HMGET', idempotency, 'fingerprint', 'job', 'until', 'result')
  if seen[1] then
    if seen[1] ~= fingerprint then return {MISMATCH} end
    if not seen[4] then redis.call('HSET', idempotency, 'reply:' .. reply_channel, '1') end
    return {REPLAY, seen[2], seen[3], seen[4]}
  end
end
local state = redis.call('HGET', environment, 'state')
if not state then return {MISSING} end
if state ~= READY then return {state} end
redis.call('ZREMRANGEBYSCORE', env_commands, '-inf', clock)
if redis.call('ZCARD', env_commands) >= tonumber(env_limit) then return {BUSY} end
if full(org_commands, clock, tonumber(org_limit), '') then return {ORG_COMMANDS} end
if full(workspace_commands, clock, tonumber(workspace_limit), '') then return {WORKSPACE_COMMANDS} end
local queued = enqueue()
if queued ~= QUEUED then return {queued} end
local hold_ms = math.ceil((tonumber(command_until) - clock) * 1000)
for _, running in ipairs({env_commands, org_commands, workspace_commands}) do
  redis.call('ZADD', running, command_until, job_id)
  if redis.call('PTTL', running) < hold_ms + 60000 then redis.call('PEXPIRE', running, hold_ms + 60000) end
end
if fingerprint ~= '' then
  redis.call('HSET', idempotency, 'fingerprint', fingerprint, 'job', job_id, 'until', command_until)
  redis.call('PEXPIRE', idempotency, math.max(tonumber(idempotency_ttl_ms), hold_ms))
end
return {QUEUED}
""",
    enums=(AdmissionOutcome, Quota),
    library=(_RATE_BUCKET, _FULL, _ENQUEUE_FUNCTION),
)  # fmt: skip

# arq's claim on a job (a worker's pass over the queue), atomically: not running anywhere, still
# queued, due.
CLAIM_JOB = _script(
    "claim_job",
    ("in_progress", "queue"),
    ("job_id", "now_ms", "claim_ms"),
    """
if redis.call('EXISTS', in_progress) == 1 then return 0 end
local score = redis.call('ZSCORE', queue, job_id)
if (not score) or tonumber(score) > tonumber(now_ms) then return 0 end
redis.call('PSETEX', in_progress, claim_ms, '1')
return score
""",
)

# Run by the worker when an execute with an Idempotency-Key ends, instead of a plain PUBLISH:
# keep the answer for retries and send it to the first caller and to every retry waiting for it.
STORE_AND_PUBLISH = _script(
    "store_and_publish",
    ("idempotency",),
    ("reply_channel", "answer"),
    """
local sent = {}
if reply_channel ~= '' then
  redis.call('PUBLISH', reply_channel, answer)
  sent[reply_channel] = true
end
if redis.call('EXISTS', idempotency) == 0 then return 0 end
redis.call('HSET', idempotency, 'result', answer)
for _, field in ipairs(redis.call('HKEYS', idempotency)) do
  if string.sub(field, 1, 6) == 'reply:' then
    local channel = string.sub(field, 7)
    if not sent[channel] then
      redis.call('PUBLISH', channel, answer)
      sent[channel] = true
    end
    redis.call('HDEL', idempotency, field)
  end
end
return 1
""",
)

# The API key's org and workspace, with one request counted against that org's rate. The org
# is known only once the key is read, so its bucket's name is built from a prefix.
LOOKUP_API_KEY = _script(
    "lookup_api_key",
    ("api_key",),
    ("bucket_prefix", "now", "rate", "burst"),
    """
local scope = redis.call('HMGET', api_key, 'org', 'workspace')
if (not scope[1]) or (not scope[2]) then return false end
local wait = take_token(bucket_prefix .. scope[1], tonumber(now), tonumber(rate), tonumber(burst))
return {scope[1], scope[2], wait}
""",
    library=(_RATE_BUCKET,),
)

# Store an API key's record and index it, in one step.
CREATE_API_KEY = _script(
    "create_api_key",
    ("api_key", "org_index", "orgs"),
    ("org", "workspace", "created_at", "key_hash"),
    """
redis.call('HSET', api_key, 'org', org, 'workspace', workspace, 'created_at', created_at)
redis.call('ZADD', org_index, created_at, key_hash)
redis.call('SADD', orgs, org)
""",
)

# Remove an API key's record and its index entry, in one step.
REVOKE_API_KEY = _script(
    "revoke_api_key",
    ("api_key", "org_index", "orgs"),
    ("key_hash", "org"),
    """
redis.call('DEL', api_key)
redis.call('ZREM', org_index, key_hash)
if redis.call('ZCARD', org_index) == 0 then redis.call('SREM', orgs, org) end
""",
)

# Set the deployment's id if there is none, and read the one held, atomically.
JOIN_DEPLOYMENT = _script(
    "join_deployment",
    ("deployment",),
    ("proposed",),
    """
redis.call('SET', deployment, proposed, 'NX')
return redis.call('GET', deployment)
""",
)

# A new environment's record and indexes, only if its org and workspace are within their
# quotas of live environments (shared/quotas.py), which it then joins, scored by its expiry.
# An existing record can only be this very call's, retried after a lost reply (ids are fresh
# uuids): it is not counted twice.
CREATE_ENVIRONMENT = _script(
    "create_environment",
    ("environment", "workspace_index", "execute_token", "provisioning", "org_environments",
     "workspace_environments"),
    ("env_id", "now", "expires_at", "provision_deadline", "token_ttl_sec", "org_limit",
     "workspace_limit", "env_prefix"),
    """
if redis.call('EXISTS', environment) == 1 then return CREATED end
local clock = tonumber(now)
if full(org_environments, clock, tonumber(org_limit), env_prefix) then return ORG_ENVIRONMENTS end
if full(workspace_environments, clock, tonumber(workspace_limit), env_prefix) then
  return WORKSPACE_ENVIRONMENTS
end
redis.call('HSET', environment, unpack(record))
redis.call('ZADD', workspace_index, now, env_id)
redis.call('SET', execute_token, env_id, 'EX', token_ttl_sec)
redis.call('ZADD', provisioning, provision_deadline, env_id)
local expires = tonumber(expires_at)
for _, quota_set in ipairs({org_environments, workspace_environments}) do
  redis.call('ZADD', quota_set, expires, env_id)
  if redis.call('TTL', quota_set) < expires - clock then
    redis.call('EXPIREAT', quota_set, math.ceil(expires) + 1)
  end
end
return CREATED
""",
    rest="record",
    enums=(CreateOutcome, Quota),
    library=(_FULL,),
)  # fmt: skip

# Write the fields only if the record is still in the expected state.
SET_IF_STATE = _script(
    "set_if_state",
    ("environment",),
    ("expected",),
    """
if redis.call('HGET', environment, 'state') ~= expected then return 0 end
redis.call('HSET', environment, unpack(fields))
return 1
""",
    rest="fields",
)

# Set the record's flag `field` unless it is set already or the record is gone: 1 when this call
# set it (a run-once guard). Not HSETNX: a record holds every field from its creation, "" unset.
SET_FLAG_ONCE = _script(
    "set_flag_once",
    ("environment",),
    ("field",),
    """
if redis.call('EXISTS', environment) == 0 or redis.call('HGET', environment, field) == '1' then return 0 end
redis.call('HSET', environment, field, '1')
return 1
""",
)

# Mark torn down, with the reason if one is given; answers the state it was in before.
TEAR_DOWN = _script(
    "tear_down",
    ("environment",),
    ("reason",),
    """
local previous = redis.call('HGET', environment, 'state')
if (not previous) or previous == TORN_DOWN then return previous end
redis.call('HSET', environment, 'state', TORN_DOWN)
if reason ~= '' then redis.call('HSET', environment, 'error', reason) end
return previous
""",
)

# Counting a host's live environments walks its expiry index (at most its cap plus the failed
# ones not expired yet): exact, and atomic with the claim, so workers of one host sharing a
# count cannot overshoot the cap together. The claiming worker process writes its id too: if it
# is lost, the sweep fails the provisions it left unfinished at once.
CLAIM_PROVISION = _script(
    "claim_provision",
    ("environment", "expiry_index"),
    ("env_id", "host", "cap", "env_prefix", "worker"),
    """
local state = redis.call('HGET', environment, 'state')
if state ~= PROVISIONING then return {state or MISSING, 0} end
local live = 0
for _, id in ipairs(redis.call('ZRANGE', expiry_index, 0, -1)) do
  local s = redis.call('HGET', env_prefix .. id, 'state')
  if s == READY or s == PROVISIONING then live = live + 1 end
end
if redis.call('HGET', environment, 'host') ~= '' then return {TAKEN, live} end
if live >= tonumber(cap) then return {FULL, live} end
redis.call('HSET', environment, 'host', host, 'provisioner', worker)
redis.call('ZADD', expiry_index, redis.call('HGET', environment, 'expires_at'), env_id)
return {CLAIMED, live + 1}
""",
    enums=(ClaimOutcome,),
)

# A worker process's heartbeat: itself and its host alive, its load, and its host's counts of
# environments by state; answers the host's drain flag and its live environments.
BEAT = _script(
    "beat",
    ("workers", "hosts", "worker", "host", "expiry_index", "known_hosts"),
    ("now", "worker_id", "host_id", "pid", "started_at", "max_jobs", "running", "jobs", "metrics",
     "worker_ttl_sec", "env_prefix", "drain", "cap"),
    """
redis.call('ZADD', workers, now, worker_id)
redis.call('ZADD', hosts, now, host_id)
redis.call('SADD', known_hosts, host_id)
redis.call('HSET', worker, 'host', host_id, 'pid', pid, 'started_at', started_at, 'beat_at', now,
  'max_jobs', max_jobs, 'running', running, 'jobs', jobs, 'metrics', metrics)
redis.call('EXPIRE', worker, worker_ttl_sec)
local counts = {[READY] = 0, [PROVISIONING] = 0, [FAILED] = 0}
for _, id in ipairs(redis.call('ZRANGE', expiry_index, 0, -1)) do
  local s = redis.call('HGET', env_prefix .. id, 'state')
  if s and counts[s] then counts[s] = counts[s] + 1 end
end
if drain == '1' then redis.call('HSET', host, 'draining', '1') end
redis.call('HSET', host, 'state', 'up', 'beat_at', now, 'cap', cap,
  READY, counts[READY], PROVISIONING, counts[PROVISIONING], FAILED, counts[FAILED])
return {redis.call('HGET', host, 'draining') or '', counts[READY] + counts[PROVISIONING]}
""",
)  # fmt: skip

# The losses (shared/hosts.py): workers and hosts silent for `dead_after` seconds, acted on by
# exactly one caller however many run it.
SWEEP = _script(
    "sweep",
    ("workers", "hosts", "events"),
    ("now", "dead_after", "env_prefix", "expiry_prefix", "host_prefix", "worker_prefix",
     "host_queue_prefix", "host_wake_prefix", "provision_queue", "provisioning"),
    """
local clock, dead_s = tonumber(now), tonumber(dead_after)
local lost_workers, lost_hosts = {}, {}
-- Hosts first: a whole host's waiting requests hear `host_lost`, the more telling reason.
for _, h in ipairs(redis.call('ZRANGEBYSCORE', hosts, '-inf', clock - dead_s)) do
  redis.call('ZREM', hosts, h)
  local message = 'host ' .. h .. ' lost: no heartbeat from its workers for ' .. dead_after .. ' s'
  local failed = 0
  for _, id in ipairs(redis.call('ZRANGE', expiry_prefix .. h, 0, -1)) do
    local s = redis.call('HGET', env_prefix .. id, 'state')
    if s == READY or s == PROVISIONING then
      redis.call('HSET', env_prefix .. id, 'state', FAILED, 'error', message, 'lost_host', h)
      failed = failed + 1
    end
  end
  redis.call('HSET', host_prefix .. h, 'state', 'lost', 'lost_at', now, READY, 0, PROVISIONING, 0)
  redis.call('DEL', host_queue_prefix .. h, host_wake_prefix .. h)
  redis.call('PUBLISH', events, cjson.encode({kind = HOST_LOST, host = h, error = message}))
  table.insert(lost_hosts, h)
  table.insert(lost_hosts, failed)
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', workers, '-inf', clock - dead_s)) do
  redis.call('ZREM', workers, w)
  local info = redis.call('HMGET', worker_prefix .. w, 'host', 'jobs')
  redis.call('DEL', worker_prefix .. w)
  local host, jobs = info[1] or '', info[2] or ''
  -- Its running jobs will never end: out of their queues' counts now, not at arq's timeout.
  for id in string.gmatch(jobs, '%S+') do
    redis.call('ZREM', host_queue_prefix .. host, id)
    redis.call('ZREM', provision_queue, id)
  end
  -- The provisions it claimed and left unfinished: failed now, not at their deadline.
  local failed = 0
  if host ~= '' then
    local message = 'worker ' .. w .. ' lost while provisioning it: no heartbeat for ' .. dead_after .. ' s'
    for _, id in ipairs(redis.call('ZRANGE', expiry_prefix .. host, 0, -1)) do
      local env = redis.call('HMGET', env_prefix .. id, 'state', 'provisioner')
      if env[1] == PROVISIONING and env[2] == w then
        redis.call('HSET', env_prefix .. id, 'state', FAILED, 'error', message)
        redis.call('ZREM', provisioning, id)
        failed = failed + 1
      end
    end
  end
  -- Announced even with no job listed: one it took after its last beat is lost too, and a
  -- waiting DELETE re-runs its teardown on hearing of any loss on its host.
  local event = {kind = WORKER_LOST, host = host, worker = w, jobs = jobs}
  redis.call('PUBLISH', events, cjson.encode(event))
  table.insert(lost_workers, w)
  table.insert(lost_workers, failed)
end
return {lost_workers, lost_hosts}
""",
    enums=(LossKind,),
)  # fmt: skip

# A worker's clean exit; if it was its host's last live worker, the host is stopped (not lost).
LEAVE = _script(
    "leave",
    ("workers", "hosts", "worker", "host"),
    ("worker_id", "host_id", "now", "dead_after", "worker_prefix"),
    """
redis.call('ZREM', workers, worker_id)
redis.call('DEL', worker)
local alive = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', workers, tonumber(now) - tonumber(dead_after), '+inf')) do
  if redis.call('HGET', worker_prefix .. w, 'host') == host_id then alive = alive + 1 end
end
if alive == 0 then
  redis.call('ZREM', hosts, host_id)
  redis.call('HSET', host, 'state', 'stopped')
end
return alive
""",
)

# The task registry (shared/task_store.py): blobs, versions, visibility.


class BlobOutcome(StrEnum):
    STORED = "stored"
    EXISTS = "exists"
    OVER_BUDGET = "over_budget"


class CommitOutcome(StrEnum):
    COMMITTED = "committed"
    EXISTS = "exists"
    MISSING_BLOB = "missing_blob"


# Store a blob, pending, if the org's storage has room. Expired pending blobs (uploaded, never
# named by a version) are freed first. A blob already known is not stored again; if still
# pending, its deadline moves on.
PUT_TASK_BLOB = Script(
    "put_blob",
    ("blob", "refs", "pending", "used"),
    ("digest", "data", "now", "deadline", "budget", "blob_prefix"),
    """
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now)) do
  redis.call('ZREM', pending, stale)
  if redis.call('HGET', refs, stale) == '0' then
    redis.call('HDEL', refs, stale)
    redis.call('DECRBY', used, redis.call('STRLEN', blob_prefix .. stale))
    redis.call('DEL', blob_prefix .. stale)
  end
end
local known = redis.call('HGET', refs, digest)
if known then
  if known == '0' then redis.call('ZADD', pending, deadline, digest) end
  return EXISTS
end
if tonumber(redis.call('GET', used) or '0') + #data > tonumber(budget) then return OVER_BUDGET end
redis.call('SET', blob, data)
redis.call('HSET', refs, digest, 0)
redis.call('ZADD', pending, deadline, digest)
redis.call('INCRBY', used, #data)
return STORED
""",
    enums=(BlobOutcome,),
)

# A new version, only if (org, name, version) is free and every blob it names is stored; its
# blobs then count one more reference and are no longer pending.
COMMIT_TASK_VERSION = Script(
    "commit_task_version",
    ("versions", "refs", "pending", "names", "orgs"),
    ("version", "record", "name", "org"),
    """
local existing = redis.call('HGET', versions, version)
if existing then return {EXISTS, existing} end
for _, digest in ipairs(digests) do
  if not redis.call('HGET', refs, digest) then return {MISSING_BLOB, digest} end
end
for _, digest in ipairs(digests) do
  redis.call('HINCRBY', refs, digest, 1)
  redis.call('ZREM', pending, digest)
end
redis.call('HSET', versions, version, record)
redis.call('SADD', names, name)
redis.call('SADD', orgs, org)
return {COMMITTED, ''}
""",
    rest="digests",
    enums=(CommitOutcome,),
)

# Remove a version; blobs no version names any more are freed. The name's last version takes
# the name out of the org's names and out of the public ones (and the org's last name, the org
# out of the orgs with tasks). Answers 1, or 0 if there was no such version.
DELETE_TASK_VERSION = Script(
    "delete_task_version",
    ("versions", "refs", "used", "names", "public", "orgs"),
    ("version", "name", "qualified", "blob_prefix", "org"),
    """
if redis.call('HDEL', versions, version) == 0 then return 0 end
for _, digest in ipairs(digests) do
  if redis.call('HINCRBY', refs, digest, -1) <= 0 then
    redis.call('HDEL', refs, digest)
    redis.call('DECRBY', used, redis.call('STRLEN', blob_prefix .. digest))
    redis.call('DEL', blob_prefix .. digest)
  end
end
if redis.call('HLEN', versions) == 0 then
  redis.call('SREM', names, name)
  redis.call('SREM', public, qualified)
  if redis.call('SCARD', names) == 0 then redis.call('SREM', orgs, org) end
end
return 1
""",
    rest="digests",
)

# Publish or unpublish a name, if it has a version. Answers 1, or 0 if it has none.
SET_TASK_VISIBILITY = Script(
    "set_task_visibility",
    ("versions", "public"),
    ("qualified", "published"),
    """
if redis.call('EXISTS', versions) == 0 then return 0 end
if published == '1' then redis.call('SADD', public, qualified) else redis.call('SREM', public, qualified) end
return 1
""",
)


# An org's secrets (shared/secrets_store.py): one hash, names unique, values sealed.


class SecretOutcome(StrEnum):
    CREATED = "created"
    NAME_TAKEN = "name_taken"
    FULL = "full"
    UPDATED = "updated"
    DELETED = "deleted"
    MISSING = "missing"


CREATE_SECRET = Script(
    "create_secret",
    keys=("secrets",),
    args=("id", "name", "record", "max"),
    body="""
if redis.call('HEXISTS', secrets, 'name:' .. name) == 1 then return NAME_TAKEN end
if redis.call('HLEN', secrets) >= 2 * tonumber(max) then return FULL end
redis.call('HSET', secrets, 'name:' .. name, id, 'id:' .. id, record)
return CREATED
""",
    enums=(SecretOutcome,),
)

UPDATE_SECRET = Script(
    "update_secret",
    keys=("secrets",),
    args=("id", "value", "updated_at"),
    body="""
local raw = redis.call('HGET', secrets, 'id:' .. id)
if not raw then return MISSING end
local record = cjson.decode(raw)
record.value = value
record.updated_at = updated_at
redis.call('HSET', secrets, 'id:' .. id, cjson.encode(record))
return UPDATED
""",
    enums=(SecretOutcome,),
)

DELETE_SECRET = Script(
    "delete_secret",
    keys=("secrets",),
    args=("id",),
    body="""
local raw = redis.call('HGET', secrets, 'id:' .. id)
if not raw then return MISSING end
redis.call('HDEL', secrets, 'id:' .. id, 'name:' .. cjson.decode(raw).name)
return DELETED
""",
    enums=(SecretOutcome,),
)


# Release the build lock, only if this holder still has it (it may have expired and been taken).
RELEASE_BUILD_LOCK = Script(
    "release_build_lock",
    ("lock",),
    ("token",),
    """
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0
""",
)


# The scripts of environment records, which bind the state names from EnvironmentState.
ENVIRONMENT_SCRIPTS = (
    ENQUEUE, ADMIT_AND_ENQUEUE, CLAIM_JOB, STORE_AND_PUBLISH, LOOKUP_API_KEY, CREATE_API_KEY,
    REVOKE_API_KEY, JOIN_DEPLOYMENT, CREATE_ENVIRONMENT, SET_IF_STATE, SET_FLAG_ONCE, TEAR_DOWN,
    CLAIM_PROVISION, BEAT, SWEEP, LEAVE,
)  # fmt: skip
ALL = (
    *ENVIRONMENT_SCRIPTS, PUT_TASK_BLOB, COMMIT_TASK_VERSION, DELETE_TASK_VERSION, SET_TASK_VISIBILITY,
    RELEASE_BUILD_LOCK, CREATE_SECRET, UPDATE_SECRET, DELETE_SECRET,
)  # fmt: skip
