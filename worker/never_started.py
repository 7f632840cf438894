"""Containers that are created, never started, and removed: how the worker reaches a volume (or
checks a path) through the engine's API alone, with no shared filesystem: `PUT /archive` into a
volume mounted in one, or the engine's own check of a bind mount's source at create."""

from typing import Any


def config(image: str, mounts: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Any image on the host will do: its command is never run."""
    created: dict[str, Any] = {
        "Image": image,
        "Cmd": ["/never-started"],
        "NetworkDisabled": True,
        "HostConfig": {"NetworkMode": "none", "Mounts": mounts},
    }
    if labels is not None:
        created["Labels"] = labels
    return created
