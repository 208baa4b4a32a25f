"""`--metrics HOST:PORT`: the Prometheus text on `GET /metrics`, over a tiny asyncio server.

A scrape is one short HTTP/1.x request; the parsing is sans-IO (`parse_request`: bytes in,
method and path out, or None while the head is incomplete) and the adapter reads one
bounded head, answers, and closes (`Connection: close`: no keep-alive state to hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .metrics import CONTENT_TYPE

log = logging.getLogger("ztun")

MAX_HEAD = 8192  # a scrape's request head is a few hundred bytes
READ_TIMEOUT = 10.0
METRICS_PATH = "/metrics"


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


def parse_request(head: bytes) -> tuple[str, str] | None:
    """(method, path) once the head is whole (RFC 9112 2.1, 3); None: read more."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")  # RFC 9112 2.2: a bare LF may end a line
    if end < 0:
        if len(head) > MAX_HEAD:
            raise BadRequest(431, "Request Header Fields Too Large")
        return None
    request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(400, "Bad Request")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "Bad Request") from None
    return method, target.split("?", 1)[0]


def response(status: int, reason: str, body: bytes, content_type: str, *, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else body)


def answer(method: str, path: str, text: str | None) -> bytes:
    """The response to a parsed request; `text` is the exposition (None: not rendered)."""
    if method not in ("GET", "HEAD"):
        return response(405, "Method Not Allowed", b"", "text/plain", head=False)
    if path != METRICS_PATH or text is None:
        body = f"ztun: the metrics are at {METRICS_PATH}\n".encode()
        return response(404, "Not Found", body, "text/plain; charset=utf-8", head=method == "HEAD")
    return response(200, "OK", text.encode(), CONTENT_TYPE, head=method == "HEAD")


class MetricsServer:
    """Serves `render()` (the current exposition) at http://HOST:PORT/metrics."""

    def __init__(self, render: Callable[[], Awaitable[str]]) -> None:
        self.render = render
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_client, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = b""
                parsed = None
                while parsed is None:
                    data = await reader.read(MAX_HEAD)
                    if not data:
                        return
                    head += data
                    parsed = parse_request(head)
            method, path = parsed
            wanted = path == METRICS_PATH and method in ("GET", "HEAD")
            text = await self.render() if wanted else None
            writer.write(answer(method, path, text))
            await writer.drain()
        except BadRequest as exc:
            body = f"{exc}\n".encode()
            writer.write(response(exc.status, exc.reason, body, "text/plain", head=False))
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics scrape failed")
            writer.write(response(500, "Internal Server Error", b"", "text/plain", head=False))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
