"""The answer to a websocket on a path no route matches: a refusal, never a router exception.

Channels' URLRouter raises ValueError("No route found") for such a path, which the ASGI server logs as
a traceback and the metrics count as 500. This consumer answers 404 where the server supports the
websocket denial response (uvicorn, daphne's newer releases), and otherwise closes before accepting
(the server answers 403).
"""

from __future__ import annotations

import json

from channels.generic.websocket import AsyncWebsocketConsumer


class NotFoundConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = json.dumps(
                {"message": "Route not found.", "detail": f"No websocket at {self.scope.get('path', '')}."}
            ).encode()
            await self.base_send(
                {
                    "type": "websocket.http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await self.base_send({"type": "websocket.http.response.body", "body": body})
            return
        await self.close()
