"""/docs, /redoc and /openapi.json through a real server on loopback: the pages load every
asset from this server, and the document is valid OpenAPI 3.1 that real answers conform to."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import LiveServer, auth
from images_util import png_bytes
from seedbed import catalogue

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}

# every URL an HTML page makes the browser fetch: src/href attributes, ReDoc's spec-url and
# the `url: '...'` Swagger UI is started with
_URLS = re.compile(
    r"""(?:\bsrc|\bhref|\bspec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']"""
)


def _fetched_urls(html: str) -> list[str]:
    return [a or b for a, b in _URLS.findall(html)]


@pytest.mark.parametrize(
    ("page", "wanted"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_docs_pages_load_every_asset_from_this_server(
    server: LiveServer, page: str, wanted: set[str]
) -> None:
    response = server.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # nothing from a CDN or Google Fonts: no absolute URL at all
    assert "http://" not in html and "https://" not in html and "//" + "cdn" not in html
    urls = _fetched_urls(html)
    assert {u.rsplit("/", 1)[-1] for u in urls} == wanted
    for url in urls:
        absolute = urljoin(server.url + page, url)
        assert urlsplit(absolute).netloc == urlsplit(server.url).netloc, url
        asset = server.client.get(absolute)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    # the big scripts travel compressed (httpx asks for gzip and decodes it)
    script = next(u for u in urls if u.endswith(".js"))
    answer = server.client.get(urljoin(server.url, script))
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.headers["content-type"].startswith("text/javascript")
    assert int(answer.headers["content-length"]) < len(answer.content) / 2
    plain = server.client.get(urljoin(server.url, script), headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == answer.content


def test_only_the_listed_assets_are_served(server: LiveServer) -> None:
    html = server.client.get("/docs").text
    script = next(u for u in _fetched_urls(html) if u.endswith("swagger-ui-bundle.js"))
    folder = script.rsplit("/", 1)[0]
    for name in ("LICENSE.redoc", "..%2Fdocs.py", "__init__.py", "nope.js"):
        answer = server.client.get(f"{folder}/{name}")
        assert answer.status_code == 404
        assert answer.json()["code"] == 404
    # an older version's URL is not served either: the version in the path is the cache key
    assert server.client.get("/docs-assets/0.0.0/swagger-ui-bundle.js").status_code == 404


# -- the OpenAPI document ----------------------------------------------------------------------
#: operations anyone may call
PUBLIC = {
    ("get", "/api/v1/models"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}
#: the kie endpoints that check the key (more operations may, e.g. later extensions)
SECURED = {
    ("post", "/api/v1/jobs/createTask"),
    ("get", "/api/v1/jobs/recordInfo"),
    ("post", "/api/v1/jobs/cancelTask"),
    ("get", "/api/v1/jobs/events"),
    ("get", "/api/v1/chat/credit"),
    ("post", "/api/v1/common/download-url"),
    ("post", "/api/file-stream-upload"),
    ("post", "/api/file-base64-upload"),
    ("post", "/api/file-url-upload"),
}


class Document:
    """The server's /openapi.json, with its schemas usable by a JSON Schema validator."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:openapi", resource)

    def validator(self, pointer: str) -> Draft202012Validator:
        """A validator for the schema at ``pointer`` (its own ``$ref``s resolve in the doc)."""
        return Draft202012Validator({"$ref": "urn:openapi#" + pointer}, registry=self.registry)

    def check_answer(
        self, method: str, path: str, status: int, content_type: str, body: Any
    ) -> None:
        """``body`` is what the document says ``method path`` answers with ``status``."""
        responses = self.doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method} {path}: HTTP {status} is not documented"
        media = content_type.split(";")[0].strip()
        assert media in responses[str(status)]["content"], (method, path, status, media)
        where = (path, method, "responses", str(status), "content", media, "schema")
        pointer = "/paths/" + "/".join(_escape(part) for part in where)
        errors = [e.message for e in self.validator(pointer).iter_errors(body)]
        assert not errors, (method, path, status, errors)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@pytest.fixture
def document(server: LiveServer) -> Document:
    response = server.client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # the OpenAPI 3.1 schema, JSON Schema 2020-12 included
    assert doc["openapi"].startswith("3.1")
    return Document(doc)


def test_the_document_declares_the_bearer_scheme_on_authenticated_routes(
    document: Document,
) -> None:
    doc = document.doc
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `seedbed keys create`.",
    }
    operations = {
        (method, path): operation
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    }
    assert SECURED | PUBLIC <= set(operations)
    for where, operation in operations.items():
        security = operation.get("security")
        if where in SECURED:
            assert security == [{"bearerAuth": []}], where
        elif where in PUBLIC:
            assert security is None, where
        else:  # another operation (an extension): any scheme it names is declared
            for requirement in security or []:
                assert set(requirement) <= set(schemes), where


def test_create_task_links_each_models_input_schema(document: Document) -> None:
    doc = document.doc
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/api/v1/jobs/createTask"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    request = schemas[ref.rsplit("/", 1)[-1]]
    assert request["discriminator"]["propertyName"] == "model"
    mapping = request["discriminator"]["mapping"]
    assert set(mapping) == set(catalogue.CATALOGUE)
    assert [v["$ref"] for v in request["oneOf"]] == list(mapping.values())
    for model_id, variant_ref in mapping.items():
        variant = schemas[variant_ref.rsplit("/", 1)[-1]]
        assert variant["properties"]["model"]["enum"] == [model_id]
        input_schema = schemas[variant["properties"]["input"]["$ref"].rsplit("/", 1)[-1]]
        # the same fields and rules GET /api/v1/models serves for the model
        served = catalogue.input_schema(catalogue.CATALOGUE[model_id])
        assert input_schema["properties"].keys() == served["properties"].keys()
        assert input_schema.get("required") == served.get("required")
    # a real createTask body matches exactly one variant; an unknown model none
    check = document.validator(ref.removeprefix("#"))
    assert check.is_valid(BODY)
    assert not check.is_valid({**BODY, "model": "nope"})
    assert not check.is_valid({"model": BODY["model"], "input": {"prompt": 5}})


def test_metrics_are_documented_as_text(document: Document) -> None:
    content = document.doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert content == {"text/plain": {"schema": {"type": "string"}}}


def test_real_answers_conform_to_the_document(server: LiveServer, document: Document) -> None:
    key, _ = server.add_key(credits=100, create_per_window=2, create_window_seconds=60)
    client = server.client

    def check(method: str, path: str, **kwargs: Any) -> Any:
        answer = client.request(method.upper(), path, **kwargs)
        document.check_answer(
            method, path, answer.status_code, answer.headers["content-type"], answer.json()
        )
        return answer

    created = check("post", "/api/v1/jobs/createTask", json=BODY, headers=auth(key)).json()
    task_id = created["data"]["taskId"]
    server.wait(key, task_id)
    # kie's refusals: HTTP 200, the code in the body
    for headers, body in (({}, BODY), (auth("sb-nope"), BODY), (auth(key), {"model": "x"})):
        refused = check("post", "/api/v1/jobs/createTask", json=body, headers=headers)
        assert refused.status_code == 200 and refused.json()["code"] in (401, 422)
    # the first create and the bad model used the key's two creates a minute
    limited = check("post", "/api/v1/jobs/createTask", json=BODY, headers=auth(key))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    too_big = check("post", "/api/v1/jobs/createTask", content=b"{" * 2_000_000, headers=auth(key))
    assert too_big.status_code == 413

    record = check("get", "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=auth(key))
    assert record.json()["data"]["state"] == "success"
    check("get", "/api/v1/jobs/recordInfo", params={"taskId": "nope"}, headers=auth(key))
    check("get", "/api/v1/jobs/recordInfo", headers=auth(key))
    check("post", "/api/v1/jobs/cancelTask", json={"taskId": task_id}, headers=auth(key))
    check("get", "/api/v1/jobs/events", params={"taskId": "nope"}, headers=auth(key))
    check("get", "/api/v1/chat/credit", headers=auth(key))
    models = check("get", "/api/v1/models").json()
    assert len(models["data"]) == len(catalogue.CATALOGUE)
    result_url = _result_url(record.json()["data"])
    link = check("post", "/api/v1/common/download-url", json={"url": result_url}, headers=auth(key))
    assert link.json()["code"] == 200
    check("post", "/api/v1/common/download-url", json={"url": "x"}, headers=auth(key))
    upload = {
        "base64Data": base64.b64encode(png_bytes()).decode(),
        "uploadPath": "docs-test",
        "fileName": "a.png",
    }
    uploaded = check("post", "/api/file-base64-upload", json=upload, headers=auth(key))
    assert uploaded.json()["success"] is True
    check("post", "/api/file-base64-upload", json=upload, headers=auth("sb-nope"))
    check("get", "/healthz")
    check("get", "/readyz")


def _result_url(record: dict[str, Any]) -> str:
    return str(json.loads(record["resultJson"])["resultUrls"][0])
