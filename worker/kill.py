"""Killing a command's whole process tree at its deadline.

Docker has no "kill this exec". runc makes the exec'd process a session and process-group
leader and `exec inspect` gives its host PID, so from the host's PID namespace we can find
everything it started: its group, its session, and its descendants (which catches a `setsid`
child whose parent is still alive). Everything found is stopped first, so it cannot fork
while we look, then killed. A worker that cannot see the host's processes falls back to a
sweep inside the container (`kill -KILL -1` as the sandbox user).
"""

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

PROC = Path("/proc")


def _alive(pid: int) -> bool:
    """Still running: present and not yet a zombie (a zombie holds no resources, runs nothing)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2 :][:1] != b"Z"


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) of a process, or None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: fields resume after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def belongs_to(pid: int, container_id: str) -> bool:
    """True if `pid` is visible here and runs in that container (not a recycled number)."""
    try:
        return container_id in (PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return False


def process_tree(leader: int) -> set[int]:
    """The leader, its group and session members, and all their descendants."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    found = {pid for pid, (_, pgrp, sid) in stats.items() if leader in (pid, pgrp, sid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill_tree(leader: int, container_id: str, *, max_rounds: int = 20, settle_sec: float = 2.0) -> int:
    """SIGSTOP everything in the tree until nothing new appears, then SIGKILL it all, and wait
    (up to `settle_sec`) until the kernel has ended them: SIGKILL is delivered asynchronously,
    and on a loaded host a killed process can linger for a moment after the caller's 504.
    Only processes of that container are touched, even if the leader's number was reused.
    Returns how many processes were killed."""
    stopped: set[int] = set()
    for _ in range(max_rounds):
        fresh = {pid for pid in process_tree(leader) - stopped if belongs_to(pid, container_id)}
        if not fresh:
            break
        _signal_all(fresh, signal.SIGSTOP)
        stopped |= fresh
    _signal_all(stopped, signal.SIGKILL)
    settled_by = time.monotonic() + settle_sec
    while any(_alive(pid) for pid in stopped) and time.monotonic() < settled_by:
        time.sleep(0.005)
    return len(stopped)
