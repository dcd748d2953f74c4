"""Crunch's HTTP layer: a Flask app factory that registers the API and health blueprints."""

from __future__ import annotations

from typing import Any

from flask import Flask

from rest.settings import Settings


def create_app(overrides: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app; tests pass overrides, production reads the environment."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        REDIS_URL=settings.redis_url,
        RESULT_TTL=settings.result_ttl,
        LIMITS=settings.limits,
        MAX_CONTENT_LENGTH=settings.limits.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.limits.max_body_bytes,
        WAIT_SLOTS=settings.wait_slots,
        RATE_LIMIT_SUBMIT=settings.rate_limit_submit,
        RATE_LIMIT_CONTROL=settings.rate_limit_control,
        RATELIMIT_ENABLED=settings.rate_limit_enabled,
        MAX_QUEUED_PER_CLIENT=settings.max_queued_per_client,
        JSON_SORT_KEYS=False,
        SETTINGS=settings,
    )
    if overrides:
        app.config.update(overrides)

    from rest import api, batches, extensions, health, ops, problems, web, webhooks

    extensions.init_app(app)
    problems.init_app(app)
    api.init_app(app)
    health.init_app(app)
    web.init_app(app)
    ops.init_app(app)
    batches.init_app(app)
    webhooks.init_app(app)

    from rest import auth, dashboard, logging, metrics, openapi, ratelimit, security

    logging.init_app(app)
    metrics.init_app(app)
    openapi.init_app(app)
    ratelimit.init_app(app)
    security.init_app(app)
    auth.init_app(app, settings.api_tokens, settings.secret_key)
    dashboard.init_app(app, settings.rq_dashboard, settings.rq_dashboard_owners)
    if settings.trusted_proxies > 0:
        # Behind Compose's nginx every request comes from the proxy's address: without this, all
        # clients would share one rate budget, one queue bound and one storage quota.
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    return app
