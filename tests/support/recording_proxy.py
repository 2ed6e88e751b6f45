"""A recording HTTP proxy: forwards every request to UPSTREAM unchanged and prints one JSON line per exchange (method,
path, the request's body, the response's status and body) on stdout, where `docker logs` reads it.

It stands between Open WebUI and llama-server in the reasoning test (tests/e2e/test_open_webui_reasoning.py), which
needs what the engine received, not what Open WebUI meant to send. Standard library only: the test runs it with the
Python of the Open WebUI image (`python3 recording_proxy.py UPSTREAM PORT`). Responses are passed on as they arrive
(streamed answers stay streamed), then the connection closes (HTTP/1.0), so no length needs to be known up front.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1); the body's framing changes on the way.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def handler(upstream: urllib.parse.SplitResult) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=600)
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.end_headers()
            received = bytearray()
            while chunk := response.read1(65536):
                received += chunk
                self.wfile.write(chunk)
                self.wfile.flush()
            conn.close()
            print(json.dumps({"method": self.command, "path": self.path, "request": body.decode("utf-8", "replace"),
                              "status": response.status, "response": received.decode("utf-8", "replace")}), flush=True)

        do_GET = do_POST = do_PUT = do_DELETE = forward

        def log_message(self, format: str, *args: object) -> None:
            pass  # stdout carries the exchanges only

    return Forward


def main() -> None:
    upstream, port = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2])
    ThreadingHTTPServer(("0.0.0.0", port), handler(upstream)).serve_forever()


if __name__ == "__main__":
    main()
