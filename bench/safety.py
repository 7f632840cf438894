"""What the harness may talk to: a taskenv on this machine and the local Docker engine, nothing else.

A load generator pointed at the wrong host is a denial-of-service tool, so the targets are
checked before the first request instead of trusted.
"""

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost"})


class NotLocalError(ValueError):
    """The target is not on this machine."""


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as an IPv4-mapped address) or `localhost`."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def require_loopback_url(url: str) -> str:
    """The base URL without a trailing slash, if it is http(s) to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NotLocalError(f"base URL must be http:// or https://, not {url!r}")
    host = parts.hostname
    if not host or not is_loopback_host(host):
        raise NotLocalError(
            f"refusing {url!r}: the bench only targets loopback (127.0.0.0/8, ::1, localhost)"
        )
    if parts.username is not None or parts.password is not None:
        raise NotLocalError(f"refusing {url!r}: no credentials in the base URL")
    return url.rstrip("/")


def require_local_docker(docker_host: str | None) -> None:
    """DOCKER_HOST unset (the default socket), a unix socket, or tcp to loopback."""
    if docker_host is None or docker_host.startswith("unix://"):
        return
    parts = urlsplit(docker_host)
    if parts.scheme in ("tcp", "http", "https") and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise NotLocalError(f"refusing DOCKER_HOST={docker_host!r}: the bench only drives the local engine")
