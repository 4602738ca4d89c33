"""bench: one download with Python requests. args: mode (content|stream) base_url task_id output.
content: as the vendor page does it (the whole body in memory, then written); stream: iter_content."""
import sys

import requests

mode, base, tid, out = sys.argv[1:5]
headers = {"Authorization": "Bearer bench"}
url = f"{base}/videos/{tid}/content"
if mode == "content":
    r = requests.get(url, headers=headers)
    with open(out, "wb") as f:
        f.write(r.content)
else:
    with requests.get(url, headers=headers, stream=True) as r, open(out, "wb") as f:
        for chunk in r.iter_content(chunk_size=1 << 20):
            f.write(chunk)
