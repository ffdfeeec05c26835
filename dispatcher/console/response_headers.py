"""Headers on every console response (its static assets aside).

``Cache-Control: no-store``: console responses carry secrets (a stream's token in the show
and reset modals, the WhatsApp verify token in the panel, and on every page the session's
CSRF token), and none is worth caching, so no browser or proxy cache keeps any of them, and
the back button after signing out does not bring a page back.

``Content-Security-Policy: frame-ancestors 'none'`` and ``X-Frame-Options: DENY`` (for
browsers without CSP 2): no other site may frame the console, where an invisible frame
could lure a click onto a row action (reset token, disable, delete). Only ``frame-ancestors``
is set, so htmx and the console's own script run as before.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_RESPONSE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


class ConsoleResponseHeaders:
    """ASGI middleware: sets ``CONSOLE_RESPONSE_HEADERS`` on responses under ``prefix``,
    except under ``static_prefix``; other paths pass through untouched."""

    def __init__(self, app: ASGIApp, prefix: str, static_prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._applies_to(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(CONSOLE_RESPONSE_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _applies_to(self, path: str) -> bool:
        on_console = path == self.prefix or path.startswith(self.prefix + "/")
        return on_console and not path.startswith(self.static_prefix + "/")
