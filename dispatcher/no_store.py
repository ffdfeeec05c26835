"""``Cache-Control: no-store`` for API responses that carry a secret: a stream's token (shown
or reset) and a WhatsApp stream's verify token. No browser, proxy or CDN cache may keep
them. (The console sets it on all of its pages: ``dispatcher.console.response_headers``.)"""

from __future__ import annotations

from fastapi import Depends, Response


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


#: Add to a route's ``dependencies``.
NO_STORE = Depends(_no_store)
