"""The answer to a websocket on a path no route matches: a refusal, never a router exception.

Channels' URLRouter raises ValueError("No route found") for such a path, which the ASGI server logs as
a traceback and the metrics count as 500. This app answers 404 where the server supports the
websocket denial response (uvicorn), and otherwise closes before accepting (the server answers 403).
A plain ASGI app, not a consumer: it needs no channel layer.
"""

from __future__ import annotations

import json


async def not_found(scope, receive, send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(
            {"message": "Route not found.", "detail": f"No websocket at {scope.get('path', '')}."}
        ).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1000})
