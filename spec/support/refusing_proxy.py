#!/usr/bin/env python3
"""A forward proxy that refuses everything, as a corporate proxy without credentials does: every request,
CONNECT tunnels included, gets STATUS (407 by default) and is written to LOG, one line each. Prints its
port and pid, then serves until killed or its parent exits. Usage: refusing_proxy.py STATUS LOG"""
import http.server
import os
import select
import sys
import threading

STATUS = int(sys.argv[1])
LOG = sys.argv[2]
REASONS = {407: "Proxy Authentication Required", 403: "Forbidden"}
seen = []


class Refuser(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def refuse(self):
        seen.append(self.command + " " + self.path)
        with open(LOG, "a") as f:
            f.write(self.command + " " + self.path + "\n")
        body = f"<html><body>{STATUS} {REASONS.get(STATUS, '')}</body></html>".encode()
        self.send_response(STATUS, REASONS.get(STATUS))
        if STATUS == 407:
            self.send_header("Proxy-Authenticate", 'Basic realm="corp"')
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Requests-Seen", str(len(seen)))
        self.end_headers()
        self.wfile.write(body)

    do_CONNECT = do_GET = do_POST = refuse

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuser)
print(server.server_address[1], os.getpid(), flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
# until the parent is gone or closes the pipe it reads us from (pclose waits for us: never deadlock it)
parent = os.getppid()
out = select.poll()
out.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
while os.getppid() == parent and not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in out.poll(200)):
    pass
