"""Paths to routes: trailing slashes, and what the routes allow on a path (a 405's `Allow`).

Starlette names only the methods of the first route whose path matched, but a path here can
have one route per method (GET and POST /environments), so the header is built from all of them.
"""

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, Route, Router
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


def allowed_methods(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            methods |= allowed_methods(route.routes, {**scope, **child})
        elif isinstance(route, Route) and route.methods:
            methods |= route.methods
    return methods
