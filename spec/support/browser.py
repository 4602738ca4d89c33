#!/usr/bin/env python3
"""Opens a page in headless Chromium and runs a script in its context, over the DevTools protocol on a
pipe (--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4, no port, no websocket, no Node).

    python3 browser.py --url file:///.../index.html --script probe.js [--screenshot out.png] [--loads N]

Prints one JSON object: {"result": <what the script's expression returned (awaited)>, "console": [every
console message and log entry of level warning or error, and every uncaught exception], "screenshot": path}.
Exits 2 when Chromium cannot be started or the page does not answer in time.
"""
import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium, width, height):
        self.profile = tempfile.mkdtemp(prefix="jimeng-chromium-")
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()

        def wire():  # in the child: its fd 3 reads our commands, its fd 4 writes its answers
            r, w = os.dup(cmd_r), os.dup(out_w)  # above 4 first, so that neither is overwritten
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                "--user-data-dir=" + self.profile, "--remote-debugging-pipe",
                "--window-size=%d,%d" % (width, height), "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.buf = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self.read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            self.events.append(m)

    def read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.out_r], [], [], left)
            if ready:
                chunk = os.read(self.out_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the pipe (did it start?)")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_event(self, method, timeout):
        deadline = time.time() + timeout
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                del self.events[i]
                return m
        while True:
            m = self.read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # already gone: nothing to close
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.out_r)
        shutil.rmtree(self.profile, ignore_errors=True)


def console_entries(events):
    out = []
    for m in events:
        p = m.get("params", {})
        if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append({"level": p["type"], "text": text})
        elif m.get("method") == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append({"level": "exception", "text": d.get("exception", {}).get("description") or d.get("text")})
        elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            e = p["entry"]
            out.append({"level": e["level"], "text": e.get("text", "") + (" " + e["url"] if e.get("url") else "")})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--script", help="a file holding one JavaScript expression (a promise is awaited)")
    ap.add_argument("--screenshot")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--loads", type=int, default=1, help="how many page loads to wait for before the script")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium") or "chromium")
    args = ap.parse_args()

    try:
        b = Browser(args.chromium, args.width, args.height)
    except OSError as e:
        print(json.dumps({"error": "cannot start %s: %s" % (args.chromium, e)}))
        return 2
    try:
        targets = b.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = b.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            b.send(domain + ".enable", session=session)
        b.send("Emulation.setDeviceMetricsOverride", {"width": args.width, "height": args.height,
               "deviceScaleFactor": 1, "mobile": False}, session=session)
        b.send("Page.navigate", {"url": args.url}, session=session)
        for _ in range(args.loads):  # a page that reloads itself fires one more each time
            b.wait_event("Page.loadEventFired", args.timeout)
        result = None
        if args.script:
            with open(args.script, encoding="utf-8") as f:
                expr = f.read()
            r = b.send("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True},
                       session=session, timeout=args.timeout)
            if "exceptionDetails" in r:
                d = r["exceptionDetails"]
                result = {"error": d.get("exception", {}).get("description") or d.get("text")}
            else:
                result = r.get("result", {}).get("value")
        if args.screenshot:
            shot = b.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=args.timeout)
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        # let late events (a failed load, a console message) arrive before reading them
        b.send("Runtime.evaluate", {"expression": "1"}, session=session)
        print(json.dumps({"result": result, "console": console_entries(b.events), "screenshot": args.screenshot}))
        return 0
    except (TimeoutError, RuntimeError, StopIteration) as e:
        print(json.dumps({"error": str(e) or type(e).__name__, "console": console_entries(b.events)}))
        return 2
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
