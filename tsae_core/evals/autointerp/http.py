"""One HTTP request to the judge whose whole time is bounded, which Ctrl-C can abandon, and whose body
never carries the API key past this module.

httpx's `timeout` bounds each wait for the next bytes, not the request: a server that sends its reply
one byte a second never times out. `bounded_request` reads the body as it arrives in a helper thread
and gives up when `timeout_s` has passed since the request began, however the time was spent
(connecting, waiting, a trickle of bytes), or as soon as `stop` is set (the stage was interrupted).
The helper thread notices the deadline or `stop` at its next chunk, or within `timeout_s` when the
server goes silent, and then ends; it is a daemon thread, so it never holds a process open.

Every body is redacted as it arrives (`redact`): whatever the server echoes of the key (in an error
message or in an answer) is replaced before anything parses, prints, caches or writes it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

MIN_SECRET_CHARS = 8
"""Keys shorter than this are not redacted: they cannot be told from ordinary text (a local server's
placeholder key such as `none` would otherwise blank out answers)."""
REDACTED = "[redacted API key]"
_BODY_FRAMING = ("content-encoding", "content-length", "transfer-encoding")


class Abandoned(Exception):
    """The request was given up: `stop` was set while it ran (the caller is being interrupted)."""


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (secrets of `MIN_SECRET_CHARS` or more)."""
    if not secret or len(secret) < MIN_SECRET_CHARS:
        return text
    return text.replace(secret, REDACTED)


def _redact_bytes(data: bytes, secret: str | None) -> bytes:
    if not secret or len(secret) < MIN_SECRET_CHARS:
        return data
    return data.replace(secret.encode(), REDACTED.encode())


def bounded_request(method: str, url: str, *, timeout_s: float, stop: threading.Event | None = None,
                    secret: str | None = None, **kwargs: Any) -> httpx.Response:
    """`httpx.request(method, url, **kwargs)` done within `timeout_s` seconds in all, its body read
    whole and redacted of `secret`. Raises `httpx.TimeoutException` when the time runs out,
    `Abandoned` when `stop` is set first, and httpx's other errors as they are."""
    deadline = time.monotonic() + timeout_s
    stop = stop or threading.Event()
    box: dict[str, Any] = {}

    def fetch() -> None:
        try:
            with httpx.stream(method, url, timeout=timeout_s, **kwargs) as r:
                chunks = []
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                headers = [(k, v) for k, v in r.headers.items() if k.lower() not in _BODY_FRAMING]  # the body is decoded
                box["response"] = httpx.Response(r.status_code, headers=headers, request=r.request,
                                                 content=_redact_bytes(b"".join(chunks), secret))
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = e

    helper = threading.Thread(target=fetch, daemon=True, name="tsae-judge-request")
    helper.start()
    while helper.is_alive() and not stop.is_set() and time.monotonic() < deadline:
        helper.join(min(0.1, max(0.0, deadline - time.monotonic())))
    if "response" in box:
        return box["response"]
    if "error" in box:
        raise box["error"]
    if stop.is_set():
        raise Abandoned(f"{method} {url} abandoned")
    raise httpx.TimeoutException(f"no whole answer within {timeout_s:g} s")
