"""What the routes allow on a path: a 405's `Allow` header.

Starlette names only the methods of the first route whose path matched, but a path here can
have one route per method (GET and POST /environments), so the header is built from all of them.
"""

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, Route


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
