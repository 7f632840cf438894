"""API keys and execute tokens: made random, stored only as hashes, compared in constant time.

Both are 256-bit random strings, so one SHA-256 is enough (no password stretching needed) and the
hash doubles as the lookup key.
"""

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "tk_"
EXECUTE_TOKEN_PREFIX = "tet_"  # noqa: S105 (a prefix, not a secret)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_execute_token() -> str:
    return EXECUTE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
