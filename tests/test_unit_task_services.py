"""Compose services read into plans: every key tasks use, compose's forms of each, the settings'
defaults and caps, the start order; anything else a `ServiceError` naming service and key."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskenv.shared.settings import Settings
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_services import (
    DependsCondition,
    Healthcheck,
    ServiceError,
    ServicePlan,
    parse_duration_ns,
    plans,
    start_order,
)

SETTINGS = Settings(service_memory_mb=512, service_cpus=1.0, service_pids=256)
FILES = TaskFiles(
    files={
        "web.env": b"# comment\nexport A=1\nB='two words'\n\nC=\"x=y\"\nnot a line\n",
        "conf/nginx.conf": b"events {}\n",
        "conf/sub/x.txt": b"x",
        "seed.sql": b"select 1;",
    },
    modes={"conf/nginx.conf": 0o644, "conf/sub/x.txt": 0o600, "seed.sql": 0o755},
    links={"link": "seed.sql"},
)


def plan(service: dict, *, others: dict | None = None, **top: object) -> ServicePlan:
    compose = {"services": {"web": service, **(others or {})}, **top}
    return plans(compose, FILES, images={"built": "taskenv-task/t:built-1"}, settings=SETTINGS)[0]


def error(service: dict, **top: object) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        plan(service, **top)
    return caught.value


def test_a_minimal_service_gets_the_settings_defaults():
    web = plan({"image": "busybox"})
    assert web.image == "busybox" and web.command is None and web.entrypoint is None
    assert web.limits.memory_bytes == 512 * 1024 * 1024
    assert web.limits.nano_cpus == 10**9 and web.limits.pids == 256
    assert web.healthcheck is None and web.depends_on == {} and not web.read_only


def test_a_built_service_runs_its_built_tag():
    compose = {"services": {"built": {"build": {"context": "."}, "image": "ignored:1"}}}
    [built] = plans(compose, FILES, images={"built": "taskenv-task/t:built-1"}, settings=SETTINGS)
    assert built.image == "taskenv-task/t:built-1"
    with pytest.raises(ServiceError, match="'other': build: the service's image was not built"):
        plans({"services": {"other": {"build": "."}}}, FILES, images={}, settings=SETTINGS)


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        ("httpd -f -p 8080", ["httpd", "-f", "-p", "8080"]),
        ("sh -c 'echo a b'", ["sh", "-c", "echo a b"]),
        ("echo ${HOME} $$x", ["echo", "${HOME}", "$$x"]),  # never interpolated
        (["sh", "-c", "exit 0"], ["sh", "-c", "exit 0"]),
        (["sleep", 5, True], ["sleep", "5", "true"]),
        ("", []),
        ([], []),
    ],
)
def test_command_and_entrypoint_as_compose_reads_them(value, argv):
    web = plan({"image": "x", "command": value, "entrypoint": value})
    assert web.command == argv and web.entrypoint == argv


def test_environment_mapping_list_and_env_file():
    web = plan(
        {
            "image": "x",
            "env_file": ["web.env", {"path": "missing.env", "required": False}],
            "environment": {"A": "override", "N": 3, "T": True, "HOSTVAR": None},
        }
    )
    assert web.environment == {"A": "override", "B": "two words", "C": "x=y", "N": "3", "T": "true"}
    listed = plan({"image": "x", "environment": ["K=v=w", "EMPTY=", "FROMHOST"]})
    assert listed.environment == {"K": "v=w", "EMPTY": ""}


def test_healthcheck_forms_and_durations():
    web = plan(
        {
            "image": "x",
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "localhost"],
                "interval": "1m30s",
                "timeout": "500ms",
                "start_period": "2s",
                "retries": 3,
            },
        }
    )
    assert web.healthcheck == Healthcheck(
        test=["CMD", "wget", "-q", "localhost"],
        interval_ns=90 * 10**9,
        timeout_ns=500 * 10**6,
        start_period_ns=2 * 10**9,
        retries=3,
    )
    assert web.healthcheck.docker()["Interval"] == 90 * 10**9
    shell = plan({"image": "x", "healthcheck": {"test": "curl -f localhost || exit 1"}}).healthcheck
    assert shell is not None and shell.test == ["CMD-SHELL", "curl -f localhost || exit 1"]
    off = plan({"image": "x", "healthcheck": {"disable": True}}).healthcheck
    assert off is not None and off.disabled
    assert plan({"image": "x", "healthcheck": {"test": ["NONE"]}}).healthcheck.disabled  # type: ignore[union-attr]


def test_depends_on_forms_and_start_order():
    compose = {
        "services": {
            "web": {"image": "x", "depends_on": {"db": {"condition": "service_healthy"}, "seed": {}}},
            "db": {"image": "x"},
            "seed": {"image": "x", "depends_on": ["db"]},
            "proxy": {"image": "x", "depends_on": {"web": {"condition": "service_completed_successfully"}}},
        }
    }
    found = plans(compose, FILES, images={}, settings=SETTINGS)
    by_name = {p.name: p for p in found}
    assert by_name["web"].depends_on == {"db": DependsCondition.HEALTHY, "seed": DependsCondition.STARTED}
    assert by_name["seed"].depends_on == {"db": DependsCondition.STARTED}
    assert by_name["proxy"].depends_on == {"web": DependsCondition.COMPLETED}
    assert start_order(found) == [["db"], ["seed"], ["web"], ["proxy"]]


def test_cycles_and_unknown_dependencies_are_service_errors():
    cycle = {"services": {"a": {"image": "x", "depends_on": ["b"]}, "b": {"image": "x", "depends_on": ["a"]}}}
    with pytest.raises(ServiceError, match="cycle"):
        plans(cycle, FILES, images={}, settings=SETTINGS)
    assert "unknown service 'db'" in str(error({"image": "x", "depends_on": ["db"]}))


def test_mounts_named_anonymous_tmpfs_and_task_binds():
    web = plan(
        {
            "image": "x",
            "volumes": [
                "data:/var/lib/data",
                "/scratch",
                "./conf:/etc/conf:ro",
                "./seed.sql:/docker-entrypoint.d/seed.sql",
                {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": 1048576}},
                {"type": "volume", "source": "logs", "target": "/logs", "read_only": True},
            ],
            "tmpfs": ["/run", "/tmp:size=64m,mode=1777"],
            "read_only": True,
        },
        volumes={"data": {}, "logs": {}},
    )
    assert [(v.volume, v.target, v.read_only) for v in web.volumes] == [
        ("data", "/var/lib/data", False),
        ("web.1", "/scratch", False),
        ("logs", "/logs", True),
    ]
    conf, seed = web.binds
    assert (conf.source, conf.target, conf.read_only, conf.is_file) == ("conf", "/etc/conf", True, False)
    assert (
        conf.files == {"nginx.conf": b"events {}\n", "sub/x.txt": b"x"} and conf.modes["sub/x.txt"] == 0o600
    )
    assert seed.is_file and seed.files == {"": b"select 1;"} and seed.modes == {"": 0o755}
    assert web.tmpfs == {
        "/run": "nosuid,nodev",
        "/tmp": "size=64m,mode=1777,nosuid,nodev",
        "/cache": "size=1048576,nosuid,nodev",
    }
    assert web.read_only


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ({"mem_limit": "256m"}, (256 * 1024**2, 10**9, 256)),
        ({"mem_limit": "4g", "cpus": 8, "pids_limit": 100_000}, (512 * 1024**2, 10**9, 256)),
        ({"cpus": "0.5", "pids_limit": 64}, (512 * 1024**2, 5 * 10**8, 64)),
        ({"pids_limit": -1}, (512 * 1024**2, 10**9, 256)),
        (
            {"deploy": {"resources": {"limits": {"memory": "128M", "cpus": "0.25", "pids": 32}}}},
            (128 * 1024**2, 25 * 10**7, 32),
        ),
        (
            {"mem_limit": 100 * 1024**2, "deploy": {"resources": {"limits": {"memory": "200m"}}}},
            (100 * 1024**2, 10**9, 256),
        ),
    ],
)
def test_resource_limits_default_to_and_are_capped_by_the_settings(service, expected):
    limits = plan({"image": "x", **service}).limits
    assert (limits.memory_bytes, limits.nano_cpus, limits.pids) == expected


@pytest.mark.parametrize(
    ("service", "key"),
    [
        ({}, "image"),
        ({"image": 3}, "image"),
        ({"image": "x", "command": {"a": 1}}, "command"),
        ({"image": "x", "command": "echo 'unclosed"}, "command"),
        ({"image": "x", "environment": "A=1"}, "environment"),
        ({"image": "x", "environment": {"A": [1]}}, "environment"),
        ({"image": "x", "env_file": "missing.env"}, "env_file: missing.env"),
        ({"image": "x", "env_file": "../x.env"}, "env_file: ../x.env"),
        ({"image": "x", "healthcheck": "curl"}, "healthcheck"),
        ({"image": "x", "healthcheck": {"test": ["WHAT", "x"]}}, "healthcheck.test"),
        ({"image": "x", "healthcheck": {"test": "x", "interval": "5"}}, "healthcheck.interval"),
        ({"image": "x", "healthcheck": {"test": "x", "timeout": "1us"}}, "healthcheck.timeout"),
        ({"image": "x", "healthcheck": {"test": "x", "retries": -1}}, "healthcheck.retries"),
        ({"image": "x", "depends_on": {"web": {"condition": "service_dead"}}}, "depends_on.web.condition"),
        ({"image": "x", "depends_on": "x"}, "depends_on"),
        ({"image": "x", "mem_limit": "lots"}, "mem_limit"),
        ({"image": "x", "mem_limit": "1k"}, "mem_limit"),
        ({"image": "x", "cpus": 0}, "cpus"),
        ({"image": "x", "pids_limit": "many"}, "pids_limit"),
        ({"image": "x", "tmpfs": "relative"}, "tmpfs"),
        ({"image": "x", "tmpfs": "/run:suid"}, "tmpfs"),
        ({"image": "x", "volumes": ["./link:/x"]}, "volumes: ./link:/x"),
        ({"image": "x", "volumes": ["/etc:/x"]}, "volumes: /etc:/x"),
        ({"image": "x", "volumes": ["a:/x:rw:extra"]}, "volumes: a:/x:rw:extra"),
        ({"image": "x", "volumes": ["bad name!:/x"]}, "volumes: bad name!:/x"),
        ({"image": "x", "volumes": [{"type": "npipe", "source": "x", "target": "/y"}]}, "volumes"),
        ({"image": "x", "cap_add": ["SYS_ADMIN"]}, "cap_add"),
        ({"image": "x", "read_only": "yes"}, "read_only"),
        ({"image": "x", "working_dir": "relative"}, "working_dir"),
        ({"image": "x", "user": ["root"]}, "user"),
    ],
)
def test_values_of_the_wrong_kind_name_service_and_key(service, key):
    found = error(service)
    assert found.service == "web" and found.key.startswith(key), (found.key, str(found))
    assert str(found).startswith(f"service 'web': {found.key}: ")


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        (0, 0),
        ("2s", 2 * 10**9),
        ("1m30s", 90 * 10**9),
        ("500ms", 5 * 10**8),
        ("1.5s", 15 * 10**8),
        (".5s", 5 * 10**8),
        ("1h2m3s4ms5us6ns", 3723 * 10**9 + 4 * 10**6 + 5 * 10**3 + 6),
        (" 10s ", 10 * 10**9),
    ],
)
def test_durations_as_go_reads_them(text, nanoseconds):
    assert parse_duration_ns(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "-1s", "1s2", "1 s", 5, 1.5, True, None, "9" * 100])
def test_unreadable_durations(text):
    with pytest.raises(ValueError):
        parse_duration_ns(text)


_UNITS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(_UNITS))), min_size=1, max_size=6))
def test_any_written_duration_reads_back(parts):
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert parse_duration_ns(text) == sum(number * _UNITS[unit] for number, unit in parts)


@given(st.text(max_size=20))
def test_any_text_is_a_duration_or_a_value_error(text):
    with contextlib.suppress(ValueError):
        assert parse_duration_ns(text) >= 0


_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "image", "build", "command", "entrypoint", "environment", "env_file", "working_dir", "user",
        "healthcheck", "depends_on", "tmpfs", "volumes", "read_only", "cap_add", "mem_limit", "cpus",
        "pids_limit", "deploy", "ports",
    ]
)  # fmt: skip
_healthchecks = st.fixed_dictionaries(
    {},
    optional={
        "test": _values | st.lists(st.sampled_from(["CMD", "CMD-SHELL", "NONE", "x"]), max_size=3),
        "interval": _values | st.sampled_from(["1s", "1m30s", "0"]),
        "retries": _values,
        "disable": _values,
    },
)
_services = st.dictionaries(
    _keys, _values | _healthchecks | st.sampled_from(["web", "db", "./conf:/c", "data:/d"]), max_size=6
)


@given(st.dictionaries(st.sampled_from(["web", "db", "x"]), _services | _values, max_size=3), _values)
def test_any_compose_gives_plans_or_a_service_error(services, volumes):
    try:
        found = plans(
            {"services": services, "volumes": volumes}, FILES, images={"web": "t"}, settings=SETTINGS
        )
    except ServiceError as exc:
        assert str(exc).startswith("service ")
    else:
        assert [p.name for p in found] == list(services)
        assert sorted(name for batch in start_order(found) for name in batch) == sorted(services)
