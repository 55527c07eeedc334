"""Receivers of the project app: bookkeeping only. Connected in CoderdConfig.ready()."""

from __future__ import annotations

from typing import Any

from django.db.backends.signals import connection_created
from django.dispatch import receiver

from coderd import outages


@receiver(connection_created, dispatch_uid="coderd.database_reachable")
def database_reachable(sender: Any, connection: Any, **kwargs: Any) -> None:
    # After an outage every connection is a new one: the first that opens ends it.
    outages.database.recovered()
