"""A real HTTPS server on loopback that serves update bundles to a client certificate,
with HTTP Range support and a switch that drops the connection part-way (the test side
of :mod:`sync.update.download`)."""

from __future__ import annotations

import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d+)-$")


class BundleServer:
    """Serves ``files`` ({url path: Path}) on ``https://localhost:PORT``. Only clients
    with a certificate from ``pki.ca`` get through. ``cut_after`` (bytes, or None) makes
    the next response stop after that many body bytes and close the connection;
    ``honour_range`` False answers every request with the whole file (200).
    ``requests`` lists (path, Range header, client CN) for each request."""

    def __init__(self, pki, files: dict[str, Path]):
        self.files, self.cut_after, self.honour_range = files, None, True
        self.requests: list[tuple[str, str | None, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):      # quiet: pytest shows failures anyway
                pass

            def do_GET(self):
                cert = self.connection.getpeercert() or {}
                cn = dict(x[0] for x in cert.get("subject", ())).get("commonName")
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng, cn))
                f = outer.files.get(self.path)
                if f is None:
                    self.send_error(404)
                    return
                data = f.read_bytes()
                m = _RANGE.match(rng or "")
                start = int(m.group(1)) if m and outer.honour_range else 0
                if start >= len(data) and m and outer.honour_range:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, outer.cut_after = outer.cut_after, None
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server.cert, pki.server.key)
        ctx.load_verify_locations(str(pki.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bundle-https",
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def __enter__(self) -> BundleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
