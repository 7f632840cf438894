"""Sealing at rest (shared/sealing.py): what seals opens, under the same key only; a key that is
not a Fernet key is refused with the settings, without repeating it; rotation by a key list."""

import base64

import pytest
from pydantic import ValidationError

from taskenv.shared import sealing
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.sealing import InvalidKey, Sealer, Unsealable, new_key
from taskenv.shared.settings import Settings


def test_what_is_sealed_opens_and_shows_nothing():
    sealer = Sealer(new_key())
    token = sealer.seal(b"hunter2 and more")
    assert "hunter2" not in token and token.isascii()
    assert sealer.unseal(token) == b"hunter2 and more"
    assert sealer.seal(b"same") != sealer.seal(b"same")  # a fresh IV each time


@pytest.mark.parametrize("token", ["", "garbage", "gAAAAA" + "A" * 80, "é", "\0"])
def test_a_token_that_does_not_open_is_a_typed_error(token):
    with pytest.raises(Unsealable):
        Sealer(new_key()).unseal(token)


def test_another_key_or_a_changed_byte_does_not_open():
    token = Sealer(new_key()).seal(b"value")
    with pytest.raises(Unsealable):
        Sealer(new_key()).unseal(token)
    sealer = Sealer(new_key())
    token = sealer.seal(b"value")
    altered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(Unsealable):
        sealer.unseal(altered)


def test_the_first_key_seals_and_every_key_opens():
    old, new = new_key(), new_key()
    sealed_before = Sealer(old).seal(b"before")
    rotated = Sealer(f"{new}, {old}")
    assert rotated.unseal(sealed_before) == b"before"
    assert Sealer(new).unseal(rotated.seal(b"after")) == b"after"


# A fixed valid key (not new_key(): parameters must be the same in every pytest-xdist worker).
VALID = base64.urlsafe_b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize("key", ["short", "A" * 44, "x" * 42 + "==", VALID[:-2], VALID + ",nope"])
def test_a_key_that_is_not_a_fernet_key_is_refused_without_being_repeated(key):
    problem = sealing.key_problem(key)
    assert problem is not None and key not in problem
    with pytest.raises(InvalidKey):
        Sealer(key)
    with pytest.raises(ValidationError, match="not a Fernet key"):
        Settings(secrets_key=key)


def test_no_key_is_not_a_problem_until_a_secret_needs_one():
    assert sealing.key_problem("") is None and Settings(secrets_key="").secrets_key == ""
    assert sealing.optional("  ") is None
    with pytest.raises(TaskenvError) as refused:
        sealing.required(None)
    assert refused.value.type is ErrorType.UNAVAILABLE and "TASKENV_SECRETS_KEY" in refused.value.detail
    key = new_key()
    assert sealing.required(sealing.optional(key)) is sealing.optional(key)


def test_the_settings_never_show_the_key():
    key = new_key()
    assert key not in repr(Settings(secrets_key=key))
