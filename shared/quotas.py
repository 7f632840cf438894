"""Per-org and per-workspace quotas: live environments and commands running at once.

Each quota is a Redis sorted set, counted inside the script that would add to it (so every API
process shares one exact count, and two requests cannot both take the last place):

- live environments (`keys.org_environments`, `keys.workspace_environments`): environment ids
  scored by their expiry, added by `shared.store.create`. They clean themselves when counted:
  an entry past its expiry, or whose record is no longer `provisioning` or `ready` (failed,
  torn down, gone), is dropped. Nothing else has to remember to remove it.
- running commands (`keys.org_commands`, `keys.workspace_commands`): see shared/commands.py.

A limit of 0 is no limit. A refusal is 429 `rate_limit_error` naming the limit and its setting.
"""

from dataclasses import dataclass
from enum import StrEnum

from taskenv.shared import keys
from taskenv.shared.errors import TaskenvError, rate_limited
from taskenv.shared.settings import Settings


class Quota(StrEnum):
    """Which quota refused a request: what the Redis scripts return for a refusal."""

    ORG_ENVIRONMENTS = "org_environments"
    WORKSPACE_ENVIRONMENTS = "workspace_environments"
    ORG_COMMANDS = "org_commands"
    WORKSPACE_COMMANDS = "workspace_commands"

    @property
    def setting(self) -> str:
        return {
            Quota.ORG_ENVIRONMENTS: "TASKENV_ORG_MAX_ENVIRONMENTS",
            Quota.WORKSPACE_ENVIRONMENTS: "TASKENV_WORKSPACE_MAX_ENVIRONMENTS",
            Quota.ORG_COMMANDS: "TASKENV_ORG_MAX_RUNNING_COMMANDS",
            Quota.WORKSPACE_COMMANDS: "TASKENV_WORKSPACE_MAX_RUNNING_COMMANDS",
        }[self]


@dataclass(frozen=True)
class Limits:
    """The operator's quotas (0: unlimited)."""

    org_environments: int = 0
    workspace_environments: int = 0
    org_commands: int = 0
    workspace_commands: int = 0

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(
            settings.org_max_environments,
            settings.workspace_max_environments,
            settings.org_max_running_commands,
            settings.workspace_max_running_commands,
        )

    def of_quota(self, quota: Quota) -> int:
        return {
            Quota.ORG_ENVIRONMENTS: self.org_environments,
            Quota.WORKSPACE_ENVIRONMENTS: self.workspace_environments,
            Quota.ORG_COMMANDS: self.org_commands,
            Quota.WORKSPACE_COMMANDS: self.workspace_commands,
        }[quota]


NO_LIMITS = Limits()


def exceeded(quota: Quota, limit: int, org: str, workspace: str, retry_after_sec: float) -> TaskenvError:
    """429 naming the limit that refused the request and the setting that sets it."""
    holder = f"Organization {org!r}" if quota.startswith("org") else f"Workspace {org!r}/{workspace!r}"
    if quota in (Quota.ORG_ENVIRONMENTS, Quota.WORKSPACE_ENVIRONMENTS):
        what, then = f"{limit} live environments", "delete one or retry later"
    else:
        what, then = f"{limit} commands running at once", "retry when one finishes"
    return rate_limited(
        f"{holder} already holds its limit of {what} ({quota.setting}={limit}); {then}",
        retry_after_sec,
    )


def environment_sets(org: str, workspace: str) -> list[str]:
    """The quota sets a new environment joins: its org's, its workspace's."""
    return [keys.org_environments(org), keys.workspace_environments(org, workspace)]
