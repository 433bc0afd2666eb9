"""A loopback HTTP proxy in front of a real registry that answers chosen requests with a
fault (an HTTP status or a reset connection) and forwards every other request unchanged,
so registry clients meet real transient and auth errors."""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What registries send with a fault: distribution's JSON errors for 429 and 401, the plain
# page a load balancer sends for a 5xx.
ANSWERS = {
    429: ("application/json",
          b'{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests"}]}'),
    401: ("application/json",
          b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'),
    0: ("text/plain", b"Service Unavailable\n"),
}  # fmt: skip


@dataclass
class Fault:
    """Answer the first `times` requests matching method and path (regexes) with status
    (an HTTP code, or "reset" to drop the connection)."""

    status: int | str
    times: int
    method: str = ".*"
    path: str = ".*"
    hits: int = 0

    def takes(self, method: str, path: str) -> bool:
        if self.hits >= self.times:
            return False
        if not (re.fullmatch(self.method, method) and re.search(self.path, path)):
            return False
        self.hits += 1
        return True


@dataclass
class FaultProxy:
    upstream: str  # host:port of the registry
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        """Serve on an ephemeral loopback port; the proxy's host:port."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle_one_request(self):
                # A TLS hello: clients (containerd) that try https first fall back to plain
                # http only when the answer starts with "HTTP/", as Go's servers answer.
                if self.rfile.peek(1)[:1] == b"\x16":
                    self.wfile.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                    self.close_connection = True
                    return
                super().handle_one_request()

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _handle(self):
                body = self._body()
                with proxy.lock:
                    fault = next(
                        (f for f in proxy.faults if f.takes(self.command, self.path)), None
                    )
                    answer = fault.status if fault else 0
                if answer == "reset":
                    # SO_LINGER 0: close sends RST, the client sees "connection reset by peer".
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                if answer:
                    content_type, message = ANSWERS.get(int(answer), ANSWERS[0])
                    self.send_response(int(answer))
                    if answer == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=120)
                headers: dict[str, str] = {}  # repeated headers (Accept) joined, not dropped
                for key, value in self.headers.items():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        headers[key] = f"{headers[key]}, {value}" if key in headers else value
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                # A HEAD's answer has no body but the length of the one a GET would have.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
