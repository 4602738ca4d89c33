-- bench: N tasks created at once, then waited on together in one jimeng.run (no download).
-- args: base_url N interval [max_rps]. Prints the CPU of the waiting alone (creates excluded), the wall
-- time of the whole, the peak RSS growth past start-up, in KiB, and how long the creates took.
local jimeng = require "jimeng"
local core = require "jimeng.core"
local function hwm()
  local f = io.open("/proc/self/status")
  local kb = f and f:read("*a"):match("VmHWM:%s*(%d+)")
  if f then f:close() end
  return tonumber(kb) or 0
end
local base = hwm()
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1], poll_interval = tonumber(arg[3]),
  max_rps = tonumber(arg[4] or ""), wait_timeout = 3600, max_retries = 10 })
local n = tonumber(arg[2])
local t0, cpu_wait, created_at = core.now(), 0, 0
jimeng.run(function()
  local ids = {}
  local created = jimeng.gather((function()
    local list = {}
    for i = 1, n do list[i] = function() return assert(client:create { prompt = "fleet " .. i }) end end
    return list
  end)())
  for i = 1, n do ids[i] = created[i].id end
  created_at = core.now()
  local c0 = os.clock()
  local list = {}
  for i = 1, n do list[i] = function() return assert(client:wait(ids[i])) end end
  local done = jimeng.gather(list)
  assert(#done == n)
  cpu_wait = os.clock() - c0
end)
io.write(("cpu %.6f wall %.3f rss_kb %d creates %.3f\n"):format(cpu_wait, core.now() - t0, hwm() - base,
  created_at - t0))
