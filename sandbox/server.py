#!/usr/bin/env python3
"""A local stand-in for the Jimeng video API on tokenops.ai (Python 3 standard library only).

It implements every endpoint of the vendor page with the page's own validation rules, a task lifecycle
with configurable timings, a real playable MP4, large synthetic bodies with Range and ETag, subject
detection and recognition, and, for tests, a request log, counters and fault plans. See README.md here.

    python3 sandbox/server.py --port 0     # prints its URL on the first line of stdout
"""

import argparse
import collections
import gzip
import hashlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "jimeng-sample.mp4")

MODELS = {
    "jimeng-video-3.0-pro": {"jimeng_ti2v_v30_pro": (0, 1)},
    "jimeng-video-3.0-720P": {
        "jimeng_t2v_v30": (0, 0),
        "jimeng_i2v_first_v30": (1, 1),
        "jimeng_i2v_first_tail_v30": (2, 2),
        "jimeng_i2v_recamera_v30": (1, 1),
    },
    "jimeng-video-3.0-1080P": {
        "jimeng_t2v_v30_1080p": (0, 0),
        "jimeng_i2v_first_v30_1080": (1, 1),
        "jimeng_i2v_first_tail_v30_1080": (2, 2),
    },
}
OMNI_MODEL = "OmniHuman_1.5"
OMNI_VIDEO_KEY = "jimeng_realman_avatar_picture_omni_v15"
DETECT_KEY = "jimeng_realman_avatar_object_detection"
RECOG_KEY = "jimeng_realman_avatar_picture_create_role_omni_v15"
RATIOS = {"16:9": 16 / 9, "9:16": 9 / 16, "4:3": 4 / 3, "3:4": 3 / 4, "1:1": 1.0, "21:9": 21 / 9}

# Synthetic videos: an MP4 by its top-level boxes (what a client checks before it saves one): an ftyp box, an
# empty moov box, and an mdat box with a 64-bit size that holds the rest, where byte i = ((i % 65521) * 7 + 13
# + seed) % 256, so that any slice can be checked (seed 0 unless the prompt says sandbox:seed=N). No body is
# shorter than those headers (SYNTHETIC_MIN bytes).
PERIOD = 65521
FTYP = struct.pack(">I4s4sI4s4s4s4s", 32, b"ftyp", b"isom", 512, b"isom", b"iso2", b"avc1", b"mp41")
SYNTHETIC_MIN = len(FTYP) + 8 + 16


def synthetic_head(size):
    """The box headers of a synthetic video of `size` bytes (at least SYNTHETIC_MIN)."""
    return FTYP + struct.pack(">I4s", 8, b"moov") + struct.pack(">I4sQ", 1, b"mdat", size - len(FTYP) - 8)
PATTERN = bytes((i * 7 + 13) % 256 for i in range(PERIOD)) * 17  # one period, repeated: fast to start
# Large synthetic bodies are served from a file of the pattern with sendfile, so that the server is not
# what a download benchmark measures. The files live in one temporary directory, removed at exit.
SENDFILE_FROM = 16 * 1024 * 1024
_patterns = {0: PATTERN}  # seed % 256 -> the pattern shifted by it
_pattern_lock = threading.Lock()
# Temporary directories (the blobs, the TLS certificate) are removed at exit, whatever the route.
_blob_dir = None
_blob_lock = threading.Lock()
_temp_dirs = []
_cleanup_lock = threading.Lock()


def seeded_pattern(seed):
    shift = seed % 256
    with _pattern_lock:
        if shift not in _patterns:
            _patterns[shift] = PATTERN.translate(bytes((b + shift) % 256 for b in range(256)))
        return _patterns[shift]


def synthetic_chunks(size, start, length, seed=0):
    """The bytes start..start+length of the synthetic video of `size` bytes, in chunks of at most 1 MiB."""
    pattern = seeded_pattern(seed)
    pos, end = start, start + length
    head = synthetic_head(size)
    while pos < end:
        if pos < len(head):
            chunk = head[pos:min(end, len(head))]
        else:
            off = pos % PERIOD
            n = min(end - pos, len(pattern) - off, 1 << 20)
            chunk = memoryview(pattern)[off:off + n]
        yield chunk
        pos += len(chunk)


def blob_file(size, seed=0):
    """A file holding the synthetic video of `size` bytes (and seed), written on first use."""
    global _blob_dir
    with _blob_lock:
        if _blob_dir is None:
            _blob_dir = temp_dir("jimeng-sandbox-blob-")
        path = os.path.join(_blob_dir, f"{size}-{seed % 256}")
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                for chunk in synthetic_chunks(size, 0, size, seed):
                    f.write(chunk)
            os.rename(path + ".tmp", path)
        return path


def temp_dir(prefix):
    """A new temporary directory, removed by remove_temp_dirs."""
    d = tempfile.mkdtemp(prefix=prefix)
    with _cleanup_lock:
        _temp_dirs.append(d)
    return d


def remove_temp_dirs():
    """Removes the sandbox's temporary directories; safe from any thread, any number of times."""
    with _cleanup_lock:
        while _temp_dirs:
            shutil.rmtree(_temp_dirs.pop(), ignore_errors=True)


# A tiny valid PNG served for mask URLs.
MASK_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63600000000200016a0e9a0a0000000049454e44ae426082"
)


class ApiError(Exception):
    def __init__(self, status, message, code="invalid_request", etype="invalid_request_error", shape="openai"):
        super().__init__(message)
        self.status, self.message, self.code, self.etype = status, message, code, etype
        self.shape = shape  # "openai": {"error": {...}}; "task": new-api's dto.TaskError {"code", "message", "data"}


def bad(message, code="invalid_parameter"):
    return ApiError(400, message, code)


class State:
    """Everything the server remembers; one lock guards it."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.open_sockets = set()  # not reset: the connections are still open
        self.open_connections = 0
        self.reset()

    def reset(self):
        self.tasks = {}
        self.log = []
        self.faults = []
        self.creates = 0
        self.creates_by_prompt = {}
        self.connections = 0
        self.max_open_connections = self.open_connections
        self.requests = 0
        self.rate_limited = 0
        self.admitted = collections.deque()  # times of the API requests served in the last second
        self.config = {
            "queue_seconds": self.args.queue_seconds,
            "process_seconds": self.args.process_seconds,
            "video_bytes": self.args.video_bytes,  # 0: the MP4 fixture; N: a synthetic body of N bytes
            "download_rate": self.args.download_rate,  # bytes per second a video is sent at; 0: as fast as it goes
            "max_rps": self.args.max_rps,  # 0: no limit
            # content framing: "length" (Content-Length) or "chunked" (new-api's proxy when upstream gives no length)
            "content_framing": self.args.content_framing or ("chunked" if self.args.dialect == "new-api" else "length"),
            "content_redirect": self.args.content_redirect,  # content answered with a 302 to another host
            "quota": None,  # creates left in the wallet (None: no limit); 0 answers 403 insufficient_user_quota
        }

    def over_rate(self, now):
        """Whether an API request at `now` goes over max_rps in the last second; admits it when not."""
        limit = self.config.get("max_rps") or 0
        while self.admitted and self.admitted[0] <= now - 1.0:
            self.admitted.popleft()
        if limit > 0 and len(self.admitted) >= limit:
            self.rate_limited += 1
            return True
        self.admitted.append(now)
        return False


def new_task_id():
    return str(10**19 + secrets.randbelow(9 * 10**19))


def is_http_url(v):
    return isinstance(v, str) and (v.startswith("http://") or v.startswith("https://"))


def check_int(body, name, allowed=None):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise bad(f"{name} must be an integer")
    v = int(v)
    if allowed is not None and v not in allowed:
        raise bad(f"{name} must be one of {sorted(allowed)}, got {v}")
    return v


def validate_video(body):
    """The vendor page's rules for POST /v1/videos (ordinary videos). Returns (prompt, image count)."""
    model = body.get("model")
    if model not in MODELS:
        raise bad(f"model must be one of {', '.join(MODELS)}", "invalid_model")
    req_key = body.get("req_key")
    if req_key is None:
        raise bad("req_key is required", "missing_req_key")
    if req_key not in MODELS[model]:
        raise bad(f"req_key {req_key} is not valid for model {model}", "invalid_req_key")
    prompt = body.get("prompt")
    images = 0
    content = body.get("content")
    if content is not None:
        if not isinstance(content, list):
            raise bad("content must be an array")
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("text", "image_url", "image_base64"):
                raise bad("content items must have type text, image_url or image_base64")
            if item["type"] == "text":
                if not isinstance(item.get("text"), str):
                    raise bad("a text item needs text")
                prompt = item["text"]  # content text wins over prompt
            else:
                url = (item.get("image_url") or {}).get("url")
                if item["type"] == "image_url" and not is_http_url(url):
                    raise bad("an image_url item needs an http(s) url")
                if item["type"] == "image_base64" and not (isinstance(url, str) and url.startswith("data:image/")
                                                           and ";base64," in url):
                    raise bad("an image_base64 item needs a data:image/...;base64, url")
                images += 1
    urls = body.get("image_urls")
    if urls is not None:
        if not isinstance(urls, list) or not all(is_http_url(u) for u in urls):
            raise bad("image_urls must be an array of http(s) URLs")
        images += len(urls)
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt is required", "missing_prompt")
    if len(prompt) > 800:
        raise bad("prompt is too long")
    lo, hi = MODELS[model][req_key]
    if not lo <= images <= hi:
        raise bad(f"req_key {req_key} takes {lo}..{hi} images, got {images}", "invalid_image_count")
    frames = check_int(body, "frames", {121, 241})
    seconds = body.get("seconds")
    if seconds is not None:
        if str(seconds) not in ("5", "10"):
            raise bad("seconds must be 5 or 10")
        if frames is not None and frames != (121 if str(seconds) == "5" else 241):
            raise bad("seconds and frames disagree")
    ar = body.get("aspect_ratio")
    if ar is not None and ar not in RATIOS:
        raise bad(f"aspect_ratio must be one of {', '.join(RATIOS)}")
    size = body.get("size")
    if size is not None:
        m = re.fullmatch(r"(\d+)x(\d+)", str(size))
        if not m or int(m.group(2)) == 0:
            raise bad("size must be WIDTHxHEIGHT")
        r = int(m.group(1)) / int(m.group(2))
        if not any(abs(r - v) / v <= 0.03 for v in RATIOS.values()):
            raise bad("size has no supported aspect ratio")
    seed = check_int(body, "seed")
    if seed is not None and not (seed == -1 or 0 <= seed <= 4294967295):
        raise bad("seed out of range")
    return prompt, images


def validate_omni(body):
    """The vendor page's rules for an OmniHuman video (generation_type omni_human)."""
    if body.get("model") != OMNI_MODEL:
        raise bad(f"model must be {OMNI_MODEL}", "invalid_model")
    if body.get("req_key") != OMNI_VIDEO_KEY:
        raise bad(f"req_key must be {OMNI_VIDEO_KEY}", "invalid_req_key")
    content = body.get("content")
    if not isinstance(content, list):
        raise bad("content must include image_url and audio_url")
    images, audios, masks = [], [], []
    for item in content:
        if not isinstance(item, dict):
            raise bad("content items must be objects")
        t = item.get("type")
        if t == "image_url":
            url = (item.get("image_url") or {}).get("url")
            if not is_http_url(url):
                raise bad("image_url needs an http(s) url")
            (masks if item.get("role") == "mask_image" else images).append(url)
        elif t == "audio_url":
            url = (item.get("audio_url") or {}).get("url")
            if not is_http_url(url):
                raise bad("audio_url needs an http(s) url")
            audios.append(url)
        else:
            raise bad(f"unsupported content type {t!r} for omni_human")
    if len(images) != 1 or len(audios) != 1:
        raise bad("content must include exactly one image_url and one audio_url", "invalid_content")
    mask_urls = body.get("mask_urls")
    if mask_urls is not None:
        if not isinstance(mask_urls, list) or not all(is_http_url(u) for u in mask_urls):
            raise bad("mask_urls must be an array of http(s) URLs")
        masks += mask_urls
    check_int(body, "output_resolution", {720, 1080})
    if "pe_fast_mode" in body and not isinstance(body["pe_fast_mode"], bool):
        raise bad("pe_fast_mode must be a boolean")
    seed = check_int(body, "seed")
    if seed is not None and not (seed == -1 or 0 <= seed <= 4294967295):
        raise bad("seed out of range")
    if "frames" in body or "aspect_ratio" in body:
        raise bad("omni_human takes no frames or aspect_ratio")
    return body.get("prompt") or "", masks


# ---- the new-api gateway (QuantumNous/new-api) in front of the same vendor ----
# The model names a gateway admin maps to the channel's upstream model (its model mapping): deployment config,
# not new-api code. The upstream name is the vendor's req_key unless metadata.req_key overrides it.
NEW_API_MODELS = {
    "jimeng-video-3.0-pro": "jimeng_v30_pro",
    "jimeng-video-3.0-720P": "jimeng_v30",
    "jimeng-video-3.0-1080P": "jimeng_v30_1080p",
    OMNI_MODEL: OMNI_VIDEO_KEY,
}
NEW_API_VERSION = "v0.9.0-sandbox"
VENDOR_KEYS = {k: v for m in MODELS.values() for k, v in m.items()}  # req_key -> (min, max) images
# model/task.go TaskStatus, as VideoProxy names it in "Task is not completed yet, current status: X"
NEW_API_TASK_STATUS = {"in_queue": "QUEUED", "processing": "IN_PROGRESS", "failed": "FAILURE", "completed": "SUCCESS"}


def new_api_id():
    """relay/relay_task.go: the public task id, task_ + 32 characters."""
    return "task_" + secrets.token_hex(16)


def new_api_error(status, code, message):
    """dto.TaskError as the task routes answer it: {"code", "message", "data"}."""
    return ApiError(status, message, code, shape="task")


def resolve_req_key(req_key, images):
    """relay/channel/task/jimeng/adaptor.go resolveJimengReqKey."""
    if "jimeng_v30" not in req_key:
        return req_key
    if req_key == "jimeng_v30_pro":
        return "jimeng_ti2v_v30_pro"
    if images > 1:
        k = req_key.replace("jimeng_v30", "jimeng_i2v_first_tail_v30", 1)
        return k[:-1] if k.endswith("p") else k
    if images == 1:
        k = req_key.replace("jimeng_v30", "jimeng_i2v_first_v30", 1)
        return k[:-1] if k.endswith("p") else k
    return req_key.replace("jimeng_v30", "jimeng_t2v_v30", 1)


def new_api_payload(body):
    """The vendor payload new-api's Jimeng channel builds from a TaskSubmitReq (relay/common/relay_info.go
    TaskSubmitReq; adaptor.go convertToRequestPayload; omnihuman.go for OmniHuman). Fields it does not read
    are dropped, as Go's json.Unmarshal drops them."""
    if not isinstance(body, dict):
        raise new_api_error(400, "invalid_request", "invalid request body")
    model = body.get("model")
    if not isinstance(model, str) or model not in NEW_API_MODELS:
        # middleware/distributor.go: no channel serves the model
        raise ApiError(503, f"no available channel for model {model} in group default", "model_not_found",
                       "new_api_error")
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    if not prompt.strip():  # relay/common ValidateBasicTaskRequest -> validatePrompt
        raise new_api_error(400, "invalid_request", "prompt is required")
    duration = body.get("duration")
    if isinstance(duration, str) and duration.isdigit():
        duration = int(duration)
    images = body.get("images") if isinstance(body.get("images"), list) else []
    upstream = NEW_API_MODELS[model]
    r = {"req_key": upstream, "prompt": prompt, "seed": 0, "aspect_ratio": "",
         "frames": 241 if duration == 10 else 121}
    if images:
        r["image_urls" if str(images[0]).startswith("http") else "binary_data_base64"] = images
    fields = {"req_key", "binary_data_base64", "image_urls", "prompt", "seed", "aspect_ratio", "frames"}
    omni = upstream == OMNI_VIDEO_KEY  # isOmniHumanModel(req.Model), req.Model = the upstream model name
    if omni:
        fields |= {"image_url", "audio_url"}
    meta = body.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    if isinstance(meta, dict):
        for k, v in meta.items():
            if k in fields:
                r[k] = v
    n = max(len(images), len(r.get("binary_data_base64") or []), len(r.get("image_urls") or []))
    if isinstance(r["req_key"], str):
        r["req_key"] = resolve_req_key(r["req_key"], n)
    if not r["prompt"]:
        del r["prompt"]  # omitempty
    return r, omni


def vendor_check(r, omni):
    """The vendor's own rules on the payload it receives; raises ApiError 500 as new-api relays a refusal
    (adaptor.go DoResponse: code != 10000 -> TaskErrorWrapper(..., 500))."""
    def refuse(msg):
        raise new_api_error(500, "50400", msg)
    if omni:
        if not is_http_url(r.get("image_url")):
            raise new_api_error(400, "invalid_request", "image_url is required")
        if not is_http_url(r.get("audio_url")):
            raise new_api_error(400, "invalid_request", "audio_url is required")
        return
    key = r.get("req_key")
    if key not in VENDOR_KEYS:
        refuse(f"Invalid req_key {key}")
    if r.get("frames") not in (121, 241):
        refuse("frames must be 121 or 241")
    if r.get("aspect_ratio") not in RATIOS and r.get("aspect_ratio") != "":
        refuse("invalid aspect_ratio")
    seed = r.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not (seed == -1 or 0 <= seed <= 4294967295):
        refuse("invalid seed")
    n = len(r.get("image_urls") or []) + len(r.get("binary_data_base64") or [])
    lo, hi = VENDOR_KEYS[key]
    if not lo <= n <= hi:
        refuse(f"req_key {key} takes {lo}..{hi} images, got {n}")
    if "prompt" not in r:
        refuse("prompt is required")


def tokenops_payload(body):
    """What the vendor receives from a gateway that speaks the vendor page's shape (the page's own rules:
    content text wins, seconds and size become frames and aspect_ratio, base64 images go as binary_data_base64)."""
    content = body.get("content") if isinstance(body.get("content"), list) else []
    if body.get("generation_type") == "omni_human":
        r = {"req_key": body.get("req_key"), "prompt": body.get("prompt") or "",
             "seed": body.get("seed", -1), "output_resolution": body.get("output_resolution", 1080),
             "pe_fast_mode": body.get("pe_fast_mode", False)}
        masks = list(body.get("mask_urls") or [])
        for item in content:
            if item.get("type") == "image_url":
                url = (item.get("image_url") or {}).get("url")
                if item.get("role") == "mask_image":
                    masks.append(url)
                else:
                    r["image_url"] = url
            elif item.get("type") == "audio_url":
                r["audio_url"] = (item.get("audio_url") or {}).get("url")
        if masks:
            r["mask_url"] = masks
        return r
    r = {"req_key": body.get("req_key"), "prompt": body.get("prompt"), "seed": body.get("seed", -1)}
    frames = body.get("frames")
    if frames is None and body.get("seconds") is not None:
        frames = 241 if str(body["seconds"]) == "10" else 121
    r["frames"] = frames or 121
    ar = body.get("aspect_ratio")
    if ar is None and body.get("size"):
        w, h = (int(x) for x in str(body["size"]).split("x"))
        ar = min(RATIOS, key=lambda k: abs(w / h - RATIOS[k]) / RATIOS[k])
    r["aspect_ratio"] = ar or "16:9"
    urls, raw = list(body.get("image_urls") or []), []
    for item in content:
        if item.get("type") == "text":
            r["prompt"] = item.get("text")
        elif item.get("type") == "image_url":
            urls.append((item.get("image_url") or {}).get("url"))
        elif item.get("type") == "image_base64":
            raw.append(re.sub(r"^data:[^,]*;base64,", "", (item.get("image_url") or {}).get("url") or ""))
    if urls:
        r["image_urls"] = urls
    if raw:
        r["binary_data_base64"] = raw
    return r


def subjects_in(url):
    """How many subjects the sandbox 'sees' in an image: from subjects=N or subjects-N in its URL (default 1)."""
    m = re.search(r"subjects[=-](\d+)", url)
    return min(int(m.group(1)), 5) if m else 1


def gateway_page(code):
    """The error page an nginx in front of the API answers with."""
    reason = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
    return (f"<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}"
            "</h1></center><hr><center>nginx</center></body></html>").encode()


# The fault names and the answers they take; a plan naming anything else is refused (a typo is not a plan).
FAULTS = {"status", "reset_before", "reset_after_create", "stall", "malformed_json", "html", "redirect", "huge",
          "json", "reset_mid_body", "short_body", "stall_mid_body", "ignore_range", "bad_range", "create_then",
          "no_validators", "other_etag", "http10_close", "gzip", "octet_json", "other_id", "answer_status",
          "headers", "echo_auth"}
CREATE_THEN = {"malformed", "unknown_status", "no_id", "html", "empty", "bignum", "status", "cut"}
ECHO_AUTH = {None, "json", "task", "text"}


def check_plan(p):
    """Why a fault plan cannot be used, or None."""
    if not isinstance(p, dict):
        return "a fault plan is a JSON object"
    if p.get("fault") not in FAULTS:
        return f"unknown fault {p.get('fault')!r}; known: {', '.join(sorted(FAULTS))}"
    if p["fault"] == "create_then" and p.get("answer") not in CREATE_THEN:
        return f"create_then takes answer = one of {', '.join(sorted(CREATE_THEN))}"
    if p["fault"] == "echo_auth" and p.get("answer") not in ECHO_AUTH:
        return "echo_auth takes answer = json (the default), task or text"
    if p["fault"] == "answer_status" and not isinstance(p.get("status_value"), str):
        return "answer_status takes status_value, a string"
    if not isinstance(p.get("headers", {}), dict):
        return "headers is an object of name: value"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "jimeng-sandbox/1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.state.lock:
            self.server.state.connections += 1

    def log_message(self, *args):  # quiet: tests read /_sandbox/log instead
        pass

    # ---- plumbing ----

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=b"", ctype="application/json", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        headers = {**self.gateway_headers(), **self.extra_headers, **(headers or {})}  # then a plan's, the answer's
        if not headers.pop("no_request_id", False) and not self.new_api:
            self.send_header("x-request-id", self.request_id)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.status = status

    def send_extra_headers(self):
        for k, v in {**self.gateway_headers(), **self.extra_headers}.items():
            self.send_header(k, str(v))

    def gateway_headers(self):
        """new-api's headers on every answer: middleware Version (X-New-Api-Version) and RequestId
        (X-Oneapi-Request-Id, a time and random letters)."""
        if not self.new_api:
            return {}
        return {"X-New-Api-Version": NEW_API_VERSION, "X-Oneapi-Request-Id": self.request_id}

    @property
    def new_api(self):
        return self.server.state.args.dialect == "new-api"

    def send_error_json(self, e):
        if e.shape == "task":
            return self.send(e.status, {"code": e.code, "message": e.message, "data": None})
        if self.new_api:  # new-api's OpenAI-style errors carry no code (controller/video_proxy.go videoProxyError)
            return self.send(e.status, {"error": {"message": e.message, "type": e.etype}})
        self.send(e.status, {"error": {"message": e.message, "type": e.etype, "code": e.code}})

    def reset_connection(self):
        """Closes the socket with a TCP RST, the way a crashed proxy does."""
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def close_cleanly(self):
        """Ends the answer with a FIN: whatever was sent is all the client gets."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)

    def record(self, body):
        """Logs an API request; returns its log entry, with rate_limited set when it goes over max_rps."""
        st = self.server.state
        entry = {
            "method": self.command,
            "path": self.path,
            "time": time.time(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "host": self.server.server_address[0],
        }
        with st.lock:
            st.requests += 1
            st.log.append(entry)
            if st.over_rate(entry["time"]):
                entry["rate_limited"] = True
        return entry

    def take_fault(self):
        st = self.server.state
        with st.lock:
            for f in st.faults:
                if f["remaining"] > 0 and f["method"] in (None, self.command) and re.search(f["path"], self.path):
                    f["remaining"] -= 1
                    return dict(f)
        return None

    # ---- dispatch ----

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def handle_any(self):
        # new-api: middleware/request-id.go RequestId, common.GetTimeString() + common.GetRandomString(8)
        self.request_id = (time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(4)) if self.new_api else str(uuid.uuid4())
        self.status = 0
        self.extra_headers = {}
        raw = self.read_body()
        path = urlsplit(self.path).path
        if path.startswith("/_sandbox/"):
            return self.control(path, raw)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        entry = self.entry = self.record(body)
        if entry.get("rate_limited"):
            self.send(429, {"error": {"message": "rate limit reached: too many requests in one second, retry after 1 s",
                                      "type": "rate_limit_error", "code": "50429"}}, headers={"Retry-After": "1"})
            entry["status"] = self.status
            return
        fault = self.take_fault()
        if fault:
            entry["fault"] = fault["fault"]
            self.extra_headers = {str(k): str(v) for k, v in (fault.get("headers") or {}).items()}
            if self.apply_fault_before(fault, path, body):
                entry["status"] = self.status
                return
        self.served_status = None
        try:
            self.route(path, body, raw, fault)
        except ApiError as e:
            self.send_error_json(e)
        entry["status"] = self.status
        if self.served_status:
            entry["task_status"] = self.served_status

    def route(self, path, body, raw, fault):
        if path.startswith("/masks/"):
            return self.send(200, MASK_PNG, "image/png")
        m = re.fullmatch(r"/cdn/videos/([^/]+)", path)
        if m:  # where content redirects to (302 mode): another host, a signed URL, no key needed
            return self.content(self.find_task(m.group(1)), fault)
        if path.startswith("/cdn/"):  # a storage host that needs no key, as a signed URL would be
            return self.content(None, fault)
        if self.new_api:
            return self.route_new_api(path, body, fault)
        self.check_auth()
        if path == "/v1/videos" and self.command == "POST":
            return self.create(body, raw, fault)
        m = re.fullmatch(r"/v1/videos/([^/]+)(/content)?", path)
        if m and self.command in ("GET", "HEAD"):
            task = self.find_task(m.group(1))
            if m.group(2):
                return self.content(task, fault)
            view = self.task_view(task)
            kind = fault["fault"] if fault else None
            if kind == "other_id":  # an answer meant for another task (a confused cache, a mixed-up proxy)
                view["id"] = str(fault.get("id") or new_task_id())
            elif kind == "answer_status":
                view["status"] = fault["status_value"]
            self.served_status = view["status"]
            return self.send(200, view)
        if path == "/v1/omnihuman/subject/detection" and self.command == "POST":
            return self.detection(body)
        if path == "/v1/omnihuman/subject/recognition" and self.command == "POST":
            return self.recognition(body)
        raise ApiError(404, f"no route for {self.command} {path}", "not_found", "not_found_error")

    def route_new_api(self, path, body, fault):
        """router/video-router.go SetVideoRouter: the task routes new-api serves, and nothing else."""
        m = re.fullmatch(r"/v1/videos/([^/]+)/content", path)
        if m and self.command == "GET":  # registered for GET only: HEAD falls through to 404
            self.check_auth()
            with self.server.state.lock:
                task = self.server.state.tasks.get(m.group(1))
            if not task:  # controller/video_proxy.go VideoProxy
                raise ApiError(404, "Task not found", "not_found", "invalid_request_error")
            status = self.task_status(task)
            if status != "completed":
                raise ApiError(400, "Task is not completed yet, current status: " + NEW_API_TASK_STATUS[status],
                               "not_ready", "invalid_request_error")
            with self.server.state.lock:
                redirect = self.server.state.config.get("content_redirect")
            if redirect:  # a fork that answers with the signed URL of the storage host
                host = self.headers.get("Host") or ""
                port = host.rsplit(":", 1)[-1]
                other = "127.0.0.1" if host.startswith("localhost") else "localhost"
                loc = f"http://{other}:{port}/cdn/videos/{task['id']}?sig={secrets.token_hex(8)}"
                return self.send(302, b"", "text/plain", {"Location": loc})
            return self.content(task, fault)
        if self.command == "POST" and path in ("/v1/videos", "/v1/video/generations"):
            self.check_auth()
            return self.create(body, None, fault)
        m = re.fullmatch(r"/v1/(?:videos|video/generations)/([^/]+)", path)
        if m and self.command == "GET":
            self.check_auth()
            with self.server.state.lock:
                task = self.server.state.tasks.get(m.group(1))
            if not task:  # relay/relay_task.go videoFetchByIDRespBodyBuilder
                raise new_api_error(400, "task_not_exist", "task_not_exist")
            view = self.task_view(task)
            if fault and fault["fault"] == "answer_status":
                view["status"] = fault["status_value"]
            self.served_status = view["status"]
            return self.send(200, view)
        raise ApiError(404, f"Invalid URL ({self.command} {path})", "not_found", "invalid_request_error")

    def check_auth(self):
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise ApiError(401, "Missing bearer API key: send Authorization: Bearer <API-KEY>", "invalid_api_key",
                           "authentication_error")
        key = self.server.state.args.api_key
        if key and auth[7:] != key:
            raise ApiError(401, "Incorrect API key provided", "invalid_api_key", "authentication_error")

    # ---- the API ----

    def create(self, body, raw, fault):
        st = self.server.state
        with st.lock:
            quota = st.config.get("quota")
        if quota is not None and quota <= 0:  # an empty wallet: refused before anything is made
            if self.new_api:  # service/quota pre-consume: 403 insufficient_user_quota
                raise new_api_error(403, "insufficient_user_quota",
                                    "预扣费额度失败, 用户剩余额度: ¥0.000000, 需要预扣费额度: ¥1.000000")
            raise ApiError(403, "insufficient user quota: top up your balance", "insufficient_user_quota",
                           "insufficient_quota")
        if self.new_api:
            vendor, omni = new_api_payload(body)
            vendor_check(vendor, omni)
            prompt = vendor.get("prompt") or ""
        else:
            if not isinstance(body, dict):
                raise bad("the body must be a JSON object", "invalid_json")
            if body.get("generation_type") == "omni_human":
                prompt, _ = validate_omni(body)
            else:
                if "generation_type" in body:
                    raise bad("generation_type must be omni_human when given")
                prompt, _ = validate_video(body)
            vendor = tokenops_payload(body)
        with st.lock:
            cfg = dict(st.config)
        queue_s, process_s, size = cfg["queue_seconds"], cfg["process_seconds"], cfg["video_bytes"]
        rate = cfg.get("download_rate") or 0
        m = re.search(r"sandbox:rate=(\d+)", prompt)
        if m:
            rate = int(m.group(1))
        m = re.search(r"sandbox:slow=([\d.]+)", prompt)
        if m:
            process_s = float(m.group(1))
        m = re.search(r"sandbox:bytes=(\d+)", prompt)
        if m:
            size = int(m.group(1))
        if size:
            size = max(size, SYNTHETIC_MIN)
        m = re.search(r"sandbox:seed=(\d+)", prompt)
        task = {
            "id": new_api_id() if self.new_api else new_task_id(),
            "vendor": vendor,
            "model": body.get("model"),
            "created_at": int(time.time()),
            "start": time.monotonic(),
            "queue_s": queue_s,
            "process_s": process_s,
            "fail": "sandbox:fail" in prompt,
            "video_bytes": size,
            "download_rate": rate,
            "seed": int(m.group(1)) if m else 0,
            "body": body,
        }
        with st.lock:
            st.tasks[task["id"]] = task
            st.creates += 1
            if st.config.get("quota") is not None:
                st.config["quota"] -= 1
            st.creates_by_prompt[prompt] = st.creates_by_prompt.get(prompt, 0) + 1
        self.entry["task_id"] = task["id"]
        kind = fault["fault"] if fault else None
        if kind == "reset_after_create":
            self.status = -1
            return self.reset_connection()
        answer = {"id": task["id"], "object": "video", "created_at": task["created_at"], "status": "in_queue"}
        if self.new_api:  # adaptor.go DoResponse: dto.NewOpenAIVideo, status queued
            answer = {"id": task["id"], "task_id": task["id"], "object": "video", "model": body.get("model"),
                      "status": "queued", "progress": 0, "created_at": task["created_at"]}
        if kind == "create_then":
            return self.create_then(fault, answer)
        self.send(200, answer)

    def create_then(self, fault, answer):
        """A hostile answer to a create that did make its task."""
        how, tid = fault["answer"], answer["id"]
        if how == "malformed":
            return self.send(200, f'{{"id": "{tid}", "status": '.encode())
        if how == "unknown_status":
            return self.send(200, {**answer, "status": "warp_drive"})
        if how == "no_id":
            return self.send(200, {k: v for k, v in answer.items() if k != "id"})
        if how == "html":
            return self.send(200, b"<!DOCTYPE html><html><head><title>Welcome</title></head><body><h1>Welcome</h1>"
                                  b"<p>The page you asked for is being served by a captive portal.</p></body></html>",
                             "text/html")
        if how == "empty":
            return self.send(200, b"")
        if how == "bignum":
            return self.send(200, f'{{"id": "{tid}", "object": "video", "created_at": 1e400, '
                                  f'"status": "in_queue"}}'.encode())
        if how == "status":  # a gateway that gave up waiting while the backend made the task
            code = int(fault.get("status") or 502)
            if fault.get("format") == "json":
                return self.send(code, {"error": {"message": f"sandbox: upstream answered HTTP {code}",
                                                  "type": "server_error", "code": str(code)}})
            return self.send(code, gateway_page(code), "text/html")
        # cut: a 200 whose body stops half way, then a TCP reset
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", self.request_id)
        self.send_extra_headers()
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.status = 200
        return self.reset_connection()

    def find_task(self, tid):
        with self.server.state.lock:
            task = self.server.state.tasks.get(tid)
        if not task:
            raise ApiError(404, f"video {tid} not found", "not_found", "not_found_error")
        return task

    def task_status(self, task):
        age = time.monotonic() - task["start"]
        if age < task["queue_s"]:
            return "in_queue"
        if age < task["queue_s"] + task["process_s"]:
            return "processing"
        return "failed" if task["fail"] else "completed"

    def new_api_view(self, task):
        """model/task.go ToVideoStatus + the channel's ConvertToOpenAIVideo: unknown (NOT_START) first, then
        queued, in_progress with progress, completed (100) or failed."""
        age = time.monotonic() - task["start"]
        q, p = task["queue_s"], task["process_s"]
        status, progress = self.task_status(task), 0
        if age < q / 2:
            status = "unknown"
        elif status == "in_queue":
            status, progress = "queued", 10
        elif status == "processing":
            status, progress = "in_progress", min(99, 10 + int(89 * (age - q) / max(p, 1e-9)))
        else:
            progress = 100
        view = {"id": task["id"], "task_id": task["id"], "object": "video", "model": task.get("model"),
                "status": status, "progress": progress, "created_at": task["created_at"]}
        if status == "completed":
            view["completed_at"] = int(time.time())
            view["metadata"] = {"url": f"https://vendor.example/video/{task['id']}.mp4"}
        if status == "failed":
            view["error"] = {"message": "sandbox: the generation failed (asked by prompt)", "code": "50500"}
        return view

    def task_view(self, task):
        if self.new_api:
            return self.new_api_view(task)
        view = {"id": task["id"], "object": "video", "created_at": task["created_at"], "status": self.task_status(task)}
        if view["status"] == "failed":
            view["error"] = {"code": "generation_failed", "message": "sandbox: the generation failed (asked by prompt)"}
        return view

    def content(self, task, fault):
        kind = fault["fault"] if fault else None
        if task is not None:
            status = self.task_status(task)
            if status != "completed":
                raise ApiError(400 if status != "failed" else 409, f"video {task['id']} is not ready: status {status}",
                               "video_not_ready")
        size = task["video_bytes"] if task else 0
        seed = task["seed"] if task else 0
        if size:
            etag, total = (f'"syn-{size}-{seed}"' if seed else f'"syn-{size}"'), size
        else:
            data = self.server.fixture
            etag, total = self.server.fixture_etag, len(data)
        if kind == "octet_json":  # storage that labels its error page as the video
            return self.send(200, {"error": {"message": "sandbox: the object is not available", "type": "server_error",
                                             "code": "object_unavailable"}}, "application/octet-stream")
        if kind == "gzip":  # compressed whatever the client accepts; a representation of its own
            whole = b"".join(bytes(c) for c in self.body_chunks(task, 0, total))
            return self.send(200, gzip.compress(whole, compresslevel=1, mtime=0), "video/mp4",
                             {"Content-Encoding": "gzip", "ETag": etag[:-1] + '-gzip"'})
        start, end, partial = 0, total - 1, False
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if kind == "ignore_range":  # a server without Range support: the whole body
            rng = None
        if kind == "other_etag":  # the object changed, yet the server sends the part asked for
            range_applies = True
        elif kind == "no_validators":  # nothing an If-Range could match: RFC 9110 sends the whole body
            range_applies = if_range is None
        else:
            range_applies = if_range is None or if_range == etag
        if rng and range_applies:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                if m.group(2):
                    end = min(int(m.group(2)), total - 1)
                if start >= total:
                    return self.send(416, {"error": {"message": "range not satisfiable", "type": "invalid_request_error",
                                                     "code": "range"}}, headers={"Content-Range": f"bytes */{total}"})
                partial = True
        if partial and kind == "bad_range":  # resumes at the wrong place
            start = 0
        if kind == "other_etag":
            etag = f'"changed-{secrets.token_hex(6)}"'
        length = end - start + 1
        code = 206 if partial else 200
        if kind == "http10_close":
            return self.http10_close(fault, task, code, etag, start, end, total)
        self.send_response(code)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        if kind != "no_validators":
            self.send_header("ETag", etag)
        if not self.new_api:
            self.send_header("x-request-id", self.request_id)
        with self.server.state.lock:
            chunked = self.server.state.config.get("content_framing") == "chunked"
        if chunked:  # no length: the body ends with its last chunk (new-api's proxy, an upstream without one)
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.send_extra_headers()
        self.end_headers()
        self.status = code
        if self.command == "HEAD":
            return
        # one way of sending the body, two framings: faults and the rate apply to both
        put = self.put_chunk if chunked else self.wfile.write
        cut = None  # how many bytes to send before a mid-body fault
        if kind in ("reset_mid_body", "short_body", "stall_mid_body"):
            cut = max(1, min(length - 1, int(fault.get("after_bytes") or length // 2)))
        elif task and task.get("download_rate"):
            self.send_throttled(task, start, length, task["download_rate"], put)
        elif size >= SENDFILE_FROM and not chunked:
            with open(blob_file(size, seed), "rb") as f:
                self.connection.sendfile(f, start, length)
            return
        else:
            for chunk in self.body_chunks(task, start, length):
                put(chunk)
        if cut is None:
            if chunked:
                self.wfile.write(b"0\r\n\r\n")  # the last chunk: the body is whole
            return
        for chunk in self.body_chunks(task, start, cut):
            put(chunk)
        if kind == "stall_mid_body":
            self.wfile.flush()
            time.sleep(float(fault.get("seconds") or 5))
        if kind == "short_body":  # chunked: ends without the last chunk, as a proxy whose upstream read failed
            return self.close_cleanly()
        self.reset_connection()

    def put_chunk(self, data):
        """One chunk of a chunked body."""
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")

    def send_throttled(self, task, start, length, rate, put):
        """The body at `rate` bytes per second: a slice every 50 ms (a slow link, for progress displays)."""
        step = max(1, int(rate / 20))
        t0, sent = time.monotonic(), 0
        while sent < length:
            n = min(step, length - sent)
            for chunk in self.body_chunks(task, start + sent, n):
                put(chunk)
            self.wfile.flush()
            sent += n
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def http10_close(self, fault, task, code, etag, start, end, total):
        """An HTTP/1.0 answer without Content-Length: the body ends where the server closes, after after_bytes."""
        length = end - start + 1
        n = fault.get("after_bytes")
        n = length // 2 if n is None else max(0, min(length, int(n)))
        head = [f"HTTP/1.0 {code} {HTTPStatus(code).phrase}", f"Server: {self.version_string()}",
                f"Date: {self.date_time_string()}", "Content-Type: video/mp4", f"ETag: {etag}",
                f"x-request-id: {self.request_id}", "Connection: close"]
        if code == 206:
            head.append(f"Content-Range: bytes {start}-{end}/{total}")
        head += [f"{k}: {v}" for k, v in self.extra_headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self.status = code
        if self.command != "HEAD":
            for chunk in self.body_chunks(task, start, n):
                self.wfile.write(chunk)
        self.close_cleanly()

    def body_chunks(self, task, start, length):
        size = task["video_bytes"] if task else 0
        if not size:
            yield self.server.fixture[start:start + length]
            return
        yield from synthetic_chunks(size, start, length, task["seed"])

    def detection(self, body):
        url = self.subject_request(body, DETECT_KEY)
        n = subjects_in(url)
        base = f"http://{self.headers.get('Host')}"
        digest = hashlib.sha1(url.encode()).hexdigest()[:12]
        masks = [f"{base}/masks/{digest}/{i}.png?area={100 - 15 * i}" for i in range(n)]  # largest first
        self.send(200, {"status": 1 if n else 0, "mask_urls": masks, "request_id": self.request_id})

    def recognition(self, body):
        url = self.subject_request(body, RECOG_KEY)
        self.send(200, {"task_id": secrets.token_hex(8), "status": 1 if subjects_in(url) else 0,
                        "request_id": self.request_id})

    def subject_request(self, body, req_key):
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object", "invalid_json")
        if body.get("model") != OMNI_MODEL:
            raise bad(f"model must be {OMNI_MODEL}", "invalid_model")
        if body.get("req_key") != req_key:
            raise bad(f"req_key must be {req_key}", "invalid_req_key")
        if not is_http_url(body.get("image_url")):
            raise bad("image_url must be an http(s) URL")
        return body["image_url"]

    # ---- faults ----

    def apply_fault_before(self, fault, path, body):
        """Applies a fault that replaces the response; returns False for faults applied later."""
        kind = fault["fault"]
        headers = {}
        if kind == "status":
            code = int(fault.get("status") or 500)
            if "retry_after" in fault:
                headers["Retry-After"] = str(fault["retry_after"])
            if fault.get("retry_after_date"):
                headers["Retry-After"] = formatdate(time.time() + float(fault["retry_after_date"]), usegmt=True)
            msg = fault.get("message") or f"sandbox fault: HTTP {code}"
            self.send(code, {"error": {"message": msg, "type": "server_error" if code >= 500 else "rate_limit_error"
                                       if code == 429 else "invalid_request_error", "code": str(code)}},
                      headers=headers)
            return True
        if kind == "reset_before":
            self.status = -1
            self.reset_connection()
            return True
        if kind == "stall":
            time.sleep(float(fault.get("seconds") or 5))
            return False
        if kind == "malformed_json":
            self.send(200, b'{"id": "123", "status": ')
            return True
        if kind == "html":
            code = int(fault.get("status") or 502)
            page = (f"<html><head><title>{code} Bad Gateway</title></head><body><center><h1>{code} Bad Gateway"
                    "</h1></center><hr><center>nginx</center></body></html>").encode()
            self.send(code, page, "text/html")
            return True
        if kind == "redirect":
            self.send(int(fault.get("status") or 302), b"", "text/plain", {"Location": fault["location"]})
            return True
        if kind == "huge":
            n = int(fault.get("bytes") or 20 * 1024 * 1024)
            self.send(200, b'{"id":"1","status":"completed","pad":"' + b"x" * n + b'"}')
            return True
        if kind == "json":
            body = fault.get("body")
            if fault.get("body_hex"):  # bytes JSON cannot carry through the control plane (invalid UTF-8)
                body = bytes.fromhex(fault["body_hex"])
            self.send(int(fault.get("status") or 200), body)
            return True
        if kind == "echo_auth":
            self.echo_auth(fault, path)
            return True
        return False  # faults applied by the handler: on a create, a status, a download

    def echo_auth(self, fault, path):
        """An answer that carries the request's whole Authorization value everywhere it can."""
        auth = self.headers.get("Authorization") or ""
        self.request_id = auth  # the x-request-id header
        answer = fault.get("answer")
        if answer == "task":
            m = re.fullmatch(r"/v1/videos/([^/]+)", path)
            status = str(fault.get("status_value") or "failed").replace("{auth}", auth)
            return self.send(int(fault.get("status") or 200), {
                "id": m.group(1) if m else new_task_id(), "object": "video", "created_at": int(time.time()),
                "status": status, "error": {"code": auth, "message": f"sandbox: the generation failed for {auth}"},
                "request_id": auth})
        code = int(fault.get("status") or 400)
        if answer == "text":  # the key itself starts at offset 290: a cut at 300 leaves a piece of it
            key = auth[7:] if auth[:7].lower() == "bearer " else auth
            lead = ("sandbox: the upstream proxy answered in plain text. " * 6)[:288 - (len(auth) - len(key))]
            text = lead + ": " + auth
            text += (" Try again later." * 60)[:max(0, 1000 - len(text))]
            return self.send(code, text.encode("latin-1", "replace"), "text/plain")
        return self.send(code, {"error": {"message": f"Incorrect API key provided: {auth}", "type": auth, "code": auth},
                                "request_id": auth})

    # ---- the control plane, for tests ----

    def control(self, path, raw):
        st = self.server.state
        try:
            arg = json.loads(raw) if raw else {}
        except ValueError:
            return self.send(400, {"error": "bad json"})
        if path == "/_sandbox/log":
            with st.lock:
                return self.send(200, list(st.log))
        if path == "/_sandbox/stats":
            with st.lock:
                return self.send(200, {"creates": st.creates, "connections": st.connections,
                                       "requests": st.requests, "tasks": len(st.tasks),
                                       "open_connections": st.open_connections,
                                       "max_open_connections": st.max_open_connections,
                                       "rate_limited": st.rate_limited,
                                       "creates_by_prompt": dict(st.creates_by_prompt), "pid": os.getpid()})
        if path == "/_sandbox/budget":  # what an account's budget is judged by: requests a second, tasks at once
            with st.lock:
                times = sorted(e["time"] for e in st.log if urlsplit(e["path"]).path.startswith("/v1/"))
                spans = [(t["start"], t["start"] + t["queue_s"] + t["process_s"]) for t in st.tasks.values()]
            busiest, j = 0, 0
            for i, t in enumerate(times):  # the most API requests in any one-second window
                while t - times[j] >= 1:
                    j += 1
                busiest = max(busiest, i - j + 1)
            edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # an end before a start
            most = held = 0
            for _, d in edges:
                held += d
                most = max(most, held)
            now = time.monotonic()
            return self.send(200, {"busiest_second": busiest, "max_in_flight": most,
                                   "in_flight": sum(1 for a, b in spans if a <= now < b)})
        if path == "/_sandbox/reset":
            with st.lock:
                st.reset()
            return self.send(200, {"ok": True})
        if path == "/_sandbox/config":
            if not isinstance(arg, dict):
                return self.send(400, {"error": "config is a JSON object"})
            with st.lock:
                st.config.update(arg)
                return self.send(200, st.config)
        if path == "/_sandbox/faults":
            plans = arg if isinstance(arg, list) else [arg]
            for p in plans:
                why = check_plan(p)
                if why:
                    return self.send(400, {"error": why})
            with st.lock:
                for p in plans:
                    st.faults.append({"path": p.get("path", ".*"), "method": p.get("method"),
                                      "remaining": int(p.get("count", 1)), **p})
            return self.send(200, {"ok": True})
        if path == "/_sandbox/tasks":
            with st.lock:
                return self.send(200, {tid: {"status": self.task_status(t), "body": t["body"], "seed": t["seed"],
                                             "vendor": t["vendor"],
                                             "bytes": t["video_bytes"] or len(self.server.fixture)}
                                       for tid, t in st.tasks.items()})
        if path == "/_sandbox/finish":  # every task still running ends at its next status: a test holds one
            # running as long as it needs (process_seconds long), then lets it go; {"stage": "queue"}: only the
            # queue ends now, and the tasks in it process for their process_seconds from now
            if not isinstance(arg, dict) or arg.get("stage") not in (None, "queue"):
                return self.send(400, {"error": 'finish takes {} or {"stage": "queue"}'})
            with st.lock:
                now = time.monotonic()
                for t in st.tasks.values():
                    if arg.get("stage") == "queue":
                        t["queue_s"] = min(t["queue_s"], now - t["start"])
                    else:
                        t["queue_s"], t["process_s"] = 0, 0
            return self.send(200, {"ok": True})
        if path == "/_sandbox/shutdown":
            self.send(200, {"ok": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return None
        return self.send(404, {"error": "unknown control path"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, family=socket.AF_INET, backlog=512):
        self.address_family = family  # read when the socket is made
        self.request_queue_size = backlog  # read by listen()
        super().__init__(address, handler)

    @staticmethod
    def peer_closed(sock):
        # the client's FIN (or reset) has arrived, though the connection's handler thread may not have read it
        # yet: under load it runs late, and a connection the client already closed is not one it holds. (TLS:
        # a peek would read the record layer, so such a connection counts until its handler closes it.)
        if isinstance(sock, ssl.SSLSocket):
            return False
        try:
            p = select.poll()
            p.register(sock, select.POLLIN)
            if not p.poll(0):
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def process_request(self, request, client_address):
        # open from accept (counted here, in the accepting thread, so in accept order) to close: the client's
        # close, seen by the kernel, not when the handler thread gets to it
        st = self.state
        with st.lock:
            for sock in [s for s in st.open_sockets if self.peer_closed(s)]:
                st.open_sockets.discard(sock)
            st.open_sockets.add(request)
            st.open_connections = len(st.open_sockets)
            st.max_open_connections = max(st.max_open_connections, st.open_connections)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        st = self.state
        with st.lock:
            st.open_sockets.discard(request)
            st.open_connections = len(st.open_sockets)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # clients that hang up (and the faults that reset on purpose) are part of the job, not errors
        if isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError, TimeoutError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


def make_certificate(host):
    """A throwaway self-signed certificate for host (and localhost), made with the openssl command, in a
    temporary directory removed at exit. Returns the paths of the key (with the certificate) and of the certificate."""
    d = temp_dir("jimeng-sandbox-tls-")
    pem = os.path.join(d, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=" + host,
                    "-addext", f"subjectAltName=IP:{host},DNS:localhost", "-keyout", pem, "-out", pem + ".crt"],
                   check=True, capture_output=True)
    with open(pem, "a") as key, open(pem + ".crt") as crt:
        key.write(crt.read())
    return pem, pem + ".crt"


def watch_parent(ppid):
    """Exits when the parent exits, or when it closes the pipe it reads our stdout from: a parent that
    pclose()s us (Lua's io.popen handle closed, even by an error's cleanup) then waits for us to end."""
    out, fd = None, sys.stdout.fileno()
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd):  # a file is always "ready": no poll
        out = select.poll()
        out.register(fd, 0)  # POLLERR and POLLHUP are always reported
    while True:
        if out is None:
            time.sleep(0.25)
        gone = os.getppid() != ppid or (out is not None and
                                        any(ev & (select.POLLERR | select.POLLHUP) for _, ev in out.poll(250)))
        if gone:
            remove_temp_dirs()
            os._exit(0)


class Stop(Exception):
    """A signal asked the server to stop."""


def on_signal(signum, frame):
    raise Stop(signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="the address to listen on (::1 for IPv6)")
    def port(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535; 0 picks a free one)")
        return value

    ap.add_argument("--port", type=port, default=8787, help="0 picks a free port")
    ap.add_argument("--backlog", type=int, default=512, help="the listen backlog (queue of unaccepted connections)")
    ap.add_argument("--max-rps", type=int, default=0,
                    help="answer 429 to API requests over this many in any one second (0: no limit)")
    ap.add_argument("--queue-seconds", type=float, default=0.2, help="how long a task stays in_queue")
    ap.add_argument("--process-seconds", type=float, default=0.5, help="how long a task stays processing")
    ap.add_argument("--video-bytes", type=int, default=0,
                    help="every video is a synthetic body of this many bytes (0: the MP4 fixture)")
    ap.add_argument("--download-rate", type=int, default=0,
                    help="send videos at this many bytes per second (0: as fast as the link goes)")
    ap.add_argument("--api-key", default=None, help="accept only this bearer key (default: any non-empty key)")
    ap.add_argument("--dialect", choices=("tokenops", "new-api"), default="tokenops",
                    help="answer as the vendor page's gateway (tokenops) or as QuantumNous/new-api does")
    ap.add_argument("--content-framing", choices=("length", "chunked"), default=None,
                    help="videos with Content-Length, or chunked without one (default: chunked for new-api)")
    ap.add_argument("--content-redirect", action="store_true",
                    help="new-api: answer content with a 302 to a signed URL on another host")
    ap.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process exits")
    ap.add_argument("--tls", action="store_true",
                    help="serve https with a throwaway self-signed certificate (its path is printed on line 2)")
    args = ap.parse_args()

    # however the server ends (shutdown, SIGTERM, SIGHUP, Ctrl-C), its temporary directories go with it
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stops:
        signal.signal(sig, on_signal)
    try:
        return serve(args)
    except (Stop, KeyboardInterrupt):
        return 0
    finally:
        for sig in stops:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        remove_temp_dirs()


def serve(args):
    state = State(args)
    with open(FIXTURE, "rb") as f:
        fixture = f.read()
    family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
    server = Server((args.host, args.port), Handler, family, args.backlog)
    server.state = state
    server.fixture = fixture
    server.fixture_etag = '"' + hashlib.sha256(fixture).hexdigest()[:16] + '"'
    host, port = server.server_address[:2]
    scheme = "http"
    if args.tls:
        key, cert = make_certificate(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(key)
        os.remove(key)  # loaded: the private key need not stay on disk while the server runs
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    print(f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/v1", flush=True)
    if args.tls:
        print(f"cert: {cert}", flush=True)
    if args.exit_with_parent:
        threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
