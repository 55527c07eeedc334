"""Request bodies read as Coder's server reads them: Go's `encoding/json` (httpapi.Read).

One policy for every request schema, in `Request`:
- unknown fields are ignored (Coder's clients send fields of newer or older versions);
- a JSON `null` is read as absent, so the field's default applies (a Go pointer or zero value);
- a key matches a field whatever its case when no key matches exactly, as Go matches struct tags;
- a zero UUID (`00000000-0000-0000-0000-000000000000`) is "not given", as Coder's `uuid.Nil`;
- types are strict, as Go's: `"5"` is not an integer, `5.0` is not an integer, `"true"` is not a
  boolean (UUIDs and times still come as strings, as in JSON).
Wrong types and invalid values are a 400 with Coder's `{message, validations: [{field, detail}]}`
(coderd.api renders them).

A field whose value coderd cannot honour (a Terraform provisioner, an autostop TTL, a parameter that
does not exist) is never silently dropped: `refuse_unless` in a schema's after-validator names the
field and says what coderd does instead.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

ZERO_UUID_TEXT = "00000000-0000-0000-0000-000000000000"

# A UUID in a request: a JSON string, read leniently as JSON carries it (the model is strict).
Uuid = Annotated[uuid.UUID, Field(strict=False)]


def _is_uuid_field(annotation: Any) -> bool:
    if annotation is uuid.UUID:
        return True
    return any(_is_uuid_field(arg) for arg in get_args(annotation))


# The error type of a known field with a value coderd cannot honour; its context names the field, and
# coderd.api renders it as a validation of that field (not of the whole body, where pydantic puts it).
UNSUPPORTED = "unsupported"


def refuse_unless(ok: bool, field: str, detail: str) -> None:
    if not ok:
        raise PydanticCustomError(UNSUPPORTED, "{field}: {detail}", {"field": field, "detail": detail})


_KEPT = ("title", "description", "default")


def documented_as(replacement: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A field's OpenAPI schema replaced by `replacement` (its title, description and default kept):
    for the fields a schema's validator refuses unless empty, so that the document says so too."""

    def replace(schema: dict[str, Any]) -> None:
        kept = {k: schema[k] for k in _KEPT if k in schema}
        schema.clear()
        schema.update(replacement, **kept)

    return replace


EMPTY_STRING = documented_as({"type": "string", "maxLength": 0})
EMPTY_LIST = documented_as({"type": "array", "maxItems": 0, "items": {}})
EMPTY_OBJECT = documented_as({"type": "object", "maxProperties": 0})
ZERO_OR_NULL_UUID = documented_as({"anyOf": [{"const": ZERO_UUID_TEXT}, {"type": "null"}]})
ONLY_NULL = documented_as({"type": "null"})


def _nullable_optionals(schema: dict[str, Any], model: Any) -> None:
    # `null` reads as absent: the document lets every optional field be null.
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or prop.get("type") == "null":
            continue
        variants = prop.get("anyOf", [])
        if any(v.get("type") == "null" for v in variants):
            continue
        kept = {k: prop.pop(k) for k in _KEPT if k in prop}
        inner = dict(prop)
        prop.clear()
        prop.update({"anyOf": variants if variants and len(inner) == 1 else [inner], **kept})
        prop["anyOf"].append({"type": "null"})


class Request(BaseModel):
    # A plain pydantic model, not a ninja Schema: ninja's wraps the input in its DjangoGetter before
    # any validator here could read it as the dict JSON gave.
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_nullable_optionals)

    @model_validator(mode="before")
    @classmethod
    def _as_go_reads_it(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # the model's own type check answers
        fields = cls.model_fields
        by_lower = {name.lower(): name for name in fields}
        read: dict[str, Any] = {}
        for key, value in data.items():
            name = key if key in fields else by_lower.get(str(key).lower())
            if name is None or value is None:
                continue  # unknown, or null: not given
            if name != key and name in data:
                continue  # the exact key wins over a case-insensitive one
            if value == ZERO_UUID_TEXT and _is_uuid_field(fields[name].annotation):
                continue
            read[name] = value
        return read


# --- search queries ---------------------------------------------------------------------------------

# The blanks between terms: the same six characters for the server and for the document's pattern
# (Python's \s and JavaScript's differ beyond them).
BLANK = r"[ \t\n\r\f\v]"
NOT_BLANK = r"[^ \t\n\r\f\v]"
_TERM = re.compile(r'(?:[^ \t\n\r\f\v"]+|"[^"]*")+')


def search_terms(q: str) -> list[str]:
    """A `q` search query's terms, as Coder's searchquery splits them: on spaces, except inside double
    quotes, which are dropped (codersdk sends `owner:"me"`)."""
    return [term.replace('"', "") for term in _TERM.findall(q)]


def query_pattern(*alternatives: str) -> dict[str, str]:
    """The OpenAPI pattern of a `q` made of terms matching one of `alternatives` (regexes)."""
    term = "|".join(f"(?:{a})" for a in alternatives)
    return {"pattern": rf"^{BLANK}*(?:(?:{term})(?:{BLANK}+|$))*$"}


def quoted(*values: str) -> str:
    """One of `values`, bare or in double quotes."""
    one = "(?:" + "|".join(values) + ")"
    return f'(?:"{one}"|{one})'
