"""Client identification: the product tokens of a `User-Agent`, taskenv's own token, and the
oldest client versions an operator serves (`TASKENV_MIN_CLIENT_VERSIONS`).

Dreadnode's SDK and `dn` CLI send `User-Agent: dreadnode-sdk/<version>`; taskenv's own
clients send `taskenv/<version>`. A client without a token for a product that has a minimum
(curl, a browser) is not checked: the minimum exists to turn away known-old clients, not to
require identification."""

import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from packaging.version import InvalidVersion, Version

try:
    VERSION = version("taskenv")
except PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0+unknown"

USER_AGENT = f"taskenv/{VERSION}"

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # a product name (RFC 9110 token)


def parse_minimums(text: str) -> dict[str, str]:
    """`"dreadnode-sdk=2.0.52, taskenv=0.1"` → `{"dreadnode-sdk": "2.0.52", "taskenv": "0.1"}`;
    ValueError names the bad entry, so a typo stops the process at start-up."""
    minimums: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        product, sep, wanted = (s.strip() for s in entry.partition("="))
        if not sep or not _TOKEN.fullmatch(product):
            raise ValueError(f"expected PRODUCT=VERSION, got {entry!r}")
        try:
            Version(wanted)
        except InvalidVersion:
            raise ValueError(f"{entry!r}: {wanted!r} is not a version (PEP 440)") from None
        minimums[product.lower()] = wanted
    return minimums


def product_versions(user_agent: str) -> dict[str, str]:
    """The `product/version` tokens of a User-Agent (RFC 9110 §10.1.5), comments skipped."""
    products: dict[str, str] = {}
    depth = 0
    for token in user_agent.split():
        if depth or token.startswith("("):
            depth += token.count("(") - token.count(")")
            continue
        product, sep, found = token.partition("/")
        if sep and product:
            products.setdefault(product.lower(), found)
    return products


def too_old(user_agent: str, minimums: Mapping[str, Version]) -> str | None:
    """Why this client is refused (426), or None. A version that does not parse is refused:
    it cannot be shown to be recent enough."""
    for product, found in product_versions(user_agent).items():
        minimum = minimums.get(product)
        if minimum is None:
            continue
        try:
            if Version(found) >= minimum:
                continue
        except InvalidVersion:
            pass
        return (
            f"{product} {found} is older than this server supports: upgrade to {product} {minimum} or newer"
        )
    return None
