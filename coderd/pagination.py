"""`limit` and `offset` query parameters for every list, as Coder's API has them."""

from __future__ import annotations

from django.db.models import QuerySet
from ninja import Schema
from pydantic import Field

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1


class Page(Schema):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="At most this many items.")
    # Bounded so the database never sees an integer wider than its columns (SQLite: OverflowError).
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Skip this many items.")

    def apply(self, queryset: QuerySet) -> QuerySet:
        # Callers order by a unique key last, so pages neither repeat nor skip rows.
        return queryset[self.offset : self.offset + self.limit]

    def count(self, queryset: QuerySet, rows: list) -> int:
        """The total a list reports beside its page: known without a query when the page came back
        short (and is not past the end), counted otherwise."""
        known = self.known_count(rows)
        return queryset.count() if known is None else known

    def known_count(self, rows: list) -> int | None:
        """The total, when the page `rows` tells it (see count), else None."""
        if len(rows) < self.limit and (rows or self.offset == 0):
            return self.offset + len(rows)
        return None
