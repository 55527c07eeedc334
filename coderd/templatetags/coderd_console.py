"""The console's template tags: the overview's data for the admin index."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def console_overview(context: dict[str, Any]) -> dict[str, Any] | None:
    """The overview (coderd.console) for owners and auditors; None for anyone else."""
    from coderd import console

    request = context.get("request")
    if request is None or not console.can_see_console(request.user):
        return None
    return console.overview()
