"""The bench only ever targets this machine."""

import pytest

from taskenv.bench.safety import NotLocalError, require_local_docker, require_loopback_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.5.6.7/",
        "https://127.0.0.1",
        "http://localhost:8000/",
        "http://LOCALHOST",
        "http://[::1]:8000",
        "http://[::ffff:127.0.0.1]:8000",
    ],
)
def test_loopback_urls_are_accepted(url):
    assert require_loopback_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://203.0.113.1:8000",
        "http://0.0.0.0:8000",
        "http://example.com",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://127.0.0.1@example.com/",
        "http://user:pw@127.0.0.1",
        "http://[::ffff:203.0.113.1]",
        "http://[2001:db8::1]",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
        "http://",
    ],
)
def test_other_urls_are_refused(url):
    with pytest.raises(NotLocalError):
        require_loopback_url(url)


@pytest.mark.parametrize("host", [None, "unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"])
def test_local_docker_is_accepted(host):
    require_local_docker(host)


@pytest.mark.parametrize(
    "host", ["tcp://198.51.100.3:2375", "ssh://user@builder", "tcp://docker.example.com:2376"]
)
def test_remote_docker_is_refused(host):
    with pytest.raises(NotLocalError):
        require_local_docker(host)
