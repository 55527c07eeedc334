"""Receivers of the users app: they only tell others something changed. Connected in
UsersConfig.ready()."""

from __future__ import annotations

import functools
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from coderd.users.models import APIKey
from coderd.websockets import close_sessions


@receiver(post_delete, sender=APIKey, dispatch_uid="users.api_key_deleted")
def api_key_deleted(sender: Any, instance: APIKey, **kwargs: Any) -> None:
    # However a key goes (logout, the admin, a revoked token, its user deleted), the websockets
    # opened with it close.
    transaction.on_commit(functools.partial(close_sessions, key_id=instance.pk))
