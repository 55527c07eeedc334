"""The /api/v2 NinjaAPI: routers of each app are added here."""

from ninja import NinjaAPI

api = NinjaAPI(title="coderd API", version="2", urls_namespace="api")
