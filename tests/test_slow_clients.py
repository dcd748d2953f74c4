"""A real gunicorn against abusive clients: oversized bodies are refused with 413 before they are
read, and clients trickling their headers (slowloris) neither starve normal clients nor hold
threads forever."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra.processes import Api, Web

pytestmark = pytest.mark.e2e

SMALL_BODY = 64 * 1024


@pytest.fixture(scope="module")
def small_web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """One process with 8 threads, a 64 KiB body cap and a 2 s header deadline: limits within cheap reach."""
    w = Web(redis_url, tmp_path_factory.mktemp("small-web"), WEB_PROCESSES=1, WEB_THREADS=8,
            MAX_BODY_BYTES=SMALL_BODY, REQUEST_HEADER_TIMEOUT=2).start()
    yield w
    w.stop()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the headers: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def assert_413(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/problem+json"), headers
    problem = json.loads(body)
    assert problem["status"] == 413 and "MAX_BODY_BYTES" in problem["detail"], problem


@pytest.mark.parametrize("path, ctype", [
    ("/api/v1/fibonacci", "application/json"),
    ("/api/v1/sort", "multipart/form-data; boundary=xyz"),
    ("/api/v1/csv", "multipart/form-data; boundary=xyz"),
])
def test_a_huge_content_length_is_refused_before_the_body_is_sent(web: Web, path: str, ctype: str) -> None:
    """The server answers 413 from the header alone: the client sends 5 bytes of a 'terabyte' body."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {10**12}\r\n\r\n".encode() + b'{"n":')
        assert_413(*read_response(sock))


@pytest.mark.parametrize("path, ctype, start", [
    ("/api/v1/sort", "application/json", b'{"numbers": ['),
    ("/api/v1/fibonacci", "application/json", b'{"n": 5, "pad": "'),
    ("/api/v1/sort", "multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="n.txt"\r\n\r\n'),
    ("/api/v1/csv", "multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n\r\na,b\r\n'),
])
def test_a_chunked_body_over_the_cap_is_cut_off_with_413(small_web: Web, path: str, ctype: str,
                                                         start: bytes) -> None:
    """No Content-Length to judge by: the server reads up to MAX_BODY_BYTES and answers 413 (werkzeug
    alone would parse the first MAX_BODY_BYTES as if they were the whole body)."""
    with socket.create_connection(("127.0.0.1", small_web.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"1," * 4096
        sent = 0
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(start), start))
            while sent < 4 * SMALL_BODY:  # bounded: a server that never answers fails the read below
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        assert_413(*read_response(sock))


def test_a_chunked_body_under_the_cap_is_accepted(small_web: Web) -> None:
    """The cap cuts off only what is over it: a small chunked JSON body is a normal submission."""
    body = b'{"n": 12}'
    with socket.create_connection(("127.0.0.1", small_web.port), timeout=60) as sock:
        sock.sendall(b"POST /api/v1/fibonacci HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        status, _, data = read_response(sock)
    assert status in (200, 202), data


class Trickle:
    """Sockets that each send a request's headers one byte at a time, never finishing them."""

    HEAD = b"POST /api/v1/fibonacci HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: "

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            self.socks.append(s)
        self.cut = 0  # sockets the server closed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        while not self.stop.is_set():
            byte = self.HEAD[sent:sent + 1] or b"a"
            for s in list(self.socks):
                try:
                    s.send(byte)
                except OSError:  # reset or shut down by the server
                    self.socks.remove(s)
                    s.close()
                    self.cut += 1
            sent += 1
            self.stop.wait(0.3)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def test_three_hundred_slowloris_sockets_do_not_stop_a_normal_client(api: Api, web: Web) -> None:
    with Trickle(web.port, 300) as slow:
        time.sleep(1)  # let every slow socket reach a thread
        r = api.post("/api/v1/fibonacci", json={"n": 4321}, headers={"Prefer": "wait=20"})
        assert r.status_code in (200, 202), r.text
        job = api.wait_done(r.json()["id"], timeout=60)
        assert job["status"] == "finished" and job["result"]["n"] == 4321, job
        assert len(slow.socks) + slow.cut == 300
    assert web.alive


def test_the_header_deadline_frees_threads_held_by_trickling_clients(small_web: Web) -> None:
    """Five times more slow sockets than threads: without the deadline the normal request never runs."""
    with Trickle(small_web.port, 40) as slow:
        time.sleep(1)
        r = requests.get(small_web.url + "/healthz", timeout=90)
        assert r.status_code == 200
        deadline = time.monotonic() + 60
        while slow.cut == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slow.cut > 0, "no trickling connection was closed by the server"
    assert small_web.alive
    assert "sent no complete headers" in Path(small_web.log_path).read_text()
