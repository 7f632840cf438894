"""Per-org request rate: a token bucket in Redis, shared by every API process.

Counted inside the script each request runs anyway, so it costs no round trip of its own: the
API key's lookup for the workspace routes (`lookup_api_key`), the admission-and-enqueue script
for execute (`api/dispatch.py`). Tokens refill at `TASKENV_ORG_RATE_PER_SEC` up to
`TASKENV_ORG_RATE_BURST`; a request finding less than one token gets 429 with the seconds until
one is there in `Retry-After`.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from taskenv.shared import keys, scripts
from taskenv.shared.errors import TaskenvError, rate_limited
from taskenv.shared.settings import Settings


@dataclass(frozen=True)
class OrgRate:
    per_sec: float
    burst: int

    @classmethod
    def of(cls, settings: Settings) -> "OrgRate":
        return cls(settings.org_rate_per_sec, settings.org_rate_burst)


def org_over_rate(org: str, wait_ms: int) -> TaskenvError:
    return rate_limited(f"Organization {org!r} is over its request rate; retry later", wait_ms / 1000)


async def lookup_api_key(redis: Redis, key_hash: str, now: float, rate: OrgRate) -> tuple[str, str] | None:
    """The key's (org, workspace), with one request counted against that org, in one round
    trip; None for an unknown key; 429 past the org's rate."""
    found = await scripts.LOOKUP_API_KEY.run(
        redis,
        api_key=keys.api_key(key_hash),
        bucket_prefix=keys.org_rate(""),
        now=now,
        rate=rate.per_sec,
        burst=rate.burst,
    )
    if not found:
        return None
    org, workspace, wait_ms = found
    if int(wait_ms) > 0:
        raise org_over_rate(str(org), int(wait_ms))
    return str(org), str(workspace)
