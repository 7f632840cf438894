"""Every Redis key and channel taskenv owns. arq's own keys (`arq:*`) stay arq's."""

PREFIX = "taskenv:"


def api_key(key_hash: str) -> str:
    """Hash of one API key's record: org, workspace, created_at."""
    return f"{PREFIX}apikey:{key_hash}"


def api_key_index(org: str) -> str:
    """Sorted set of one org's API key hashes, scored by creation time (`taskenv keys ls`)."""
    return f"{PREFIX}apikeys:{org}"


# Set of the orgs that have an API key index: `taskenv keys ls` reads these, never a SCAN.
API_KEY_ORGS = f"{PREFIX}apikeys"


def environment(env_id: str) -> str:
    """Hash of one environment's record."""
    return f"{PREFIX}env:{env_id}"


def workspace_index(org: str, workspace: str) -> str:
    """Sorted set of a workspace's environment ids, scored by creation time."""
    return f"{PREFIX}ws:{org}:{workspace}"


def execute_token(token_hash: str) -> str:
    """String: the environment id an execute token belongs to (tells 403 from 401)."""
    return f"{PREFIX}token:{token_hash}"


def expiry_index(host: str) -> str:
    """Sorted set of the environment ids one host holds, scored by expiry time."""
    return f"{PREFIX}expiry:{host}"


# Sorted set of environment ids whose provision job has not run yet, scored by the time that
# job expires: past it, no worker will ever provision them.
PROVISIONING = f"{PREFIX}provisioning"


def auth_failures(address: str) -> str:
    """Counter of one client address's unknown credentials in the current window."""
    return f"{PREFIX}authfail:{address}"


def org_rate(org: str) -> str:
    """Hash: one org's request token bucket (tokens left, when last counted)."""
    return f"{PREFIX}rate:{org}"


def idempotency(env_id: str, key_hash: str) -> str:
    """Hash: one Idempotency-Key of an environment's executes (`shared/idempotency.py`)."""
    return f"{PREFIX}idem:{env_id}:{key_hash}"


def org_environments(org: str) -> str:
    """Sorted set of an org's live environment ids, scored by expiry (shared/quotas.py)."""
    return f"{PREFIX}quota:org-envs:{org}"


def workspace_environments(org: str, workspace: str) -> str:
    """Sorted set of a workspace's live environment ids, scored by expiry (shared/quotas.py)."""
    return f"{PREFIX}quota:ws-envs:{org}:{workspace}"


def org_commands(org: str) -> str:
    """Sorted set of an org's running commands' job ids, scored by their deadline (shared/commands.py)."""
    return f"{PREFIX}quota:org-cmds:{org}"


def workspace_commands(org: str, workspace: str) -> str:
    """Sorted set of a workspace's running commands' job ids, scored by their deadline."""
    return f"{PREFIX}quota:ws-cmds:{org}:{workspace}"


# String written (with a short expiry) by `/readyz` to prove that Redis still takes writes.
READY_PROBE = f"{PREFIX}readyz"


def env_commands(env_id: str) -> str:
    """Sorted set of an environment's running commands' job ids, scored by their deadline
    (shared/commands.py)."""
    return f"{PREFIX}env-cmds:{env_id}"


def arq_queue(queue: str) -> str:
    """The arq queue (sorted set) behind a queue name."""
    return f"{PREFIX}queue:{queue}"


def wake(queue: str) -> str:
    """List of job ids, in enqueue order, that a worker BLPOPs instead of polling arq's queue."""
    return f"{PREFIX}wake:{queue}"


# The queue every host's workers take provisions from (a host with room takes one; none is assigned).
PROVISION_QUEUE = "provision"


def host_queue(host: str) -> str:
    """Name of one host's own queue: the execs, logs and teardowns of its environments."""
    return f"host:{host}"


# Past this many pending wakes the newest are dropped; workers' periodic full pass over arq's
# queue still finds those jobs, so the list cannot grow without bound when no worker listens.
WAKE_LIST_MAX = 10_000


def reply_channel(instance: str) -> str:
    """Pub/sub channel on which workers push results to one waiting API process."""
    return f"{PREFIX}reply:{instance}"


# String: the id of the deployment this Redis belongs to, set once (SET NX) by the first worker
# (shared/deployment.py). Every container carries it as a label: a deployment acts only on its own.
DEPLOYMENT = f"{PREFIX}deployment"

# Membership: who is alive. Workers write these in their heartbeat script (shared/hosts.py).
# Sorted set of host ids, scored by the last heartbeat of any of the host's workers.
HOSTS = f"{PREFIX}hosts"
# Set of every host id that ever heartbeated (the lost and stopped ones too, for `taskenv hosts`).
KNOWN_HOSTS = f"{PREFIX}hosts:known"
# Sorted set of worker ids, scored by their last heartbeat.
WORKERS = f"{PREFIX}workers"
# Pub/sub channel on which a host's or a worker's loss is announced to the API processes.
EVENTS = f"{PREFIX}events"
# Pub/sub channel on which a worker announces that an environment's provision ended (its id):
# the status requests waiting for it (`?wait_sec=`) answer at once.
SETTLED = f"{PREFIX}settled"


def host(host_id: str) -> str:
    """Hash of one host: state (up, lost, stopped), draining, cap, environment counts."""
    return f"{PREFIX}host:{host_id}"


def worker(worker_id: str) -> str:
    """Hash of one worker process: host, pid, capacity, load, running job ids, metrics."""
    return f"{PREFIX}worker:{worker_id}"


def org_secrets(org: str) -> str:
    """Hash of one org's secrets (shared/secrets_store.py): `id:<id>` -> its record (name, sealed
    value, times), `name:<name>` -> its id."""
    return f"{PREFIX}secrets:{org}"
