"""Trailing slashes: `/environments/` is served as `/environments`, never redirected."""

from collections.abc import Sequence

from starlette.routing import BaseRoute, Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlash:
    """Serve `/environments/` as `/environments`: the path loses its trailing slashes before
    routing. (Starlette would redirect instead, to a URL built from the Host header the client
    sent: a client following it could send its API key to any host.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            raw_path = scope.get("raw_path")
            if isinstance(raw_path, bytes):
                scope["raw_path"] = raw_path.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def without_slash_redirects(routes: Sequence[BaseRoute]) -> None:
    """Turn off the slash redirects of every router mounted among `routes` (the application's
    own router is turned off where it is made)."""
    for route in routes:
        if isinstance(route, Mount) and isinstance(route.app, Router):
            route.app.redirect_slashes = False
            without_slash_redirects(route.app.routes)
