#!/usr/bin/env python3
"""A small video API for the download specs: GET /v1/videos/ID/content answers from files in --dir, in the
way the task id's prefix says, so that each spec case picks its server by the id it downloads:

  plain-     the file ID.mp4 with Content-Length, an ETag (a hash of its bytes) and Last-Modified; Range and
             If-Range as HTTP says
  lastmod-   the same with Last-Modified only
  weak-      the same with a weak ETag (W/"...", which If-Range never matches) and Last-Modified
  noetag-    the same with neither: Range is honoured, nothing tells one version from another
  otheretag- 200 as plain-, but a Range request gets a 206 with another ETag and the bytes of ID.other
  othertotal- as plain-, but a 206's Content-Range claims a total one byte longer than the 200's length
  http10-    an HTTP/1.0 answer without a length: half the file, then the connection closes
  gzip-      the file gzip-compressed, with Content-Encoding: gzip
  octetjson- a JSON error sent as application/octet-stream
  cdn-       a 302 to --cdn: <cdn>/slow/ID.mp4 when ID.slow exists, else <cdn>/fast/ID.mp4
  chunked-   as plain-, but chunked (Transfer-Encoding: chunked) and without Content-Length, 206s too (their
             Content-Range gives the total): as new-api's proxy (controller/video_proxy.go, VideoProxy) relays
             a video whose upstream sent no length
  fixed-     as plain-, with an ETag that stays "fixed" whatever ID.mp4 holds (a store whose copy was cut, then
             mended under the same version)
  fixedchunked- both
  norange-   as plain-, but Range is ignored: every answer is a 200 with the whole file
  close11-   HTTP/1.1 without Content-Length or chunked framing: the whole file, then the connection closes

ID.as (one-shot, removed when used): the next answer for ID behaves as the kind it names. ID.break (one-shot,
removed when used): the next answer sends its headers, the number of bytes the file holds (half the body when
empty), then closes (a chunked one before its last, empty chunk). ID.slow (bytes per second): the body is paced. Every content request
is appended to requests.jsonl ({"id", "range", "if_range", "accept_encoding", "status"}). Prints its base
URL (".../v1") and its pid, and exits with its parent. Python 3 standard library only.
"""
import argparse
import email.utils
import gzip
import hashlib
import http.server
import json
import os
import socket
import threading
import time

ARGS = None
LOCK = threading.Lock()


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def take_once(vid, ext):
    path = os.path.join(ARGS.dir, vid + ext)
    with LOCK:
        data = read(path)
        if data is None:
            return None
        os.remove(path)
    return data.decode().strip()


def take_break(vid):
    text = take_once(vid, ".break")
    if text is None:
        return None
    return int(text) if text else -1


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log_request_line(self, vid, status):
        entry = {"id": vid, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range"), "status": status,
                 "accept_encoding": self.headers.get("Accept-Encoding")}
        with LOCK, open(os.path.join(ARGS.dir, "requests.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def json_answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.split("?")[0].split("/")
        if len(parts) == 4 and parts[1] == "v1" and parts[2] == "videos":
            return self.json_answer(200, {"id": parts[3], "object": "video", "status": "completed", "created_at": 0})
        if len(parts) != 5 or parts[1] != "v1" or parts[2] != "videos" or parts[4] != "content":
            return self.json_answer(404, {"error": {"message": "no such path"}})
        vid = parts[3]
        kind = take_once(vid, ".as") or vid.split("-")[0]
        data = read(os.path.join(ARGS.dir, vid + ".mp4"))
        if data is None and kind not in ("octetjson", "cdn"):
            self.log_request_line(vid, 404)
            return self.json_answer(404, {"error": {"message": "no video " + vid}})
        if kind == "cdn":
            speed = "slow" if os.path.exists(os.path.join(ARGS.dir, vid + ".slow")) else "fast"
            self.log_request_line(vid, 302)
            self.send_response(302)
            self.send_header("Location", "%s/%s/%s.mp4" % (ARGS.cdn, speed, vid))
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if kind == "octetjson":
            body = json.dumps({"error": {"message": "video expired", "code": "expired"}}).encode()
            self.log_request_line(vid, 200)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        if kind == "http10":
            self.log_request_line(vid, 200)
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp4\r\n\r\n" + data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if kind == "close11":
            self.log_request_line(vid, 200)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n" + data)
            self.wfile.flush()
            self.close_connection = True
            return None
        if kind == "gzip":
            body = gzip.compress(data)
            self.log_request_line(vid, 200)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("ETag", '"gz-%s"' % hashlib.sha1(body).hexdigest()[:16])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        return self.serve_file(vid, kind, data)

    def serve_file(self, vid, kind, data):
        etag = None
        if kind in ("plain", "otheretag", "othertotal", "weak", "chunked", "norange"):
            etag = '"%s"' % hashlib.sha1(data).hexdigest()[:16]
        if kind in ("fixed", "fixedchunked"):
            etag = '"fixed"'
        chunked = kind in ("chunked", "fixedchunked")
        if kind == "weak":
            etag = "W/" + etag
        mtime = os.stat(os.path.join(ARGS.dir, vid + ".mp4")).st_mtime
        lastmod = email.utils.formatdate(mtime, usegmt=True) if kind in ("plain", "lastmod", "weak") else None
        total, start = len(data), 0
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        partial = False
        if kind == "norange":
            rng = None
        if rng and rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit():
            strong = etag if etag and not etag.startswith("W/") else None
            if kind == "otheretag" or if_range is None or if_range in (strong, lastmod):
                start, partial = int(rng[6:-1]), True
        if partial and start >= total:
            self.log_request_line(vid, 416)
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % total)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if partial and kind == "otheretag":
            etag, data = '"other"', read(os.path.join(ARGS.dir, vid + ".other"))
        body = data[start:]
        status = 206 if partial else 200
        self.log_request_line(vid, status)
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        if etag:
            self.send_header("ETag", etag)
        if lastmod:
            self.send_header("Last-Modified", lastmod)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        if partial:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, total - 1, total + (kind == "othertotal")))
        self.end_headers()
        cut = take_break(vid)
        if chunked:
            return self.send_chunked(body if cut is None else body[: cut if cut >= 0 else len(body) // 2], cut is None)
        if cut is not None:
            self.wfile.write(body[: cut if cut >= 0 else len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        rate = read(os.path.join(ARGS.dir, vid + ".slow"))
        if rate is None:
            return self.wfile.write(body)
        step = max(1, int(rate) // 50)
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            self.wfile.flush()
            time.sleep(0.02)
        return None

    def send_chunked(self, body, whole):
        """The body in chunks of 16 KiB, then the last (empty) chunk, unless it is to look cut."""
        for i in range(0, len(body), 16384):
            piece = body[i:i + 16384]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if whole:
            self.wfile.write(b"0\r\n\r\n")
            return None
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True
        return None


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.25)
    os._exit(0)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cdn", default="")
    ARGS = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("http://127.0.0.1:%d/v1\n%d" % (server.server_address[1], os.getpid()), flush=True)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
