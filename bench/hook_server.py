#!/usr/bin/env python3
"""A local before-send hook for bench/run_hooks.sh: allows every message.

HTTP/1.1 keep-alive (imgw reuses its connections), one thread per
connection. It does not check signatures (test_hooks.py does): the bench
measures imgw's cost, not the hook's. Prints its port on stdout.
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALLOW = b'{"allow":true}'


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server writes the head and the body separately: without this,
    # Nagle holds the body until imgw's delayed ACK (40 ms per call).
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ALLOW)))
        self.end_headers()
        self.wfile.write(ALLOW)


ThreadingHTTPServer.request_queue_size = 256  # the default backlog is 5
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), H)
s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
