"""The HTTP metrics middleware (placeholder until the metrics issue: passes requests through)."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


class PrometheusMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.get_response(request)
        return self.get_response(request)
