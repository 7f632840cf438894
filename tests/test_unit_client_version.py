"""426 Upgrade Required: parsing the operator's minimums and the client's User-Agent, and the
middleware (through Starlette's TestClient; tests/test_compat_sdk.py checks a real process)."""

import pytest
from packaging.version import Version
from pydantic import ValidationError
from starlette.testclient import TestClient

from taskenv.api.app import create_app
from taskenv.bench.api_side import make_session
from taskenv.shared.settings import Settings
from taskenv.shared.user_agents import USER_AGENT, VERSION, parse_minimums, product_versions, too_old


def test_parse_minimums():
    assert parse_minimums("") == {}
    assert parse_minimums(" dreadnode-sdk=2.0.52 , Taskenv = 0.1 ,") == {
        "dreadnode-sdk": "2.0.52",
        "taskenv": "0.1",
    }
    for bad in ("sdk", "=1.0", "sdk=", "sdk=latest", "a/b=1.0", "a b=1", "sdk>=1.0"):
        with pytest.raises(ValueError, match=r"PRODUCT=VERSION|not a version"):
            parse_minimums(bad)


def test_the_setting_is_checked_at_start_up(monkeypatch):
    monkeypatch.setenv("TASKENV_MIN_CLIENT_VERSIONS", "dreadnode-sdk=2.0.52")
    assert Settings().min_client_versions == {"dreadnode-sdk": "2.0.52"}
    monkeypatch.setenv("TASKENV_MIN_CLIENT_VERSIONS", "dreadnode-sdk>=2.0.52")
    with pytest.raises(ValidationError, match="min_client_versions"):
        Settings()
    monkeypatch.delenv("TASKENV_MIN_CLIENT_VERSIONS")
    assert Settings().min_client_versions == {}


def test_product_versions_skip_comments():
    assert product_versions("dreadnode-sdk/2.0.52") == {"dreadnode-sdk": "2.0.52"}
    assert product_versions("Mozilla/5.0 (X11; Linux x86_64; rv:1/2) Gecko/2010 Firefox/128.0") == {
        "mozilla": "5.0",
        "gecko": "2010",
        "firefox": "128.0",
    }
    assert product_versions("curl") == {}
    assert product_versions("") == {}


MINIMUMS = {"dreadnode-sdk": Version("2.0.52"), "taskenv": Version("0.2")}


@pytest.mark.parametrize(
    ("user_agent", "refused"),
    [
        ("dreadnode-sdk/2.0.51", True),
        ("dreadnode-sdk/2.0.52", False),
        ("dreadnode-sdk/2.1.0", False),
        ("dreadnode-sdk/2.0.52rc1", True),  # a pre-release comes before its release
        ("dreadnode-sdk/0.0.0+local", True),  # what the SDK sends when not installed
        ("dreadnode-sdk/banana", True),  # cannot be shown to be recent enough
        ("DreadNode-SDK/1.0", True),
        ("python-httpx/0.28.1", False),  # other products are not checked
        ("curl/8.0 dreadnode-sdk/2.0.1", True),
        ("taskenv/0.1.0", True),
        ("", False),
    ],
)
def test_too_old(user_agent, refused):
    reason = too_old(user_agent, MINIMUMS)
    assert (reason is not None) == refused
    if refused:
        product = user_agent.split()[-1].split("/")[0].lower()
        assert f"upgrade to {product} {MINIMUMS[product]} or newer" in reason


def test_middleware_refuses_old_clients_with_the_envelope():
    app = create_app(Settings(min_client_versions={"dreadnode-sdk": "2.0.52"}))
    client = TestClient(app)  # no lifespan: the document and 404s answer without Redis
    old = client.get("/api/v1/openapi.json", headers={"User-Agent": "dreadnode-sdk/2.0.40"})
    assert old.status_code == 426
    assert old.json() == {
        "code": 426,
        "detail": "dreadnode-sdk 2.0.40 is older than this server supports: "
        "upgrade to dreadnode-sdk 2.0.52 or newer",
        "type": "upgrade_required_error",
        "errors": None,
    }
    # Refused before routing: an unknown path of an old client is 426 too.
    assert client.get("/nowhere", headers={"User-Agent": "dreadnode-sdk/1.0"}).status_code == 426
    for user_agent in ("dreadnode-sdk/2.0.52", "dreadnode-sdk/3", "curl/8.5.0", USER_AGENT):
        assert client.get("/api/v1/openapi.json", headers={"User-Agent": user_agent}).status_code == 200


def test_no_minimum_by_default_means_no_middleware():
    app = create_app(Settings())
    assert not any("MinimumClientVersion" in repr(m) for m in app.user_middleware)
    response = TestClient(app).get("/api/v1/openapi.json", headers={"User-Agent": "dreadnode-sdk/0.0.1"})
    assert response.status_code == 200


async def test_taskenv_clients_identify_themselves():
    assert f"taskenv/{VERSION}" == USER_AGENT
    Version(VERSION)
    session = make_session("key", connections=1, read_timeout_sec=1)
    try:
        assert session.headers["User-Agent"] == USER_AGENT
    finally:
        await session.close()
