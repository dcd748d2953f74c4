"""Every response carries the security headers: API answers, problems, pages, static files, errors."""

from __future__ import annotations

import pytest

from rest.security import CONTENT_SECURITY_POLICY

EXPECTED = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def assert_secure(resp, csp: str | None = CONTENT_SECURITY_POLICY) -> None:
    for name, value in EXPECTED.items():
        assert resp.headers.get(name) == value, (name, resp.headers)
    if csp is not None:
        assert resp.headers.get("Content-Security-Policy") == csp


def test_policy_is_the_documented_one() -> None:
    assert CONTENT_SECURITY_POLICY == ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                       "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                                       "form-action 'self'")


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("get", "/healthz", {}, 200),
    ("get", "/readyz", {}, 200),
    ("get", "/metrics", {}, 200),
    ("get", "/openapi.json", {}, 200),
    ("get", "/api/v1/queues", {}, 200),
    ("post", "/api/v1/fibonacci", {"json": {"n": 3}}, None),
    ("get", "/api/v1/jobs/0123456789abcdef0123456789abcdef", {}, 404),
    ("post", "/api/v1/fibonacci", {"data": b"{", "content_type": "application/json"}, 400),
    ("post", "/api/v1/fibonacci", {"json": {"n": -1}}, 422),
    ("put", "/api/v1/fibonacci", {}, 405),
    ("get", "/no/such/route", {}, 404),
    ("get", "/docs/static/swagger-ui.css", {}, 200),
])
def test_headers_on_every_kind_of_response(client, method: str, path: str, kwargs: dict, status: int | None) -> None:
    resp = getattr(client, method)(path, **kwargs)
    if status is not None:
        assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    assert_secure(resp)
    resp.close()


def test_headers_on_streamed_and_unexpected_errors(app) -> None:
    @app.get("/__boom")
    def boom():
        raise RuntimeError("boom")

    resp = app.test_client().get("/__boom")
    assert resp.status_code == 500
    assert_secure(resp)


def test_docs_page_gets_its_own_offline_policy(client) -> None:
    resp = client.get("/docs")
    assert resp.status_code == 200
    assert_secure(resp, csp=None)
    csp = resp.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    # Swagger UI sets inline style attributes; scripts stay same-origin files, nothing is fetched elsewhere.
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "http" not in csp


def test_browser_pages_and_their_static_files(client, app) -> None:
    for path in ("/", "/jobs"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert_secure(resp)
    static = [r.rule for r in app.url_map.iter_rules() if r.endpoint == "static"]
    if static:
        resp = client.get("/static/crunch.css")
        assert_secure(resp)
        resp.close()
