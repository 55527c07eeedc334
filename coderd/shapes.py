"""Values Coder sends for concepts coderd does not have, shared by every response.

Coder's clients decode its structs field by field: a field we leave out is the Go zero value to a Go
client but a missing key to a Python or TypeScript one. So every response carries each field of
Coder's struct, and where coderd has no such concept it carries what Coder itself sends for the
equivalent state (no agents, no schedule, no icon).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

# Go's zero time.Time, which Coder sends for a timestamp that never happened (a user never seen).
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
ZERO_UUID = uuid.UUID(int=0)


def or_zero_time(value: datetime | None) -> datetime:
    return GO_ZERO_TIME if value is None else value


def or_zero_uuid(value: Any) -> Any:
    return ZERO_UUID if value is None else value
