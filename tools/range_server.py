"""A local HTTP server with range requests (GDAL's /vsicurl/ and /vsis3/): for the remote-scene tests and
the read-ahead benchmark.

``serve(folder)`` starts it on 127.0.0.1 (a free port) in a thread and yields its base URL; files are
served from ``folder`` by path (``/bucket/key`` for S3-style addresses, path-style). ``requests``
records the (method, path, Range header) of every request, ``delay`` adds seconds to each response.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    folder = ""
    log: list = []
    delay = 0.0

    def log_message(self, *args) -> None:  # quiet
        pass

    def _file(self) -> str | None:
        path = os.path.normpath(os.path.join(self.folder, self.path.split("?", 1)[0].lstrip("/")))
        return path if path.startswith(self.folder) and os.path.isfile(path) else None

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.log.append((self.command, self.path, self.headers.get("Range")))
        if self.delay:
            time.sleep(self.delay)
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start, end = 0, size - 1
        wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
            end = min(size - 1, int(wanted.group(2))) if wanted.group(2) else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            with open(path, "rb") as handle:
                handle.seek(start)
                self.wfile.write(handle.read(end - start + 1))


@contextlib.contextmanager
def serve(folder: str, delay: float = 0.0):
    """Serve ``folder``; yields (base URL, list of requests)."""
    log: list = []
    handler = type("Handler", (_Handler,), {"folder": os.path.abspath(folder), "log": log, "delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
