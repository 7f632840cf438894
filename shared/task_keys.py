"""The Redis keys of the task registry (shared/task_store.py), under taskenv's prefix."""

from taskenv.shared.keys import PREFIX

# Set of "org/name" of every published (public) task name.
TASKS_PUBLIC = f"{PREFIX}tasks:public"

# Set of the orgs that have at least one task version.
TASK_ORGS = f"{PREFIX}tasks:orgs"


def task_names(org: str) -> str:
    """Set of the names of an org's tasks that have a version."""
    return f"{PREFIX}tasknames:{org}"


def task_versions(org: str, name: str) -> str:
    """Hash of one task name's versions: version -> its record (JSON of `TaskVersion`)."""
    return f"{PREFIX}task:{org}:{name}"


def task_blob(org: str, digest: str) -> str:
    """String: one OCI blob (a task archive or its config) of an org. With an empty digest, the
    prefix of all of them (the Lua scripts free blobs by digest)."""
    return f"{PREFIX}blob:{org}:{digest}"


def task_blob_refs(org: str) -> str:
    """Hash of an org's stored blobs: digest -> how many versions name it (0: pending)."""
    return f"{PREFIX}blobrefs:{org}"


def task_blobs_pending(org: str) -> str:
    """Sorted set of an org's blobs no version names yet, scored by when they may be freed."""
    return f"{PREFIX}blobspending:{org}"


def task_bytes(org: str) -> str:
    """Counter: the bytes of an org's stored blobs (its storage budget's use)."""
    return f"{PREFIX}blobbytes:{org}"


def task_upload(upload_id: str) -> str:
    """String (JSON [org, name]): an OCI upload session, with a TTL."""
    return f"{PREFIX}upload:{upload_id}"


def task_built_hosts(oci_digest: str) -> str:
    """Set of the hosts that hold the images of this task archive (none: a new environment of it
    shows `building`)."""
    return f"{PREFIX}taskbuilt:{oci_digest}"
