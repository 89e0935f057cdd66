"""A Dodo stand-in for tests/prometheus/run.sh: every GET answers 500 while the file named by
argv[2] exists (the provider is down), 404 otherwise (a normal answer: no such session)."""
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        down = os.path.exists(sys.argv[2])
        self.send_response(500 if down else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"message": "down"}' if down else b'{"message": "not found"}')

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
