"""Sealing at rest: org secrets and each environment's variables are stored only as Fernet
tokens (AES-128-CBC and HMAC-SHA256, from the `cryptography` library) under the operator's
TASKENV_SECRETS_KEY.

The setting may list several keys, comma-separated: the first seals, every one opens, so an
operator rotates by putting the new key first and dropping the old one once nothing sealed
under it is left. A key that is not a Fernet key is refused when the settings are read
(`key_problem`); no key at all is refused only by what needs one (`sealer`).
"""

import base64
import binascii
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from taskenv.shared.errors import ErrorType, TaskenvError

KEY_VARIABLE = "TASKENV_SECRETS_KEY"
KEY_BYTES = 32


class SealingError(Exception):
    """What sealing raises: a key that cannot be used, a token that does not open."""


class InvalidKey(SealingError, ValueError):
    """TASKENV_SECRETS_KEY is not a (list of) Fernet key(s)."""


class Unsealable(SealingError):
    """A token that does not open under any configured key: made under another key, or altered."""


def new_key() -> str:
    """A fresh key, as TASKENV_SECRETS_KEY takes it (what `taskenv up` keeps in its home)."""
    return Fernet.generate_key().decode()


def _keys(setting: str) -> list[str]:
    return [part.strip() for part in setting.split(",") if part.strip()]


def _key_is_valid(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == KEY_BYTES
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def key_problem(setting: str) -> str | None:
    """Why TASKENV_SECRETS_KEY cannot be used, or None (an empty setting is no key, not a
    problem). Never repeats the key."""
    if not setting.strip():
        return None
    bad = [n for n, key in enumerate(_keys(setting), 1) if not _key_is_valid(key)]
    if not bad:
        return None
    which = "it is" if len(_keys(setting)) == 1 else f"key {bad[0]} of the list is"
    return (
        f"{which} not a Fernet key (32 bytes in url-safe base64, 44 characters): make one with"
        ' `python3 -c "import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
    )


class Sealer:
    """Seals with the first key, opens with any."""

    def __init__(self, setting: str) -> None:
        problem = key_problem(setting)
        if problem is not None or not _keys(setting):
            raise InvalidKey(f"{KEY_VARIABLE}: {problem or 'no key given'}")
        self._fernet = MultiFernet([Fernet(key) for key in _keys(setting)])

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode("ascii")

    def unseal(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError, TypeError, ValueError):
            raise Unsealable(f"a sealed value does not open with {KEY_VARIABLE}") from None


def no_key() -> TaskenvError:
    return TaskenvError(
        ErrorType.UNAVAILABLE,
        f"Secrets are unavailable: this deployment has no {KEY_VARIABLE}. The operator sets it on"
        " the API, the workers and the CLI (`taskenv up` makes one in its home)",
    )


@lru_cache(maxsize=4)
def _cached(setting: str) -> Sealer:
    return Sealer(setting)


def optional(setting: str) -> Sealer | None:
    """The sealer of TASKENV_SECRETS_KEY's value, None without one (a process keeps this and
    refuses, with `required`, only what needs a key)."""
    return _cached(setting) if setting.strip() else None


def required(found: Sealer | None) -> Sealer:
    """`found`, or the 503 of a deployment without a key."""
    if found is None:
        raise no_key()
    return found
