"""bench: N status calls with a Python requests.Session (one connection). args: base_url task_id N"""
import sys
import time

import requests

base, tid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = requests.Session()
s.headers["Authorization"] = "Bearer bench"
t0 = time.process_time()
for _ in range(n):
    assert s.get(f"{base}/videos/{tid}").json()["status"]
print(f"cpu {time.process_time() - t0:.6f}")  # the loop alone: start-up is not counted
