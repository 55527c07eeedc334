"""Route patterns for the `path` label: `/api/v2/workspaces/{workspace}`, never the raw path.

The label can only take a value that a route declares, so no request can create a series except
through a new route: unknown paths get `""` (as Coder's 2022 middleware does; with legacy names off,
`UNKNOWN` under `/api/` and `STATIC` elsewhere, as today's Coder's `getRoutePattern`) and the
websocket lookup's cache is bounded.
"""

from __future__ import annotations

import re
from functools import lru_cache

from django.urls import Resolver404, URLPattern, URLResolver, get_resolver

# Django's converters `<uuid:workspace>` / `<workspace>` become Coder's `{workspace}`.
_CONVERTER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")
_NAMED_GROUP = "(?P<"


def _regex_to_template(route: str) -> str:
    """A `re_path` route (`^users/(?P<name>[^/]+)/$`) as a template (`users/{name}/`)."""
    out: list[str] = []
    i = 0
    while i < len(route):
        if route.startswith(_NAMED_GROUP, i):
            end = route.index(">", i)
            name = route[i + len(_NAMED_GROUP) : end]
            depth, j = 1, end + 1
            while j < len(route) and depth:  # skip the group's own (balanced) sub-pattern
                if route[j] == "\\":
                    j += 1
                elif route[j] == "(":
                    depth += 1
                elif route[j] == ")":
                    depth -= 1
                j += 1
            out.append("{" + name + "}")
            i = j
            continue
        ch = route[i]
        if ch == "\\" and i + 1 < len(route):
            out.append(route[i + 1])
            i += 2
            continue
        if ch not in "^$":
            out.append(ch)
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def template_for_route(route: str) -> str:
    """`api/v2/workspaces/<uuid:workspace>` -> `/api/v2/workspaces/{workspace}` (cached per route)."""
    if "(?P<" in route or route.startswith("^") or route.endswith("$"):
        route = _regex_to_template(route)
    return "/" + _CONVERTER.sub(r"{\1}", route).lstrip("/")


UNKNOWN = "UNKNOWN"
STATIC = "STATIC"


def unmatched(path: str) -> str:
    """Today's Coder's label for a path no route matches (coderd/httpmw/httproute.go)."""
    return UNKNOWN if path.startswith("/api/") else STATIC


def resolve_route(request) -> str:
    """The route pattern of `request` before Django runs its handler (legacy names off: the
    concurrency gauge is labelled with it from the start, as Coder's middleware does), or
    UNKNOWN/STATIC. A URL resolution of its own: ~10-20 µs, paid only with legacy names off."""
    path = request.path_info
    try:
        match = get_resolver(getattr(request, "urlconf", None)).resolve(path)
    except Resolver404:
        return unmatched(path)
    except Exception:
        # Django's own resolution will raise it again, inside the chain, where it becomes the 500
        # that gets counted: here it must not escape before the request is even counted.
        return unmatched(path)
    return template_for_route(match.route) if match.route else unmatched(path)


def http_route(request) -> str:
    """The pattern of the route that served `request`, or "" when none matched."""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return ""
    return template_for_route(match.route)


class WebsocketRoutes:
    """Resolves websocket paths against Channels' `websocket_urlpatterns` (the same `path()` objects
    Django uses), so the ASGI wrapper labels sockets like HTTP routes. Results are cached; the cache is
    bounded, so ten thousand distinct unknown paths cost a fixed amount of memory."""

    def __init__(self, patterns: list, cache_size: int = 4096, *, legacy: bool = True) -> None:
        self.patterns = patterns
        self.legacy = legacy
        self.resolve = lru_cache(maxsize=cache_size)(self._resolve)

    def _resolve(self, path: str) -> str:
        found = self._walk(self.patterns, path.lstrip("/"), "")
        if found is not None:
            return template_for_route(found)
        return "" if self.legacy else unmatched(path)

    def _walk(self, patterns: list, path: str, prefix: str) -> str | None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                match = pattern.pattern.match(path)
                if match:
                    found = self._walk(pattern.url_patterns, match[0], prefix + str(pattern.pattern))
                    if found is not None:
                        return found
                continue
            if not isinstance(pattern, URLPattern):
                continue
            inner = getattr(pattern.callback, "routes", None)  # a nested Channels URLRouter
            if inner is not None:
                match = pattern.pattern.match(path)
                if match:
                    found = self._walk(inner, match[0], prefix + str(pattern.pattern))
                    if found is not None:
                        return found
                continue
            match = pattern.pattern.match(path)
            if match and not match[0]:
                return prefix + str(pattern.pattern)
        return None
