"""bench: the vendor page's loop, one task after another with requests: create, poll, download.
args: base_url N outdir poll_seconds"""
import sys
import time

import requests

base, n, out, poll = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
h = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
for i in range(n):
    vid = requests.post(f"{base}/videos", headers=h, json={
        "model": "jimeng-video-3.0-pro", "prompt": f"bench {i}", "req_key": "jimeng_ti2v_v30_pro",
        "seed": -1, "frames": 121, "aspect_ratio": "16:9"}).json()["id"]
    while requests.get(f"{base}/videos/{vid}", headers=h).json()["status"] != "completed":
        time.sleep(poll)
    with open(f"{out}/s{i}.mp4", "wb") as f:
        f.write(requests.get(f"{base}/videos/{vid}/content", headers=h).content)
