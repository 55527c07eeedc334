"""Admin logins and logouts in the audit trail: the admin logs in through django.contrib.auth, not
through coderd.users.services.login, so its signals are where those happen. Bookkeeping only."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from coderd.audit.models import Action, ResourceType
from coderd.audit.services import record


# As the API's login: resource api_key, the user's id; the status is what the admin answers.
@receiver(user_logged_in, dispatch_uid="coderd.audit.admin_login")
def admin_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    record(Action.LOGIN, ResourceType.API_KEY, user.pk, actor=user, status=302)


@receiver(user_login_failed, dispatch_uid="coderd.audit.admin_login_failed")
def admin_login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    from coderd.users.models import User

    # As Coder: recorded only when the name given is a user's.
    user = User.objects.filter(email__iexact=credentials.get("username", ""), deleted=False).first()
    if user is not None:
        record(Action.LOGIN, ResourceType.API_KEY, user.pk, actor=user, status=401)


@receiver(user_logged_out, dispatch_uid="coderd.audit.admin_logout")
def admin_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record(Action.LOGOUT, ResourceType.API_KEY, user.pk, actor=user, status=200)
