"""The process-tree kill, on real host processes (no container needed for the logic)."""

import subprocess
import time
from pathlib import Path

from taskenv.worker.kill import kill_tree, process_tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kills_group_session_and_escaped_descendants():
    # Like runc's exec: the leader heads its own session and process group.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 100 & setsid sleep 101 & (sleep 102 &) ; sleep 103"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 5
        while len(process_tree(leader.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        tree = process_tree(leader.pid)
        assert len(tree) >= 5, tree  # sh, three sleeps and the setsid one at least
        # "" matches every cgroup: on the host there is no container to confine the kill to.
        assert kill_tree(leader.pid, "") >= 5
        # Dead when kill_tree returns, not some moment later: the caller answers right after.
        assert not [pid for pid in tree if _alive(pid)]
        leader.wait(timeout=5)
    finally:
        leader.kill()


def test_a_tree_in_another_container_is_left_alone():
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert kill_tree(leader.pid, "no-such-container-id") == 0
        assert leader.poll() is None
    finally:
        leader.kill()
        leader.wait()
