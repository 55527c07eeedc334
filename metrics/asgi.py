"""The websocket metrics wrapper (placeholder until the metrics issue: passes sockets through)."""


class MetricsWebsocketMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        return await self.app(scope, receive, send)
