"""Optional access control: API tokens (hashed at rest), owner-scoped jobs, browser login and CSRF.

API_TOKENS (see the README's settings table) is a comma-separated list of `owner:sha256hex`
entries: the owner's name and the SHA-256 hex digest of one of its tokens. The plaintext token
never sits in the configuration; `python -m rest.auth new NAME` makes a token and its entry,
`python -m rest.auth hash NAME [TOKEN]` hashes one you have (the token is read from stdin when
left out, so it stays out of shell history). An owner may have several entries (rotation).

When API_TOKENS is set:
- every /api/... request needs `Authorization: Bearer <token>` (or the browser session cookie
  that /login sets, which the job pages' script uses), else 401 problem+json with
  `WWW-Authenticate: Bearer`. Deliberately left open: /healthz, /readyz and /metrics (probes
  and scrapers carry no token), /openapi.json and /docs (the contract is public), /static.
- a job belongs to the owner that submitted it; everyone else gets the 404 of an unknown job.
- the browser pages redirect to /login, which takes a token and keeps `{auth: digest}` in
  Flask's signed session cookie (HttpOnly, SameSite=Lax, Secure over https); /logout clears it.
When it is unset nothing here changes a response: the API stays open exactly as the contract says.

CSRF: every browser POST form carries a per-session token (hidden field `csrf_token`), checked
on POST whether API tokens are on or off. The JSON API takes no CSRF token from bearer clients;
a cookie-authenticated unsafe API call (the job page's buttons) must send it as X-CSRF-Token.

SECRET_KEY signs the session cookie. When unset, one random key is made and kept in Redis
(SET NX under crunch:secret-key), so every web process and restart shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from typing import Any

from flask import Flask, abort, current_app, g, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from jobs.store.keys import PREFIX
from jobs.store.record import JobRecord
from rest.problems import PROBLEM_BASE, Problem

#: String: the generated session-signing key when SECRET_KEY is unset (shared by every process).
SECRET_KEY_KEY = PREFIX + "secret-key"
#: Owner names end up in Redis keys and logs: keep them plain.
OWNER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_UNSET = object()


def hash_token(token: str) -> str:
    """The digest API_TOKENS holds for a token (hex SHA-256 of its UTF-8 bytes)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(raw: str) -> dict[str, str]:
    """API_TOKENS text -> {digest: owner}; SystemExit on anything that is not `owner:sha256hex`."""
    table: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in raw.split(",")), 1):
        if not entry:
            continue
        owner, sep, digest = entry.rpartition(":")
        if not sep or not OWNER_RE.match(owner) or not _HEX_RE.match(digest):
            raise SystemExit("setting API_TOKENS must be comma-separated owner:sha256hex entries (the SHA-256 "
                             "hex digest of the token, never the token itself; `python -m rest.auth hash NAME` "
                             f"makes one); entry {number} is not (its text is not echoed: it may be a secret)")
        digest = digest.lower()
        if digest in table:
            raise SystemExit(f"setting API_TOKENS lists the same token twice (owners {table[digest]!r} and {owner!r})")
        table[digest] = owner
    return table


def tokens() -> dict[str, str]:
    """This app's token table (empty: access control is off)."""
    return current_app.extensions.get("crunch_tokens") or {}


def enabled() -> bool:
    return bool(current_app.extensions.get("crunch_tokens"))


def _lookup(token: str) -> tuple[str, str] | None:
    """(digest, owner) for a presented token, comparing every entry in constant time."""
    digest = hash_token(token)
    found = None
    for known, owner in tokens().items():
        if hmac.compare_digest(known, digest):
            found = (known, owner)
    return found


def _session_owner() -> str | None:
    """The owner the signed session cookie names, while its token is still configured."""
    digest = session.get("auth")
    return tokens().get(digest) if isinstance(digest, str) else None


def current_owner() -> str | None:
    """Who is asking, by token or session; None when tokens are off or nobody signed in."""
    if not enabled():
        return None
    cached = g.get("crunch_owner", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[return-value]
    owner: str | None = None
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            hit = _lookup(token.strip())
            owner = hit[1] if hit else None
    else:
        owner = _session_owner()
    g.crunch_owner = owner
    return owner


def visible(rec: JobRecord | None) -> JobRecord | None:
    """The job if the caller may see it: everyone's with tokens off, only its own with them on."""
    if rec is None or not enabled():
        return rec
    owner = current_owner()
    return rec if owner is not None and rec.extra.get("owner") == owner else None


def _unauthorized(detail: str, error: str = "") -> Problem:
    challenge = 'Bearer realm="crunch"' + (f', error="{error}"' if error else "")
    return Problem(401, "Unauthorized", detail, type_=PROBLEM_BASE + "unauthorized",
                   headers={"WWW-Authenticate": challenge})


def _require_api_token() -> None:
    """Guard /api/... only; every other path (health, metrics, docs, static, pages) is not the API."""
    if not enabled() or not (request.path == "/api" or request.path.startswith("/api/")):
        return
    if current_owner() is None:
        if request.headers.get("Authorization"):
            raise _unauthorized("the bearer token is not valid", "invalid_token")
        raise _unauthorized("this API needs `Authorization: Bearer <token>`")
    if not request.headers.get("Authorization") and request.method not in _SAFE_METHODS:
        # Signed in by cookie (a job page's buttons): the browser would send it cross-site too.
        check_csrf(request.headers.get(CSRF_HEADER, ""))


# -- CSRF ------------------------------------------------------------------------------------------


def csrf_token() -> str:
    """This session's CSRF token, made on first use (templates put it in every POST form)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(sent: str | None = None) -> None:
    """400 (403 on the API) unless the form, or the given header value, carries this session's CSRF token."""
    if sent is None:
        sent = request.form.get(CSRF_FIELD, "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected or not isinstance(sent, str) \
            or not hmac.compare_digest(expected.encode(), sent.encode()):
        if request.path.startswith("/api/"):
            raise Problem(403, "Forbidden", f"a cookie-authenticated request needs the {CSRF_HEADER} header",
                          type_=PROBLEM_BASE + "csrf")
        abort(400, description="This form has expired or did not come from Crunch's own pages "
                               "(its security token is missing or wrong). Go back, reload the page and try again.")


def sign_in(token: str) -> str | None:
    """Check a token typed into /login; on success start a fresh session and return the owner."""
    hit = _lookup(token.strip())
    if hit is None:
        return None
    session.clear()  # a new session id on every login: no fixation
    session["auth"] = hit[0]
    session["csrf"] = secrets.token_urlsafe(32)
    g.crunch_owner = hit[1]
    return hit[1]


def sign_out() -> None:
    session.clear()
    g.crunch_owner = None


# -- the session cookie and its key ----------------------------------------------------------------


def _load_secret_key(app: Flask) -> str:
    """SECRET_KEY, or the one all processes share in Redis (the first to ask makes it)."""
    conn = app.extensions["crunch"].service.conn
    conn.set(SECRET_KEY_KEY, secrets.token_hex(32), nx=True)
    value = conn.get(SECRET_KEY_KEY)
    return value.decode() if isinstance(value, bytes) else str(value)


class CrunchSessionInterface(SecureCookieSessionInterface):
    """Signed-cookie sessions whose key may come from Redis, fetched only once a cookie is in play."""

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            app.secret_key = _load_secret_key(app)
        return super().get_signing_serializer(app)

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        # No cookie, nothing to verify: /healthz and the API never need the key (nor Redis for it).
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure whenever the request came over https (or SESSION_COOKIE_SECURE forces it)."""
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def init_app(app: Flask, api_tokens: str = "", secret_key: str = "") -> None:
    """Parse API_TOKENS, set up the session cookie, and guard /api when tokens are configured."""
    app.extensions["crunch_tokens"] = parse_tokens(api_tokens)
    if secret_key:
        app.secret_key = secret_key
    app.session_interface = CrunchSessionInterface()
    app.config.update(SESSION_COOKIE_NAME="crunch_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax")
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["auth_enabled"] = enabled
    app.jinja_env.globals["auth_owner"] = current_owner
    app.before_request(_require_api_token)


def main(argv: list[str]) -> int:
    """`python -m rest.auth new NAME` or `hash NAME [TOKEN]`: print an API_TOKENS entry."""
    usage = "usage: python -m rest.auth new NAME | hash NAME [TOKEN]  (TOKEN is read from stdin if left out)"
    if len(argv) < 2 or argv[0] not in ("new", "hash") or not OWNER_RE.match(argv[1]):
        print(usage, file=sys.stderr)
        return 2
    name = argv[1]
    if argv[0] == "new":
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")
        print(f"entry: {name}:{hash_token(token)}")
        return 0
    token = argv[2] if len(argv) > 2 else sys.stdin.readline().strip()
    if not token:
        print("empty token", file=sys.stderr)
        return 2
    print(f"{name}:{hash_token(token)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
