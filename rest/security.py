"""Security headers on every response (pages, API, errors and static files alike).

A view that needs another Content-Security-Policy (the /docs page: Swagger UI sets inline
styles; the /rq pages, rest/dashboard.py) sets its own header; these are defaults, never overrides.
"""

from __future__ import annotations

from flask import Flask, Response

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def add_security_headers(resp: Response) -> Response:
    for name, value in HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)
