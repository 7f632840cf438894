"""The API key as `dn task push` sends it to the OCI routes: HTTP Basic `__token__:<key>`.
Whatever the header holds, reading it never raises."""

import base64

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from taskenv.api.auth import api_key_of


def request_with(**headers: str) -> Request:
    raw = [
        (name.replace("_", "-").lower().encode(), value.encode("latin-1")) for name, value in headers.items()
    ]
    return Request({"type": "http", "headers": raw})


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


def test_basic_token_is_the_key():
    assert api_key_of(request_with(authorization=basic("__token__:tk_abc"))) == "tk_abc"
    assert api_key_of(request_with(authorization=basic("__token__:a:b"))) == "a:b", (
        "only the first colon splits"
    )


def test_the_other_forms_still_win_or_work():
    assert api_key_of(request_with(x_api_key="tk_x", authorization=basic("__token__:tk_y"))) == "tk_x"
    assert api_key_of(request_with(authorization="Bearer tk_z")) == "tk_z"


def test_malformed_basic_gives_no_key():
    for value in (
        "Basic !!!not-base64",
        basic("no-colon"),
        basic("__token__:"),
        "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    ):
        assert api_key_of(request_with(authorization=value)) in (None, value), value


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=80))
def test_any_authorization_header_is_read_without_error(value):
    api_key_of(request_with(authorization=value))
    api_key_of(request_with(authorization="Basic " + value))
