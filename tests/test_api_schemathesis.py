"""The OpenAPI document says what the server does: schemathesis generates requests from it (valid and
invalid ones), sends them to the API in-process, and checks every answer against the document.

Checked: no 500; only documented status codes and content types; every response body valid against
its schema; no request that violates the schema accepted. Not checked here: that every schema-valid
request is accepted, which no document can promise (an id that names nothing, suspending yourself,
a number written `5.0` that Go's decoder refuses as an integer). The examples are few and
deterministic, so that the suite stays short; `schemathesis run` against a live server explores more.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import schemathesis
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures import token_for

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@functools.cache
def document() -> dict[str, Any]:
    """The document as /api/v2/openapi.json serves it, built once for every operation's test."""
    from coderd.api import api

    return json.loads(json.dumps(api.get_openapi_schema(), cls=DjangoJSONEncoder))


@functools.cache
def wsgi_application() -> Any:
    return get_wsgi_application()


@pytest.fixture
def api_schema(db: Any) -> Any:
    # As Django's test Client: a request must not close the connection that holds the test's
    # transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_dict(document())
        schema.app, schema.location = wsgi_application(), "/api/v2/openapi.json"
        # NUL is refused outright (no database stores it). Unknown query parameters are ignored, as
        # by Coder's server: not a request the document forbids.
        schema.config.generation.update(
            allow_x00=False, allow_extra_parameters=False, deterministic=True, database="none"
        )
        yield schema.exclude(path_regex="logout$")
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def operations() -> list[Any]:
    """The document's operations, by label, for one test each (read once, at collection)."""
    labels = []
    for path, methods in document()["paths"].items():
        for method, operation in methods.items():
            if path.endswith("logout"):
                continue
            labels.append(
                pytest.param(f"{method.upper()} {path}", GenerationMode.POSITIVE, id=f"valid {method} {path}")
            )
            if operation.get("parameters") or operation.get("requestBody"):  # else nothing is invalid
                labels.append(
                    pytest.param(
                        f"{method.upper()} {path}", GenerationMode.NEGATIVE, id=f"invalid {method} {path}"
                    )
                )
    return labels


# schemathesis' own pytest integration (from_fixture) does not run on pytest 9; each operation's
# strategy drives a plain hypothesis test instead.
@pytest.mark.parametrize(("label", "mode"), operations())
def test_it_answers_as_its_openapi_document_says(api_schema, label, mode, owner, echo_template) -> None:
    echo_template()  # something for lists to list
    headers = {"Coder-Session-Token": token_for(owner)}
    method, path = label.split(" ", 1)
    operation = api_schema.find_operation_by_path(method, path)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()
