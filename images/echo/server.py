"""A tiny HTTP/1.1 echo server: GET /anything -> JSON with the pod's name, the path and the headers.

It doubles as the cluster tests' media server: GET /image.png?w=64&h=48&seed=7 -> a deterministic RGB
gradient PNG (stdlib only: zlib + struct), so a MultimodalDeployment can fetch http media in the cluster.
"""

import json
import os
import signal
import socket
import struct
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SIDE = 1024


def gradient_png(width: int, height: int, seed: int) -> bytes:
    """An RGB gradient that depends on `seed`; the same arguments always give the same bytes."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type None
        for x in range(width):
            rows += bytes(((x * 255 // max(width - 1, 1) + seed * 37) % 256,
                           (y * 255 // max(height - 1, 1) + seed * 91) % 256,
                           ((x + y) * 7 + seed * 13) % 256))  # fmt: skip

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/image.png":
            self.image(parse_qs(url.query))
            return
        body = json.dumps(
            {
                "pod": os.environ.get("POD_NAME", socket.gethostname()),
                "path": self.path,
                "headers": dict(self.headers),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def image(self, query: dict[str, list[str]]) -> None:
        try:
            w, h, seed = (int(query.get(k, [d])[0]) for k, d in (("w", "64"), ("h", "48"), ("seed", "0")))
        except ValueError:
            w = h = 0
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            self.send_error(400, "w and h must be integers in 1..1024")
            return
        body = gradient_png(w, h, seed)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


def stop(signum: int, frame: object) -> None:
    # As PID 1 in its container, a process that sets no handler ignores SIGTERM and waits out the whole
    # termination grace period: exit at once instead.
    raise SystemExit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    port = int(os.environ.get("PORT", "8080"))
    print(f"echo: listening on :{port}", flush=True)
    Server(("0.0.0.0", port), Echo).serve_forever()  # noqa: S104 - inside the pod's own network namespace
