"""Serving the metrics: the listener on its own port, and what `manage.py server` calls.

Interfaces for the rest of the house:
- `start_metrics()` -> (stop, observer): `manage.py server` (and gunicorn's master) call it when
  PROMETHEUS_ENABLE is on. It counts the database gauges once (the first refresh is at start-up),
  starts the listener on settings.PROMETHEUS_ADDRESS, and returns a stop function and the
  JobObserver for in-process daemons. A port in use or a bad address: one line on stderr, exit 1.
- `start_listener(host, port, state=None)` -> Listener (raises ListenerError with one clear line).
- `get_observer()` -> the JobObserver feeding this process's metrics.
- `start_daemon_metrics(host, port)` -> (stop, observer): an external `provisionerd`'s own listener
  and registry (job and process metrics; no database gauges), as Coder's provisionerd serves.
- `expose(state, accept, accept_encoding)` -> (status, headers, body): both doors use it.
- `refresh_database_gauges()`: count the database gauges now (gunicorn's master at start-up).

The listener is prometheus_client's own WSGI server machinery (a thread per scrape, so a scrape
never runs on the serving event loop), around an app that answers every path, negotiates
OpenMetrics from `Accept`, gzips when asked, and counts itself in `promhttp_*` as Go's promhttp.
"""

from __future__ import annotations

import errno
import gzip
import logging
import socket
import sys
import threading
from collections.abc import Callable
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

from prometheus_client.exposition import (
    ThreadingWSGIServer,
    _bake_output,
    _SilentHandler,
    choose_encoder,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from coderd.env import invoked_as
from metrics import runtime
from metrics.observer import MetricsJobObserver
from metrics.runtime import MetricsState

logger = logging.getLogger(__name__)


class ListenerError(RuntimeError):
    """The listener cannot bind: the message is one line for the operator."""


def expose(
    state: MetricsState, accept: str | None, accept_encoding: str | None, params: dict | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, body) of one scrape, in the format `accept` asks for, gzipped when asked.

    prometheus_client's encoders write every byte. The database families are rendered once per
    refresh (`DatabaseCollector.rendered`) and put first; the live families are rendered at each
    scrape and follow (family order carries no meaning; OpenMetrics' `# EOF` stays last)."""
    params = params or {}
    # Multiprocess: this process's latest database query numbers go to its file before it is read.
    state.metrics.query_stats.publish()
    accept = acceptable_formats(accept)
    want_gzip = gzip_acceptable(accept_encoding)
    if state.database is None:
        return _bake_output(state.registry, accept, accept_encoding, params, not want_gzip)
    encoder, content_type = choose_encoder(accept)
    if "name[]" in params:  # Prometheus' federation-style filter: rare, so not cached
        body = encoder(_Only(state.registry, set(params["name[]"])))
        headers = [("Content-Type", content_type)]
        if want_gzip:
            headers.append(("Content-Encoding", "gzip"))
            body = gzip.compress(body)
        return "200 OK", headers, body
    cached = state.database.rendered(content_type, encoder)
    live = cached_encoder(content_type, encoder)(state.live_registry)
    headers = [("Content-Type", content_type)]
    if want_gzip:
        headers.append(("Content-Encoding", "gzip"))
        return "200 OK", headers, cached.gzip_with(live)
    return "200 OK", headers, cached.text + live


# The OpenMetrics versions prometheus_client writes. Its `choose_encoder` echoes any version >= 1.0.0
# it is asked for (`version=9` -> `Content-Type: ...; version=9`) while writing 1.0.0 or 2.0.0.
OPENMETRICS_VERSIONS = ("1.0.0", "2.0.0")


def _params(entry: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; k=v; ...` -> (lowercased media type or coding, {lowercased key: value})."""
    name, *rest = entry.split(";")
    params = {}
    for item in rest:
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return name.strip().lower(), params


def _quality(params: dict[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0  # a malformed weight: not a preference we can honour
    return q if 0.0 <= q <= 1.0 else 0.0


def acceptable_formats(accept: str | None) -> str:
    """`accept` as prometheus_client's `choose_encoder` should see it: without the entries it must
    not honour (q=0, an OpenMetrics version it cannot write), most preferred first (it takes the first
    it knows). Nothing left: "" (the text format 0.0.4)."""
    entries = []
    for entry in (accept or "").split(","):
        if not entry.strip():
            continue
        media_type, params = _params(entry)
        q = _quality(params)
        if q <= 0:
            continue
        if media_type == "application/openmetrics-text" and params.get("version", "1.0.0") not in (
            OPENMETRICS_VERSIONS
        ):
            continue
        entries.append((q, entry.strip()))
    entries.sort(key=lambda e: -e[0])  # stable: equal weights keep the client's order
    return ",".join(entry for _, entry in entries)


def gzip_acceptable(accept_encoding: str | None) -> bool:
    """Whether `Accept-Encoding` allows gzip. prometheus_client's `gzip_accepted` ignores the weight,
    so it gzips for `gzip;q=0`, which RFC 9110 says means "not acceptable"."""
    for entry in (accept_encoding or "").split(","):
        coding, params = _params(entry)
        if coding == "gzip":
            return _quality(params) > 0
    return False


class CachedEncoder:
    """prometheus_client's `encoder` (one exposition format), with each series' line cached.

    A scrape of gunicorn's master formats ~3,000 series, and prometheus_client formats each from
    scratch: escaping every metric and label name one character at a time (OpenMetrics, 0.26),
    sorting and quoting the labels. Label sets rarely change between scrapes, values always do. So
    the encoder itself renders each family's header, and each series once as a one-sample family,
    and the part of its line before the value is kept; a scrape then writes that part, the value as
    prometheus_client's `floatToGoString` writes it, and the newline. Every byte still comes from
    prometheus_client, and the output is identical to `encoder(registry)` (tests compare them).

    Samples with a timestamp, an exemplar or a native histogram, and families the text format
    reorders (`_created`, `_gsum`, `_gcount` samples), go through the encoder whole, uncached."""

    MAX_ENTRIES = 200_000  # series and value strings; dropped and rebuilt past that (never in practice)

    def __init__(self, encoder: Callable) -> None:
        self.encoder = encoder
        empty = encoder(_Families([]))
        self.trailer = empty  # b"# EOF\n" for OpenMetrics, nothing for the text format
        self._heads: dict[tuple, bytes] = {}
        self._prefixes: dict[tuple, str] = {}
        self._values: dict[float, str] = {}

    def __call__(self, registry) -> bytes:
        out: list[bytes] = []
        for metric in registry.collect():
            out.append(self._family(metric))
        out.append(self.trailer)
        return b"".join(out)

    def _render(self, metric: Metric) -> bytes:
        """The encoder's bytes for one family, without the trailer."""
        text = self.encoder(_Families([metric]))
        return text[: len(text) - len(self.trailer)]

    def _family(self, metric: Metric) -> bytes:
        name = metric.name
        reordered = (name + "_created", name + "_gsum", name + "_gcount")
        for s in metric.samples:
            if s.timestamp is not None or s.exemplar is not None or s.native_histogram is not None:
                return self._render(metric)
            if s.name in reordered:
                return self._render(metric)
        head_key = (name, metric.type, metric.documentation, metric.unit)
        head = self._heads.get(head_key)
        if head is None:
            head = self._heads[head_key] = self._render(
                Metric(name, metric.documentation, metric.type, metric.unit)
            )
        prefixes, values = self._prefixes, self._values
        if len(prefixes) > self.MAX_ENTRIES:
            prefixes.clear()
        if len(values) > self.MAX_ENTRIES:
            values.clear()
        lines = []
        for s in metric.samples:
            key = (head_key, s.name, tuple(s.labels.items()))
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = self._prefix(metric, head, s)
                if prefix is None:  # not of the shape `<prefix><value>\n`: the encoder, whole
                    return self._render(metric)
                prefixes[key] = prefix
            value = s.value
            text = values.get(value)
            if text is None:
                text = floatToGoString(value)
                if value and value == value:  # 0.0 == -0.0 (written apart), NaN != NaN: never kept
                    values[value] = text
            lines.append(prefix)
            lines.append(text)
            lines.append("\n")
        return head + "".join(lines).encode()

    def _prefix(self, metric: Metric, head: bytes, sample: Sample) -> str | None:
        one = Metric(metric.name, metric.documentation, metric.type, metric.unit)
        one.samples.append(sample)
        text = self._render(one)
        tail = (floatToGoString(sample.value) + "\n").encode()
        if not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head) + len(tail):
            return None
        return text[len(head) : len(text) - len(tail)].decode()


_cached_encoders: dict[str, CachedEncoder] = {}


def cached_encoder(content_type: str, encoder: Callable) -> CachedEncoder:
    """The CachedEncoder of one format (`content_type` as `choose_encoder` names it)."""
    cached = _cached_encoders.get(content_type)
    if cached is None:
        cached = _cached_encoders[content_type] = CachedEncoder(encoder)
    return cached


class _Families:
    """Enough of a registry for prometheus_client's encoders: the given families."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


class _Only:
    """The families of `registry` named in `names` (a family matches by its name or a sample's)."""

    def __init__(self, registry, names: set[str]) -> None:
        self.registry = registry
        self.names = names

    def collect(self):
        for family in self.registry.collect():
            named = {family.name, family.name + "_total"} if family.type == "counter" else {family.name}
            if named & self.names or any(s.name in self.names for s in family.samples):
                yield family


def make_listener_app(state: MetricsState | None = None) -> Callable:
    """The WSGI app of the listener; `state` None follows `runtime.current()`."""

    def app(environ, start_response):
        s = state or runtime.current()
        m = s.metrics
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"405 method not allowed; use GET\n"]
        m.scrapes_in_flight.inc()
        code = "500"
        try:
            status, headers, body = expose(
                s,
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_ACCEPT_ENCODING"),
                parse_qs(environ.get("QUERY_STRING", "")),
            )
            code = status.split(" ", 1)[0]
        except Exception:
            logger.exception("gathering metrics failed")
            status, headers = "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")]
            body = b"An error has occurred while gathering metrics.\n"
        finally:
            m.scrapes_in_flight.dec()
            m.scrapes.labels(code).inc()
        if environ.get("REQUEST_METHOD") == "HEAD":
            # GET's length, no body (wsgiref would count the empty body and say 0).
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [b""]
        start_response(status, headers)
        return [body]

    return app


class Listener:
    def __init__(self, server, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_listener(host: str, port: int, state: MetricsState | None = None) -> Listener:
    """Serve the metrics on host:port (every path) from a daemon thread."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        family, sockaddr = info[0], info[4]
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenerError(
            f"cannot listen for metrics on {_display(host, port)} (--prometheus-address / "
            f"CODER_PROMETHEUS_ADDRESS): {getattr(exc, 'strerror', None) or exc}"
        ) from None

    class Server(ThreadingWSGIServer):
        address_family = family

    try:
        httpd = make_server(sockaddr[0], port, make_listener_app(state), Server, handler_class=_SilentHandler)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ListenerError(
            f"cannot listen for metrics on {_display(host, port)} (--prometheus-address / "
            f"CODER_PROMETHEUS_ADDRESS): {reason}"
        ) from None
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-listener", daemon=True)
    thread.start()
    return Listener(httpd, thread)


def get_observer() -> MetricsJobObserver:
    """The JobObserver for daemons of this process (follows `runtime.current()`)."""
    return MetricsJobObserver()


def start_daemon_metrics(host: str, port: int) -> tuple[Callable[[], None], MetricsJobObserver]:
    """An external daemon's metrics: its own registry and listener (raises ListenerError)."""
    from django.conf import settings

    state = runtime.build_state(legacy=settings.PROMETHEUS_LEGACY_METRICS, with_database=False)
    runtime.install(state)
    listener = start_listener(host, port, state)
    return listener.stop, MetricsJobObserver(state.metrics, on_change=None)


def refresh_database_gauges() -> None:
    """Count the database gauges now (start-up), whatever their age."""
    state = runtime.current()
    if state.database is not None:
        try:
            with state.database.store.refreshing():
                state.database.refresh()
        except Exception:
            logger.exception("counting the database gauges at start-up failed")


def start_metrics() -> tuple[Callable[[], None], MetricsJobObserver]:
    """`manage.py server`'s (and gunicorn master's) call: first refresh, listener, observer."""
    from django.conf import settings

    host, port = settings.PROMETHEUS_ADDRESS
    try:
        listener = start_listener(host, port)
    except ListenerError as exc:
        sys.stderr.write(f"{invoked_as()}: {exc}\n")
        sys.exit(1)
    refresh_database_gauges()
    return listener.stop, get_observer()
