"""The OpenAPI document: complete, valid OpenAPI 3.1, built from the models the handlers use, and
served with an offline docs page. (Its conformance to what the live service answers is
tests/test_compat_openapi.py.)"""

import re

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from taskenv.api.app import create_app
from taskenv.api.openapi import DOCS, DOCS_PATH, OPENAPI_PATH, build_document, undocumented
from taskenv.shared.errors import STATUS, ErrorType, TaskenvError
from taskenv.shared.settings import Settings


@pytest.fixture(scope="module")
def app():
    return create_app(Settings())


@pytest.fixture(scope="module")
def document(app):
    # No lifespan: the document and the docs page need neither Redis nor workers.
    response = TestClient(app).get(OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_every_route_is_documented(app):
    assert undocumented(app.routes) == []
    assert set(DOCS) <= {route.name for route in app.routes} | {
        route.name for mount in app.routes for route in getattr(mount, "routes", [])
    }, "an entry in DOCS names no route"


def test_the_document_is_valid_openapi_3_1(document, app):
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document == build_document(app.routes)


def test_security_schemes_and_every_operation_has_them(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["ApiKeyBearer"]["scheme"] == "bearer"
    assert schemes["EnvironmentToken"]["name"] == "X-Environment-Token"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            security = operation["security"]
            if operation["operationId"] in ("health", "metrics"):
                assert security == []
            elif operation["operationId"] == "execute":
                assert security == [{"EnvironmentToken": []}], path
            else:
                assert security == [{"ApiKey": []}, {"ApiKeyBearer": []}], (method, path)


def test_every_error_answer_is_the_envelope_with_its_own_code(document):
    for item in document["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema["properties"]["code"] == {"const": int(status)}
                assert schema["allOf"][0]["$ref"].endswith("Envelope")
                assert {"426", "500"} <= set(operation["responses"])


def _operations(document):
    return [op for item in document["paths"].values() for op in item.values()]


EXECUTE_STATUSES = [200, 400, 401, 403, 404, 408, 409, 413, 422, 426, 429, 500, 502, 503, 504]


def test_the_documented_statuses_of_the_routes(document):
    envs = "/api/v1/org/{org}/ws/{workspace}/environments"
    statuses = {
        (method, path.removeprefix(envs)): sorted(int(s) for s in op["responses"])
        for path, item in document["paths"].items()
        if path.startswith(envs)
        for method, op in item.items()
    }
    assert statuses == {
        ("post", ""): [201, 400, 401, 403, 404, 408, 413, 422, 426, 429, 500, 503],
        ("get", ""): [200, 401, 403, 422, 426, 429, 500, 503],
        ("get", "/{env_id}"): [200, 401, 403, 404, 426, 429, 500, 503],
        ("delete", "/{env_id}"): [204, 401, 403, 404, 426, 429, 500, 502, 503],
        ("get", "/{env_id}/status"): [200, 401, 403, 404, 422, 426, 429, 500, 503],
        ("get", "/{env_id}/logs"): [200, 401, 403, 404, 409, 426, 429, 500, 502, 503, 504],
        ("post", "/{env_id}/execute"): EXECUTE_STATUSES,
        ("post", "/{env_id}/verify"): [200, 401, 403, 404, 409, 422, 426, 429, 500, 502, 503, 504],
    }
    identity = {op["operationId"]: sorted(int(s) for s in op["responses"]) for op in _operations(document)}
    assert identity["get_user"] == [200, 401, 426, 429, 500, 503]
    assert identity["get_organization"] == [200, 401, 403, 426, 429, 500, 503]
    assert identity["health"] == identity["metrics"] == [200, 426, 500]
    execute = document["paths"][envs + "/{env_id}/execute"]["post"]
    assert execute["responses"]["504"]["content"]["application/json"]["schema"]["allOf"][0] == {
        "$ref": "#/components/schemas/ExecTimeoutEnvelope"
    }
    assert "Retry-After" in execute["responses"]["429"]["headers"]
    assert "Retry-After" in execute["responses"]["503"]["headers"]
    idempotency = [p for p in execute["parameters"] if p["in"] == "header"]
    assert idempotency == [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": idempotency[0]["description"],
        }
    ]
    listing = document["paths"][envs]["get"]
    assert [(p["name"], p["in"]) for p in listing["parameters"]] == [
        ("org", "path"),
        ("workspace", "path"),
        ("page", "query"),
        ("limit", "query"),
        ("state", "query"),
    ]


def _validator(document, schema):
    """`#/components/...` references resolve within the schema itself: carry the components."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_every_envelope_matches_the_documented_schema(document, error_type):
    """TaskenvError.envelope() and the document's error schema are one model: every error
    type's envelope validates against the schema for its status, with extras too."""
    status = STATUS[error_type]
    error = TaskenvError(
        error_type,
        "human message",
        errors=[{"loc": ["body", "command"], "msg": "m", "type": "t"}],
        extra={"output": "partial"},
    )
    schema = {
        "allOf": [{"$ref": "#/components/schemas/ErrorEnvelope"}],
        "properties": {"code": {"const": status}, "type": {"enum": [str(error_type)]}},
    }
    _validator(document, schema).validate(error.envelope())
    timeout = {"$ref": "#/components/schemas/ExecTimeoutEnvelope"}
    if error_type is ErrorType.TIMEOUT:
        _validator(document, timeout).validate(error.envelope())
    no_output = TaskenvError(ErrorType.TIMEOUT, "x").envelope()
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, timeout).validate(no_output)


def test_docs_page_works_offline(app):
    client = TestClient(app)
    page = client.get(DOCS_PATH)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert OPENAPI_PATH in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page must load nothing from elsewhere"
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text)
    assert len(assets) == 3
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 500, asset
    bundle = client.get(f"{DOCS_PATH}/static/swagger-ui-bundle.js").text
    # Swagger UI renders OpenAPI 3.1 from version 5 on.
    assert re.search(r'"5\.\d+\.\d+"', bundle)
