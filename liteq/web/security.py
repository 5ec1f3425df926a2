"""Access control for the monitor panel: Host check, token login, CSRF, security headers.

The rules, in the order a request meets them:

1. Host. When the panel listens on a loopback address it answers only requests
   whose Host header is a loopback name (localhost, 127.0.0.1, ::1, plus any
   --allow-host), so a web page cannot reach it through DNS rebinding.
2. Token. `liteq monitor` always has one unless started with --no-token: the
   one given (--token, LITEQ_MONITOR_TOKEN), else a random one made at start and
   printed in a login URL, as Jupyter does. A request is authenticated by the
   header `Authorization: Bearer TOKEN`, or by the session cookie (an HMAC of the
   token, never the token itself; HttpOnly, SameSite=Strict). The login form sets
   that cookie, and so does any GET whose URL carries `?token=TOKEN`, answered
   with a redirect to the same address without the token, so that the token does
   not stay in the address bar or the history. Unauthenticated page views are sent
   to /login; anything else gets 401. /static/ and /login are always open;
   /metrics is open only with --public-metrics.
3. CSRF, on every POST (with or without a token): the form field `csrf_token`
   must equal the `liteq_csrf` cookie (a random value set on the first visit,
   HttpOnly, SameSite=Strict), and an Origin or Referer header, when sent, must
   name this same host. A request that authenticates with the Bearer header
   needs neither: browsers never attach that header to a cross-site request.
4. Every response carries a strict Content-Security-Policy (scripts, styles and
   images only from the panel itself, no framing) and no-store caching for pages.

Mounted under a prefix (Starlette's Mount, FastAPI's app.mount, or uvicorn's
--root-path behind a proxy that strips it), the rules see the path below the
prefix (scope["root_path"]), and every link, redirect and cookie carries the prefix.

Behind a reverse proxy, pass the browser's Host through (nginx:
`proxy_set_header Host $host;`) so the Origin check can compare them, and name
that host with --allow-host when the panel itself listens on 127.0.0.1.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "liteq_csrf"
CSRF_FIELD = "csrf_token"
TOKEN_PARAM = "token"           # ?token=... in a URL logs a browser in
SESSION_COOKIE = "liteq_session"
SESSION_MAX_AGE = 7 * 24 * 3600
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PREFIXES = ("/static/", "/login", "/favicon.ico")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
       "object-src 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class CSRFError(Exception):
    """A POST that failed the CSRF checks; its message says which."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header value, lower-case, without port or brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def safe_next(value: str | None, default: str = "/") -> str:
    """A local path to redirect to: refuse absolute and protocol-relative URLs."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def root_of(scope: Scope) -> str:
    """The prefix the panel is mounted under ('' at the top), without a trailing /."""
    return (scope.get("root_path") or "").rstrip("/")


def route_path(scope: Scope) -> str:
    """The request's path below the panel's prefix ('/tasks' for '/admin/q/tasks')."""
    path: str
    path, root = scope["path"], root_of(scope)
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


def cookie_path(scope: Scope) -> str:
    """The Path of the panel's cookies: its prefix, so that two panels mounted in one
    site under different prefixes keep their sessions apart."""
    return root_of(scope) or "/"


def set_cookie_header(key: str, value: str, **options: Any) -> tuple[bytes, bytes]:
    """A raw (b"set-cookie", ...) header, formatted the way Starlette formats it."""
    resp = Response()
    resp.set_cookie(key, value, **options)
    return next(h for h in resp.raw_headers if h[0] == b"set-cookie")


class Security:
    """The panel's access policy; see the module docstring."""

    def __init__(self, token: str | None = None, allowed_hosts: Iterable[str] | None = None,
                 public_metrics: bool = False) -> None:
        self.token = token or None
        self.allowed_hosts = ({h.lower().strip("[]") for h in allowed_hosts}
                              if allowed_hosts is not None else None)
        self.public_metrics = public_metrics

    # ---- authentication ------------------------------------------------------

    def session_value(self) -> str:
        """The session cookie value: HMAC-SHA256 of a fixed label keyed by the token."""
        assert self.token is not None  # (only asked for when a token is set)
        return hmac.new(self.token.encode(), b"liteq-monitor-session",
                        hashlib.sha256).hexdigest()

    def check_token(self, candidate: object) -> bool:
        """True when `candidate` is the configured token (constant-time compare)."""
        if not self.token or not candidate:
            return False
        return hmac.compare_digest(str(candidate).encode(), self.token.encode())

    def login_redirect(self, target: str, secure: bool = False,
                       path: str = "/") -> RedirectResponse:
        """A redirect to `target` that logs the browser in (sets the session cookie,
        for the cookie `path`: the panel's prefix)."""
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(SESSION_COOKIE, self.session_value(), max_age=SESSION_MAX_AGE,
                        httponly=True, samesite="strict", path=path, secure=secure)
        return resp

    def bearer_ok(self, request: Request) -> bool:
        """True when the request carries `Authorization: Bearer <the token>`."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def authenticated(self, request: Request) -> bool:
        """True when no token is set, or the request proves it knows the token."""
        if self.token is None:
            return True
        return self.bearer_ok(request) or self.session_ok(request)

    def session_ok(self, request: Request) -> bool:
        """True when a token is set and the request carries its session cookie."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return (self.token is not None and bool(cookie)
                and hmac.compare_digest(cookie.encode(), self.session_value().encode()))

    def needs_auth(self, path: str) -> bool:
        """Whether `path` is behind the token."""
        if self.token is None or path.startswith(OPEN_PREFIXES):
            return False
        return not (path == "/metrics" and self.public_metrics)

    # ---- CSRF ------------------------------------------------------------------

    def check_csrf(self, request: Request, form: Mapping[str, Any]) -> None:
        """Raise CSRFError unless this POST came from one of the panel's own forms."""
        if self.token is not None and self.bearer_ok(request):
            return
        host = request.headers.get("host", "").lower()
        origin = request.headers.get("origin")
        if origin is not None:
            if origin == "null" or urlsplit(origin).netloc.lower() != host:
                raise CSRFError(f"cross-site request refused (Origin {origin})")
        else:
            referer = request.headers.get("referer")
            if referer and urlsplit(referer).netloc.lower() != host:
                raise CSRFError("cross-site request refused (Referer from another site)")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        field = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or ""
        if not cookie or not field:
            raise CSRFError("missing CSRF token: reload the page and try again")
        if not hmac.compare_digest(str(field).encode(), cookie.encode()):
            raise CSRFError("CSRF token mismatch: reload the page and try again")

    def allowed_host(self, request: Request) -> bool:
        """The DNS-rebinding guard: is the Host header one this panel answers to?"""
        if self.allowed_hosts is None:
            return True
        return host_name(request.headers.get("host", "")) in self.allowed_hosts


def wants_html(request: Request) -> bool:
    """True for a browser page view (as opposed to an API, metrics or script call)."""
    path = route_path(request.scope)
    if path.startswith("/api/") or path == "/metrics":
        return False
    return "text/html" in request.headers.get("accept", "")


class SecurityMiddleware:
    """Pure ASGI middleware applying the Host, token and header rules.

    It also makes sure every visitor has a CSRF cookie, and exposes its value to
    the templates as request.state.csrf_token.
    """

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        sec = self.security
        path = route_path(scope)
        root = root_of(scope)
        resp: Response
        if not sec.allowed_host(request):
            resp = PlainTextResponse("Host not allowed: this panel listens on a loopback "
                                     "address; use http://127.0.0.1 or pass --allow-host",
                                     status_code=400)
            return await resp(scope, receive, self._decorate(send, None, path))
        csrf = request.cookies.get(CSRF_COOKIE)
        new_cookie: tuple[bytes, bytes] | None = None
        if not csrf or len(csrf) < 20:
            csrf = secrets.token_urlsafe(32)
            new_cookie = set_cookie_header(CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                                           secure=scope.get("scheme") == "https",
                                           path=cookie_path(scope))
        scope.setdefault("state", {})["csrf_token"] = csrf
        if (sec.token is not None and request.method in ("GET", "HEAD")
                and TOKEN_PARAM in request.query_params):
            resp = await self._login_by_url(request)
            return await resp(scope, receive, self._decorate(send, new_cookie, path))
        if sec.needs_auth(path) and not sec.authenticated(request):
            if request.method in ("GET", "HEAD") and wants_html(request):
                target = scope["path"] + (("?" + scope["query_string"].decode("latin-1"))
                                          if scope.get("query_string") else "")
                resp = RedirectResponse(root + "/login?next=" + quote(target, safe=""), 303)
            elif wants_html(request):
                resp = PlainTextResponse("401 Unauthorized: log in first", status_code=401)
            else:
                resp = JSONResponse({"error": "unauthorized: send Authorization: Bearer TOKEN"},
                                    status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="liteq"'})
            return await resp(scope, receive, self._decorate(send, new_cookie, path))
        return await self.app(scope, receive, self._decorate(send, new_cookie, path))

    async def _login_by_url(self, request: Request) -> Response:
        """A GET carrying ?token=: log in and go to the same address without the token
        (for /login, to its `next`), or, with a wrong token, to the login form."""
        root = root_of(request.scope)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
        if route_path(request.scope).startswith("/login"):
            target = safe_next(dict(rest).get("next"), root + "/")
        else:
            target = safe_next(request.url.path + ("?" + urlencode(rest) if rest else ""),
                               root + "/")
        if self.security.check_token(request.query_params[TOKEN_PARAM]):
            return self.security.login_redirect(target, secure=request.url.scheme == "https",
                                                path=cookie_path(request.scope))
        await asyncio.sleep(0.3)  # slows guessing down a little, as the login form does
        if wants_html(request):
            return RedirectResponse(root + "/login?next=" + quote(target, safe="")
                                    + "&bad_token=1", 303)
        return JSONResponse({"error": "unauthorized: the token in the URL is wrong"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="liteq"'})

    @staticmethod
    def _decorate(send: Send, cookie: tuple[bytes, bytes] | None,
                  path: str) -> Callable[[Message], Awaitable[None]]:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if not path.startswith("/static/") and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if cookie is not None:
                    headers.append(cookie)
                message = {**message, "headers": headers}
            await send(message)
        return wrapped
