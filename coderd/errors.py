"""Errors that service functions raise and every surface renders.

The API renders an APIError as API.md's JSON (`{"message", "detail", "validations"}`) with its
status; the admin shows `.message`; the daemons log it. Service functions never return error codes.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A failure a client can act on. `validations` name the offending fields."""

    status: int = 500
    default_message: str = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        detail: str = "",
        validations: list[dict[str, str]] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.validations = list(validations or [])
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "detail": self.detail, "validations": self.validations}


class BadRequest(APIError):
    status = 400
    default_message = "Invalid request."


class Unauthorized(APIError):
    status = 401
    default_message = "You must be authenticated to use this endpoint."


class Forbidden(APIError):
    status = 403
    default_message = "You are not allowed to do this."


class NotFound(APIError):
    status = 404
    default_message = "Resource not found or you do not have access to this resource."


class Gone(APIError):
    status = 410
    default_message = "The resource was deleted."


class Conflict(APIError):
    status = 409
    default_message = "The request conflicts with the current state."


class ExpectationFailed(APIError):
    """417: what Coder answers to deleting a user who still has workspaces."""

    status = 417
    default_message = "The request cannot be met in the current state."


class PayloadTooLarge(APIError):
    status = 413
    default_message = "Request body too large."


def field_error(field: str, detail: str, message: str | None = None) -> BadRequest:
    """A 400 for one bad field, in Coder's shape."""
    return BadRequest(
        message or f"Invalid field {field!r}.", validations=[{"field": field, "detail": detail}]
    )
