"""What every answer and every form is held to: security headers on every response, and no
state-changing request without the session's cookie, its CSRF token and a same-origin
`Origin` (when the browser sends one)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

# No inline script or style anywhere: scripts and styles come only from /static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make forms send `Origin: null`
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: web.Request) -> bool:
    """False only when the browser names another origin than this portal's; a request without
    an Origin header (not a browser's cross-site request) passes this check."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as error:
        _add(request, error)
        raise
    _add(request, response)
    return response


def _add(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:  # a WebSocket: its headers went with the handshake
        return
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
