"""A real HTTP server on 127.0.0.1 for the tests: serves a folder with HEAD and single byte-range GETs.

Object stores and CDNs answer ``Range: bytes=a-b`` with ``206 Partial Content``; this one does too, and
records every request (method, path, range, bytes sent) so a test can check what a reader fetched.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    sent: int


class RangeServer:
    """``with RangeServer(folder) as server:`` serves ``folder`` at ``server.url`` until the block ends."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.folder), **kwargs)

            def log_message(self, *args) -> None:  # quiet: the test reads server.requests instead
                pass

            def _record(self, sent: int) -> None:
                with server._lock:
                    server.requests.append(Request(self.command, self.path, self.headers.get("Range"), sent))

            def _file(self) -> Path | None:
                path = Path(self.translate_path(self.path))
                return path if path.is_file() else None

            def do_HEAD(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    self._record(0)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self._record(0)

            def do_GET(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    self._record(0)
                    return
                size = path.stat().st_size
                start, end, status = 0, size - 1, 200
                wanted = self.headers.get("Range")
                if wanted:
                    match = _RANGE.match(wanted.strip())
                    if not match or (not match.group(1) and not match.group(2)):
                        self.send_error(416)
                        self._record(0)
                        return
                    if match.group(1):
                        start = int(match.group(1))
                        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    else:  # a suffix: the last n bytes
                        start = max(0, size - int(match.group(2)))
                    if start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        self._record(0)
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                with path.open("rb") as handle:
                    handle.seek(start)
                    self.wfile.write(handle.read(end - start + 1))
                self._record(end - start + 1)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def bytes_sent(self, suffix: str = "") -> int:
        """Bytes of file content sent for paths ending in ``suffix``."""
        with self._lock:
            return sum(r.sent for r in self.requests if r.path.endswith(suffix))
