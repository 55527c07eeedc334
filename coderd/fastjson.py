"""A response already in its schema's shape, sent as ninja would send it, without validating it again.

ninja validates what a view returns against the operation's response schema (pydantic reading the
dict through ninja's DjangoGetter), dumps it and encodes it. For the API's hot reads that cost more
than the rest of the request: a list of 50 workspaces took 4 ms to build and 70 ms to validate and
dump on a busy machine. The views below build exactly the schema's fields, in its order, from the
functions the other views use; `json_response` encodes them with ninja's own encoder, so the bytes
are the ones ninja would send (tests/test_api_fast_json.py compares them, for every shape of data).
The schema stays declared on the operation for the OpenAPI document.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from django.http import HttpResponse
from ninja.responses import NinjaJSONEncoder

CONTENT_TYPE = "application/json; charset=utf-8"  # ninja's JSONRenderer's


class Encoder(NinjaJSONEncoder):
    """ninja's encoder, with the two types a response is full of (a list of 50 workspaces: ~1,200 of
    them) tried first: ninja's asks four isinstance questions before Django's encoder gets to them.
    Exactly these types, written exactly as DjangoJSONEncoder writes them; anything else (a subclass
    included) goes the usual way."""

    def default(self, o: Any) -> Any:
        kind = type(o)
        if kind is uuid.UUID:
            return str(o)
        if kind is datetime.datetime:
            return datetime_text(o)
        return super().default(o)


def datetime_text(o: datetime.datetime) -> str:
    """A datetime as DjangoJSONEncoder writes it: milliseconds, and `Z` for UTC."""
    r = o.isoformat()
    if o.microsecond:
        r = r[:23] + r[26:]
    if r.endswith("+00:00"):
        r = r.removesuffix("+00:00") + "Z"
    return r


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(data, cls=Encoder), status=status, content_type=CONTENT_TYPE)


def raw_json_response(text: str, status: int = 200) -> HttpResponse:
    """A body already written as json.dumps with ninja's encoder would write it."""
    return HttpResponse(text, status=status, content_type=CONTENT_TYPE)
