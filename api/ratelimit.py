"""Per-org request rate: a token bucket in Redis, shared by every API process.

Counted inside the script each request runs anyway, so it costs no round trip of its own: the
API key's lookup for the workspace routes (`lookup_api_key`), the admission-and-enqueue script
for execute (`api/dispatch.py`). Tokens refill at `TASKENV_ORG_RATE_PER_SEC` up to
`TASKENV_ORG_RATE_BURST`; a request finding less than one token gets 429 with the seconds until
one is there in `Retry-After`.
"""

from dataclasses import dataclass

from redis.asyncio import Redis

from taskenv.shared import keys
from taskenv.shared.errors import TaskenvError, rate_limited
from taskenv.shared.settings import Settings

# take_token(bucket key, now s, rate/s, burst): 0 when a token was taken, else the ms until one
# is there. A refusal writes nothing: the bucket refills from its last count either way.
RATE_BUCKET = """
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

# The org is known only once the key is looked up, so its bucket's name is built here from the
# prefix in ARGV[1] (taskenv needs a single Redis, not a cluster, for its multi-key scripts).
# KEYS: the API key's record. ARGV: bucket prefix, now, rate, burst.
_LOOKUP_API_KEY = (
    RATE_BUCKET
    + """
local scope = redis.call('HMGET', KEYS[1], 'org', 'workspace')
if (not scope[1]) or (not scope[2]) then return false end
local wait = take_token(ARGV[1] .. scope[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return {scope[1], scope[2], wait}
"""
)


@dataclass(frozen=True)
class OrgRate:
    per_sec: float
    burst: int

    @classmethod
    def of(cls, settings: Settings) -> "OrgRate":
        return cls(settings.org_rate_per_sec, settings.org_rate_burst)

    def args(self) -> list[float | int]:
        return [self.per_sec, self.burst]


def org_over_rate(org: str, wait_ms: int) -> TaskenvError:
    return rate_limited(f"Organization {org!r} is over its request rate; retry later", wait_ms / 1000)


async def lookup_api_key(redis: Redis, key_hash: str, now: float, rate: OrgRate) -> tuple[str, str] | None:
    """The key's (org, workspace), with one request counted against that org, in one round
    trip; None for an unknown key; 429 past the org's rate."""
    found = await redis.register_script(_LOOKUP_API_KEY)(
        keys=[keys.api_key(key_hash)], args=[keys.org_rate(""), now, *rate.args()]
    )
    if not found:
        return None
    org, workspace, wait_ms = found
    if int(wait_ms) > 0:
        raise org_over_rate(str(org), int(wait_ms))
    return str(org), str(workspace)
