"""Hostile commands against the real service: each is contained, the answer comes by the
deadline, and the environment (and the host) still answers `echo ok` afterwards.

Covered elsewhere (tests/test_integration_execute.py) and not repeated here: a background child
holding stdout (`sleep 100 & echo hi`), the deadline killing group, session and `setsid`
children, an endless flood stopped at the deadline, the default user and the lone `lo`.
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Env, Service, provision
from tests.helpers import execute as run
from tests.helpers import until_true

pytestmark = pytest.mark.integration

MIB = 1024**2
# Output 256 times the cap (1 MiB): were the worker to keep what it discards, its peak memory
# would show it many times over (a gibibyte took the engine 13-19 s and proved no more).
FLOOD_BYTES = 256 * MIB


async def output_of(client: httpx.AsyncClient, env: Env, command: str) -> str:
    response = await run(client, env, command)
    assert response.status_code == 200, response.text
    return str(response.json()["output"])


async def process_list(client: httpx.AsyncClient, env: Env) -> str | None:
    """`ps -o args` inside the sandbox, or None while the pids limit leaves no room to run it
    (exit 126 with the runner's own message, which names no process and so proves nothing)."""
    answer = (await run(client, env, "ps -o args")).json()
    return str(answer["output"]) if answer["exit_code"] == 0 else None


async def assert_usable(client: httpx.AsyncClient, env: Env) -> None:
    assert (await run(client, env, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}


async def usable_within(client: httpx.AsyncClient, env: Env, seconds: float) -> float:
    """How long until `echo ok` works again: a bomb's last processes may still hold the pids
    limit for a moment after its command has answered (runc then fails the exec: 126)."""
    started = time.monotonic()
    while True:
        answer = (await run(client, env, "echo ok")).json()
        if answer == {"exit_code": 0, "output": "ok\n"}:
            return time.monotonic() - started
        assert answer["exit_code"] == 126 and time.monotonic() - started < seconds, answer
        await asyncio.sleep(0.1)


@pytest.fixture
async def rooted(client: httpx.AsyncClient, service: Service) -> AsyncIterator[Env]:
    """The `rooted` test task: the default image as uid 0 with a 16 MiB /tmp."""
    ready = await provision(client, service, task_ref="rooted")
    yield ready
    await client.delete(ready.url)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a host process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M)[1]) for key in ("VmRSS", "VmHWM")}  # type: ignore[index]


async def test_fork_bomb_is_contained_by_the_pids_limit(client, env):
    started = time.monotonic()
    response = await run(client, env, "f() { f | f & }; f; wait", timeout_sec=5)
    assert response.status_code in (200, 504), response.text
    assert time.monotonic() - started < 5 + 3
    recovered = await usable_within(client, env, 10)
    print(f"\nfork bomb: {response.status_code}, usable again after {recovered:.2f} s")
    # One that keeps forking (awk's system() survives failed forks): killed at its deadline,
    # every process it made with it.
    response = await run(client, env, "awk 'BEGIN { while (1) system(\"sleep 1000 &\") }'", timeout_sec=3)
    assert response.status_code == 504, response.text

    async def gone() -> bool:  # killed: gone once the sandbox's init has reaped them
        processes = await process_list(client, env)
        return processes is not None and "sleep 1000" not in processes

    await until_true(gone, "the forker's processes gone", timeout=10)
    await assert_usable(client, env)


async def test_processes_left_behind_can_fill_the_pids_limit_and_be_swept(client, env):
    # sh gives up at the first failed fork, and its background children stay (by design:
    # servers started with `&` outlive their command).
    response = await run(client, env, "while :; do sleep 999 & done", timeout_sec=10)
    assert response.json()["exit_code"] == 2 and "can't fork" in response.json()["output"]

    # The slot the shell freed is enough for a builtin: `kill -9 -1` sweeps the user's processes
    # (asked again while a loaded engine has not yet freed a slot for its shell).
    async def swept() -> bool:
        await run(client, env, "kill -9 -1")
        processes = await process_list(client, env)
        return processes is not None and "sleep 999" not in processes

    await until_true(swept, "the user's processes swept", timeout=30)
    await assert_usable(client, env)


async def test_memory_bomb_is_oom_killed_and_reported_137(client, env):
    grow = "a=0123456789abcdef; while :; do a=$a$a; done"
    # The command's own shell is the one killed: its exit code comes from the engine.
    response = await run(client, env, grow, timeout_sec=20)
    assert response.status_code == 200, response.text
    assert response.json()["exit_code"] == 137
    # A child is killed: the command's shell reports it in-band, and goes on.
    response = await run(client, env, f"sh -c '{grow}'; echo child=$?", timeout_sec=20)
    assert response.json() == {"exit_code": 0, "output": "Killed\nchild=137\n"}
    await assert_usable(client, env)


async def test_output_far_past_the_cap_is_capped_and_worker_memory_stays_flat(client, env, service):
    await run(client, env, "yes | head -c 2000000")  # warm the worker's buffers up
    before = memory_kib(service.worker.pid)
    started = time.monotonic()
    response = await run(client, env, f"head -c {FLOOD_BYTES} /dev/zero", timeout_sec=120)
    elapsed = time.monotonic() - started
    after = memory_kib(service.worker.pid)
    print(f"\n{FLOOD_BYTES} bytes of output read in {elapsed:.1f} s; worker memory (KiB) {before} -> {after}")
    assert response.status_code == 200, response.text[:200]
    output = response.json()["output"]
    head, marker, tail = output.partition("\n[taskenv: output truncated at 1048576 bytes;")
    assert head == "\0" * MIB and marker
    assert tail == f" {FLOOD_BYTES - MIB} more bytes were discarded]\n"
    assert after["VmHWM"] - before["VmHWM"] < 100 * 1024
    await assert_usable(client, env)


async def test_a_double_forked_setsid_escapee_cannot_hold_the_answer(client, env):
    # Its parent exits at once, so it is neither in the command's group, nor session, nor tree.
    started = time.monotonic()
    response = await run(client, env, "(setsid sleep 307 &); sleep 308", timeout_sec=1)
    assert response.status_code == 504
    assert time.monotonic() - started < 1 + 3
    left = await output_of(client, env, "ps -o args")
    print(f"\nleft after the deadline: {left!r}")
    assert "sleep 308" not in left
    await assert_usable(client, env)


async def test_the_root_filesystem_is_read_only(client, env, rooted):
    for sandbox in (env, rooted):  # root too: the mount is read-only, not just the permissions
        output = await output_of(client, sandbox, "touch /bin/x /etc/passwd 2>&1; echo rc=$?")
        assert output.count("Read-only file system") == 2 and output.endswith("rc=1\n"), output
    # The default task's workdir and $HOME are the writable /tmp; scripts there can run.
    script = "pwd; echo $HOME; printf '#!/bin/sh\\necho ran\\n' > s.sh; chmod +x s.sh; ./s.sh"
    assert await output_of(client, env, script) == "/tmp\n/tmp\nran\n"


async def test_filling_tmp_hits_its_size_limit(client, env, rooted):
    for sandbox, size_mb in ((env, 128), (rooted, 16)):
        fill = await run(client, sandbox, "dd if=/dev/zero of=/tmp/fill bs=1M count=4096", timeout_sec=30)
        assert fill.status_code == 200, fill.text
        assert fill.json()["exit_code"] == 1
        assert "No space left on device" in fill.json()["output"]
        assert int(await output_of(client, sandbox, "wc -c < /tmp/fill")) == size_mb * MIB
        assert await output_of(client, sandbox, "rm /tmp/fill; echo ok") == "ok\n"


async def test_no_host_secrets_are_reachable(client, env, rooted, service):
    probe = (
        "ls /var/run/docker.sock /run/docker.sock /etc/shadow {redis} 2>&1 | grep -c 'No such file';"
        "cat /proc/1/environ >/dev/null 2>&1 || echo denied"
    ).format(redis=service.redis_url.removeprefix("unix://"))
    assert await output_of(client, env, probe) == "4\ndenied\n"
    # As root: pid 1's environment and the mounts hold nothing of the host.
    environ = await output_of(client, rooted, "tr '\\0' '\\n' < /proc/1/environ; env")
    assert "TASKENV_" not in environ and "REDIS" not in environ, environ
    mounts = set((await output_of(client, rooted, "cut -d' ' -f2 /proc/mounts")).split())
    # /.taskenv: the runner, read-only (runner/PROTOCOL.md; tests/test_integration_runner.py);
    # /.taskenv-link: its link dir with the socket transport, read-only and its own
    # (tests/test_integration_runner_socket.py).
    engine = {
        "/etc/resolv.conf",
        "/etc/hostname",
        "/etc/hosts",
        "/sbin/docker-init",
        "/tmp",
        "/",
        "/.taskenv",
        "/.taskenv-link",
    }
    kernel = {m for m in mounts if m.split("/")[1] in ("proc", "sys", "dev")}
    assert {"/", "/tmp"} <= mounts - kernel <= engine, mounts


async def test_there_is_no_network_not_even_the_hosts_loopback(client, env, service):
    port = service.base_url.rsplit(":", 1)[1]
    # From the host the API answers on that port; from the sandbox, 127.0.0.1 is its own.
    probe = f"nc -w 2 127.0.0.1 {port} </dev/null; echo rc=$?"
    output = await output_of(client, env, probe)
    assert output.count("rc=1") == 1, output
    assert "Connection refused" in output, output
    # Nothing beyond the sandbox's loopback is reachable: no IPv4 route at all (the table is its
    # header line only) and IPv6 routes only through `lo`. Read, not probed: no packet is sent.
    ipv4 = await output_of(client, env, "cat /proc/net/route")
    assert len(ipv4.strip().splitlines()) == 1, ipv4
    ipv6 = await output_of(client, env, "cat /proc/net/ipv6_route")
    assert {line.split()[-1] for line in ipv6.strip().splitlines()} <= {"lo"}, ipv6


async def test_root_is_a_per_task_choice(client, rooted):
    assert await output_of(client, rooted, "id -u; id -g") == "0\n0\n"
