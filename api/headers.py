"""Security headers on every HTTP answer (a pure ASGI middleware: no per-request task).

- ``X-Content-Type-Options: nosniff``: a browser never guesses a type (a
  DICOM part taken for HTML would run script).
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no framing
  (clickjacking).
- ``Content-Security-Policy``: the API serves no page that needs outside
  scripts; everything comes from our own origin.
- ``Referrer-Policy: no-referrer``: URLs carry Study Instance UIDs; they must
  not leak to other sites.
- ``Cache-Control: no-store`` unless the route chose its own (rendered images
  say ``private``): patient data stays out of shared caches.
- ``Strict-Transport-Security`` over HTTPS (RFC 6797).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_ALWAYS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
_NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """Add the headers above to every ``http`` response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in _ALWAYS if h[0] not in present)
                if b"cache-control" not in present:
                    headers.append(_NO_STORE)
                if https:
                    headers.append(_HSTS)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
