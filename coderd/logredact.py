"""No token in any log line: query-parameter credentials are redacted from the servers' own lines.

Browsers cannot set headers on a websocket, so the session token travels as
`?coder_session_token=...`; uvicorn writes the path with its query string in its websocket lines
("WebSocket /api/v2/...?coder_session_token=... [accepted]", on `uvicorn.error` at INFO) and its
access log (`uvicorn.access`, which gunicorn's UvicornWorker points at gunicorn's access log), and
Daphne's runserver in its request lines. A filter on those loggers rewrites the value before any
handler formats it. Our own request log line (metrics.middleware) carries the route, never the query.
"""

from __future__ import annotations

import logging
import re

# A query parameter whose name says it is a credential: coder_session_token, any *token, api_key,
# password. Its value runs to the next separator, quote or space.
_CREDENTIAL_PARAM = re.compile(r"(?i)([?&;](?:[a-z0-9_.-]*token|api[_-]?key|password)=)[^&;\s\"']*")
REDACTED = "[REDACTED]"
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "gunicorn.access", "django.channels.server", "daphne")


def redact(text: str) -> str:
    return _CREDENTIAL_PARAM.sub(rf"\1{REDACTED}", text)


def _redacted(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactCredentials(logging.Filter):
    """Rewrites the message and its arguments in place, keeping their number (uvicorn's access
    formatter unpacks the arguments by position)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted(v) for k, v in record.args.items()}
        return True


def redact_server_logs() -> None:
    """Install the filter on the ASGI servers' loggers, once (coderd.asgi calls it on import)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
