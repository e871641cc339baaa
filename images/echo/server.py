"""A tiny HTTP/1.1 echo server: GET /anything -> JSON with the pod's name, the path and the headers."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
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

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"echo: listening on :{port}", flush=True)
    Server(("0.0.0.0", port), Echo).serve_forever()  # noqa: S104 - inside the pod's own network namespace
