"""The HTTP client provider adapters share: pooled connections, bounded timeouts, no
redirects (a provider that redirects an API call is misconfigured, not to be followed), and a
deadline for each call as a whole.

httpx's timeouts bound each network operation (a connect, a write, one read), not a request:
a carrier that drips its answer a byte at a time, each inside the read timeout, would hold a
call for as long as it likes, past the claim lease that was sized on the call's timeout
(``Settings.lease_shorter_than_calls``). httpx has no total timeout (encode/httpx#1450), and
in a synchronous client one cannot be imposed from outside without a second thread, so
``post_within`` streams the answer and stops reading it once the deadline has passed."""

from __future__ import annotations

import time
from typing import Any

import httpx


def provider_client(timeout_seconds: float) -> httpx.Client:
    """One client per adapter instance; connecting never takes more than 5 s."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5)),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        follow_redirects=False,
    )


def post_within(
    client: httpx.Client,
    url: str,
    seconds: float,
    *,
    json: Any,
    headers: dict[str, str],
) -> httpx.Response:
    """POST ``json`` to ``url`` and read the whole answer within ``seconds`` of the call.

    The client's timeouts still bound each connect, write and read; on top of them the
    answer's body is read only while the deadline has not passed. A call that is answered
    ends by its deadline, or at most one read timeout after it (a carrier that falls silent
    in the middle of its answer). Only the body is watched: httpx reads the status line and
    headers before it hands the answer over, so a carrier that drips those is bounded per
    read only.

    Raises what ``httpx.Client.post`` raises; ``httpx.ReadTimeout`` when the answer is not
    complete by the deadline, so the adapters classify it as the read timeout it is (the
    carrier may have taken the request). An answer with a Content-Length that arrives whole
    in the read that crosses the deadline is kept; a chunked one cannot be known to be
    complete then."""
    deadline = time.monotonic() + seconds
    request = client.build_request("POST", url, json=json, headers=headers)
    response = client.send(request, stream=True)
    length = _content_length(response)
    try:
        chunks: list[bytes] = []
        received = 0
        for chunk in response.iter_raw():
            chunks.append(chunk)
            received += len(chunk)
            if time.monotonic() > deadline and (length is None or received < length):
                # Past the deadline with the answer still coming. One that is complete (all
                # its Content-Length read) is kept, however late: the carrier has answered.
                raise httpx.ReadTimeout(
                    f"the answer was not complete within {seconds:g}s", request=request
                )
    finally:
        response.close()
    # The raw body, decoded (``Content-Encoding``) as ``Client.post`` would have.
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        request=request,
    )


def _content_length(response: httpx.Response) -> int | None:
    """The answer's declared length, if it declares one. A chunked answer ends with its
    last chunk, whatever a Content-Length beside it says (HTTP/1.1 ignores that one)."""
    if "transfer-encoding" in response.headers:
        return None
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
