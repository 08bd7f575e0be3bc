"""A tiny S3 fault proxy on 127.0.0.1: forwards every request to a real S3 API (the moto server) or, switched by
`mode`, answers 503 SlowDown or hangs. moto cannot throttle or hang by itself.

Bounded in time: a hung request is held at most `hang_s` (then its connection is closed unanswered), and the
proxy shuts itself down after `lifetime_s` even if nobody stops it, so a failed test never leaves it running.
Used by tests/test_s3_timeouts.py and bench/s3_faults.py.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PASS, SLOW_DOWN, HANG = "pass", "503", "hang"
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    def __init__(self, target: str, lifetime_s: float = 900.0, hang_s: float = 300.0) -> None:
        self.target = urlsplit(target)
        self.mode = PASS
        self.hang_s = hang_s
        self.lifetime_s = lifetime_s
        self.counts = {PASS: 0, SLOW_DOWN: 0, HANG: 0}
        # (time, mode, method, path): a faulted request when it arrives, a forwarded one once answered
        self.requests: list[tuple[float, str, str, str]] = []
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="s3-proxy").start()
        timer = threading.Timer(self.lifetime_s, self.stop)  # stops by itself
        timer.daemon = True
        timer.start()
        return self

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()  # releases hung requests
            self._server.shutdown()
            self._server.server_close()

    def answered(self, method: str, fragment: str) -> bool:
        """Whether a `method` request whose path contains `fragment` has been forwarded and answered."""
        return any(m == PASS and meth == method and fragment in p for _, m, meth, p in list(self.requests))

    def hang(self, started: float) -> None:
        """Hold a request until the mode changes, `hang_s` passes or the proxy stops."""
        while self.mode == HANG and time.time() - started < self.hang_s:
            if self._stopping.wait(0.1):
                return


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _any(self) -> None:
            started = time.time()
            body = _read_body(self)
            mode = proxy.mode
            proxy.counts[mode] = proxy.counts.get(mode, 0) + 1
            if mode != PASS:
                proxy.requests.append((started, mode, self.command, self.path))
            if mode == HANG:
                proxy.hang(started)
                self.close_connection = True
                return
            if mode == SLOW_DOWN:
                self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN_BODY)
                return
            self._forward(body)
            proxy.requests.append((started, mode, self.command, self.path))

        def _forward(self, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                # HEAD keeps the object's length; every other reply gets the length of what is sent
                drop = HOP_BY_HOP | ({"content-length"} if self.command != "HEAD" else set())
                out = {k: v for k, v in resp.getheaders() if k.lower() not in drop}
                self._reply(resp.status, out, data)
            finally:
                conn.close()

        def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815

    return Handler


def fault_run(
    args: list[str],
    env: dict[str, str],
    proxy: FaultProxy,
    mode: str,
    ready: Callable[[], bool],
    limit_s: float,
) -> tuple[subprocess.CompletedProcess, float]:
    """Run `rgvlm ARGS` (its own process, S3 through `proxy`), switch the proxy to `mode` once `ready()` is true
    (the run is under way), and return the finished process and the seconds from the switch to its exit. A run
    still alive `limit_s` after the switch is killed (returncode -9)."""
    proxy.mode = PASS
    # Files, not pipes: nobody reads a pipe while we wait, and a chatty run (-v) would block on a full one.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        driver = subprocess.Popen(
            [sys.executable, "-m", "rgvlm_ray.cli", *args], env=env, stdout=out, stderr=err
        )
        try:
            deadline, switched = time.time() + 300, 0.0
            while not ready():
                if driver.poll() is not None or time.time() > deadline:
                    break
                time.sleep(0.2)
            else:
                proxy.mode = mode
                switched = time.time()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    driver.wait(timeout=limit_s)
                elapsed = time.time() - switched
        finally:
            proxy.mode = PASS
            if driver.poll() is None:
                driver.kill()
            driver.wait()
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(args, driver.returncode, out.read(), err.read())
    if not switched:
        raise RuntimeError(
            f"the run ended or stalled before the fault (rc {done.returncode}): {done.stderr[-3000:]}"
        )
    return done, elapsed
