"""A short, seeded schemathesis run over /openapi.json (issue 15): the schema and the server agree.

Every operation gets schema-valid and schema-invalid requests (hypothesis, derandomized). Checks:
no 5xx; status codes, content types and response bodies as documented; invalid requests refused
with a 4xx; valid requests accepted. "Valid" has two honest exceptions: a schema can say "a base64
string" or "a file", not "a decodable PNG", so a valid-looking image payload may get the 415/422
its bytes deserve, and a reading's pixel rows of unequal length (JSON Schema cannot say "equal")
get a 422; every other pixel request, which the schema describes completely, must get a 200.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from digitnet.serve import create_app

pytestmark = pytest.mark.slow  # ≈ 8 s of generated requests: part of `make test`, not the quick lane
IMAGE_REFUSALS = {415, 422}


def _carries_image(case) -> bool:
    body = case.body
    if isinstance(body, dict) and "items" in body and isinstance(body["items"], list):
        return any(isinstance(i, dict) and "image_base64" in i for i in body["items"])
    return (isinstance(body, dict) and ("image_base64" in body or "file" in body or "files" in body)) or (
        case.media_type or ""
    ).startswith("multipart/")


def _ragged_rows(case) -> bool:
    rows = case.body.get("pixels") if isinstance(case.body, dict) else None
    return isinstance(rows, list) and len({len(r) for r in rows if isinstance(r, list)}) > 1


@schemathesis.check
def valid_requests_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or case.method.upper() != "POST":
        return None
    if 200 <= response.status_code < 300:
        return None
    if response.status_code in IMAGE_REFUSALS and _carries_image(case):
        return None  # the schema cannot promise the bytes decode
    if response.status_code == 422 and _ragged_rows(case):
        return None  # nor that a reading's rows have one length
    raise AssertionError(f"schema-valid request refused: {response.status_code} {response.text[:300]}")


@schemathesis.check
def invalid_requests_refused(ctx, response, case):
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive or case.method.upper() != "POST":
        return None
    if 400 <= response.status_code < 500:
        return None
    raise AssertionError(f"schema-invalid request accepted: {response.status_code} {response.text[:300]}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    valid_requests_accepted,
    invalid_requests_refused,
]


OPERATIONS = [
    ("/v1/predict", "POST"),
    ("/v1/predict/batch", "POST"),
    ("/v1/read", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
]


@pytest.fixture(scope="module")
def openapi(predictor):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(predictor=predictor))


def test_every_operation_is_fuzzed(openapi):
    found = {(r.ok().path, r.ok().method.upper()) for r in openapi.get_all_operations()}
    assert found == set(OPERATIONS)


# A GET without parameters has no invalid form: only the POST routes get negative requests.
CASES = [(p, m, GenerationMode.POSITIVE) for p, m in OPERATIONS] + [
    (p, m, GenerationMode.NEGATIVE) for p, m in OPERATIONS if m == "POST"
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=lambda v: str(v))
def test_the_server_does_what_its_schema_says(openapi, path, method, mode):
    operation = openapi[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=30,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(checks=CHECKS)

    run()
