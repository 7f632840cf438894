"""Every Redis key and channel taskenv owns. arq's own keys (`arq:*`) stay arq's."""

PREFIX = "taskenv:"


def api_key(key_hash: str) -> str:
    """Hash of one API key's record: org, workspace, created_at."""
    return f"{PREFIX}apikey:{key_hash}"


def environment(env_id: str) -> str:
    """Hash of one environment's record."""
    return f"{PREFIX}env:{env_id}"


def workspace_index(org: str, workspace: str) -> str:
    """Sorted set of a workspace's environment ids, scored by creation time."""
    return f"{PREFIX}ws:{org}:{workspace}"


def execute_token(token_hash: str) -> str:
    """String: the environment id an execute token belongs to (tells 403 from 401)."""
    return f"{PREFIX}token:{token_hash}"


def expiry_index(queue: str) -> str:
    """Sorted set of live environment ids on one host queue, scored by expiry time."""
    return f"{PREFIX}expiry:{queue}"


def provisioning_index(queue: str) -> str:
    """Sorted set of environment ids whose provision job has not run yet, scored by the time
    that job expires: past it, no worker will ever provision them."""
    return f"{PREFIX}provisioning:{queue}"


def auth_failures(address: str) -> str:
    """Counter of one client address's unknown credentials in the current window."""
    return f"{PREFIX}authfail:{address}"


def inflight(env_id: str) -> str:
    """Sorted set of an environment's running exec job ids, scored by their deadline."""
    return f"{PREFIX}inflight:{env_id}"


def arq_queue(queue: str) -> str:
    """The arq queue (sorted set) of one host's workers."""
    return f"{PREFIX}queue:{queue}"


def wake(queue: str) -> str:
    """List of job ids, in enqueue order, that a worker BLPOPs instead of polling arq's queue."""
    return f"{PREFIX}wake:{queue}"


# Past this many pending wakes the newest are dropped; workers' periodic full pass over arq's
# queue still finds those jobs, so the list cannot grow without bound when no worker listens.
WAKE_LIST_MAX = 10_000


def reply_channel(instance: str) -> str:
    """Pub/sub channel on which workers push results to one waiting API process."""
    return f"{PREFIX}reply:{instance}"
