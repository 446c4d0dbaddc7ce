"""A loopback HTTP proxy in front of a real Azurite that answers some requests with an error.

Throttling (429/503) and expired credentials cannot be produced by Azurite itself; this proxy
forwards every request unchanged, except that for a while (or for matching requests) it answers
with the configured status and an Azure-style error body instead.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """``fail(status, seconds, method=...)`` makes matching requests fail until the time is up."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.failed = 0  # requests answered with an error
        self.requests: Counter[str] = Counter()  # requests seen, by HTTP method
        self._rule: tuple[int, float, str | None, float | None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.requests[self.command] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = proxy._status_for(self.command)
                if status is not None:
                    code = _ERROR_CODES.get(status, "InternalError")
                    headers = {"x-ms-error-code": code, "Content-Type": "application/xml"}
                    self._reply(status, headers, _error_body(code))
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    kept = {
                        k: v
                        for k, v in response.getheaders()
                        if k.lower() not in _HOP and k.lower() != "content-length"
                    }
                    if self.command == "HEAD":  # no body: the length is the object's
                        kept["Content-Length"] = response.getheader("Content-Length", "0")
                    self._reply(response.status, kept, data)
                finally:
                    conn.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail(self, status: int, seconds: float, method: str | None = None) -> None:
        """Answer ``method`` requests (all when None) with ``status`` for ``seconds``, counted
        from the first such request (so a job that takes a while to start still meets it)."""
        with self._lock:
            self._rule = (status, seconds, method, None)

    def clear(self) -> None:
        with self._lock:
            self._rule = None

    def _status_for(self, method: str) -> int | None:
        with self._lock:
            if self._rule is None:
                return None
            status, seconds, only, since = self._rule
            if only is not None and method != only:
                return None
            now = time.monotonic()
            if since is None:
                self._rule = (status, seconds, only, now)
            elif now - since > seconds:
                self._rule = None
                return None
            self.failed += 1
            return status

    def connection_string(self, account: str, key: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{account};"
        )

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


_ERROR_CODES = {429: "TooManyRequests", 503: "ServerBusy", 403: "AuthenticationFailed"}


def _error_body(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
        "<Message>injected by the test proxy</Message></Error>"
    ).encode()
