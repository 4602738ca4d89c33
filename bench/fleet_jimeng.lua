-- bench: N tasks created at once, then waited on together in one jimeng.run (no download).
-- args: base_url N interval [max_rps]. Prints the CPU of the waiting alone (creates excluded), the wall
-- time of the whole, the peak RSS growth past start-up, in KiB, how long the creates took, and the peak RSS
-- growth while waiting past the RSS once the creates were done (the peak is reset then: /proc/self/clear_refs).
local jimeng = require "jimeng"
local core = require "jimeng.core"
local function status(field)
  local f = io.open("/proc/self/status")
  local kb = f and f:read("*a"):match(field .. ":%s*(%d+)")
  if f then f:close() end
  return tonumber(kb) or 0
end
local function hwm() return status("VmHWM") end
local base = hwm()
local client = assert(jimeng.new { api_key = "bench", base_url = arg[1], poll_interval = tonumber(arg[3]),
  max_rps = tonumber(arg[4] or ""), wait_timeout = 3600, max_retries = 10 })
local n = tonumber(arg[2])
local t0, cpu_wait, created_at, rss_created, peak_before = core.now(), 0, 0, 0, 0
jimeng.run(function()
  local ids = {}
  local created = jimeng.gather((function()
    local list = {}
    for i = 1, n do list[i] = function() return assert(client:create { prompt = "fleet " .. i }) end end
    return list
  end)())
  for i = 1, n do ids[i] = created[i].id end
  created_at = core.now()
  peak_before, rss_created = hwm(), status("VmRSS")
  local f = io.open("/proc/self/clear_refs", "w") -- the peak from now on: the waiting's own
  if f then
    f:write("5")
    f:close()
  end
  local c0 = os.clock()
  local list = {}
  for i = 1, n do list[i] = function() return assert(client:wait(ids[i])) end end
  local done = jimeng.gather(list)
  assert(#done == n)
  cpu_wait = os.clock() - c0
end)
local peak_wait = hwm()
io.write(("cpu %.6f wall %.3f rss_kb %d creates %.3f rss_wait_kb %d\n"):format(cpu_wait, core.now() - t0,
  math.max(peak_wait, peak_before) - base, created_at - t0, math.max(0, peak_wait - rss_created)))
