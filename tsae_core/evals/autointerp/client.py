"""An OpenAI-compatible chat client with a response cache: hosted APIs, vLLM, llama.cpp server, Ollama.

A request is `POST {base_url}/chat/completions` with body `{"model", "messages", "max_tokens", "n": 1,
"stream": false}` (plus `temperature` when set) and, when `api_key_env` names a variable, the header
`Authorization: Bearer <its value>`. The key is read from the environment when the first request
goes out, sent only in that header, and never stored: not in the cache, the logs or any result. A
server may echo it (in an error body or in an answer): every body is redacted as it arrives
(`http.redact`, keys of 8 characters or more), so no message, cached answer or result carries it.

Cache: one JSON file per request under `cache_dir/<2 hex>/<sha256>.json`, the sha256 of the full
request (`{"base_url", "body"}` as canonical JSON, the key not part of it), holding the request and
the answer's text; written atomically. A request found there is not sent, so a rerun costs nothing
and scores the same.

Failures. `timeout_s` bounds each request whole, from connecting to the last byte of the answer (a
server trickling its reply times out like a silent one). 429, 5xx, a timeout or a dropped connection:
retried `retries` times, waiting `backoff_s`, then twice as long each time (a Retry-After header wins,
up to 60 s); when retries run out the error is raised. Ctrl-C (`KeyboardInterrupt` in the thread
waiting for the answers) stops at once: no retry starts after it, and the requests in flight are
abandoned. Errors that retrying cannot fix are raised at once, each named: `EndpointUnreachable`
(nothing listens at base_url), `AuthenticationFailed` (401/403: a wrong or missing key),
`ModelNotServed` (the endpoint does not serve `model`), `BadResponse` (a reply that is not an OpenAI
chat completion), `MissingApiKey` (the variable is unset). `RequestBudgetExceeded` stops a run
before its first request when it needs more than `max_requests`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from tsae_core.evals.autointerp.http import Abandoned, bounded_request, redact
from tsae_core.io import write_text

MAX_RETRY_AFTER_S = 60.0
WAKE_S = 0.1
"""How often `complete_many` wakes while it waits for answers, to act on a Ctrl-C."""


class AutointerpError(RuntimeError):
    """A failure of the judge endpoint; the message names the problem and the fix."""


class EndpointUnreachable(AutointerpError):
    pass


class AuthenticationFailed(AutointerpError):
    pass


class ModelNotServed(AutointerpError):
    pass


class EndpointTimeout(AutointerpError):
    pass


class EndpointError(AutointerpError):
    pass


class BadResponse(AutointerpError):
    pass


class MissingApiKey(AutointerpError):
    pass


class RequestBudgetExceeded(AutointerpError):
    pass


class ResponseCache:
    """Answers on disk keyed by the sha256 of the full request (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(base_url: str, body: dict[str, Any]) -> str:
        blob = json.dumps({"base_url": base_url.rstrip("/"), "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        content = record.get("content") if isinstance(record, dict) else None
        return content if isinstance(content, str) else None

    def put(self, key: str, base_url: str, body: dict[str, Any], content: str) -> None:
        record = {"base_url": base_url, "request": body, "content": content}
        write_text(self.path(key), json.dumps(record, indent=1, ensure_ascii=False) + "\n")


class ChatClient:
    """Chat completions from one endpoint and model, cached, `concurrency` at a time."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "", *, cache: ResponseCache,
                 temperature: float | None = None, concurrency: int = 8, timeout_s: float = 60.0, retries: int = 4,
                 backoff_s: float = 2.0) -> None:
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.cache, self.temperature = cache, temperature
        self.concurrency, self.timeout_s, self.retries, self.backoff_s = concurrency, timeout_s, retries, backoff_s
        self.sent = 0
        """Requests sent to the endpoint (each retry counts)."""
        self.cached = 0
        """Requests answered from the cache."""
        self._lock = threading.Lock()
        self._checked = False

    # ---------------------------------------------------------------- requests
    def body(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "n": 1, "stream": False}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def is_cached(self, body: dict[str, Any]) -> bool:
        return self.cache.get(ResponseCache.key(self.base_url, body)) is not None

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = self._key()
            if not key:
                raise MissingApiKey(f"the environment variable {self.api_key_env} (autointerp.api_key_env) is not set: "
                                    f"export {self.api_key_env}=<your key>, or set autointerp.api_key_env: '' for a "
                                    "local server that needs none")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, method: str, url: str, stop: threading.Event | None = None, **kwargs: Any) -> httpx.Response:
        """One request, bounded by `timeout_s` in all, its body redacted of the key (`http.bounded_request`)."""
        return bounded_request(method, url, timeout_s=self.timeout_s, stop=stop, secret=self._key(),
                               headers=self._headers(), **kwargs)

    def check_endpoint(self) -> None:
        """`GET {base_url}/models` once: the endpoint answers, accepts the key and serves the model
        (an endpoint without that route, or with an unusual answer, is not judged by it)."""
        if self._checked:
            return
        try:
            r = self._request("GET", f"{self.base_url}/models")
        except httpx.TimeoutException:
            raise EndpointTimeout(f"{self.base_url}/models gave no whole answer within {self.timeout_s:g} s "
                                  "(autointerp.timeout_s); is the server up and not overloaded?") from None
        except httpx.TransportError as e:
            raise EndpointUnreachable(self._unreachable(e)) from None
        if r.status_code in (401, 403):
            raise AuthenticationFailed(self._auth_message(r))
        if r.status_code == 200:
            try:
                served = [m.get("id") for m in r.json().get("data", []) if isinstance(m, dict)]
            except (ValueError, AttributeError):
                served = []
            if served and self.model not in served:
                raise ModelNotServed(f"{self.base_url} does not serve the model {self.model!r} (autointerp.model); it serves "
                                     f"{', '.join(map(str, served[:10]))}{' ...' if len(served) > 10 else ''}")
        self._checked = True

    def _unreachable(self, e: Exception) -> str:
        return (f"cannot reach {self.base_url} (autointerp.base_url): {type(e).__name__}: {redact(str(e), self._key())}; "
                "start the server (vLLM, llama.cpp server, Ollama) or correct the URL, which ends in /v1")

    def _auth_message(self, r: httpx.Response) -> str:
        who = f"the key in ${self.api_key_env}" if self.api_key_env else "a request without a key"
        return (f"{self.base_url} refused {who} (HTTP {r.status_code}: {_error_text(r)}); check the key, or "
                "autointerp.api_key_env names the wrong variable")

    def complete(self, body: dict[str, Any], stop: threading.Event | None = None) -> str:
        """The answer's text for one request body, from the cache or the endpoint (`stop`: abandon it)."""
        key = ResponseCache.key(self.base_url, body)
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.cached += 1
            return redact(hit, self._key())  # an answer cached by an older tsae may hold an echoed key
        content = self._send(body, stop or threading.Event())
        self.cache.put(key, self.base_url, body, content)
        return content

    def _send(self, body: dict[str, Any], stop: threading.Event) -> str:
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            wait_s = self.backoff_s * 2 ** attempt
            if stop.is_set():
                raise Abandoned(f"POST {url} not sent: the stage was interrupted")
            with self._lock:
                self.sent += 1
            try:
                r = self._request("POST", url, stop, json=body)
            except httpx.TimeoutException:
                if last:
                    raise EndpointTimeout(f"{url} gave no whole answer within {self.timeout_s:g} s (autointerp.timeout_s), "
                                          f"{self.retries + 1} times; raise the timeout or lower autointerp.concurrency") from None
                stop.wait(wait_s)
                continue
            except httpx.ConnectError as e:
                raise EndpointUnreachable(self._unreachable(e)) from None
            except httpx.TransportError as e:  # a dropped connection: worth another try
                if last:
                    raise EndpointUnreachable(self._unreachable(e)) from None
                stop.wait(wait_s)
                continue
            if r.status_code == 200:
                return _content(r, url)
            if r.status_code in (401, 403):
                raise AuthenticationFailed(self._auth_message(r))
            if r.status_code == 404 or (r.status_code == 400 and "model" in _error_text(r).lower()):
                raise ModelNotServed(f"{url} answered HTTP {r.status_code} for the model {self.model!r} (autointerp.model): "
                                     f"{_error_text(r)}; name a model the endpoint serves (GET {self.base_url}/models lists them)")
            if r.status_code == 429 or r.status_code >= 500:
                if last:
                    raise EndpointError(f"{url} answered HTTP {r.status_code} ({_error_text(r)}) {self.retries + 1} times; "
                                        "lower autointerp.concurrency, or raise autointerp.retries / backoff_s")
                stop.wait(_retry_after(r, wait_s))
                continue
            raise EndpointError(f"{url} answered HTTP {r.status_code}: {_error_text(r)}")
        raise AssertionError("unreachable")

    def complete_many(self, bodies: list[dict[str, Any]]) -> list[str]:
        """Answers of many requests, in order, `concurrency` at a time; the first error stops the rest
        (answers already received stay in the cache). Ctrl-C (or any error) returns at once: the
        requests in flight are abandoned and no retry starts."""
        if not bodies:
            return []
        if any(not self.is_cached(b) for b in bodies):
            self.check_endpoint()
        out: list[str] = [""] * len(bodies)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="tsae-judge")
        try:
            futures = {pool.submit(self.complete, b, stop): i for i, b in enumerate(bodies)}
            pending = set(futures)
            while pending:
                # A timed wait: should SIGINT land on a worker thread, CPython only flags it for the main thread,
                # which notices when it next takes the GIL; an untimed wait would defer the Ctrl-C to the next answer
                done, pending = wait(pending, timeout=WAKE_S, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                    out[futures[f]] = f.result()
        finally:  # on success every request is done; else abandon the rest without waiting for them
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
        return out


def _error_text(r: httpx.Response) -> str:
    try:
        data = r.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return r.text[:300] or r.reason_phrase


def _retry_after(r: httpx.Response, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(r.headers.get("retry-after", ""))))
    except ValueError:
        return default


def _content(r: httpx.Response, url: str) -> str:
    try:
        content = r.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadResponse(f"{url} answered HTTP 200 with something that is not an OpenAI chat completion: "
                          f"{r.text[:200]!r}; is base_url the OpenAI-compatible route (ending in /v1)?") from None
    if content is None:  # no text (a refusal or a tool call): an answer that does not parse
        return ""
    if not isinstance(content, str):
        raise BadResponse(f"{url} answered a chat completion whose message content is {type(content).__name__} "
                          f"{str(content)[:80]!r}, not text; serve the model through an OpenAI-compatible route that "
                          "returns text (base_url ending in /v1)")
    return content.strip()
