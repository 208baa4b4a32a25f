"""`--metrics`: the request head parsed byte by byte (sans-IO), and a real server on
loopback answering a real HTTP client."""

from __future__ import annotations

import asyncio
import http.client

import pytest

from ztun.metrics import CONTENT_TYPE
from ztun.metrics_server import MAX_HEAD, BadRequest, MetricsServer, parse_request

SCRAPE = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n"


def test_nothing_until_the_head_is_whole() -> None:
    for cut in range(len(SCRAPE)):
        assert parse_request(SCRAPE[:cut]) is None, cut
    assert parse_request(SCRAPE) == ("GET", "/metrics")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9-style: no version
        (b"GET /metrics SPDY/3\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"X" * (MAX_HEAD + 1), 431),
    ],
)
def test_bad_heads_are_refused(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_request(head)
    assert exc.value.status == status


def test_a_real_client_scrapes_a_real_server() -> None:
    async def main() -> list[tuple[int, str | None, bytes]]:
        renders = 0

        async def render() -> str:
            nonlocal renders
            renders += 1
            return f"# TYPE ztun_x gauge\nztun_x {renders}\n"

        server = MetricsServer(render)
        host, port = await server.start("127.0.0.1", 0)

        def fetch(method: str, path: str) -> tuple[int, str | None, bytes]:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request(method, path)
                response = conn.getresponse()
                return response.status, response.getheader("Content-Type"), response.read()
            finally:
                conn.close()

        try:
            results = []
            for method, path in (
                ("GET", "/metrics"),
                ("HEAD", "/metrics"),
                ("GET", "/"),
                ("POST", "/metrics"),
                ("GET", "/metrics"),
            ):
                results.append(await asyncio.to_thread(fetch, method, path))
            return results
        finally:
            server.close()

    ok, head, missing, post, again = asyncio.run(main())
    assert ok == (200, CONTENT_TYPE, b"# TYPE ztun_x gauge\nztun_x 1\n")
    assert head == (200, CONTENT_TYPE, b"")
    assert missing[0] == 404 and post[0] == 405
    assert again[2].endswith(b"ztun_x 3\n")  # rendered per scrape (404/405 render nothing)
