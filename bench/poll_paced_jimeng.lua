-- bench: N status calls through the client, the process sleeping GAP seconds between them: a sequential poll
-- at a fleet's rate, what a poll costs once each one wakes the process (caches gone cold). The CPU of the whole
-- loop, sleeps' wake-ups included, as the fleet's. args: base_url task_id N gap
local jimeng = require "jimeng"
local core = require "jimeng.core"
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1] })
local id, n, gap = arg[2], tonumber(arg[3]), tonumber(arg[4])
local t0 = os.clock()
for _ = 1, n do
  assert(client:status(id))
  core.sleep(gap)
end
io.write(("cpu %.6f\n"):format(os.clock() - t0))
